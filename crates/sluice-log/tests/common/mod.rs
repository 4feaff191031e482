//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_log::io::sim::SimFs;
use sluice_log::{Clock, Log, LogOptions, ReadLimits, Record, StoredRecord};

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(start_ms)))
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn dir() -> PathBuf {
    PathBuf::from("/data/p0")
}

pub fn open_sim(fs: &SimFs, options: LogOptions) -> Log {
    Log::open_with_fs(Arc::new(fs.clone()), dir(), options).expect("open")
}

/// A record whose value says where it came from, so a test can check bytes, not just counts.
pub fn record(i: u64, value_len: usize) -> Record {
    let key = format!("key-{}", i % 7);
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(value_len.max(value.len()), (i % 251) as u8);
    Record::new(key, value)
}

/// Reads every readable record from the start.
pub fn read_all(log: &Log) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let batch = log
            .read_from(
                next,
                ReadLimits {
                    records_max: 1000,
                    bytes_max: 1 << 20,
                },
            )
            .expect("read");
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch);
    }
    out
}

pub fn assert_same(stored: &StoredRecord, offset: u64, expected: &Record) {
    assert_eq!(stored.offset, offset);
    assert_eq!(stored.key, expected.key, "key at offset {offset}");
    assert_eq!(stored.value, expected.value, "value at offset {offset}");
}

pub fn segment_files(fs: &SimFs, dir: &Path, suffix: &str) -> Vec<PathBuf> {
    fs.file_names()
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == suffix))
        .collect()
}

/// What a [`SyncHookFs`] does on each `fdatasync`: given the descriptor's id (one per `open`)
/// and the real fsync, it decides when to run it, or fails instead.
pub type SyncHook =
    dyn Fn(usize, &dyn Fn() -> std::io::Result<()>) -> std::io::Result<()> + Send + Sync;

/// The simulated file system with every `fdatasync` going through a hook, for tests that need
/// to slow fsyncs down, watch them overlap, or fail one at a chosen moment.
#[derive(Clone)]
pub struct SyncHookFs {
    pub inner: SimFs,
    hook: Arc<SyncHook>,
    next_id: Arc<std::sync::atomic::AtomicUsize>,
    /// Runs before each `remove_file`, with the path (see [`SyncHookFs::on_remove`]).
    remove_hook: Arc<std::sync::Mutex<Option<RemoveHook>>>,
    /// Runs before each directory fsync (see [`SyncHookFs::on_sync_dir`]).
    dir_hook: Arc<std::sync::Mutex<Option<RemoveHook>>>,
    /// Runs before each `open` and may fail it (see [`SyncHookFs::on_open`]).
    open_hook: Arc<std::sync::Mutex<Option<OpenHook>>>,
}

/// What a [`SyncHookFs`] runs before opening a file; an error fails the open.
pub type OpenHook =
    Arc<dyn Fn(&Path, sluice_log::io::OpenMode) -> std::io::Result<()> + Send + Sync>;

/// What a [`SyncHookFs`] runs before removing a file.
pub type RemoveHook = Arc<dyn Fn(&Path) + Send + Sync>;

impl std::fmt::Debug for SyncHookFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHookFs").finish_non_exhaustive()
    }
}

impl SyncHookFs {
    pub fn new(
        hook: impl Fn(usize, &dyn Fn() -> std::io::Result<()>) -> std::io::Result<()>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            inner: SimFs::new(),
            hook: Arc::new(hook),
            next_id: Arc::default(),
            remove_hook: Arc::default(),
            dir_hook: Arc::default(),
            open_hook: Arc::default(),
        }
    }

    /// Runs `hook` before every later `open`; an error it returns fails the open, as running
    /// out of file descriptors would.
    pub fn on_open(
        &self,
        hook: impl Fn(&Path, sluice_log::io::OpenMode) -> std::io::Result<()> + Send + Sync + 'static,
    ) {
        *self.open_hook.lock().unwrap() = Some(Arc::new(hook));
    }

    /// Runs `hook` before every later directory fsync, on the syncing thread (to slow it down).
    pub fn on_sync_dir(&self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        *self.dir_hook.lock().unwrap() = Some(Arc::new(hook));
    }

    /// Runs `hook` before every later `remove_file`, on the removing thread: a test can act
    /// between a segment leaving the log and its unlink.
    pub fn on_remove(&self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        *self.remove_hook.lock().unwrap() = Some(Arc::new(hook));
    }
}

struct HookedFile {
    inner: Arc<dyn sluice_log::io::FileHandle>,
    id: usize,
    hook: Arc<SyncHook>,
}

impl std::fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedFile")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl sluice_log::io::FileHandle for HookedFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, position)
    }
    fn read_exact_vec_at(&self, len: usize, position: u64) -> std::io::Result<Vec<u8>> {
        self.inner.read_exact_vec_at(len, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> std::io::Result<()> {
        self.inner.write_all_vectored_at(bufs, position)
    }
    fn preallocate(&self, position: u64, len: u64) -> std::io::Result<()> {
        self.inner.preallocate(position, len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        (self.hook)(self.id, &|| self.inner.sync_data())
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl sluice_log::io::FileSystem for SyncHookFs {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(
        &self,
        path: &Path,
        mode: sluice_log::io::OpenMode,
    ) -> std::io::Result<Arc<dyn sluice_log::io::FileHandle>> {
        let hook = self.open_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(path, mode)?;
        }
        Ok(Arc::new(HookedFile {
            inner: self.inner.open(path, mode)?,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            hook: Arc::clone(&self.hook),
        }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        let hook = self.remove_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(path);
        }
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn list_subdirs(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_subdirs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let hook = self.dir_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(dir);
        }
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.inner.exists(path)
    }
    fn map_readonly(&self, path: &Path) -> std::io::Result<sluice_log::io::MappedBytes> {
        self.inner.map_readonly(path)
    }
}
