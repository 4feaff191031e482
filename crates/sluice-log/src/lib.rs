//! The durable segment log of one Sluice partition.
//!
//! A partition is an append-only sequence of records with dense `u64` offsets from 0. On disk it
//! is a directory of segments, each a `{base_offset:020}.log` file of CRC-checked record batches
//! with a sparse offset index (`.index`) and time index (`.timeindex`). Appends are acknowledged
//! according to an [`FsyncPolicy`]; under the default, [`FsyncPolicy::Always`], an append returns
//! only once an `fdatasync` covering it has returned, and concurrent appends share one
//! `fdatasync` (group commit). A failed fsync poisons the log until it is reopened.
//!
//! Recovery after a crash keeps a prefix of what was written that contains every acknowledged
//! record: a torn or corrupt tail batch is cut off, and indexes are rebuilt when they are missing
//! or inconsistent. Damage inside sealed data is reported as [`Error::Corruption`] by reads, never
//! served as bytes.
//!
//! # Layout
//! - [`format`]: the byte layout of every file (no I/O); `docs/format.md` describes it.
//! - [`io`]: the file-system trait the log uses for all I/O, the real implementation, the
//!   `unsafe` calls (the memory map of sealed index files; `fallocate`, `pwritev`, and `pread`
//!   into memory not zeroed first), and the simulated file system for tests.
//! - `scan`: chunked reading and checking of batches.
//! - `segment`: sealed and active segments, index building and checking, recovery.
//! - `log`: [`Log`] itself: append with group commit, reads, time seek, rolling, retention.
//! - [`verify`]: offline checks of every byte of a stopped log's files, for operators' tools.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), sluice_log::Error> {
//! use sluice_log::{FsyncPolicy, Log, LogOptions, ReadLimits, Record};
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path(), LogOptions::default().fsync(FsyncPolicy::Always))?;
//! let first = log.append(&[Record::new("sensor-7", "21.5")])?;
//! let records = log.read_from(first, ReadLimits::default())?;
//! assert_eq!(records[0].key.as_ref(), b"sensor-7");
//! log.close()?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod format;
pub mod io;
mod log;
pub mod options;
mod scan;
mod segment;
pub mod verify;

pub use error::{CorruptionKind, Error, Result};
pub use format::batch::{FramedError, PreparedBatch, RecordSizes, StoredRecord};
pub use log::{LATENCY_BUCKETS, Log, LogStats, Record, RetentionOutcome, Written};
pub use options::{
    Clock, DEFAULT_PREALLOCATE_BYTES, FsyncPolicy, LogOptions, ReadLimits, RecoveryMode,
    RetentionPolicy, SystemClock,
};
