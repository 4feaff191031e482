//! Group commit on the real disk: eight threads appending under `FsyncPolicy::Always` get
//! contiguous, unique offsets, every record is stored, and the threads share fsyncs (fewer
//! fsyncs than appends). Readers running alongside only ever see a growing, consistent prefix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use sluice_log::{FsyncPolicy, Log, LogOptions, ReadLimits, Record};

#[test]
fn eight_appenders_share_fsyncs_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            tmp.path(),
            LogOptions::default()
                .fsync(FsyncPolicy::Always)
                .segment_bytes_max(256 << 10),
        )
        .unwrap(),
    );
    const THREADS: u64 = 8;
    const APPENDS: u64 = 150;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let log = log.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !done.load(Ordering::Acquire) {
                let got = log
                    .read_from(
                        seen,
                        ReadLimits {
                            records_max: 500,
                            bytes_max: 1 << 20,
                        },
                    )
                    .unwrap();
                for r in &got {
                    assert_eq!(r.offset, seen, "readers see a dense prefix");
                    seen += 1;
                }
            }
            seen
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..APPENDS {
                    let batch = [
                        Record::new(format!("t{t}"), format!("{t}:{i}:a")),
                        Record::new(format!("t{t}"), format!("{t}:{i}:b")),
                    ];
                    let first = log.append(&batch).unwrap();
                    mine.push(first);
                }
                mine
            })
        })
        .collect();
    let mut firsts: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    done.store(true, Ordering::Release);
    reader.join().unwrap();

    firsts.sort_unstable();
    let expected: Vec<u64> = (0..THREADS * APPENDS).map(|i| i * 2).collect();
    assert_eq!(firsts, expected, "offsets are contiguous and unique");
    let all = read_all(&log);
    assert_eq!(all.len() as u64, THREADS * APPENDS * 2);
    // Each batch is stored whole and each thread's batches keep their order.
    let mut last_i = vec![-1i64; THREADS as usize];
    for pair in all.chunks(2) {
        let a = std::str::from_utf8(&pair[0].value).unwrap();
        let b = std::str::from_utf8(&pair[1].value).unwrap();
        assert_eq!(a.strip_suffix('a'), b.strip_suffix('b'));
        let mut parts = a.split(':');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: i64 = parts.next().unwrap().parse().unwrap();
        assert!(i > last_i[t]);
        last_i[t] = i;
    }
    let stats = log.stats();
    assert_eq!(stats.appends, THREADS * APPENDS);
    assert_eq!(
        stats.fsync_latency_buckets.iter().sum::<u64>(),
        stats.fsyncs,
        "every fsync is timed"
    );
    assert!(
        stats.fsyncs < stats.appends,
        "group commit: {} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
}

/// A file system whose fdatasyncs take a while and that records, for every descriptor, how many
/// fsyncs run on it at once, and how many run on the log's segments at once overall.
#[derive(Debug)]
struct SlowSyncFs {
    inner: sluice_log::io::sim::SimFs,
    now: Arc<std::sync::Mutex<SyncCounts>>,
}

#[derive(Debug, Default)]
struct SyncCounts {
    /// Fsyncs running, by descriptor.
    per_handle: std::collections::HashMap<usize, usize>,
    running: usize,
    most_at_once: usize,
    most_on_one_handle: usize,
}

#[derive(Debug)]
struct SlowFile {
    inner: Arc<dyn sluice_log::io::FileHandle>,
    id: usize,
    now: Arc<std::sync::Mutex<SyncCounts>>,
}

impl sluice_log::io::FileHandle for SlowFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        {
            let mut c = self.now.lock().unwrap();
            let on_this = {
                let n = c.per_handle.entry(self.id).or_default();
                *n += 1;
                *n
            };
            c.running += 1;
            c.most_at_once = c.most_at_once.max(c.running);
            c.most_on_one_handle = c.most_on_one_handle.max(on_this);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let result = self.inner.sync_data();
        let mut c = self.now.lock().unwrap();
        c.running -= 1;
        *c.per_handle.entry(self.id).or_default() -= 1;
        result
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl sluice_log::io::FileSystem for SlowSyncFs {
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(
        &self,
        path: &std::path::Path,
        mode: sluice_log::io::OpenMode,
    ) -> std::io::Result<Arc<dyn sluice_log::io::FileHandle>> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(SlowFile {
            inner,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            now: Arc::clone(&self.now),
        }))
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn list_subdirs(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list_subdirs(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &std::path::Path) -> std::io::Result<bool> {
        self.inner.exists(path)
    }
    fn map_readonly(&self, path: &std::path::Path) -> std::io::Result<sluice_log::io::MappedBytes> {
        self.inner.map_readonly(path)
    }
}

/// Two fsyncs overlap, so appends that land during one do not wait for it to end before
/// theirs starts; but never two on one descriptor, where the kernel would report a writeback
/// error to only one of them. Rolls (which fsync the segment they seal) happen throughout.
#[test]
fn group_commit_overlaps_two_fsyncs_never_on_one_descriptor() {
    let fs = Arc::new(SlowSyncFs {
        inner: sluice_log::io::sim::SimFs::new(),
        now: Arc::default(),
    });
    let log = Arc::new(
        Log::open_with_fs(
            fs.clone(),
            dir(),
            LogOptions::default()
                .fsync(FsyncPolicy::Always)
                .segment_bytes_max(16 << 10),
        )
        .unwrap(),
    );
    const THREADS: u64 = 8;
    const APPENDS: u64 = 40;
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    log.append(&[record(t * 1000 + i, 200)]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let counts = fs.now.lock().unwrap();
    assert_eq!(
        counts.most_on_one_handle, 1,
        "two fsyncs shared a descriptor"
    );
    assert_eq!(counts.most_at_once, 2, "fsyncs overlapped: {counts:?}");
    assert_eq!(read_all(&log).len() as u64, THREADS * APPENDS);
    assert!(
        log.stats().rolls > 3,
        "the test rolls segments while syncing"
    );
}
