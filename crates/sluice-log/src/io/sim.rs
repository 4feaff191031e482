//! A simulated file system for crash and fault tests.
//!
//! [`SimFs`] keeps, for every file, the bytes written (`live`) apart from the bytes made durable
//! by `sync_data` (`durable`), and keeps the directory as written apart from the directory as
//! made durable by `sync_dir`. [`SimFs::crash_image`] returns the file system a machine would see
//! after a power loss: only durable directory entries, each with its durable bytes plus,
//! depending on [`CrashMode`], nothing, a random prefix of the unsynced tail, or that prefix
//! followed by garbage (the "nonsense blocks" a file system may show after a crash).
//!
//! Faults: a crash after a given number of mutating operations (every later operation fails,
//! as if the process had died there), and injected errors on write or sync (for example
//! `ENOSPC`, `EIO`) including short writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{FileHandle, FileSystem, MappedBytes, OpenMode, parent};

/// What survives of unsynced data at a simulated power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Unsynced bytes and unsynced directory changes vanish.
    DropUnsynced,
    /// A random prefix of each file's unsynced tail survives.
    RandomPrefix,
    /// A random prefix survives, followed by zeros or random bytes.
    RandomPrefixThenGarbage,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// End of the blocks reserved by `preallocate`; reserving changes no byte of the file.
    reserved_end: u64,
}

/// Injected failures.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Mutating operations left before the simulated crash.
    crash_after_ops: Option<u64>,
    crashed: bool,
    /// Error returned by every write while set; `short` writes half the buffer first.
    write_error: Option<(io::ErrorKind, bool)>,
    /// Error returned by `sync_data` after this many more successful syncs.
    sync_error_after: Option<(u64, io::ErrorKind)>,
    /// Only files below this directory suffer the injected write and sync errors.
    fault_scope: Option<PathBuf>,
    /// Error returned by every `preallocate` while set.
    preallocate_error: Option<io::ErrorKind>,
    /// Error returned by every creation of a file while set.
    create_error: Option<io::ErrorKind>,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    live_names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories made by `create_dir_all`. A directory whose parent was never made here is a
    /// root (it stands for a directory that existed before): it is durable as soon as it exists.
    /// Any other directory is durable once its parent has been synced after its creation.
    live_dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    /// Every directory ever made here, removed or not.
    known_dirs: BTreeSet<PathBuf>,
    next_inode: u64,
    faults: Faults,
    sync_data_calls: u64,
    sync_dir_calls: u64,
    mutating_ops: u64,
    bytes_read: u64,
}

/// An in-memory file system that models what survives a power loss.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    gate: Arc<WriteGate>,
}

/// Holds writes (see [`SimFs::hold_writes`]) or syncs ([`SimFs::hold_syncs`]) back while
/// closed, to stand for a call the kernel keeps waiting. Separate from the state's lock, which a
/// held call must not keep.
#[derive(Debug, Default)]
struct WriteGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Whether writes are held.
    closed: bool,
    /// Whether `sync_data` calls are held.
    syncs_closed: bool,
    /// Bumped by every release, so that a write held before it goes through even if the gate
    /// closes again before the write wakes.
    releases: u64,
    /// Writes and syncs waiting at the gate now.
    waiting: usize,
}

impl GateState {
    fn holds(&self, sync: bool) -> bool {
        if sync { self.syncs_closed } else { self.closed }
    }
}

impl WriteGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the gate is open to a write (or, with `sync`, to a sync), counting itself
    /// among the waiting meanwhile.
    fn pass(&self, sync: bool) {
        let mut g = self.lock();
        if !g.holds(sync) {
            return;
        }
        g.waiting += 1;
        self.changed.notify_all();
        let held_at = g.releases;
        while g.holds(sync) && g.releases == held_at {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.waiting -= 1;
        self.changed.notify_all();
    }
}

fn crash_error() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl State {
    /// Counts a mutating operation and fails it if the simulated crash has come.
    fn tick(&mut self) -> io::Result<()> {
        if self.faults.crashed {
            return Err(crash_error());
        }
        self.mutating_ops += 1;
        if let Some(left) = self.faults.crash_after_ops.as_mut() {
            if *left == 0 {
                self.faults.crashed = true;
                return Err(crash_error());
            }
            *left -= 1;
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        if self.faults.crashed {
            Err(crash_error())
        } else {
            Ok(())
        }
    }

    /// Whether every directory above `path` that this file system made is durable.
    fn durably_reachable(&self, path: &Path) -> bool {
        // A directory that exists now but was never synced into its parent is lost; one that
        // was removed but whose removal was never synced comes back.
        path.ancestors()
            .skip(1)
            .all(|a| !self.known_dirs.contains(a) || self.durable_dirs.contains(a))
    }

    /// Whether injected faults apply to the file with this inode.
    fn in_fault_scope(&self, ino: u64) -> bool {
        match &self.faults.fault_scope {
            None => true,
            Some(dir) => self
                .live_names
                .iter()
                .any(|(p, i)| *i == ino && p.starts_with(dir)),
        }
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("stale simulated file handle"))
    }
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock only happens in a failing test; keep going so the
        // test reports its own assertion rather than a poisoned mutex.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates the process dying after `ops` more mutating operations (write, sync, create,
    /// rename, remove, set_len): that operation and every one after it fail.
    pub fn crash_after_ops(&self, ops: u64) {
        self.lock().faults.crash_after_ops = Some(ops);
    }

    /// Whether the simulated crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.lock().faults.crashed
    }

    /// Makes every write fail with `kind` (after writing half the buffer when `short`), until
    /// [`SimFs::clear_write_error`].
    pub fn fail_writes(&self, kind: io::ErrorKind, short: bool) {
        self.lock().faults.write_error = Some((kind, short));
    }

    /// Limits injected write and sync errors to files below `dir` (for example one partition),
    /// or lifts the limit with `None`.
    pub fn scope_faults(&self, dir: Option<&Path>) {
        self.lock().faults.fault_scope = dir.map(Path::to_path_buf);
    }

    /// Holds every write to a file in the fault scope (see [`SimFs::scope_faults`], which
    /// limits the injected errors too) until [`SimFs::release_held`], as a kernel throttling a
    /// writer would: the write blocks its thread, then goes through. A write already past the
    /// gate when it closes is not held.
    pub fn hold_writes(&self) {
        self.gate.lock().closed = true;
    }

    /// Holds every `sync_data` of a file in the fault scope until [`SimFs::release_held`], as
    /// a disk slow to flush would: the call blocks its thread, then goes through. Writes are not
    /// held unless [`SimFs::hold_writes`] says so too.
    pub fn hold_syncs(&self) {
        self.gate.lock().syncs_closed = true;
    }

    /// Lets held writes and syncs, and every later one, go through: both holds end.
    pub fn release_held(&self) {
        let mut g = self.gate.lock();
        g.closed = false;
        g.syncs_closed = false;
        g.releases += 1;
        self.gate.changed.notify_all();
    }

    /// Waits until at least `n` calls (writes and syncs together) are being held, for at most
    /// `timeout`; whether they are. A test that holds one kind at a time knows which.
    pub fn wait_for_held(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.gate.lock();
        while g.waiting < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .gate
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Makes every creation of a file fail with `kind` (as running out of file descriptors or
    /// inodes would), or succeed again with `None`; writes to files already open go on.
    pub fn fail_creates(&self, kind: Option<io::ErrorKind>) {
        self.lock().faults.create_error = kind;
    }

    /// Makes every `preallocate` fail with `kind` (as a file system without `fallocate`, or a
    /// full disk, would), or succeed again with `None`.
    pub fn fail_preallocate(&self, kind: Option<io::ErrorKind>) {
        self.lock().faults.preallocate_error = kind;
    }

    /// Bytes reserved past the end of the file at `path` by `preallocate` and not given back
    /// by a truncation; `None` if there is no such file.
    pub fn reserved_past_end(&self, path: &Path) -> Option<u64> {
        let st = self.lock();
        let inode = st.inodes.get(st.live_names.get(path)?)?;
        Some(inode.reserved_end.saturating_sub(inode.live.len() as u64))
    }

    /// Lets writes succeed again.
    pub fn clear_write_error(&self) {
        self.lock().faults.write_error = None;
    }

    /// Makes the `after + 1`-th `sync_data` from now fail with `kind`, and every one after it.
    pub fn fail_sync_after(&self, after: u64, kind: io::ErrorKind) {
        self.lock().faults.sync_error_after = Some((after, kind));
    }

    /// Number of `sync_data` calls so far.
    pub fn sync_data_calls(&self) -> u64 {
        self.lock().sync_data_calls
    }

    /// Number of `sync_dir` calls so far.
    pub fn sync_dir_calls(&self) -> u64 {
        self.lock().sync_dir_calls
    }

    /// Bytes read through file handles and maps so far (to check what open reads).
    pub fn bytes_read(&self) -> u64 {
        self.lock().bytes_read
    }

    /// Number of mutating operations so far (the unit of [`SimFs::crash_after_ops`]).
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// The live bytes of a file, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.live_names.get(path)?;
        st.inodes.get(ino).map(|i| i.live.clone())
    }

    /// Replaces the bytes of a file, live and durable alike (damage done while stopped).
    pub fn set_contents(&self, path: &Path, bytes: Vec<u8>) {
        let _ = self.create_dir_all_durable(&parent(path));
        let mut st = self.lock();
        let ino = match st.live_names.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = st.next_inode;
                st.next_inode += 1;
                st.live_names.insert(path.to_path_buf(), ino);
                st.durable_names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        st.inodes.insert(
            ino,
            Inode {
                live: bytes.clone(),
                durable: bytes,
                reserved_end: 0,
            },
        );
    }

    /// Names of the files that exist now, in order.
    pub fn file_names(&self) -> Vec<PathBuf> {
        self.lock().live_names.keys().cloned().collect()
    }

    /// The file system as it would be found after a power loss now.
    pub fn crash_image(&self, mode: CrashMode, seed: u64) -> SimFs {
        let st = self.lock();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = State {
            next_inode: st.next_inode,
            ..State::default()
        };
        for dir in &st.durable_dirs {
            if st.durably_reachable(dir) {
                out.live_dirs.insert(dir.clone());
                out.durable_dirs.insert(dir.clone());
                out.known_dirs.insert(dir.clone());
            }
        }
        for (path, ino) in &st.durable_names {
            if !st.durably_reachable(path) {
                continue;
            }
            let Some(inode) = st.inodes.get(ino) else {
                continue;
            };
            let mut bytes = inode.durable.clone();
            let appended_only = inode.live.len() > bytes.len()
                && inode.live.get(..bytes.len()) == Some(bytes.as_slice());
            if appended_only && mode != CrashMode::DropUnsynced {
                let tail = inode.live.get(bytes.len()..).unwrap_or_default();
                let keep = rng.gen_range(0..=tail.len());
                bytes.extend_from_slice(tail.get(..keep).unwrap_or_default());
                if mode == CrashMode::RandomPrefixThenGarbage && keep < tail.len() {
                    let garbage = rng.gen_range(1..=(tail.len() - keep).min(4096));
                    if rng.gen_bool(0.5) {
                        bytes.resize(bytes.len() + garbage, 0);
                    } else {
                        bytes.extend((0..garbage).map(|_| rng.r#gen::<u8>()));
                    }
                }
            } else if mode != CrashMode::DropUnsynced
                && inode.live.len() < bytes.len()
                && rng.gen_bool(0.5)
            {
                // An unsynced truncation may or may not have reached the disk.
                bytes.truncate(inode.live.len());
            }
            out.inodes.insert(
                *ino,
                Inode {
                    live: bytes.clone(),
                    durable: bytes,
                    // Reserved blocks outlive a crash, as a journaled `fallocate` does.
                    reserved_end: inode.reserved_end,
                },
            );
            out.live_names.insert(path.clone(), *ino);
            out.durable_names.insert(path.clone(), *ino);
        }
        SimFs {
            state: Arc::new(Mutex::new(out)),
            gate: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: u64,
    writable: bool,
}

impl FileHandle for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        st.alive()?;
        let inode = st.inode(self.ino)?;
        let start = usize::try_from(position).map_err(io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| inode.live.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        st.bytes_read += buf.len() as u64;
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        // The gate's own flag first: the scope check walks every name.
        let closed = self.fs.gate.lock().closed;
        if closed && self.fs.lock().in_fault_scope(self.ino) {
            self.fs.gate.pass(false);
        }
        let mut st = self.fs.lock();
        st.tick()?;
        let fault = st
            .faults
            .write_error
            .filter(|_| st.in_fault_scope(self.ino));
        let inode = st.inode(self.ino)?;
        let (n, result) = match fault {
            Some((kind, true)) => (buf.len() / 2, Err(io::Error::from(kind))),
            Some((kind, false)) => (0, Err(io::Error::from(kind))),
            None => (buf.len(), Ok(())),
        };
        let start = usize::try_from(position).map_err(io::Error::other)?;
        let end = start + n;
        if inode.live.len() < end {
            inode.live.resize(end, 0);
        }
        if let (Some(dst), Some(src)) = (inode.live.get_mut(start..end), buf.get(..n)) {
            dst.copy_from_slice(src);
        }
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let closed = self.fs.gate.lock().syncs_closed;
        if closed && self.fs.lock().in_fault_scope(self.ino) {
            self.fs.gate.pass(true);
        }
        let mut st = self.fs.lock();
        st.tick()?;
        st.sync_data_calls += 1;
        let in_scope = st.in_fault_scope(self.ino);
        if let Some((after, kind)) = st.faults.sync_error_after.as_mut().filter(|_| in_scope) {
            if *after == 0 {
                return Err(io::Error::from(*kind));
            }
            *after -= 1;
        }
        let inode = st.inode(self.ino)?;
        inode.durable = inode.live.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut st = self.fs.lock();
        st.alive()?;
        Ok(st.inode(self.ino)?.live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        st.tick()?;
        let inode = st.inode(self.ino)?;
        // A truncation gives back the blocks reserved past the new end, as ext4, XFS and tmpfs
        // do, even to the same length.
        if len <= inode.live.len() as u64 {
            inode.reserved_end = inode.reserved_end.min(len);
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        inode.live.resize(len, 0);
        Ok(())
    }

    fn preallocate(&self, position: u64, len: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        // Reserving blocks changes no byte, so it is not a step a crash can fall between.
        st.alive()?;
        if let Some(kind) = st.faults.preallocate_error {
            return Err(io::Error::from(kind));
        }
        let inode = st.inode(self.ino)?;
        inode.reserved_end = inode.reserved_end.max(position.saturating_add(len));
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !st.live_dirs.contains(*a))
            .map(Path::to_path_buf)
            .collect();
        if missing.is_empty() {
            return st.alive();
        }
        st.tick()?;
        for d in missing.into_iter().rev() {
            let is_root = d.parent().is_none_or(|p| !st.live_dirs.contains(p));
            if is_root {
                st.durable_dirs.insert(d.clone());
            }
            st.known_dirs.insert(d.clone());
            st.live_dirs.insert(d);
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.tick()?;
        if !st.live_dirs.contains(dir) {
            return Err(not_found(dir));
        }
        st.live_names.retain(|p, _| !p.starts_with(dir));
        st.live_dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        st.alive()?;
        Ok(st
            .live_dirs
            .iter()
            .filter(|d| d.parent() == Some(dir))
            .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        st.alive()?;
        if !st.live_dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .live_names
            .keys()
            .filter(|p| parent(p) == dir)
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut st = self.lock();
        let ino = match mode {
            OpenMode::CreateNew => {
                st.tick()?;
                if let Some(kind) = st.faults.create_error {
                    return Err(io::Error::from(kind));
                }
                if st.live_names.contains_key(path) {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                if !st.live_dirs.contains(&parent(path)) {
                    return Err(not_found(&parent(path)));
                }
                let ino = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(ino, Inode::default());
                st.live_names.insert(path.to_path_buf(), ino);
                ino
            }
            OpenMode::ReadWrite | OpenMode::Read => {
                st.alive()?;
                *st.live_names.get(path).ok_or_else(|| not_found(path))?
            }
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
            writable: mode != OpenMode::Read,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.tick()?;
        st.live_names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.tick()?;
        let ino = st.live_names.remove(from).ok_or_else(|| not_found(from))?;
        st.live_names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.tick()?;
        st.sync_dir_calls += 1;
        let st = &mut *st;
        st.durable_names.retain(|p, _| parent(p) != dir);
        for (p, ino) in &st.live_names {
            if parent(p) == dir {
                st.durable_names.insert(p.clone(), *ino);
            }
        }
        st.durable_dirs.retain(|d| d.parent() != Some(dir));
        for d in &st.live_dirs {
            if d.parent() == Some(dir) {
                st.durable_dirs.insert(d.clone());
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.lock();
        st.alive()?;
        Ok(st.live_names.contains_key(path) || st.live_dirs.contains(path))
    }

    fn map_readonly(&self, path: &Path) -> io::Result<MappedBytes> {
        let mut st = self.lock();
        st.alive()?;
        let ino = *st.live_names.get(path).ok_or_else(|| not_found(path))?;
        let bytes = st
            .inodes
            .get(&ino)
            .map(|i| i.live.clone())
            .unwrap_or_default();
        st.bytes_read += bytes.len() as u64;
        Ok(Arc::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_names_vanish_at_a_crash() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all_durable(dir).unwrap();
        let a = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        // The name was never made durable: the file is gone after a crash.
        assert!(
            fs.crash_image(CrashMode::RandomPrefix, 1)
                .file_names()
                .is_empty()
        );
        fs.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let after = fs.crash_image(CrashMode::DropUnsynced, 1);
        assert_eq!(after.contents(&dir.join("a")).unwrap(), b"hello");
        for seed in 0..20 {
            let img = fs.crash_image(CrashMode::RandomPrefix, seed);
            let c = img.contents(&dir.join("a")).unwrap();
            assert!(b"hello world".starts_with(&c) && c.len() >= 5);
        }
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let fs = SimFs::new();
        fs.create_dir_all_durable(Path::new("/root")).unwrap();
        fs.create_dir_all(Path::new("/root/a/b")).unwrap();
        let f = fs
            .open(Path::new("/root/a/b/f"), OpenMode::CreateNew)
            .unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/root/a/b")).unwrap();
        fs.sync_dir(Path::new("/root/a")).unwrap();
        // `/root/a` itself was never synced into `/root`: everything below it is lost.
        assert!(
            fs.crash_image(CrashMode::DropUnsynced, 0)
                .file_names()
                .is_empty()
        );
        fs.sync_dir(Path::new("/root")).unwrap();
        let img = fs.crash_image(CrashMode::DropUnsynced, 0);
        assert_eq!(img.contents(Path::new("/root/a/b/f")).unwrap(), b"x");
        assert_eq!(
            img.list_subdirs(Path::new("/root")).unwrap(),
            vec!["a".to_string()]
        );
        // A removal that was not synced is undone by a crash.
        fs.remove_dir_all(Path::new("/root/a")).unwrap();
        assert!(
            fs.crash_image(CrashMode::DropUnsynced, 0)
                .contents(Path::new("/root/a/b/f"))
                .is_some()
        );
        fs.sync_dir(Path::new("/root")).unwrap();
        assert!(
            fs.crash_image(CrashMode::DropUnsynced, 0)
                .file_names()
                .is_empty()
        );
    }

    #[test]
    fn crash_after_ops_fails_everything_after() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/")).unwrap();
        let f = fs.open(Path::new("/x"), OpenMode::CreateNew).unwrap();
        fs.crash_after_ops(1);
        f.write_all_at(b"a", 0).unwrap();
        assert!(f.write_all_at(b"b", 1).is_err());
        assert!(f.sync_data().is_err());
        assert!(fs.has_crashed());
    }

    #[test]
    fn injected_errors() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/")).unwrap();
        let f = fs.open(Path::new("/x"), OpenMode::CreateNew).unwrap();
        fs.fail_writes(io::ErrorKind::StorageFull, true);
        let e = f.write_all_at(b"abcd", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.len().unwrap(), 2, "a short write leaves a prefix");
        fs.clear_write_error();
        fs.fail_sync_after(1, io::ErrorKind::Other);
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        assert_eq!(fs.sync_data_calls(), 2);
    }
}
