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

/// How many fsyncs run at once, per descriptor and overall.
#[derive(Debug, Default)]
struct SyncCounts {
    per_handle: std::collections::HashMap<usize, usize>,
    running: usize,
    most_at_once: usize,
    most_on_one_handle: usize,
}

/// Two fsyncs overlap, so appends that land during one do not wait for it to end before
/// theirs starts; but never two on one descriptor, where the kernel would report a writeback
/// error to only one of them. Rolls (which fsync the segment they seal) happen throughout.
#[test]
fn group_commit_overlaps_two_fsyncs_never_on_one_descriptor() {
    let counts = Arc::new(std::sync::Mutex::new(SyncCounts::default()));
    let seen = Arc::clone(&counts);
    // Every fsync takes a while, so appends pile up behind it and the next can overlap.
    let fs = Arc::new(SyncHookFs::new(move |id, sync| {
        {
            let mut c = seen.lock().unwrap();
            let on_this = {
                let n = c.per_handle.entry(id).or_default();
                *n += 1;
                *n
            };
            c.running += 1;
            c.most_at_once = c.most_at_once.max(c.running);
            c.most_on_one_handle = c.most_on_one_handle.max(on_this);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let result = sync();
        let mut c = seen.lock().unwrap();
        c.running -= 1;
        *c.per_handle.entry(id).or_default() -= 1;
        result
    }));
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
    let counts = counts.lock().unwrap();
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

/// Under `Never` a roll hands the sealed segment to the background flusher while `sync` calls
/// may still be about to fsync it through a group-commit slot: the two must never run on one
/// descriptor at once (one could report success over pages the other was told are lost).
#[test]
fn sync_and_the_background_flusher_never_fsync_one_descriptor_at_once() {
    let counts = Arc::new(std::sync::Mutex::new(SyncCounts::default()));
    let seen = Arc::clone(&counts);
    let fs = Arc::new(SyncHookFs::new(move |id, sync| {
        {
            let mut c = seen.lock().unwrap();
            let n = c.per_handle.entry(id).or_default();
            *n += 1;
            let on_this = *n;
            c.most_on_one_handle = c.most_on_one_handle.max(on_this);
        }
        // Slow enough that rolls land while fsyncs run.
        std::thread::sleep(std::time::Duration::from_millis(4));
        let result = sync();
        *seen.lock().unwrap().per_handle.entry(id).or_default() -= 1;
        result
    }));
    // A slow directory fsync too: a `sync` makes a new segment's name durable before it fsyncs
    // the segment, and rolls must be able to land in between.
    fs.on_sync_dir(|_| std::thread::sleep(std::time::Duration::from_millis(4)));
    let log = Arc::new(
        Log::open_with_fs(
            fs.clone(),
            dir(),
            LogOptions::default()
                .fsync(FsyncPolicy::Never)
                .segment_bytes_max(1 << 10),
        )
        .unwrap(),
    );
    const THREADS: u64 = 6;
    const APPENDS: u64 = 40;
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    log.append(&[record(t * 1000 + i, 200)]).unwrap();
                    if i % 2 == t % 2 {
                        log.sync().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let counts = counts.lock().unwrap();
    assert_eq!(
        counts.most_on_one_handle, 1,
        "two fsyncs shared a descriptor"
    );
    assert_eq!(read_all(&log).len() as u64, THREADS * APPENDS);
    assert!(
        log.stats().rolls > 10,
        "the test rolls segments while syncing"
    );
}
