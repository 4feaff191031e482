//! The broker: streams of partitions over `sluice-log`, with routing, resharding, retention and
//! consumer checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::io::{FileSystem, StdFs};
use sluice_log::{
    Log, LogOptions, PreparedBatch, ReadLimits, Record, RetentionPolicy, StoredRecord, Written,
};
use tracing::{info, warn};

use crate::catalog::{CATALOG_FILE, CATALOG_MAGIC, Catalog, PartitionMeta, StreamMeta};
use crate::error::{Error, IoContext, Result};
use crate::group::{self, Groups};
use crate::lock::DirLock;
use crate::routing::{self, HashRange, RoutingTable};
use crate::{meta, name};

mod groups;

const STREAMS_DIR: &str = "streams";
const CHECKPOINTS_DIR: &str = "checkpoints";
const CHECKPOINT_MAGIC: [u8; 4] = *b"SCKP";
/// Longest partition key, in bytes (Kinesis allows 256 characters).
pub const PARTITION_KEY_BYTES_MAX: usize = 256;
/// How often a put re-routes records whose partition was closed by a concurrent reshard.
const REROUTES_MAX: usize = 16;

/// A consumer group's committed offsets by (stream uid, partition). Keyed by uid, not name, so a
/// stream deleted and created again starts with no checkpoints.
type GroupCheckpoints = BTreeMap<(u64, u32), u64>;

/// Settings of a new stream. `Default` gives Kinesis's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Number of partitions, splitting the hash-key space evenly. Default: 1.
    pub partitions: u32,
    /// How long records are kept. Default: 24 hours.
    pub retention: Duration,
    /// Optional cap on each partition's size; the oldest segments go first. Default: none.
    pub partition_bytes_max: Option<u64>,
    /// Largest record, key and value together. Default: 1 MiB.
    pub record_bytes_max: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention: Duration::from_secs(24 * 3600),
            partition_bytes_max: None,
            record_bytes_max: 1 << 20,
        }
    }
}

/// Options of a broker. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Options every partition's log is opened with (fsync policy, segment size, ...).
    /// Default: `LogOptions::default()`, so `fsync=always`.
    pub log: LogOptions,
    /// Most records in one put. Default: 500 (Kinesis's `PutRecords` limit).
    pub put_records_max: usize,
    /// Most key and value bytes in one put. Default: 5 MiB (Kinesis's `PutRecords` limit).
    pub put_bytes_max: usize,
    /// Most partitions a stream may have, open and closed. Default: 1024.
    pub partitions_max: usize,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            log: LogOptions::default(),
            put_records_max: 500,
            put_bytes_max: 5 << 20,
            partitions_max: 1024,
        }
    }
}

/// One record of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// Partition key, 1 to 256 bytes. Routes the record unless `explicit_hash_key` is set.
    pub partition_key: Bytes,
    /// A hash key that overrides the MD5 of the partition key (parse one from its decimal form
    /// with [`routing::parse_hash_key`]).
    pub explicit_hash_key: Option<u128>,
    /// The value.
    pub value: Bytes,
}

impl PutRecord {
    /// A record routed by its partition key.
    pub fn new(partition_key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            value: value.into(),
        }
    }
}

/// Where a put record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutAck {
    /// The partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
}

/// Whether a partition takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Takes writes for its hash range.
    Open,
    /// Closed by a split or merge: readable to its end, never written again.
    Closed,
}

/// A partition as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Partition id.
    pub id: u32,
    /// Open or closed.
    pub state: PartitionState,
    /// Its hash keys.
    pub range: HashRange,
    /// Ids of the partitions it came from.
    pub parents: Vec<u32>,
    /// First offset still held.
    pub start_offset: u64,
    /// Next offset to be written (for a closed partition, where it ended).
    pub end_offset: u64,
}

/// A stream as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription {
    /// Name.
    pub name: String,
    /// Retention, ms.
    pub retention_ms: u64,
    /// Size cap per partition, if any.
    pub partition_bytes_max: Option<u64>,
    /// Record size limit.
    pub record_bytes_max: u64,
    /// Partitions by id.
    pub partitions: Vec<PartitionDescription>,
}

/// What [`Broker::enforce_retention`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Segments deleted across all partitions.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Closed partitions whose data had all expired, removed from the catalog.
    pub partitions_removed: usize,
}

#[derive(Debug)]
struct Partition {
    log: Log,
    /// True once closed by a reshard. Appends hold the read side, so closing (the write side)
    /// waits for appends in flight and no append lands after the end offset is recorded.
    closed: RwLock<bool>,
}

#[derive(Debug)]
struct Stream {
    name: String,
    meta: StreamMeta,
    dir: PathBuf,
    routing: RoutingTable,
    partitions: BTreeMap<u32, Arc<Partition>>,
}

/// An immutable view of the catalog and the open logs. Operations take a snapshot and work on it
/// without holding a lock; catalog changes build a new snapshot and swap it in.
#[derive(Debug, Default)]
struct State {
    catalog: Catalog,
    streams: BTreeMap<String, Arc<Stream>>,
}

impl State {
    fn stream(&self, name: &str) -> Result<&Arc<Stream>> {
        self.streams
            .get(name)
            .ok_or_else(|| Error::StreamNotFound(name.to_owned()))
    }
}

impl Stream {
    fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(&id)
            .ok_or_else(|| Error::PartitionNotFound {
                stream: self.name.clone(),
                partition: id,
            })
    }

    fn end_offset(&self, id: u32, p: &Partition) -> u64 {
        match self.meta.partitions.get(&id).and_then(|m| m.closed_end) {
            Some(end) => end,
            None => p.log.end_offset(),
        }
    }
}

/// The partition manager of one data directory. Synchronous and thread-safe; share it with an
/// `Arc`. Partitions are opened eagerly when the broker opens.
///
/// ```
/// # fn main() -> Result<(), sluice_broker::Error> {
/// use sluice_broker::{Broker, BrokerOptions, PutRecord, StreamConfig};
/// let dir = tempfile::tempdir().unwrap();
/// let broker = Broker::open(dir.path(), BrokerOptions::default())?;
/// broker.create_stream("orders", StreamConfig { partitions: 4, ..StreamConfig::default() })?;
/// let acks = broker.put("orders", &[PutRecord::new("customer-7", "{\"total\": 12}")])?;
/// let records = broker.read("orders", acks[0].partition, acks[0].offset, Default::default())?;
/// assert_eq!(records[0].value.as_ref(), b"{\"total\": 12}");
/// broker.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    options: BrokerOptions,
    state: RwLock<Arc<State>>,
    /// Serialises catalog changes (create, delete, reshard, retention removals).
    admin: Mutex<()>,
    /// Consumer checkpoints by group, loaded on first use. Held only to look up or replace a
    /// group's map, never across I/O.
    checkpoints: Mutex<BTreeMap<String, GroupCheckpoints>>,
    /// Serialises checkpoint writes (each replaces a group's file and fsyncs it).
    checkpoint_writes: Mutex<()>,
    /// Consumer groups with live members.
    groups: Groups,
    /// The coordinator's clock: session timeouts are measured from here.
    started: Instant,
    _lock: Option<DirLock>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is replaced wholesale or not at all, so a panic elsewhere cannot leave
    // it half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broker {
    /// Opens the broker on a data directory (created if missing), taking its lock: a second
    /// broker on the same directory, in this process or another, gets [`Error::Locked`].
    pub fn open(data_dir: impl AsRef<Path>, options: BrokerOptions) -> Result<Self> {
        let dir = data_dir.as_ref().to_path_buf();
        StdFs.create_dir_all_durable(&dir).at(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        Self::open_inner(Arc::new(StdFs), dir, options, Some(lock))
    }

    /// Opens the broker through a given file system, without the directory lock (which needs
    /// the real file system). For tests on the simulated file system.
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        data_dir: impl AsRef<Path>,
        options: BrokerOptions,
    ) -> Result<Self> {
        Self::open_inner(fs, data_dir.as_ref().to_path_buf(), options, None)
    }

    fn open_inner(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        options: BrokerOptions,
        lock: Option<DirLock>,
    ) -> Result<Self> {
        fs.create_dir_all_durable(&dir).at(&dir)?;
        let streams_dir = dir.join(STREAMS_DIR);
        let catalog_path = dir.join(CATALOG_FILE);
        let catalog = match meta::load::<Catalog>(&*fs, CATALOG_MAGIC, &catalog_path)? {
            Some(c) => {
                c.validate(&catalog_path)?;
                c
            }
            None => {
                // No catalog is only normal for a new directory: with streams on disk it means
                // the catalog was lost, and starting empty would hide every stream.
                let has_streams = fs.exists(&streams_dir).at(&streams_dir)?
                    && !fs.list_subdirs(&streams_dir).at(&streams_dir)?.is_empty();
                if has_streams {
                    return Err(Error::CorruptMetadata {
                        path: catalog_path,
                        reason: format!("missing, but {} holds stream data", streams_dir.display()),
                    });
                }
                Catalog::default()
            }
        };
        fs.create_dir_all_durable(&streams_dir).at(&streams_dir)?;
        fs.create_dir_all_durable(&dir.join(CHECKPOINTS_DIR))
            .at(&dir)?;

        // Directories the catalog does not name were being created or deleted when the broker
        // stopped; the catalog is the truth, so they go.
        let wanted: Vec<String> = catalog
            .streams
            .iter()
            .map(|(name, s)| s.dir_name(name))
            .collect();
        remove_orphans(&*fs, &streams_dir, |d| wanted.iter().any(|w| w == d))?;

        let mut streams = BTreeMap::new();
        for (name, meta) in &catalog.streams {
            let sdir = streams_dir.join(meta.dir_name(name));
            fs.create_dir_all_durable(&sdir).at(&sdir)?;
            remove_orphans(&*fs, &sdir, |d| {
                d.parse::<u32>()
                    .is_ok_and(|id| meta.partitions.contains_key(&id) && d == id.to_string())
            })?;
            let mut partitions = BTreeMap::new();
            for (id, pmeta) in &meta.partitions {
                let log = Log::open_with_fs(
                    Arc::clone(&fs),
                    sdir.join(id.to_string()),
                    options.log.clone(),
                )?;
                if let Some(end) = pmeta.closed_end
                    && log.end_offset() != end
                {
                    warn!(stream = %name, partition = id, log_end = log.end_offset(), catalog_end = end,
                            "closed partition's log does not end where the catalog says");
                }
                partitions.insert(
                    *id,
                    Arc::new(Partition {
                        log,
                        closed: RwLock::new(pmeta.closed_end.is_some()),
                    }),
                );
            }
            let routing = meta.routing().ok_or_else(|| Error::CorruptMetadata {
                path: catalog_path.clone(),
                reason: format!("stream {name:?} has no routing"),
            })?;
            streams.insert(
                name.clone(),
                Arc::new(Stream {
                    name: name.clone(),
                    meta: meta.clone(),
                    dir: sdir,
                    routing,
                    partitions,
                }),
            );
        }
        info!(dir = %dir.display(), streams = streams.len(), "broker open");
        Ok(Self {
            dir,
            fs,
            options,
            state: RwLock::new(Arc::new(State { catalog, streams })),
            admin: Mutex::new(()),
            checkpoints: Mutex::new(BTreeMap::new()),
            checkpoint_writes: Mutex::new(()),
            groups: Groups::default(),
            started: Instant::now(),
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The options the broker was opened with.
    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    fn snapshot(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn install(&self, state: State) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }

    fn store_catalog(&self, catalog: &Catalog) -> Result<()> {
        meta::store(
            &*self.fs,
            CATALOG_MAGIC,
            &self.dir.join(CATALOG_FILE),
            catalog,
        )
    }

    fn stream_dir(&self, name: &str, meta: &StreamMeta) -> PathBuf {
        self.dir.join(STREAMS_DIR).join(meta.dir_name(name))
    }

    fn open_partition(&self, stream_dir: &Path, id: u32) -> Result<Arc<Partition>> {
        let log = Log::open_with_fs(
            Arc::clone(&self.fs),
            stream_dir.join(id.to_string()),
            self.options.log.clone(),
        )?;
        Ok(Arc::new(Partition {
            log,
            closed: RwLock::new(false),
        }))
    }

    /// Creates a stream.
    pub fn create_stream(&self, name: &str, config: StreamConfig) -> Result<StreamDescription> {
        name::validate(name)?;
        let partitions_max = u32::try_from(self.options.partitions_max).unwrap_or(u32::MAX);
        if config.partitions == 0 || config.partitions > partitions_max {
            return Err(Error::InvalidConfig(format!(
                "partitions must be 1 to {partitions_max}, got {}",
                config.partitions
            )));
        }
        if config.retention.is_zero() {
            return Err(Error::InvalidConfig("retention must be positive".into()));
        }
        if config.record_bytes_max == 0
            || config.record_bytes_max > u64::from(sluice_log::format::batch::BATCH_BYTES_MAX) / 2
        {
            return Err(Error::InvalidConfig(format!(
                "record_bytes_max must be 1 to {}, got {}",
                sluice_log::format::batch::BATCH_BYTES_MAX / 2,
                config.record_bytes_max
            )));
        }
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        if old.streams.contains_key(name) {
            return Err(Error::StreamExists(name.to_owned()));
        }
        let mut catalog = old.catalog.clone();
        let meta = StreamMeta {
            uid: catalog.next_stream_uid,
            created_ms: sluice_log::Clock::now_ms(&sluice_log::SystemClock),
            retention_ms: duration_ms(config.retention),
            partition_bytes_max: config.partition_bytes_max,
            record_bytes_max: config.record_bytes_max,
            next_partition_id: config.partitions,
            partitions: routing::uniform(config.partitions)
                .into_iter()
                .zip(0..)
                .map(|(range, id)| {
                    (
                        id,
                        PartitionMeta {
                            range,
                            parents: Vec::new(),
                            closed_end: None,
                        },
                    )
                })
                .collect(),
        };
        catalog.next_stream_uid += 1;
        catalog.streams.insert(name.to_owned(), meta.clone());
        // The partition logs exist before the catalog names them; if the catalog write fails or
        // the process dies first, the next open removes them as orphans.
        let sdir = self.stream_dir(name, &meta);
        let opened: Result<BTreeMap<u32, Arc<Partition>>> = meta
            .partitions
            .keys()
            .map(|id| Ok((*id, self.open_partition(&sdir, *id)?)))
            .collect();
        let partitions = match opened.and_then(|p| self.store_catalog(&catalog).map(|()| p)) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.fs.remove_dir_all(&sdir);
                return Err(e);
            }
        };
        let routing = meta
            .routing()
            .ok_or_else(|| Error::InvalidConfig("no routing".into()))?;
        let mut streams = old.streams.clone();
        let stream = Arc::new(Stream {
            name: name.to_owned(),
            meta,
            dir: sdir,
            routing,
            partitions,
        });
        streams.insert(name.to_owned(), Arc::clone(&stream));
        self.install(State { catalog, streams });
        info!(
            stream = name,
            partitions = config.partitions,
            "stream created"
        );
        Ok(describe(name, &stream))
    }

    /// Deletes a stream and all its data.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        let stream = Arc::clone(old.stream(name)?);
        let mut catalog = old.catalog.clone();
        catalog.streams.remove(name);
        self.store_catalog(&catalog)?;
        let mut streams = old.streams.clone();
        streams.remove(name);
        self.install(State { catalog, streams });
        // The catalog no longer names the directory; if removing it fails now, the next open
        // removes it as an orphan.
        let parent = self.dir.join(STREAMS_DIR);
        if let Err(e) = self
            .fs
            .remove_dir_all(&stream.dir)
            .and_then(|()| self.fs.sync_dir(&parent))
        {
            warn!(dir = %stream.dir.display(), error = %e, "could not remove a deleted stream's files yet");
        }
        info!(stream = name, "stream deleted");
        Ok(())
    }

    /// Names of all streams, sorted.
    pub fn list_streams(&self) -> Vec<String> {
        self.snapshot().streams.keys().cloned().collect()
    }

    /// A stream's settings and partitions.
    pub fn describe_stream(&self, name: &str) -> Result<StreamDescription> {
        let snap = self.snapshot();
        Ok(describe(name, snap.stream(name)?))
    }

    /// Changes a stream's retention; the next [`Broker::enforce_retention`] applies it.
    pub fn set_retention(&self, name: &str, retention: Duration) -> Result<()> {
        if retention.is_zero() {
            return Err(Error::InvalidConfig("retention must be positive".into()));
        }
        self.update_stream(name, |meta| {
            meta.retention_ms = duration_ms(retention);
            Ok(())
        })
    }

    /// Changes a catalog entry of a stream whose partitions stay as they are.
    fn update_stream(
        &self,
        name: &str,
        change: impl FnOnce(&mut StreamMeta) -> Result<()>,
    ) -> Result<()> {
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        let stream = old.stream(name)?;
        let mut meta = stream.meta.clone();
        change(&mut meta)?;
        let mut catalog = old.catalog.clone();
        catalog.streams.insert(name.to_owned(), meta.clone());
        self.store_catalog(&catalog)?;
        let mut streams = old.streams.clone();
        streams.insert(
            name.to_owned(),
            Arc::new(Stream {
                name: name.to_owned(),
                meta,
                dir: stream.dir.clone(),
                routing: stream.routing.clone(),
                partitions: stream.partitions.clone(),
            }),
        );
        self.install(State { catalog, streams });
        Ok(())
    }

    /// Appends records to a stream. Each record goes to the open partition whose hash range
    /// holds its hash key; the answer gives each record's partition and offset, in input order.
    /// The whole request is checked before anything is written. Each partition's records are
    /// written as one batch, in input order, and the partitions' fsyncs run in parallel.
    ///
    /// If a partition fails to append (an I/O error, a poisoned log), the error is returned and
    /// records bound for other partitions may have been written: a retried put can store those
    /// twice (at-least-once, as with Kinesis's partial `PutRecords` failures).
    pub fn put(&self, stream: &str, records: &[PutRecord]) -> Result<Vec<PutAck>> {
        self.submit_put(stream, records)?.wait()
    }

    /// The first half of [`Broker::put`]: checks, routes and writes the records, and returns
    /// without waiting for them to be acknowledged ([`SubmittedPut::wait`] does that). Puts
    /// submitted one after another land in that order in every partition, while their fsync
    /// waits overlap: a server uses this to pipeline one client's puts without reordering them.
    pub fn submit_put(&self, stream: &str, records: &[PutRecord]) -> Result<SubmittedPut> {
        let snap = self.snapshot();
        let s = snap.stream(stream)?;
        let hash_keys = self.validate_put(s, records)?;
        let mut acks: Vec<Option<PutAck>> = vec![None; records.len()];
        let mut writes = Vec::new();
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut snap = snap;
        let mut last_closed = 0;
        for _ in 0..REROUTES_MAX {
            let s = snap.stream(stream)?;
            let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for i in pending.drain(..) {
                let key = hash_keys.get(i).copied().unwrap_or(0);
                groups.entry(s.routing.route(key)).or_default().push(i);
            }
            for (id, indices) in groups {
                let p = s.partition(id)?;
                match write_open(p, records, &indices)? {
                    Some(written) => {
                        for (n, i) in indices.iter().enumerate() {
                            if let Some(slot) = acks.get_mut(*i) {
                                *slot = Some(PutAck {
                                    partition: id,
                                    offset: written.first_offset + n as u64,
                                });
                            }
                        }
                        writes.push((Arc::clone(p), written));
                    }
                    // Closed by a reshard after this snapshot: route again with a newer one.
                    None => {
                        last_closed = id;
                        pending.extend(indices);
                    }
                }
            }
            if pending.is_empty() {
                return Ok(SubmittedPut {
                    writes,
                    acks: acks.into_iter().flatten().collect(),
                });
            }
            snap = self.snapshot();
        }
        // Only reached if reshards closed this put's partitions many times in a row.
        Err(Error::PartitionClosed {
            stream: stream.to_owned(),
            partition: last_closed,
        })
    }

    /// Writes batches a producer framed and routed itself (Kafka's way: the producer frames one
    /// batch per partition), in order, and returns a handle to wait for their acknowledgement.
    ///
    /// Each batch is checked first ([`PreparedBatch::framed`]: layout, log-owned fields zero, the
    /// records' CRC recomputed over the bytes given), and all of them together against the limits
    /// of [`Broker::submit_put`]; a batch for a partition the stream does not have is refused.
    /// Any of these refuses the whole request before anything is written. The keys are not
    /// hashed: routing is the producer's part, and a key in a partition whose range does not
    /// hold it is stored there as if it came with an explicit hash key.
    ///
    /// A batch for a partition that a reshard has closed is not written; its outcome says so,
    /// and the producer routes its records again. Open partitions never change their range, so
    /// that is the only way a producer's routing can go stale.
    pub fn submit_batches<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        stream: &str,
        batches: Vec<FramedPut<B>>,
    ) -> Result<SubmittedBatches> {
        self.submit_batches_many(stream, vec![batches])
            .pop()
            .unwrap_or(Err(Error::EmptyPut))
    }

    /// [`Broker::submit_batches`] for several requests of one producer to the same stream, in
    /// order: each is checked on its own and fails alone, and each partition's batches from all
    /// of them go out in one write (see [`Log::write_prepared_many`]), which costs the kernel
    /// less per byte than a write each. Every partition holds the requests' batches in the
    /// order of the requests. Returns one result per request, in order.
    ///
    /// If a write fails, the batches it held are written again one by one, so that each request
    /// gets its own outcome; a failed write takes back what it wrote, so nothing is written
    /// twice. A request that fails may have had its batches for other partitions written, as a
    /// put whose partitions fail apart may (at-least-once); in the failed partition, nothing of
    /// it past the failed batch is written.
    ///
    /// [`Log::write_prepared_many`]: sluice_log::Log::write_prepared_many
    pub fn submit_batches_many<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        stream: &str,
        puts: Vec<Vec<FramedPut<B>>>,
    ) -> Vec<Result<SubmittedBatches>> {
        let snap = self.snapshot();
        let Ok(s) = snap.stream(stream) else {
            return puts
                .iter()
                .map(|_| Err(Error::StreamNotFound(stream.to_owned())))
                .collect();
        };
        // Check every request first; one refused takes no part in the writes.
        let mut checked: Vec<Result<Vec<CheckedBatch<B>>>> = puts
            .into_iter()
            .map(|batches| self.check_batches(s, batches))
            .collect();
        // Where each batch went: `Some(Ok(Some(w)))` written, `Some(Ok(None))` closed partition.
        let mut placed: Vec<Vec<Option<Result<Option<Written>>>>> = checked
            .iter()
            .map(|c| {
                c.as_ref()
                    .map_or(Vec::new(), |b| b.iter().map(|_| None).collect())
            })
            .collect();
        // Each partition's batches, in request order, then in each request's own order.
        let mut by_partition: Vec<(Arc<Partition>, Vec<BatchPlace<'_, B>>)> = Vec::new();
        for (put, c) in checked.iter_mut().enumerate() {
            let Ok(batches) = c else { continue };
            for (index, (_, p, batch)) in batches.iter_mut().enumerate() {
                match by_partition.iter_mut().find(|(q, _)| Arc::ptr_eq(q, p)) {
                    Some((_, list)) => list.push((put, index, batch)),
                    None => by_partition.push((Arc::clone(p), vec![(put, index, batch)])),
                }
            }
        }
        for (p, mut list) in by_partition {
            // Holding the read side of the gate while writing keeps a reshard from closing the
            // partition between the check and the write.
            let closed = p.closed.read().unwrap_or_else(PoisonError::into_inner);
            let mut results: Vec<Result<Option<Written>>> = Vec::with_capacity(list.len());
            if *closed {
                results.extend(list.iter().map(|_| Ok(None)));
            } else {
                let owners: Vec<usize> = list.iter().map(|(put, _, _)| *put).collect();
                let mut refs: Vec<&mut PreparedBatch<B>> =
                    list.iter_mut().map(|(_, _, b)| &mut **b).collect();
                let (written, failed) = p.log.write_prepared_many(&mut refs);
                results.extend(written.into_iter().map(|w| Ok(Some(w))));
                if failed.is_some() {
                    // The rest one by one, each with its own outcome. Once a request's batch
                    // fails, its later batches here are not written: a retry of the request
                    // must not find them stored ahead of the one that failed. (Their result is
                    // never read: the request fails with the earlier batch's error.)
                    let mut failed_puts = Vec::new();
                    for (b, put) in refs.into_iter().zip(owners).skip(results.len()) {
                        if failed_puts.contains(&put) {
                            results.push(Ok(None));
                            continue;
                        }
                        let r = p.log.write_prepared(b).map(Some).map_err(Error::from);
                        if r.is_err() {
                            failed_puts.push(put);
                        }
                        results.push(r);
                    }
                }
            }
            drop(closed);
            for ((put, index, _), r) in list.into_iter().zip(results) {
                if let Some(slot) = placed.get_mut(put).and_then(|v| v.get_mut(index)) {
                    *slot = Some(r);
                }
            }
        }
        checked
            .into_iter()
            .zip(placed)
            .map(|(c, placed)| {
                let batches = c?;
                let mut writes = Vec::with_capacity(batches.len());
                let mut outcomes = Vec::with_capacity(batches.len());
                for ((id, p, batch), r) in batches.into_iter().zip(placed) {
                    let written = r.unwrap_or(Ok(None))?;
                    if let Some(w) = written {
                        writes.push((p, w));
                    }
                    outcomes.push(BatchOutcome {
                        partition: id,
                        record_count: batch.record_count(),
                        first_offset: written.map(|w| w.first_offset),
                    });
                }
                Ok(SubmittedBatches {
                    put: SubmittedPut {
                        writes,
                        acks: Vec::new(),
                    },
                    outcomes,
                })
            })
            .collect()
    }

    /// The checks of [`Broker::submit_batches`] for one request, before anything is written.
    fn check_batches<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        s: &Stream,
        batches: Vec<FramedPut<B>>,
    ) -> Result<Vec<CheckedBatch<B>>> {
        if batches.is_empty() {
            return Err(Error::EmptyPut);
        }
        // Every batch holds at least one record: more batches than records allowed is refused
        // before anything is reserved for them.
        if batches.len() > self.options.put_records_max {
            return Err(Error::TooManyRecords {
                count: batches.len(),
                max: self.options.put_records_max,
            });
        }
        let mut prepared = Vec::with_capacity(batches.len());
        for (index, b) in batches.into_iter().enumerate() {
            let batch = PreparedBatch::framed(b.batch, b.records_crc)
                .map_err(|reason| Error::BadBatch { index, reason })?;
            let partition = Arc::clone(s.partition(b.partition)?);
            prepared.push((b.partition, partition, batch));
        }
        self.check_batch_limits(s, prepared.iter().map(|(_, _, b)| b))?;
        Ok(prepared)
    }

    /// The limits of a put, over every record of a request's batches.
    fn check_batch_limits<'a, B: AsRef<[u8]> + AsMut<[u8]> + 'a>(
        &self,
        s: &Stream,
        batches: impl Iterator<Item = &'a PreparedBatch<B>> + Clone,
    ) -> Result<()> {
        let count: usize = batches.clone().map(|b| b.record_count() as usize).sum();
        if count > self.options.put_records_max {
            return Err(Error::TooManyRecords {
                count,
                max: self.options.put_records_max,
            });
        }
        let record_max = usize::try_from(s.meta.record_bytes_max).unwrap_or(usize::MAX);
        // The sizes gathered when each batch was checked settle the usual case, where every
        // record is within the limits, without a second walk over the records; only a put with
        // a record over a limit is walked again, to name the first such record.
        let fits = |z: sluice_log::RecordSizes| {
            z.key_min > 0 && z.key_max <= PARTITION_KEY_BYTES_MAX && z.record_max <= record_max
        };
        if batches.clone().all(|b| fits(b.sizes())) {
            let total: u64 = batches.map(|b| b.sizes().total).sum();
            let total = usize::try_from(total).unwrap_or(usize::MAX);
            if total > self.options.put_bytes_max {
                return Err(Error::PutTooLarge {
                    bytes: total,
                    max: self.options.put_bytes_max,
                });
            }
            return Ok(());
        }
        let mut index = 0usize;
        let mut total = 0usize;
        let mut fault = None;
        for b in batches {
            b.for_each_record(|key, value| {
                if fault.is_some() {
                    return;
                }
                if let Err(e) = check_record(index, key.len(), value.len(), record_max) {
                    fault = Some(e);
                }
                total += key.len() + value.len();
                index += 1;
            });
        }
        if let Some(e) = fault {
            return Err(e);
        }
        if total > self.options.put_bytes_max {
            return Err(Error::PutTooLarge {
                bytes: total,
                max: self.options.put_bytes_max,
            });
        }
        Ok(())
    }

    fn validate_put(&self, s: &Stream, records: &[PutRecord]) -> Result<Vec<u128>> {
        if records.is_empty() {
            return Err(Error::EmptyPut);
        }
        if records.len() > self.options.put_records_max {
            return Err(Error::TooManyRecords {
                count: records.len(),
                max: self.options.put_records_max,
            });
        }
        let mut total = 0usize;
        let mut keys = Vec::with_capacity(records.len());
        let record_max = usize::try_from(s.meta.record_bytes_max).unwrap_or(usize::MAX);
        for (index, r) in records.iter().enumerate() {
            check_record(index, r.partition_key.len(), r.value.len(), record_max)?;
            total += r.partition_key.len() + r.value.len();
            keys.push(
                r.explicit_hash_key
                    .unwrap_or_else(|| routing::hash_key(&r.partition_key)),
            );
        }
        if total > self.options.put_bytes_max {
            return Err(Error::PutTooLarge {
                bytes: total,
                max: self.options.put_bytes_max,
            });
        }
        Ok(keys)
    }

    /// Reads records of one partition from `offset`, up to the limits. A closed partition reads
    /// to its end; reading at the end returns nothing.
    pub fn read(
        &self,
        stream: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        let snap = self.snapshot();
        let p = snap.stream(stream)?.partition(partition)?;
        Ok(p.log.read_from(offset, limits)?)
    }

    /// A partition's first offset still held and next offset to be written (where a closed
    /// partition ended).
    pub fn partition_bounds(&self, stream: &str, partition: u32) -> Result<(u64, u64)> {
        let snap = self.snapshot();
        let s = snap.stream(stream)?;
        let p = s.partition(partition)?;
        Ok((p.log.start_offset(), s.end_offset(partition, p)))
    }

    /// Write and fsync counters summed over every partition now open: `fdatasync` calls on
    /// partition data since the broker opened (with their latencies in power-of-two buckets of
    /// microseconds, as in [`sluice_log::LogStats`]) and bytes appended to segment files.
    pub fn io_stats(&self) -> IoStats {
        let mut total = IoStats::default();
        for p in self
            .snapshot()
            .streams
            .values()
            .flat_map(|s| s.partitions.values())
        {
            let st = p.log.stats();
            total.fsyncs += st.fsyncs;
            total.bytes_appended += st.bytes_appended;
            for (sum, b) in total
                .fsync_latency_buckets
                .iter_mut()
                .zip(st.fsync_latency_buckets)
            {
                *sum += b;
            }
        }
        total
    }

    /// First offset at or after `timestamp_ms` in a partition, `None` if every record is older.
    pub fn offset_for_timestamp(
        &self,
        stream: &str,
        partition: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>> {
        let snap = self.snapshot();
        let p = snap.stream(stream)?.partition(partition)?;
        Ok(p.log.offset_for_timestamp(timestamp_ms)?)
    }

    /// Splits an open partition: keys below `at` go to the first child, the rest to the second.
    /// Without `at`, the middle of the range. Returns the children's ids. The parent is closed:
    /// readable to its end, never written again.
    pub fn split(&self, stream: &str, partition: u32, at: Option<u128>) -> Result<[u32; 2]> {
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        let s = old.stream(stream)?;
        let pmeta = s
            .meta
            .partitions
            .get(&partition)
            .ok_or_else(|| Error::PartitionNotFound {
                stream: stream.to_owned(),
                partition,
            })?;
        if pmeta.closed_end.is_some() {
            return Err(Error::PartitionClosed {
                stream: stream.to_owned(),
                partition,
            });
        }
        let range = pmeta.range;
        let invalid = |hash_key| Error::InvalidSplitKey {
            partition,
            hash_key,
            start: range.start,
            end: range.end,
        };
        let at = at
            .or_else(|| range.middle())
            .ok_or_else(|| invalid(range.start))?;
        let (lo, hi) = range.split_at(at).ok_or_else(|| invalid(at))?;
        let first = s.meta.next_partition_id;
        let children = [(first, lo), (first + 1, hi)];
        self.reshard(&old, stream, &[partition], &children)?;
        info!(stream, partition, children = ?[first, first + 1], "partition split");
        Ok([first, first + 1])
    }

    /// Merges two open partitions whose ranges are adjacent into a new one; returns its id. Both
    /// parents are closed.
    pub fn merge(&self, stream: &str, a: u32, b: u32) -> Result<u32> {
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        let s = old.stream(stream)?;
        let meta_of = |id: u32| {
            s.meta
                .partitions
                .get(&id)
                .ok_or_else(|| Error::PartitionNotFound {
                    stream: stream.to_owned(),
                    partition: id,
                })
        };
        let (ma, mb) = (meta_of(a)?, meta_of(b)?);
        for (id, m) in [(a, ma), (b, mb)] {
            if m.closed_end.is_some() {
                return Err(Error::PartitionClosed {
                    stream: stream.to_owned(),
                    partition: id,
                });
            }
        }
        let merged = (a != b)
            .then(|| ma.range.merge(&mb.range))
            .flatten()
            .ok_or(Error::NotAdjacent { a, b })?;
        let child = s.meta.next_partition_id;
        self.reshard(&old, stream, &[a, b], &[(child, merged)])?;
        info!(stream, parents = ?[a, b], child, "partitions merged");
        Ok(child)
    }

    /// Closes `parents` and opens `children` in one catalog change. Called with the admin lock.
    fn reshard(
        &self,
        old: &State,
        stream: &str,
        parents: &[u32],
        children: &[(u32, HashRange)],
    ) -> Result<()> {
        let s = old.stream(stream)?;
        let total = s.meta.partitions.len() + children.len();
        if total > self.options.partitions_max {
            return Err(Error::TooManyPartitions {
                stream: stream.to_owned(),
                max: self.options.partitions_max,
            });
        }
        // Close the gates in id order (no two reshards run at once, but puts hold read sides).
        let mut sorted = parents.to_vec();
        sorted.sort_unstable();
        let mut gates = Vec::new();
        let mut meta = s.meta.clone();
        // Flush what every parent holds before closing any gate, so that puts to a parent wait
        // only for the sync under its gate, of what was written meanwhile, and not for these:
        // under `never` each can be a whole segment of dirty data. (Flushing one parent after
        // closing another's gate would hold that one's puts, as in a merge.)
        for id in &sorted {
            s.partition(*id)?.log.sync()?;
        }
        for id in &sorted {
            let p = s.partition(*id)?;
            let gate = p.closed.write().unwrap_or_else(PoisonError::into_inner);
            // No append is in flight now. Make the end durable before the catalog records it.
            p.log.sync()?;
            if let Some(m) = meta.partitions.get_mut(id) {
                m.closed_end = Some(p.log.end_offset());
            }
            gates.push(gate);
        }
        let mut partitions = s.partitions.clone();
        let mut created = Vec::new();
        let result = (|| {
            for (id, range) in children {
                let p = self.open_partition(&s.dir, *id)?;
                created.push(*id);
                partitions.insert(*id, p);
                meta.partitions.insert(
                    *id,
                    PartitionMeta {
                        range: *range,
                        parents: parents.to_vec(),
                        closed_end: None,
                    },
                );
            }
            meta.next_partition_id += children.len() as u32;
            let mut catalog = old.catalog.clone();
            catalog.streams.insert(stream.to_owned(), meta.clone());
            self.store_catalog(&catalog)?;
            Ok(catalog)
        })();
        let catalog = match result {
            Ok(c) => c,
            Err(e) => {
                for id in created {
                    let _ = self.fs.remove_dir_all(&s.dir.join(id.to_string()));
                }
                return Err(e);
            }
        };
        for gate in &mut gates {
            **gate = true;
        }
        let routing = meta.routing().ok_or_else(|| Error::CorruptMetadata {
            path: self.dir.join(CATALOG_FILE),
            reason: "a reshard broke the tiling".into(),
        })?;
        let mut streams = old.streams.clone();
        streams.insert(
            stream.to_owned(),
            Arc::new(Stream {
                name: stream.to_owned(),
                meta,
                dir: s.dir.clone(),
                routing,
                partitions,
            }),
        );
        // The new snapshot goes in before the gates open: a put that waited on a closed gate
        // routes again with a snapshot that already has the children.
        self.install(State { catalog, streams });
        drop(gates);
        Ok(())
    }

    /// Deletes expired data across all streams, each by its own retention and size cap, as of
    /// `now_ms`. A closed partition whose data has all expired is removed from the catalog.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport> {
        let snap = self.snapshot();
        let mut report = RetentionReport::default();
        let mut drained: Vec<(String, u32)> = Vec::new();
        let mut first_error = None;
        for (name, s) in &snap.streams {
            let policy = RetentionPolicy {
                max_age: Some(Duration::from_millis(s.meta.retention_ms)),
                max_bytes: s.meta.partition_bytes_max,
            };
            for (id, p) in &s.partitions {
                let closed = s
                    .meta
                    .partitions
                    .get(id)
                    .is_some_and(|m| m.closed_end.is_some());
                // One partition that cannot apply retention (a poisoned log, say) must not stop
                // the others from freeing space: report it and go on.
                let out = match p.log.enforce_retention(policy, now_ms) {
                    Ok(out) => out,
                    Err(e) => {
                        warn!(stream = %name, partition = id, error = %e, "retention failed for a partition");
                        first_error.get_or_insert(Error::from(e));
                        continue;
                    }
                };
                report.segments_deleted += out.segments_deleted;
                report.bytes_deleted += out.bytes_deleted;
                if closed && out.start_offset == s.end_offset(*id, p) {
                    drained.push((name.clone(), *id));
                }
            }
        }
        if !drained.is_empty() {
            report.partitions_removed = self.remove_drained(&drained)?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn remove_drained(&self, drained: &[(String, u32)]) -> Result<usize> {
        let _admin = lock(&self.admin);
        let old = self.snapshot();
        let mut catalog = old.catalog.clone();
        let mut streams = old.streams.clone();
        let mut removed = Vec::new();
        for (name, id) in drained {
            let (Some(s), Some(meta)) = (old.streams.get(name), catalog.streams.get_mut(name))
            else {
                continue;
            };
            if meta
                .partitions
                .get(id)
                .is_some_and(|m| m.closed_end.is_some())
            {
                meta.partitions.remove(id);
                let mut partitions = s.partitions.clone();
                partitions.remove(id);
                let routing = s.routing.clone();
                streams.insert(
                    name.clone(),
                    Arc::new(Stream {
                        name: name.clone(),
                        meta: meta.clone(),
                        dir: s.dir.clone(),
                        routing,
                        partitions,
                    }),
                );
                removed.push(s.dir.join(id.to_string()));
            }
        }
        if removed.is_empty() {
            return Ok(0);
        }
        self.store_catalog(&catalog)?;
        self.install(State { catalog, streams });
        for dir in &removed {
            if let Err(e) = self
                .fs
                .remove_dir_all(dir)
                .and_then(|()| self.fs.sync_dir(&sluice_log::io::parent(dir)))
            {
                warn!(dir = %dir.display(), error = %e, "could not remove an expired partition's files yet");
            }
        }
        Ok(removed.len())
    }

    /// Records that consumer group `group` has processed `stream`'s `partition` up to (not
    /// including) `offset`. Durable when this returns. An offset past the partition's end is
    /// refused, and so is any commit while the group has live members on the stream
    /// ([`Error::GroupActive`]): they move their own positions with [`Broker::commit_lease`],
    /// and a position moved underneath them would be overwritten or, for a parent whose
    /// children are being read, break the order of keys. This is an administrator's reset, as
    /// Kafka's offset reset needs the group to be inactive.
    pub fn commit_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        name::validate(group)?;
        let uid = self.snapshot().stream(stream)?.meta.uid;
        // The group's entry, made if need be, is held across the write, so no member can join
        // and be leased a position this is about to move.
        let result =
            self.lock_or_create(group, stream, uid, group::InitialPosition::Earliest, |g| {
                let snap = self.snapshot();
                let s = snap.stream(stream)?;
                s.partition(partition)?;
                if g.live_members(self.now_ms()) > 0 {
                    return Err(Error::GroupActive {
                        group: group.to_owned(),
                        stream: stream.to_owned(),
                    });
                }
                self.write_checkpoint(group, s, partition, offset)
            });
        // Whatever happened, an entry made only for this goes again.
        self.groups.remove_if_empty(group, stream);
        result
    }

    /// Writes one checkpoint of a group. Writers of one group file are serialised by
    /// `checkpoint_writes` (a group's file holds its positions on every stream, and group locks
    /// are per stream); readers use the cache and never wait for the fsync.
    fn write_checkpoint(&self, group: &str, s: &Stream, partition: u32, offset: u64) -> Result<()> {
        let p = s.partition(partition)?;
        let end = s.end_offset(partition, p);
        if offset > end {
            return Err(Error::CheckpointBeyondEnd {
                partition,
                offset,
                end,
            });
        }
        let _writing = lock(&self.checkpoint_writes);
        let path = self.checkpoint_path(group);
        // The cache is looked up and let go before any file is read.
        let cached = lock(&self.checkpoints).get(group).cloned();
        let mut updated = match cached {
            Some(m) => m,
            None => meta::load(&*self.fs, CHECKPOINT_MAGIC, &path)?.unwrap_or_default(),
        };
        updated.insert((s.meta.uid, partition), offset);
        meta::store(&*self.fs, CHECKPOINT_MAGIC, &path, &updated)?;
        lock(&self.checkpoints).insert(group.to_owned(), updated);
        Ok(())
    }

    /// The offset group `group` last committed for a partition, if any.
    pub fn fetch_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
    ) -> Result<Option<u64>> {
        name::validate(group)?;
        let snap = self.snapshot();
        let s = snap.stream(stream)?;
        s.partition(partition)?;
        Ok(self
            .group_checkpoints(group)?
            .and_then(|m| m.get(&(s.meta.uid, partition)).copied()))
    }

    /// Every checkpoint of a group, `None` if it has none on disk.
    fn group_checkpoints(&self, group: &str) -> Result<Option<GroupCheckpoints>> {
        if let Some(m) = lock(&self.checkpoints).get(group) {
            return Ok(Some(m.clone()));
        }
        // Loaded under the write lock, so a write finishing meanwhile cannot be overwritten in
        // the cache by this older copy. Only groups that exist on disk are cached: asking about
        // made-up group names must not grow memory.
        let _writing = lock(&self.checkpoint_writes);
        if let Some(m) = lock(&self.checkpoints).get(group) {
            return Ok(Some(m.clone()));
        }
        let loaded: Option<GroupCheckpoints> =
            meta::load(&*self.fs, CHECKPOINT_MAGIC, &self.checkpoint_path(group))?;
        if let Some(m) = &loaded {
            lock(&self.checkpoints).insert(group.to_owned(), m.clone());
        }
        Ok(loaded)
    }

    fn checkpoint_path(&self, group: &str) -> PathBuf {
        self.dir.join(CHECKPOINTS_DIR).join(group)
    }

    /// Closes every partition cleanly (fsync, clean-shutdown markers) and releases the lock.
    pub fn close(self) -> Result<()> {
        let state =
            std::mem::take(&mut *self.state.write().unwrap_or_else(PoisonError::into_inner));
        let mut first_error = None;
        if let Ok(state) = Arc::try_unwrap(state) {
            for (_, s) in state.streams {
                let Ok(s) = Arc::try_unwrap(s) else { continue };
                for (_, p) in s.partitions {
                    let result = match Arc::try_unwrap(p) {
                        Ok(p) => p.log.close(),
                        Err(p) => p.log.sync(),
                    };
                    if let Err(e) = result {
                        first_error.get_or_insert(Error::from(e));
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Writes records (by index) to a partition unless a reshard has closed it (`Ok(None)`).
fn write_open(p: &Partition, records: &[PutRecord], indices: &[usize]) -> Result<Option<Written>> {
    let batch: Vec<Record> = indices
        .iter()
        .filter_map(|i| records.get(*i))
        .map(|r| Record {
            key: r.partition_key.clone(),
            value: r.value.clone(),
        })
        .collect();
    // Holding the read side of the gate while writing keeps a reshard from closing the
    // partition between the check and the write.
    let closed = p.closed.read().unwrap_or_else(PoisonError::into_inner);
    if *closed {
        return Ok(None);
    }
    Ok(Some(p.log.write(&batch)?))
}

/// Counters of partition I/O, from [`Broker::io_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// `fdatasync` calls on partition data.
    pub fsyncs: u64,
    /// Their latencies: bucket `i` counts fsyncs of `[2^i, 2^(i+1))` microseconds.
    pub fsync_latency_buckets: [u64; sluice_log::LATENCY_BUCKETS],
    /// Bytes appended to segment files, batch and record headers included.
    pub bytes_appended: u64,
}

/// A put whose records are written, in order, but not yet acknowledged.
#[derive(Debug)]
#[must_use = "a submitted put is acknowledged only by `wait`"]
pub struct SubmittedPut {
    writes: Vec<(Arc<Partition>, Written)>,
    acks: Vec<PutAck>,
}

impl SubmittedPut {
    /// Waits until every record is acknowledged under the fsync policy, and returns each
    /// record's partition and offset in input order. The fsyncs of several partitions run in
    /// parallel, on threads started for the purpose; a caller with a thread pool of its own can
    /// use [`SubmittedPut::into_parts`] instead.
    pub fn wait(self) -> Result<Vec<PutAck>> {
        let (pending, acks) = self.into_parts();
        match pending.as_slice() {
            [] => {}
            [one] => one.wait_ref()?,
            [rest @ .., last] => std::thread::scope(|scope| {
                let handles: Vec<_> = rest
                    .iter()
                    .map(|p| scope.spawn(move || p.wait_ref()))
                    .collect();
                // The last partition is waited for on this thread, which would otherwise idle.
                let mine = last.wait_ref();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .chain(std::iter::once(mine))
                    .collect::<Result<()>>()
            })?,
        }
        Ok(acks)
    }

    /// Whether every record is already acknowledged (always so unless the policy is
    /// `fsync=always`), so that [`SubmittedPut::wait`] would not block.
    pub fn is_acknowledged(&self) -> bool {
        self.writes.iter().all(|(p, w)| p.log.is_acknowledged(*w))
    }

    /// Splits the put into one wait per partition that still needs its fsync, and the
    /// acknowledgements to hand out once all of them have returned `Ok`. Partitions already
    /// acknowledged are left out, so under `fsync=never` the list is empty.
    pub fn into_parts(self) -> (Vec<PendingAck>, Vec<PutAck>) {
        let pending = self
            .writes
            .into_iter()
            .filter(|(p, w)| !p.log.is_acknowledged(*w))
            .map(|(partition, written)| PendingAck { partition, written })
            .collect();
        (pending, self.acks)
    }
}

/// The per-record rules of a put, plain or framed: a key of 1 to 256 bytes, and key and value
/// within the stream's record limit.
fn check_record(index: usize, key_len: usize, value_len: usize, record_max: usize) -> Result<()> {
    if key_len == 0 || key_len > PARTITION_KEY_BYTES_MAX {
        return Err(Error::InvalidPartitionKey {
            index,
            len: key_len,
        });
    }
    let bytes = key_len + value_len;
    if bytes > record_max {
        return Err(Error::RecordTooLarge {
            index,
            bytes,
            max: record_max,
        });
    }
    Ok(())
}

/// One producer-framed batch for [`Broker::submit_batches`].
#[derive(Debug)]
pub struct FramedPut<B> {
    /// The partition it is for.
    pub partition: u32,
    /// CRC-32 of the batch's bytes after its header, as the producer computed it.
    pub records_crc: u32,
    /// The whole batch (see [`PreparedBatch::framed`]); written as it is, header filled in.
    pub batch: B,
}

/// Where one batch of [`Broker::submit_batches`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The partition it was for.
    pub partition: u32,
    /// Records in it.
    pub record_count: u32,
    /// Offset of its first record; `None` when it was not written because a reshard closed the
    /// partition.
    pub first_offset: Option<u64>,
}

/// Batches that are written, in order, but not yet acknowledged.
#[derive(Debug)]
#[must_use = "batches are acknowledged only once every part has been waited for"]
pub struct SubmittedBatches {
    put: SubmittedPut,
    outcomes: Vec<BatchOutcome>,
}

impl SubmittedBatches {
    /// Whether every written batch is already acknowledged (always so unless the policy is
    /// `fsync=always`).
    pub fn is_acknowledged(&self) -> bool {
        self.put.is_acknowledged()
    }

    /// The waits still needed (see [`SubmittedPut::into_parts`]) and each batch's outcome, in
    /// request order, to hand out once all of them have returned `Ok`.
    pub fn into_parts(self) -> (Vec<PendingAck>, Vec<BatchOutcome>) {
        (self.put.into_parts().0, self.outcomes)
    }

    /// Waits until every written batch is acknowledged and returns the outcomes.
    pub fn wait(self) -> Result<Vec<BatchOutcome>> {
        self.put.wait()?;
        Ok(self.outcomes)
    }
}

/// A batch of a request that passed its checks: its partition's id, the partition, the batch.
type CheckedBatch<B> = (u32, Arc<Partition>, PreparedBatch<B>);

/// A batch to write in [`Broker::submit_batches_many`]: its request, its index there, itself.
type BatchPlace<'a, B> = (usize, usize, &'a mut PreparedBatch<B>);

/// The fsync wait of one partition of a [`SubmittedPut`].
#[derive(Debug)]
#[must_use = "records are acknowledged only once every part has been waited for"]
pub struct PendingAck {
    partition: Arc<Partition>,
    written: Written,
}

impl PendingAck {
    /// Blocks until an fsync covers this partition's records (shared with other writers: group
    /// commit). An error means the records may not be durable.
    pub fn wait(self) -> Result<()> {
        self.wait_ref()
    }

    fn wait_ref(&self) -> Result<()> {
        Ok(self.partition.log.acknowledge(self.written)?)
    }
}

fn describe(name: &str, s: &Stream) -> StreamDescription {
    StreamDescription {
        name: name.to_owned(),
        retention_ms: s.meta.retention_ms,
        partition_bytes_max: s.meta.partition_bytes_max,
        record_bytes_max: s.meta.record_bytes_max,
        partitions: s
            .meta
            .partitions
            .iter()
            .map(|(id, m)| {
                let log = s.partitions.get(id).map(|p| &p.log);
                PartitionDescription {
                    id: *id,
                    state: if m.closed_end.is_some() {
                        PartitionState::Closed
                    } else {
                        PartitionState::Open
                    },
                    range: m.range,
                    parents: m.parents.clone(),
                    start_offset: log.map_or(0, Log::start_offset),
                    end_offset: m
                        .closed_end
                        .unwrap_or_else(|| log.map_or(0, Log::end_offset)),
                }
            })
            .collect(),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Removes the subdirectories of `dir` that `keep` does not want, then syncs `dir`.
fn remove_orphans(fs: &dyn FileSystem, dir: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let mut removed = false;
    for sub in fs.list_subdirs(dir).at(dir)? {
        if !keep(&sub) {
            let path = dir.join(&sub);
            warn!(dir = %path.display(), "removing a directory the catalog does not name");
            fs.remove_dir_all(&path).at(&path)?;
            removed = true;
        }
    }
    if removed {
        fs.sync_dir(dir).at(dir)?;
    }
    Ok(())
}
