//! Sluice's partition manager: it turns partition logs (`sluice-log`) into streams.
//!
//! A stream has partitions that each own a range of the 128-bit hash-key space; a record goes to
//! the open partition whose range holds the MD5 of its partition key (read as a big-endian
//! integer), exactly as in Kinesis. Partitions are split and merged with Kinesis's rules, keeping
//! lineage so that readers can finish a parent before its children. Retention removes whole
//! expired segments per stream; consumer checkpoints are stored durably.
//!
//! Synchronous and usable in-process without a server: [`Broker`] is the embedded broker for
//! tests and tools, and what `sluice-server` serves.
//!
//! # Layout
//! - [`routing`]: hash ranges, MD5 routing, explicit hash keys, split and merge of ranges (pure).
//! - [`catalog`]: the durable stream catalog.
//! - `broker`: [`Broker`]: streams, puts, reads, reshards, retention, checkpoints.
//! - `meta`: checked, atomically replaced metadata files; `lock`: the data-directory lock;
//!   `name`: stream and group name rules.
//!
//! # Data directory
//! ```text
//! <data_dir>/LOCK                           flock held by the running broker (pid inside)
//! <data_dir>/catalog                        streams, partitions, lineage (atomic replace)
//! <data_dir>/checkpoints/<group>            a consumer group's committed offsets
//! <data_dir>/streams/<name>.<uid>/<id>/     one partition's log (see sluice-log)
//! ```
#![warn(missing_docs)]

mod broker;
pub mod catalog;
pub mod error;
pub mod group;
mod lock;
mod meta;
pub mod name;
pub mod routing;

pub use broker::{
    BatchOutcome, Broker, BrokerOptions, FramedPut, IoStats, PARTITION_KEY_BYTES_MAX,
    PartitionDescription, PartitionState, PendingAck, PutAck, PutRecord, RetentionReport,
    StreamConfig, StreamDescription, SubmittedBatches, SubmittedPut,
};
pub use error::{Error, Result};
pub use group::{
    GroupDescription, GroupPartition, GroupPartitionState, GroupSummary, InitialPosition, Lease,
    MemberDescription,
};
pub use lock::LOCK_FILE_NAME;
pub use routing::HashRange;
