//! Options of a log, with their defaults.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// `append` returns only after an `fdatasync` that covers its records has returned.
    /// Concurrent appenders share one `fdatasync` (group commit). Acknowledged records survive
    /// a process crash **and** a power loss. Readers see only synced records.
    Always,
    /// `append` returns once the records are written to the operating system; a background thread
    /// calls `fdatasync` at this interval. A process crash loses nothing acknowledged; a power
    /// loss may lose up to the last interval.
    Interval(Duration),
    /// The operating system decides when data reaches the disk. A power loss may lose any
    /// amount of acknowledged data. For benchmarks and throwaway data only.
    Never,
}

/// What open does when it finds damage in the data that recovery has to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// After a crash, a torn or corrupt tail of the active segment is cut off (and logged):
    /// it can only hold records whose append never returned under `FsyncPolicy::Always`.
    #[default]
    TolerateTailCorruption,
    /// Any damage found while opening is an error; nothing is truncated. For inspecting a
    /// directory that is expected to be intact.
    AbsoluteConsistency,
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Options for [`crate::Log::open`]. Every setter names its default.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub(crate) segment_bytes_max: u64,
    pub(crate) segment_age_max: Duration,
    pub(crate) index_interval_bytes: u32,
    pub(crate) preallocate_bytes: u64,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) recovery: RecoveryMode,
    pub(crate) clock: Arc<dyn Clock>,
}

/// Default segment size: 256 MiB.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 256 << 20;
/// Default segment age before rolling: 1 hour.
pub const DEFAULT_SEGMENT_AGE_MAX: Duration = Duration::from_secs(3600);
/// Default bytes between index entries: 4 KiB (Kafka's `index.interval.bytes`).
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
/// Default step of the active segment's block reservation: 4 MiB.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 4 << 20;

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            segment_age_max: DEFAULT_SEGMENT_AGE_MAX,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            fsync: FsyncPolicy::Always,
            recovery: RecoveryMode::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl LogOptions {
    /// Roll to a new segment before a segment would grow past this many bytes. A single batch
    /// larger than this gets a segment of its own. Default: 256 MiB. At most 4 GiB (positions
    /// in the index are 32-bit).
    #[must_use]
    pub fn segment_bytes_max(mut self, bytes: u64) -> Self {
        self.segment_bytes_max = bytes;
        self
    }

    /// Roll a non-empty active segment once its first record is this old, so that retention
    /// can remove old data from quiet partitions. Default: 1 hour.
    #[must_use]
    pub fn segment_age_max(mut self, age: Duration) -> Self {
        self.segment_age_max = age;
        self
    }

    /// Bytes of batches between two sparse index entries. Default: 4096.
    #[must_use]
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    /// Reserve the active segment's disk blocks this many bytes at a time, ahead of its
    /// appends (`fallocate` without changing the file's length), and give back what is left
    /// past a segment's end when it rolls. Appends into reserved blocks skip the file system's
    /// block reservation for every page they write: on ext4 about a fifth of the CPU time the
    /// write itself takes. Each partition then holds up to this much disk beyond its data. Never past
    /// the segment's size limit; 0 turns it off. Default: 4 MiB.
    #[must_use]
    pub fn preallocate_bytes(mut self, bytes: u64) -> Self {
        self.preallocate_bytes = bytes;
        self
    }

    /// When appends are acknowledged. Default: [`FsyncPolicy::Always`].
    #[must_use]
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = policy;
        self
    }

    /// What open does with damage. Default: [`RecoveryMode::TolerateTailCorruption`].
    #[must_use]
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// The clock that stamps records and ages segments. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The fsync policy in force.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let min = (crate::format::FILE_HEADER_LEN + crate::format::batch::BATCH_HEADER_LEN) as u64;
        if self.segment_bytes_max < min || self.segment_bytes_max > u64::from(u32::MAX) {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes_max must be in [{min}, {}], got {}",
                u32::MAX,
                self.segment_bytes_max
            )));
        }
        if self.segment_age_max.is_zero() {
            return Err(Error::InvalidOptions(
                "segment_age_max must be positive".into(),
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::InvalidOptions(
                "index_interval_bytes must be positive".into(),
            ));
        }
        if let FsyncPolicy::Interval(d) = self.fsync
            && d.is_zero()
        {
            return Err(Error::InvalidOptions(
                "the fsync interval must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// How much one [`crate::Log::read_from`] returns at most. At least one record is returned when
/// one is available, even if it alone is larger than `bytes_max`, so a reader always progresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most records. Default: 10,000 (Kinesis's `GetRecords` limit).
    pub records_max: usize,
    /// Most key and value bytes. Default: 10 MiB (Kinesis's `GetRecords` limit).
    pub bytes_max: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            records_max: 10_000,
            bytes_max: 10 << 20,
        }
    }
}

/// Which data [`crate::Log::enforce_retention`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Remove sealed segments whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest sealed segments while the log is larger than this many bytes.
    pub max_bytes: Option<u64>,
}
