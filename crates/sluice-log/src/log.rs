//! The log of one partition: append, read, seek by time, roll, sync, retention, open and close.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::error::{Error, IoContext, Result};
use crate::format::batch::{PreparedBatch, StoredRecord, for_each_record};
use crate::format::marker::{CleanMarker, RecoveryPoint, SYNCED_MAGIC};
use crate::format::{
    CLEAN_MARKER_NAME, CorruptionKind, FileKind, RECOVERY_POINT_NAME, SYNCED_POINT_NAME,
    TEMP_SUFFIX,
};
use crate::io::{FileSystem, OpenMode, StdFs};
use crate::options::{FsyncPolicy, LogOptions, ReadLimits, RetentionPolicy};
use crate::scan::{BatchScanner, READ_CHUNK_BYTES};
use crate::segment::{
    ActiveSegment, SealedSegment, Unflushed, file_path, write_indexes, write_indexes_unsynced,
};

/// A record to append: a partition key and a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The partition key (at most 65,535 bytes in the log; the broker limits it further).
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

impl Record {
    /// A record from anything that converts into [`Bytes`].
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Where [`Log::write`] put a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Offset of the first record.
    pub first_offset: u64,
    /// One past the offset of the last record.
    pub end_offset: u64,
}

/// What [`Log::enforce_retention`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of segment data deleted.
    pub bytes_deleted: u64,
    /// The first offset still held afterwards.
    pub start_offset: u64,
}

/// Number of fsync-latency buckets in [`LogStats`]: up to 2^31 µs, about 36 minutes.
pub const LATENCY_BUCKETS: usize = 32;

/// The bucket of a latency in microseconds: the position of its highest set bit.
fn latency_bucket(us: u64) -> usize {
    (63 - us.max(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
}

/// Counters of a log since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// `append` calls that wrote a batch.
    pub appends: u64,
    /// Records appended.
    pub records_appended: u64,
    /// Bytes appended to segment files (batches with their headers), what reached the disk.
    pub bytes_appended: u64,
    /// `fdatasync` calls on segment data and, for segments sealed without one, their index
    /// files (group commits, rolls, background flushes and explicit syncs).
    pub fsyncs: u64,
    /// How long those took: bucket `i` counts fsyncs of `[2^i, 2^(i+1))` microseconds (bucket 0
    /// also holds those under a microsecond, the last everything longer).
    pub fsync_latency_buckets: [u64; LATENCY_BUCKETS],
    /// Segments rolled.
    pub rolls: u64,
}

#[derive(Debug)]
struct State {
    sealed: Vec<Arc<SealedSegment>>,
    active: ActiveSegment,
    /// Newest timestamp in the log; new records are never stamped earlier.
    last_timestamp_ms: u64,
}

impl State {
    fn start_offset(&self) -> u64 {
        self.sealed
            .first()
            .map_or(self.active.base_offset, |s| s.base_offset)
    }
}

/// How many fdatasyncs one log runs at once. With one, appends that land while an fsync runs
/// wait for it to finish before theirs can start, so the disk idles while their fsync is set up
/// and the next writes arrive; a second fsync, started as soon as there is something new to
/// sync, overlaps the two. Each slot fsyncs through its own descriptor (see
/// `ActiveSegment::spare`).
const SYNC_SLOTS: usize = 2;

#[derive(Debug, Default)]
struct SyncState {
    /// Which slots have an fdatasync running, and the base offset of the segment each syncs:
    /// slot 0 uses that segment's `file`, slot 1 its `spare`.
    busy: [Option<u64>; SYNC_SLOTS],
    /// The end offset the fsyncs in flight will make durable when they return.
    covering: u64,
}

#[derive(Debug, Default)]
struct FlusherSignal {
    stop: bool,
    /// A roll left a sealed segment to flush.
    rolled: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    options: LogOptions,
    state: Mutex<State>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Every offset below this is on disk (fdatasync returned).
    durable_end: AtomicU64,
    /// The first failure that made the log refuse writes.
    poison: Mutex<Option<String>>,
    appends: AtomicU64,
    records_appended: AtomicU64,
    bytes_appended: AtomicU64,
    fsyncs: AtomicU64,
    /// fsync latencies in power-of-two buckets of microseconds (see [`LogStats`]).
    fsync_latency: [AtomicU64; LATENCY_BUCKETS],
    rolls: AtomicU64,
    /// End offset of the newest sealed segment known to be on disk. Under the policies other
    /// than [`FsyncPolicy::Always`] a roll does not fsync the segment it seals (an fsync of up
    /// to a whole segment under the partition's lock would stall every producer of the
    /// partition); the background flusher does, and sealed segments past this wait for it.
    flushed_end: AtomicU64,
    /// Base offset of the newest segment whose directory entry is known to be on disk. Under
    /// the policies other than [`FsyncPolicy::Always`] a roll does not fsync the directory
    /// either (that fsync can queue behind other partitions' flushes); the first fsync that
    /// is to call records of the new segment durable does it first.
    dir_synced_base: AtomicU64,
    /// Serializes flushes of sealed segments (the background flusher, `sync`, `close`).
    flush_lock: Mutex<()>,
    /// The recovery point on disk, when the file exists: no sealed segment below it waits for a
    /// flush. Written at open under the policies that roll without an fsync, and moved forward
    /// as the flusher catches up.
    recovery_point: Mutex<Option<u64>>,
    /// Wakes the background flusher: to stop, or for a segment rolled without an fsync.
    signal: (Mutex<FlusherSignal>, Condvar),
    /// The synced-point hint file and the end offset it last recorded.
    synced_hint: Mutex<(Option<Arc<dyn crate::io::FileHandle>>, u64)>,
}

/// The durable log of one partition. All methods take `&self`; share it between threads with
/// an `Arc`.
///
/// ```
/// # fn main() -> Result<(), sluice_log::Error> {
/// use sluice_log::{Log, LogOptions, ReadLimits, Record};
/// let dir = tempfile::tempdir().unwrap();
/// let log = Log::open(dir.path(), LogOptions::default())?;
/// let first = log.append(&[Record::new("user-1", "hello"), Record::new("user-2", "world")])?;
/// let records = log.read_from(first, ReadLimits::default())?;
/// assert_eq!(records[1].value.as_ref(), b"world");
/// log.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    /// The background flusher: started at open under [`FsyncPolicy::Interval`], at the first
    /// roll under [`FsyncPolicy::Never`], never under [`FsyncPolicy::Always`].
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self> {
        Self::open_with_fs(Arc::new(StdFs), dir, options)
    }

    /// Opens the log through a given file system (the simulated one in tests).
    ///
    /// After a clean close, open trusts the clean-shutdown marker and the index files and reads
    /// no segment data. After a crash it scans the active segment and, if the recovery point
    /// names one, every sealed segment from there on (segments rolled without an fsync under
    /// [`FsyncPolicy::Interval`] or [`FsyncPolicy::Never`]); the others were fsynced before the
    /// recovery point passed them. Each sealed segment's index is checked against the last
    /// batch it names and rebuilt when that check fails.
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<Self> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (state, end, kept_point) = load(&*fs, &dir, &options)?;
        // `load` leaves every segment on disk, so no sealed segment waits for the flusher.
        let flushed_end = state.active.base_offset;
        let shared = Arc::new(Shared {
            dir,
            fs,
            options,
            state: Mutex::new(state),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            durable_end: AtomicU64::new(end),
            poison: Mutex::new(None),
            appends: AtomicU64::new(0),
            records_appended: AtomicU64::new(0),
            bytes_appended: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_latency: std::array::from_fn(|_| AtomicU64::new(0)),
            rolls: AtomicU64::new(0),
            flushed_end: AtomicU64::new(flushed_end),
            dir_synced_base: AtomicU64::new(flushed_end),
            flush_lock: Mutex::new(()),
            recovery_point: Mutex::new(None),
            signal: (Mutex::new(FlusherSignal::default()), Condvar::new()),
            synced_hint: Mutex::new((None, 0)),
        });
        if shared.options.fsync != FsyncPolicy::Always {
            // Rolls will leave sealed segments to the background flusher: the recovery point
            // names the first that may wait for it. Written here, so that no roll waits for a
            // file's fsync (which on some file systems queues behind other files' data). One
            // that already names the active segment (as a clean close leaves it) is kept,
            // sparing a write per partition.
            let point = match kept_point {
                Some(point) => point,
                None => {
                    shared.write_recovery_point(flushed_end)?;
                    flushed_end
                }
            };
            *shared
                .recovery_point
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(point);
        }
        let flusher = match shared.options.fsync {
            FsyncPolicy::Interval(every) => {
                Some(spawn_flusher(Arc::downgrade(&shared), Some(every))?)
            }
            _ => None,
        };
        Ok(Self {
            shared,
            flusher: Mutex::new(flusher),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.shared.options
    }

    /// Appends records as one batch, stamped with the current time (never earlier than the
    /// newest record already in the log). Returns the offset of the first record; the others
    /// follow densely. Under [`FsyncPolicy::Always`] this returns only after an `fdatasync`
    /// covering the records has returned; concurrent callers share that `fdatasync`.
    pub fn append(&self, records: &[Record]) -> Result<u64> {
        let written = self.write(records)?;
        self.acknowledge(written)?;
        Ok(written.first_offset)
    }

    /// The first half of [`Log::append`]: writes the records as one batch and returns where they
    /// went, without waiting for the fsync policy. Callers that must keep several appends in
    /// order but want their fsync waits to overlap (a server pipelining one client's requests)
    /// write in order and acknowledge afterwards. Records are not acknowledged, and under
    /// [`FsyncPolicy::Always`] not readable, until [`Log::acknowledge`] has returned for them
    /// (or another append's acknowledgement covered them).
    pub fn write(&self, records: &[Record]) -> Result<Written> {
        let mut batch =
            PreparedBatch::new(records.iter().map(|r| (r.key.as_ref(), r.value.as_ref())))
                .map_err(|e| Error::InvalidAppend(format!("{e:?}")))?;
        self.write_prepared(&mut batch)
    }

    /// [`Log::write`] for a batch that is already encoded, such as one a producer framed itself
    /// ([`PreparedBatch::framed`]): the log fills in its header and writes its buffer as it is.
    pub fn write_prepared<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        batch: &mut PreparedBatch<B>,
    ) -> Result<Written> {
        let (written, failed) = self.write_prepared_many(&mut [batch]);
        match (written.first(), failed) {
            (Some(w), _) => Ok(*w),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::InvalidAppend("no batch was written".into())),
        }
    }

    /// [`Log::write_prepared`] for several batches, in order, with one vectored write for as
    /// many of them as fit in the active segment: one system call and one taking of the log's
    /// lock instead of one each, and larger writes, which the page cache takes for less CPU
    /// per byte. Returns where each written batch went, and the error that stopped the rest: the
    /// batches written are a prefix, and those after it were not written (a roll between two
    /// of them can succeed before a later write fails).
    pub fn write_prepared_many<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        batches: &mut [&mut PreparedBatch<B>],
    ) -> (Vec<Written>, Option<Error>) {
        let shared = &*self.shared;
        let mut written = Vec::with_capacity(batches.len());
        let mut rolled = false;
        let failed = shared
            .lock_state()
            .and_then(|mut st| {
                shared.check_writable()?;
                let now = shared.options.clock.now_ms();
                let mut rest = &mut *batches;
                while let Some(first) = rest.first() {
                    if shared.should_roll(&st.active, first.len() as u64, first.record_count(), now)
                    {
                        rolled |= shared.roll(&mut st)?;
                    }
                    let n = shared.run_that_fits(&st.active, rest);
                    let (run, tail) = std::mem::take(&mut rest).split_at_mut(n);
                    shared.write_run(&mut st, run, now, &mut written)?;
                    rest = tail;
                }
                Ok(())
            })
            .err();
        if rolled {
            self.wake_flusher();
        }
        if let Some(done) = batches.get(..written.len()) {
            shared
                .appends
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            for b in done {
                shared
                    .records_appended
                    .fetch_add(u64::from(b.record_count()), Ordering::Relaxed);
                shared
                    .bytes_appended
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }
        (written, failed)
    }

    /// The second half of [`Log::append`]: returns once `written` is acknowledged under the fsync
    /// policy. Under [`FsyncPolicy::Always`] that is after an `fdatasync` covering it, shared
    /// with every other waiter (group commit); under the other policies, at once.
    pub fn acknowledge(&self, written: Written) -> Result<()> {
        if self.shared.options.fsync == FsyncPolicy::Always {
            self.shared.wait_durable(written.end_offset)?;
        }
        Ok(())
    }

    /// Whether `written` is already acknowledged, so [`Log::acknowledge`] would return at once:
    /// always under the policies other than [`FsyncPolicy::Always`], and under it once an fsync
    /// has covered the records. Lets a caller skip handing the wait to another thread.
    pub fn is_acknowledged(&self, written: Written) -> bool {
        self.shared.options.fsync != FsyncPolicy::Always
            || self.shared.durable_end.load(Ordering::Acquire) >= written.end_offset
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        let end = self.shared.lock_state()?.active.next_offset;
        self.shared.wait_durable(end)
    }

    /// First offset still held (the trim horizon).
    pub fn start_offset(&self) -> u64 {
        self.shared.lock_state().map_or(0, |st| st.start_offset())
    }

    /// Next offset to be assigned.
    pub fn end_offset(&self) -> u64 {
        self.shared
            .lock_state()
            .map_or(0, |st| st.active.next_offset)
    }

    /// Offsets below this are readable: under [`FsyncPolicy::Always`] only durable records are
    /// served, so a reader never sees a record that a power loss could take back.
    pub fn readable_end(&self) -> u64 {
        self.shared
            .lock_state()
            .map_or(0, |st| self.shared.readable_end(&st))
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        let s = &*self.shared;
        LogStats {
            appends: s.appends.load(Ordering::Relaxed),
            records_appended: s.records_appended.load(Ordering::Relaxed),
            bytes_appended: s.bytes_appended.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            fsync_latency_buckets: std::array::from_fn(|i| {
                s.fsync_latency
                    .get(i)
                    .map_or(0, |b| b.load(Ordering::Relaxed))
            }),
            rolls: s.rolls.load(Ordering::Relaxed),
        }
    }

    /// Number of segments (sealed and active).
    pub fn segment_count(&self) -> usize {
        self.shared.lock_state().map_or(0, |st| st.sealed.len() + 1)
    }

    /// Reads records from `offset` on, up to the limits, stopping at the readable end. Reading
    /// at the end returns nothing; below the start or past the end is `OffsetOutOfRange`.
    /// Damaged data is a `Corruption` error, never wrong bytes.
    pub fn read_from(&self, offset: u64, limits: ReadLimits) -> Result<Vec<StoredRecord>> {
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut bytes = 0usize;
        let mut next = offset;
        while out.len() < limits.records_max && (out.is_empty() || bytes < limits.bytes_max) {
            let cursor = match self.shared.locate(next) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                // Retention may remove the segment between two rounds; keep what we have.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            let before = out.len();
            let result = cursor.read(next, &limits, &mut out, &mut bytes);
            if let Err(e) = result {
                if out.is_empty() {
                    return Err(e);
                }
                break;
            }
            match out.last() {
                Some(r) if out.len() > before => next = r.offset.saturating_add(1),
                _ => break,
            }
            if next >= cursor.log_visible_end {
                break;
            }
        }
        Ok(out)
    }

    /// The offset of the first record whose timestamp is at or after `timestamp_ms`, or `None`
    /// when every readable record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: u64) -> Result<Option<u64>> {
        let shared = &*self.shared;
        let (cursor, rel_start) = {
            let st = shared.lock_state()?;
            let visible_end = shared.readable_end(&st);
            let i = st
                .sealed
                .partition_point(|s| s.max_timestamp_ms < timestamp_ms);
            if let Some(s) = st.sealed.get(i) {
                let rel = s.last_before(timestamp_ms);
                (Cursor::sealed(s, rel, visible_end), rel)
            } else if !st.active.is_empty() && st.active.max_timestamp_ms >= timestamp_ms {
                let rel = st.active.index.last_before(timestamp_ms);
                (Cursor::active(&st.active, rel, visible_end), rel)
            } else {
                return Ok(None);
            }
        };
        let from = cursor.base_offset.saturating_add(u64::from(rel_start));
        cursor.find_timestamp(from, timestamp_ms)
    }

    /// Removes whole sealed segments that the policy no longer keeps: those whose newest record
    /// is older than `max_age` at `now_ms`, then the oldest while the log exceeds `max_bytes`.
    /// A non-empty active segment that is older than the segment age limit, or entirely
    /// expired, is rolled first so that its data can go too. The start offset moves forward.
    pub fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<RetentionOutcome> {
        let shared = &*self.shared;
        let active_base = {
            let mut st = shared.lock_state()?;
            let a = &st.active;
            let aged = a.first_timestamp_ms.is_some_and(|t| {
                now_ms.saturating_sub(t) >= duration_ms(shared.options.segment_age_max)
            });
            let expired = policy
                .max_age
                .is_some_and(|age| now_ms.saturating_sub(a.max_timestamp_ms) > duration_ms(age));
            if !a.is_empty() && (aged || expired) {
                shared.check_writable()?;
                shared.roll(&mut st)?;
            }
            st.active.base_offset
        };
        // A segment is removed only once it is on disk: were an unflushed one unlinked, a power
        // loss before the unlink reached the disk would bring it back torn, past the recovery
        // point, and recovery would cut the log there, taking newer synced records with it.
        // So the segments waiting for the background flusher are flushed here first.
        shared.flush_sealed(active_base)?;
        let (removed, start_offset) = {
            let mut st = shared.lock_state()?;
            let mut n = 0;
            if let Some(age) = policy.max_age {
                let age = duration_ms(age);
                n = st
                    .sealed
                    .partition_point(|s| now_ms.saturating_sub(s.max_timestamp_ms) > age);
            }
            if let Some(cap) = policy.max_bytes {
                let mut total: u64 = st.sealed.iter().map(|s| s.len).sum::<u64>() + st.active.len;
                total -= st.sealed.iter().take(n).map(|s| s.len).sum::<u64>();
                while n < st.sealed.len() && total > cap {
                    total -= st.sealed.get(n).map_or(0, |s| s.len);
                    n += 1;
                }
            }
            // Segments rolled since the flush above wait for the next pass.
            let flushed = shared.flushed_end.load(Ordering::Acquire);
            n = n.min(st.sealed.partition_point(|s| s.end_offset <= flushed));
            let removed: Vec<_> = st.sealed.drain(..n).collect();
            (removed, st.start_offset())
        };
        // Unlink outside the lock. Readers holding a removed segment keep a valid file handle
        // and map: unlinking never truncates, so no live map can fault.
        let mut outcome = RetentionOutcome {
            start_offset,
            ..RetentionOutcome::default()
        };
        for seg in &removed {
            for path in seg.paths(&shared.dir) {
                match shared.fs.remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(path, e)),
                }
            }
            // One directory fsync per segment, oldest first: after a crash the segments still
            // present are always a contiguous run, never a newer one with an older gap below.
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += seg.len;
        }
        if !removed.is_empty() {
            info!(
                dir = %shared.dir.display(),
                segments = outcome.segments_deleted,
                start_offset,
                "retention removed segments"
            );
        }
        Ok(outcome)
    }

    /// Syncs everything, writes the index of the active segment and the clean-shutdown marker,
    /// so that the next open reads no segment data.
    pub fn close(mut self) -> Result<()> {
        self.stop_flusher();
        let shared = &*self.shared;
        // The marker vouches for every segment: sealed ones still waiting for the background
        // flush are flushed first.
        let active_base = shared.lock_state()?.active.base_offset;
        shared.flush_sealed(active_base)?;
        let mut st = shared.lock_state()?;
        shared.check_writable()?;
        st.active.file.sync_data().at(&st.active.path)?;
        // A closed log holds no disk beyond its data.
        release_reserved(&mut st.active);
        let a = &st.active;
        let mut index = a.index.clone();
        index.finish();
        write_indexes(&*shared.fs, &shared.dir, a.base_offset, &index)?;
        let marker = CleanMarker {
            end_offset: a.next_offset,
            active_base_offset: a.base_offset,
            active_len: a.len,
        };
        if shared.options.fsync != FsyncPolicy::Always {
            // Everything is on disk: the next open's active segment starts at the end, and a
            // point naming it spares that open a write.
            shared.write_recovery_point(a.next_offset)?;
        }
        let path = shared.dir.join(CLEAN_MARKER_NAME);
        shared.fs.write_atomic(&path, &marker.encode()).at(&path)?;
        Ok(())
    }

    fn stop_flusher(&mut self) {
        let flusher = self.flusher.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = flusher.take() {
            let (lock, cv) = &self.shared.signal;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_all();
            // A panicking flusher has already logged; nothing more to do with its result.
            let _ = handle.join();
        }
    }

    /// Hands a segment just rolled without an fsync to the background flusher, starting the
    /// flusher if this log has none yet.
    fn wake_flusher(&self) {
        let (lock, cv) = &self.shared.signal;
        lock.lock().unwrap_or_else(|e| e.into_inner()).rolled = true;
        cv.notify_all();
        let mut flusher = self.flusher.lock().unwrap_or_else(|e| e.into_inner());
        // A flusher that stopped (after a failed fsync poisoned the log, or a panic) is
        // replaced; on a poisoned log the new one stops at its first failure again.
        if flusher.as_ref().is_none_or(JoinHandle::is_finished) {
            let interval = match self.shared.options.fsync {
                FsyncPolicy::Interval(every) => Some(every),
                _ => None,
            };
            match spawn_flusher(Arc::downgrade(&self.shared), interval) {
                Ok(handle) => *flusher = Some(handle),
                // The segment stays unflushed until `sync` or `close`; recovery after a power
                // loss checks it in full either way.
                Err(e) => warn!(error = %e, "cannot start the background flusher"),
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Dropping without close is like a crash for the files: the next open recovers the
        // active segment. Only the background thread needs stopping.
        self.stop_flusher();
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How soon the background flusher tries again after a flush failed without poisoning the log.
const FLUSH_RETRY: Duration = Duration::from_secs(1);

/// The background flusher of a log: flushes segments rolled without an fsync as soon as they
/// are sealed and, given an interval (under [`FsyncPolicy::Interval`]), syncs the whole log at
/// that interval.
fn spawn_flusher(shared: Weak<Shared>, interval: Option<Duration>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-log-flush".into())
        .spawn(move || {
            let mut retry = false;
            loop {
                let Some(s) = shared.upgrade() else { return };
                let rolled = {
                    let (lock, cv) = &s.signal;
                    let signal = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let idle = |g: &mut FlusherSignal| !g.stop && !g.rolled;
                    let wait = match (interval, retry) {
                        (Some(every), true) => Some(every.min(FLUSH_RETRY)),
                        (Some(every), false) => Some(every),
                        (None, true) => Some(FLUSH_RETRY),
                        (None, false) => None,
                    };
                    let mut signal = match wait {
                        Some(every) => {
                            cv.wait_timeout_while(signal, every, idle)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                        None => cv
                            .wait_while(signal, idle)
                            .unwrap_or_else(|e| e.into_inner()),
                    };
                    if signal.stop {
                        return;
                    }
                    std::mem::take(&mut signal.rolled)
                };
                let (active_base, end) = match s.lock_state() {
                    Ok(st) => (st.active.base_offset, st.active.next_offset),
                    Err(_) => return,
                };
                let result = if rolled || retry {
                    s.flush_sealed(active_base)
                } else {
                    s.wait_durable(end)
                };
                retry = false;
                if let Err(e) = result {
                    if s.check_writable().is_err() {
                        warn!(error = %e, "background flush failed; the log refuses writes");
                        return;
                    }
                    // Not a failed fsync (say, no file descriptor to spare): nothing is lost, and
                    // the flush is tried again shortly.
                    warn!(error = %e, "background flush failed; retrying");
                    retry = true;
                }
            }
        })
        .map_err(|e| Error::io(PathBuf::from("<flush thread>"), e))
}

impl Shared {
    fn lock_state(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::Poisoned {
            path: self.dir.clone(),
            reason: "a thread panicked while changing the log".into(),
        })
    }

    fn check_writable(&self) -> Result<()> {
        match &*self.poison.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(Error::Poisoned {
                path: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn set_poison(&self, reason: String) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, "log poisoned: refusing writes until reopened");
            *p = Some(reason);
        }
    }

    fn readable_end(&self, st: &State) -> u64 {
        let end = st.active.next_offset;
        match self.options.fsync {
            FsyncPolicy::Always => self.durable_end.load(Ordering::Acquire).min(end),
            _ => end,
        }
    }

    fn should_roll(&self, a: &ActiveSegment, batch_len: u64, count: u32, now_ms: u64) -> bool {
        if a.is_empty() {
            return false;
        }
        a.len + batch_len > self.options.segment_bytes_max
            || a.first_timestamp_ms.is_some_and(|t| {
                now_ms.saturating_sub(t) >= duration_ms(self.options.segment_age_max)
            })
            || a.next_offset - a.base_offset + u64::from(count) > u64::from(u32::MAX)
    }

    /// Seals the active segment and starts a new one. Under [`FsyncPolicy::Always`] the sealed
    /// data and indexes and the new segment's directory entry are fsynced here (group commit
    /// has synced nearly all the data already). Under the other policies nothing is: the
    /// background flusher fsyncs the sealed segment, and the recovery point, written at open and
    /// moved only past flushed segments, is at or below it, so after a power loss recovery
    /// checks it in full. Returns whether the segment was left to the flusher. A failed fsync
    /// poisons the log; a failure to create the new segment leaves the old one active.
    fn roll(&self, st: &mut State) -> Result<bool> {
        let deferred = self.options.fsync != FsyncPolicy::Always;
        let a = &st.active;
        if !deferred {
            // No group-commit fsync may run on the segment's descriptors beside this one (see
            // `ActiveSegment::spare`). Fsyncs in flight already hold what they sync, so they
            // finish without the state lock held here, and no new one starts without it.
            let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            while s.busy.iter().any(Option::is_some) {
                s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            // A slot's fsync may have failed while we waited. Its error was reported on this
            // same descriptor and will not be reported again, so a new fsync here could succeed
            // over the lost pages: the poison, set before the slot was freed, must stop us.
            self.check_writable()?;
            self.fsync_data(&*a.file, &a.path)?;
        }
        // The segment takes no more appends.
        release_reserved(&mut st.active);
        let a = &st.active;
        let mut index = a.index.clone();
        index.finish();
        if deferred {
            write_indexes_unsynced(&*self.fs, &self.dir, a.base_offset, &index)?;
        } else {
            write_indexes(&*self.fs, &self.dir, a.base_offset, &index)?;
        }
        let sealed = SealedSegment::from_active(&*self.fs, &self.dir, a)?;
        let new_base = a.next_offset;
        let created = ActiveSegment::create(&*self.fs, &self.dir, new_base).and_then(|n| {
            if !deferred {
                self.sync_dir_for(new_base)?;
            }
            Ok(n)
        });
        let next = match created {
            Ok(n) => n,
            Err(e) => {
                let path = self.dir.join(FileKind::Segment.file_name(new_base));
                // Leave no half-made segment behind for the next attempt to trip over.
                let _ = self.fs.remove_file(&path);
                return Err(e);
            }
        };
        let old_end = st.active.next_offset;
        st.sealed.push(Arc::new(sealed));
        st.active = next;
        if !deferred {
            self.flushed_end.fetch_max(old_end, Ordering::AcqRel);
            self.mark_durable(old_end);
        }
        self.rolls.fetch_add(1, Ordering::Relaxed);
        Ok(deferred)
    }

    /// How many of `batches`, at least one, follow each other into the active segment `a`
    /// without a roll between them: the segment stays within its size limit and its offsets
    /// within 32 bits of its base. (A roll for its age is decided once, before the first.)
    fn run_that_fits<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        a: &ActiveSegment,
        batches: &[&mut PreparedBatch<B>],
    ) -> usize {
        let mut len = a.len;
        let mut records = a.next_offset - a.base_offset;
        let mut n = 0;
        for b in batches {
            len = len.saturating_add(b.len() as u64);
            records = records.saturating_add(u64::from(b.record_count()));
            let fits = len <= self.options.segment_bytes_max && records <= u64::from(u32::MAX);
            // The first always goes: the roll before it made room, or it needs a segment of
            // its own.
            if n > 0 && !fits {
                break;
            }
            n += 1;
        }
        n
    }

    /// Writes `run` at the end of the active segment with one vectored write, under the
    /// caller's hold of the state lock, and records where each batch went in `written`.
    fn write_run<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        st: &mut State,
        run: &mut [&mut PreparedBatch<B>],
        now: u64,
        written: &mut Vec<Written>,
    ) -> Result<()> {
        let timestamp = now.max(st.last_timestamp_ms);
        let a = &mut st.active;
        let position = a.len;
        let records: u64 = run.iter().map(|b| u64::from(b.record_count())).sum();
        if a.next_offset.checked_add(records).is_none() {
            return Err(Error::OffsetSpaceExhausted { end: a.next_offset });
        }
        let mut base = a.next_offset;
        let mut headers = Vec::with_capacity(run.len());
        let mut bufs = Vec::with_capacity(run.len());
        for b in run.iter_mut() {
            let (header, bytes) = b.finish(base, timestamp);
            base = header.end_offset();
            headers.push(header);
            bufs.push(bytes);
        }
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.preallocate_ahead(a, position.saturating_add(len));
        if let Err(e) = a.file.write_all_vectored_at(&bufs, position) {
            // Take back whatever part of the run reached the file, so the next batch does not
            // land behind garbage. If even that fails, the file's tail is unknown.
            if let Err(e2) = a.file.set_len(position) {
                self.set_poison(format!("write failed ({e}) and could not be undone ({e2})"));
            }
            // The truncation gave back the blocks reserved past the end too.
            a.preallocated_end = position;
            return Err(Error::io(&a.path, e));
        }
        let mut at = position;
        for (header, bytes) in headers.iter().zip(&bufs) {
            // `should_roll` and `run_that_fits` keep positions and relative offsets within 32
            // bits.
            a.index.on_batch(
                (header.base_offset - a.base_offset) as u32,
                at as u32,
                header,
                self.options.index_interval_bytes,
            );
            at += bytes.len() as u64;
            written.push(Written {
                first_offset: header.base_offset,
                end_offset: header.end_offset(),
            });
        }
        a.len = at;
        a.next_offset = base;
        a.first_timestamp_ms.get_or_insert(timestamp);
        a.max_timestamp_ms = timestamp;
        st.last_timestamp_ms = timestamp;
        Ok(())
    }

    /// Reserves the active segment's blocks ahead of an append that ends at `end`, a whole
    /// [`LogOptions::preallocate_bytes`] step at a time and never past where the segment rolls,
    /// so that most appends write into blocks already allocated. Only a hint: if the file system
    /// refuses (no `fallocate`, or a full disk), the append goes on and reports its own error,
    /// and the next step tries again.
    fn preallocate_ahead(&self, a: &mut ActiveSegment, end: u64) {
        let step = self.options.preallocate_bytes;
        if step == 0 || end <= a.preallocated_end {
            return;
        }
        let from = a.preallocated_end.max(a.len);
        let to = end
            .div_ceil(step)
            .saturating_mul(step)
            .min(self.options.segment_bytes_max.max(end));
        if let Err(e) = a.file.preallocate(from, to - from) {
            debug!(path = %a.path.display(), error = %e, "could not reserve blocks ahead of the appends");
        }
        a.preallocated_end = to;
    }

    /// Makes the directory entries of every segment up to the one at `base` durable, unless an
    /// earlier directory fsync already did. A failure poisons the log, as for data.
    fn sync_dir_for(&self, base: u64) -> Result<()> {
        if self.dir_synced_base.load(Ordering::Acquire) >= base {
            return Ok(());
        }
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            self.set_poison(format!("fsync of {} failed: {e}", self.dir.display()));
            return Err(Error::io(&self.dir, e));
        }
        self.dir_synced_base.fetch_max(base, Ordering::AcqRel);
        Ok(())
    }

    fn write_recovery_point(&self, offset: u64) -> Result<()> {
        let path = self.dir.join(RECOVERY_POINT_NAME);
        self.fs
            .write_atomic(&path, &RecoveryPoint { offset }.encode())
            .at(&path)
    }

    /// Flushes, oldest first, the sealed segments that a roll left unflushed and that end at or
    /// before `upto`, then moves the recovery point past them.
    fn flush_sealed(&self, upto: u64) -> Result<()> {
        if self.flushed_end.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        let _serial = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let flushed = self.flushed_end.load(Ordering::Acquire);
            let next = {
                let st = self.lock_state()?;
                st.sealed
                    .iter()
                    .find(|s| s.end_offset > flushed)
                    .filter(|s| s.end_offset <= upto)
                    .cloned()
            };
            let Some(segment) = next else { break };
            {
                // A group-commit fsync that began while the segment was active may still run
                // on its descriptor; two fsyncs on one descriptor must not overlap (see
                // `ActiveSegment::spare`). No new one can start: the segment is no longer active.
                let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                while s.busy.contains(&Some(segment.base_offset)) {
                    s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                // If that fsync failed, its error will not be reported to us again.
                self.check_writable()?;
            }
            self.fsync_data(&*segment.file, &segment.path)?;
            for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
                let path = file_path(&self.dir, kind, segment.base_offset);
                let file = self.fs.open(&path, OpenMode::Read).at(&path)?;
                self.fsync_data(&*file, &path)?;
            }
            self.flushed_end
                .fetch_max(segment.end_offset, Ordering::AcqRel);
        }
        let flushed = self.flushed_end.load(Ordering::Acquire);
        // The renames of the flushed segments' index files, and their successors' entries;
        // only then are their records durable.
        self.sync_dir_for(flushed)?;
        self.mark_durable(flushed);
        let mut point = self
            .recovery_point
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(offset) = *point
            && offset < flushed
        {
            // A point left behind is still right: every segment it names is whole on disk, and
            // recovery only checks it again. So a failure (a full disk, say) is not a reason to
            // refuse writes; the next flush tries again. Each attempt writes a new temporary
            // file, so a failed fsync of one cannot hide lost pages of another.
            match self.write_recovery_point(flushed) {
                Ok(()) => *point = Some(flushed),
                Err(e) => warn!(error = %e, "cannot move the recovery point forward; will retry"),
            }
        }
        Ok(())
    }

    fn mark_durable(&self, end: u64) {
        let _guard = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        self.durable_end.fetch_max(end, Ordering::AcqRel);
        self.synced.notify_all();
    }

    /// Waits until every offset below `target` is durable (group commit). A waiter whose
    /// records no fsync in flight covers starts one in a free slot, covering everything written
    /// so far; the others wait for the fsync that covers them. With every slot busy, it waits
    /// for one to free up.
    fn wait_durable(&self, target: u64) -> Result<()> {
        loop {
            {
                let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if self.durable_end.load(Ordering::Acquire) >= target {
                        return Ok(());
                    }
                    self.check_writable()?;
                    if s.covering < target && s.busy.iter().any(Option::is_none) {
                        break;
                    }
                    s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
            // The records below the active segment, and the active segment's name, must be on
            // disk before an fsync of the active segment may call anything durable.
            let base = self.lock_state()?.active.base_offset;
            self.flush_sealed(base)?;
            self.sync_dir_for(base)?;
            // What to sync is taken, and the slot claimed, under the state lock: a roll cannot
            // come in between and hand the segment to the flusher (or, under `Always`, fsync it
            // itself) while this fsync is about to start on the same descriptor. A roll holds the
            // state lock while it waits for the slots to be idle, and the flusher waits for any
            // slot still syncing the segment it flushes.
            let (files, path, point, slot) = {
                let st = self.lock_state()?;
                let a = &st.active;
                if a.base_offset != base {
                    // A roll since the flush above: flush what it sealed first.
                    continue;
                }
                let point = CleanMarker {
                    end_offset: a.next_offset,
                    active_base_offset: a.base_offset,
                    active_len: a.len,
                };
                let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                // Another waiter's fsync may have covered us since we looked: then our records
                // are durable, whatever failed after.
                if self.durable_end.load(Ordering::Acquire) >= target {
                    return Ok(());
                }
                // A slot's fsync may have failed since we looked (it poisons the log before it
                // frees the slot): never fsync a descriptor again after an error on it.
                self.check_writable()?;
                // Another waiter may have started an fsync covering us, or taken the last free
                // slot, since we looked.
                let slot = match s.busy.iter().position(Option::is_none) {
                    Some(slot) if s.covering < target => slot,
                    _ => continue,
                };
                if let Some(busy) = s.busy.get_mut(slot) {
                    *busy = Some(a.base_offset);
                }
                s.covering = s.covering.max(point.end_offset);
                (
                    [Arc::clone(&a.file), Arc::clone(&a.spare)],
                    a.path.clone(),
                    point,
                    slot,
                )
            };
            let result = self.fsync_data(&*files[slot], &path);
            if result.is_ok() {
                self.record_synced(point);
            }
            let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            s.busy[slot] = None;
            match result {
                Ok(()) => {
                    self.durable_end
                        .fetch_max(point.end_offset, Ordering::AcqRel);
                    self.synced.notify_all();
                }
                Err(e) => {
                    // The log is poisoned: waiters wake, see it, and fail too.
                    self.synced.notify_all();
                    return Err(e);
                }
            }
        }
    }

    /// Writes the synced-point hint: how far the active segment is known to be on disk. Crash
    /// recovery treats damage below that point as damage to acknowledged data (an error) rather
    /// than as a torn tail (cut off). The hint is never fsynced: written only after the data's
    /// fsync returned, it can be stale or lost after a power loss, which only makes recovery
    /// treat more of the segment as tail, never less. Failing to write it is harmless too.
    fn record_synced(&self, point: CleanMarker) {
        let mut hint = self.synced_hint.lock().unwrap_or_else(|e| e.into_inner());
        if point.end_offset <= hint.1 {
            return;
        }
        if hint.0.is_none() {
            let path = self.dir.join(SYNCED_POINT_NAME);
            let opened = self
                .fs
                .open(&path, OpenMode::ReadWrite)
                .or_else(|_| self.fs.open(&path, OpenMode::CreateNew));
            match opened {
                Ok(f) => hint.0 = Some(f),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the synced-point hint");
                    return;
                }
            }
        }
        if let Some(f) = &hint.0
            && f.write_all_at(&point.encode_as(SYNCED_MAGIC), 0).is_ok()
        {
            hint.1 = point.end_offset;
        }
    }

    /// `fdatasync` of segment data, counted and timed. A failure poisons the log: never retry,
    /// since after a failed fsync the kernel may have dropped the dirty pages, so a later fsync
    /// could succeed without the data ("fsyncgate").
    fn fsync_data(&self, file: &dyn crate::io::FileHandle, path: &Path) -> Result<()> {
        let started = std::time::Instant::now();
        if let Err(e) = file.sync_data() {
            self.set_poison(format!("fsync of {} failed: {e}", path.display()));
            return Err(Error::io(path, e));
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.fsync_latency.get(latency_bucket(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Finds the segment holding `offset` and where to start reading it.
    fn locate(&self, offset: u64) -> Result<Option<Cursor>> {
        let st = self.lock_state()?;
        let start = st.start_offset();
        let end = st.active.next_offset;
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let visible_end = self.readable_end(&st);
        if offset >= visible_end {
            return Ok(None);
        }
        let i = st.sealed.partition_point(|s| s.end_offset <= offset);
        Ok(Some(match st.sealed.get(i) {
            Some(s) => Cursor::sealed(s, relative(offset, s.base_offset), visible_end),
            None => {
                let rel = relative(offset, st.active.base_offset);
                Cursor::active(&st.active, rel, visible_end)
            }
        }))
    }
}

/// A place to read from: a segment's file, the index entry to start at, and how far to go.
struct Cursor {
    file: Arc<dyn crate::io::FileHandle>,
    path: PathBuf,
    base_offset: u64,
    /// Offset of the batch at `position`.
    batch_offset: u64,
    position: u64,
    len: u64,
    /// Where the segment's records must end (the next segment's base offset when sealed).
    end_offset: u64,
    /// Where reading this segment stops: its end or the log's readable end, if lower.
    visible_end: u64,
    /// The log's readable end when the cursor was made.
    log_visible_end: u64,
}

/// Relative offset of `offset` in a segment, saturated: an index floor lookup with a saturated
/// key still returns an entry at or below the target, from which the scan moves forward.
fn relative(offset: u64, base_offset: u64) -> u32 {
    u32::try_from(offset.saturating_sub(base_offset)).unwrap_or(u32::MAX)
}

impl Cursor {
    fn sealed(s: &SealedSegment, rel: u32, visible_end: u64) -> Self {
        let (batch_rel, position) = s.floor(rel);
        Self {
            file: Arc::clone(&s.file),
            path: s.path.clone(),
            base_offset: s.base_offset,
            batch_offset: s.base_offset.saturating_add(u64::from(batch_rel)),
            position,
            len: s.len,
            end_offset: s.end_offset,
            visible_end: visible_end.min(s.end_offset),
            log_visible_end: visible_end,
        }
    }

    fn active(a: &ActiveSegment, rel: u32, visible_end: u64) -> Self {
        let (batch_rel, position) = a.index.floor(rel);
        Self {
            file: Arc::clone(&a.file),
            path: a.path.clone(),
            base_offset: a.base_offset,
            batch_offset: a.base_offset.saturating_add(u64::from(batch_rel)),
            position,
            len: a.len,
            end_offset: a.next_offset,
            visible_end: visible_end.min(a.next_offset),
            log_visible_end: visible_end,
        }
    }

    /// Calls `f` on each batch from the cursor's index entry until it breaks. Each batch must
    /// continue the one before (a stale index entry would break this), and the segment's data
    /// must reach its end offset: running out of data early is damage, never a quiet end.
    fn for_each_batch(
        &self,
        mut f: impl FnMut(&crate::scan::ScannedBatch) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let mut expected = self.batch_offset;
        for item in BatchScanner::new(
            &*self.file,
            &self.path,
            self.position,
            self.len,
            READ_CHUNK_BYTES,
        ) {
            let b = item?;
            if b.header.base_offset != expected {
                return Err(Error::corruption(
                    &self.path,
                    b.position,
                    CorruptionKind::OffsetMismatch {
                        expected,
                        found: b.header.base_offset,
                    },
                ));
            }
            expected = b.header.end_offset();
            if f(&b)?.is_break() {
                return Ok(());
            }
        }
        if expected < self.end_offset {
            return Err(Error::corruption(
                &self.path,
                self.len,
                CorruptionKind::MissingRecords {
                    expected_end: self.end_offset,
                    found_end: expected,
                },
            ));
        }
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        limits: &ReadLimits,
        out: &mut Vec<StoredRecord>,
        bytes: &mut usize,
    ) -> Result<()> {
        self.for_each_batch(|b| {
            if b.header.base_offset >= self.visible_end {
                return Ok(ControlFlow::Break(()));
            }
            if b.header.end_offset() <= from {
                return Ok(ControlFlow::Continue(()));
            }
            // Only the records this read returns are built; the layout of the whole batch is
            // still checked.
            let mut full = false;
            for_each_record(&b.header, &b.bytes, |r| {
                if full || r.offset < from {
                    return;
                }
                let size = r.key.len() + r.value.len();
                if r.offset >= self.visible_end
                    || out.len() >= limits.records_max
                    || (!out.is_empty() && *bytes + size > limits.bytes_max)
                {
                    full = true;
                    return;
                }
                *bytes += size;
                out.push(StoredRecord::share(&b.bytes, &r));
            })
            .map_err(|k| Error::corruption(&self.path, b.position, k))?;
            if full {
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })
    }

    fn find_timestamp(&self, from: u64, timestamp_ms: u64) -> Result<Option<u64>> {
        let mut found = None;
        self.for_each_batch(|b| {
            if b.header.base_offset >= self.visible_end {
                return Ok(ControlFlow::Break(()));
            }
            if b.header.end_offset() <= from || b.header.max_timestamp_ms < timestamp_ms {
                return Ok(ControlFlow::Continue(()));
            }
            for_each_record(&b.header, &b.bytes, |r| {
                if found.is_none() && r.timestamp_ms >= timestamp_ms && r.offset < self.visible_end
                {
                    found = Some(r.offset);
                }
            })
            .map_err(|k| Error::corruption(&self.path, b.position, k))?;
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }
}

/// Reads the directory and brings the log to a consistent state. Returns the state, the end
/// offset (everything below it is durable once this returns), and the recovery point left on
/// disk, if one is there, readable, and naming the active segment.
fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    options: &LogOptions,
) -> Result<(State, u64, Option<u64>)> {
    fs.create_dir_all_durable(dir).at(dir)?;
    let mut segments: BTreeMap<u64, [bool; 3]> = BTreeMap::new();
    let mut changed_dir = false;
    for name in fs.list_dir(dir).at(dir)? {
        if name.ends_with(&format!(".{TEMP_SUFFIX}")) {
            // An atomic write that never reached its rename.
            let p = dir.join(&name);
            fs.remove_file(&p).at(&p)?;
            changed_dir = true;
            continue;
        }
        if let Some((kind, base)) = FileKind::parse_file_name(&name) {
            let slot = match kind {
                FileKind::Segment => 0,
                FileKind::OffsetIndex => 1,
                FileKind::TimeIndex => 2,
            };
            segments.entry(base).or_default()[slot] = true;
        }
    }
    // Index files without their segment are left over from retention.
    segments.retain(|base, present| {
        if present[0] {
            return true;
        }
        for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
            let p = dir.join(kind.file_name(*base));
            if fs.remove_file(&p).is_ok() {
                changed_dir = true;
            }
        }
        false
    });

    let marker_path = dir.join(CLEAN_MARKER_NAME);
    let marker = if fs.exists(&marker_path).at(&marker_path)? {
        let m = fs.read_all(&marker_path).at(&marker_path).and_then(|b| {
            CleanMarker::decode(&b).map_err(|k| Error::corruption(&marker_path, 0, k))
        });
        // The marker is removed before the log accepts writes: from now on a crash is a crash.
        fs.remove_file(&marker_path).at(&marker_path)?;
        changed_dir = true;
        match m {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(error = %e, "unreadable clean-shutdown marker; recovering as after a crash");
                None
            }
        }
    } else {
        None
    };

    // Sealed segments from the recovery point on may have been rolled without an fsync.
    let point_path = dir.join(RECOVERY_POINT_NAME);
    let mut point_valid = None;
    let recovery_point = if fs.exists(&point_path).at(&point_path)? {
        let point = fs.read_all(&point_path).at(&point_path).and_then(|b| {
            RecoveryPoint::decode(&b).map_err(|k| Error::corruption(&point_path, 0, k))
        });
        match point {
            Ok(p) => {
                point_valid = Some(p.offset);
                Some(p.offset)
            }
            Err(e) => {
                // A torn write of the file itself: any sealed segment may be unflushed.
                warn!(error = %e, "unreadable recovery point; checking every sealed segment");
                Some(0)
            }
        }
    } else {
        None
    };

    let bases: Vec<u64> = segments.keys().copied().collect();
    let Some((&last_base, sealed_bases)) = bases.split_last() else {
        let active = ActiveSegment::create(fs, dir, 0)?;
        active.file.sync_data().at(&active.path)?;
        fs.sync_dir(dir).at(dir)?;
        let state = State {
            sealed: Vec::new(),
            active,
            last_timestamp_ms: 0,
        };
        if recovery_point.is_some() && options.fsync == FsyncPolicy::Always {
            fs.remove_file(&point_path).at(&point_path)?;
            fs.sync_dir(dir).at(dir)?;
        }
        return Ok((state, 0, point_valid.filter(|p| *p == 0)));
    };

    let last_path = dir.join(FileKind::Segment.file_name(last_base));
    let clean = match marker {
        Some(m)
            if m.active_base_offset == last_base
                && fs
                    .open(&last_path, OpenMode::Read)
                    .and_then(|f| f.len())
                    .ok()
                    == Some(m.active_len) =>
        {
            Some(m)
        }
        Some(_) => {
            warn!(dir = %dir.display(), "clean-shutdown marker does not match the files; scanning");
            None
        }
        None => None,
    };
    // A clean close flushed every segment; after a crash, those from the recovery point on are
    // checked in full.
    let unflushed_from = if clean.is_some() {
        None
    } else {
        recovery_point
    };
    let mut last_base = last_base;
    let mut cut_off: &[u64] = &[];
    let mut sealed: Vec<Arc<SealedSegment>> = Vec::with_capacity(sealed_bases.len());
    for (i, &base) in sealed_bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied().unwrap_or(last_base);
        if unflushed_from.is_some_and(|point| base >= point) {
            match SealedSegment::open_unflushed(
                fs,
                dir,
                base,
                next_base,
                options.recovery,
                options.index_interval_bytes,
            )? {
                Unflushed::Whole(s) => {
                    sealed.push(Arc::new(s));
                    continue;
                }
                Unflushed::Torn(e) => {
                    // The power went before this segment reached the disk: the log ends in it.
                    // It becomes the active segment and is cut at the damage below; every later
                    // segment follows a gap, and goes once that cut has succeeded.
                    let later = bases.get(i + 1..).unwrap_or_default();
                    warn!(
                        error = %e,
                        segments_removed = later.len(),
                        "a segment sealed without an fsync is torn; cutting the log there"
                    );
                    cut_off = later;
                    last_base = base;
                    break;
                }
            }
        }
        let s = SealedSegment::open(
            fs,
            dir,
            base,
            next_base,
            options.recovery,
            options.index_interval_bytes,
        )?;
        sealed.push(Arc::new(s));
    }
    let active = match clean {
        Some(m) if m.end_offset > last_base => {
            // A clean close left the last segment whole, fsynced and indexed. It is sealed, not
            // appended to: its data is not read here, so it is not known to be undamaged, and
            // appends behind unverified bytes would be lost if a later crash recovery cut the
            // segment at that damage. Sealing costs one new file per clean restart.
            let s = SealedSegment::open(
                fs,
                dir,
                last_base,
                m.end_offset,
                options.recovery,
                options.index_interval_bytes,
            )?;
            sealed.push(Arc::new(s));
            let active = ActiveSegment::create(fs, dir, m.end_offset)?;
            active.file.sync_data().at(&active.path)?;
            changed_dir = true;
            active
        }
        _ => {
            let hint_path = dir.join(SYNCED_POINT_NAME);
            let synced_len = fs
                .read_all(&hint_path)
                .ok()
                .and_then(|b| CleanMarker::decode_as(SYNCED_MAGIC, &b).ok())
                .filter(|h| h.active_base_offset == last_base)
                .map_or(0, |h| h.active_len);
            ActiveSegment::recover(
                fs,
                dir,
                last_base,
                sealed.last().map(|s| s.max_timestamp_ms),
                options.recovery,
                options.index_interval_bytes,
                synced_len,
            )?
        }
    };
    if !cut_off.is_empty() {
        // The torn segment is cut and on disk. The segments after it go, newest first, each
        // removal made durable before the next, so that a crash here leaves a contiguous run
        // (and the recovery point, still there, leads to the same cut again). Its own index
        // files describe bytes that are gone.
        for &b in cut_off.iter().rev() {
            remove_segment_files(fs, dir, b, true)?;
            fs.sync_dir(dir).at(dir)?;
        }
        remove_segment_files(fs, dir, last_base, false)?;
        changed_dir = true;
    }
    // A synced-point hint naming a segment past the last one was left by a cut (this one, or
    // one a crash interrupted after its removals): it goes before any segment can take that
    // base offset again.
    let hint_path = dir.join(SYNCED_POINT_NAME);
    let hint_base = fs
        .read_all(&hint_path)
        .ok()
        .and_then(|b| CleanMarker::decode_as(SYNCED_MAGIC, &b).ok())
        .map(|h| h.active_base_offset);
    if hint_base.is_some_and(|b| b > active.base_offset) {
        fs.remove_file(&hint_path).at(&hint_path)?;
        changed_dir = true;
    }
    // A point naming the active segment is kept (a clean close writes it so); one further back
    // would have the next crash recovery check, and cut at damage, segments this open has just
    // made durable, so open writes a new one.
    let mut kept_point = point_valid.filter(|p| *p == active.base_offset);
    if recovery_point.is_some() && options.fsync == FsyncPolicy::Always {
        // Every segment is on disk now, and no roll will leave one unflushed. The file goes
        // only after the checks that needed it, so that a crash during recovery leads to the
        // same checks again. (Under the other policies open writes a new one in its place.)
        fs.remove_file(&point_path).at(&point_path)?;
        changed_dir = true;
        kept_point = None;
    }
    if changed_dir {
        fs.sync_dir(dir).at(dir)?;
    }
    let last_timestamp_ms = if active.is_empty() {
        sealed.last().map_or(0, |s| s.max_timestamp_ms)
    } else {
        active.max_timestamp_ms
    };
    let end = active.next_offset;
    Ok((
        State {
            sealed,
            active,
            last_timestamp_ms,
        },
        end,
        kept_point,
    ))
}

/// Removes the index files of the segment at `base`, and with `segment` the segment file too.
fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, base: u64, segment: bool) -> Result<()> {
    let kinds: &[FileKind] = if segment {
        &[
            FileKind::TimeIndex,
            FileKind::OffsetIndex,
            FileKind::Segment,
        ]
    } else {
        &[FileKind::TimeIndex, FileKind::OffsetIndex]
    };
    for kind in kinds {
        let path = dir.join(kind.file_name(base));
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
}

/// Gives back the blocks reserved past the end of `a` ([`LogOptions::preallocate_bytes`]), for
/// a segment that takes no more appends. Truncating a file to its own length does that and
/// changes no byte, so a failure only leaves the blocks reserved until the segment is deleted.
fn release_reserved(a: &mut ActiveSegment) {
    if let Err(e) = a.file.set_len(a.len) {
        warn!(path = %a.path.display(), error = %e, "could not give back the blocks reserved past a segment's end");
    }
    // Should the segment take appends after all (a roll that could not make the next segment),
    // its blocks are reserved again from its end.
    a.preallocated_end = a.len;
}
