//! The broker's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the broker. Each variant says what was wrong with the request
/// or the environment; none of them means that acknowledged data was lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream or consumer-group name that is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A stream of that name already exists.
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    /// No stream of that name exists.
    #[error("stream {0:?} does not exist")]
    StreamNotFound(String),
    /// The stream has no partition with that id.
    #[error("stream {stream:?} has no partition {partition}")]
    PartitionNotFound {
        /// The stream.
        stream: String,
        /// The partition id asked for.
        partition: u32,
    },
    /// A stream configuration outside the allowed range.
    #[error("invalid stream configuration: {0}")]
    InvalidConfig(String),
    /// A partition key that is empty or longer than 256 bytes.
    #[error("record {index}: partition key of {len} bytes (must be 1 to 256)")]
    InvalidPartitionKey {
        /// Position of the record in the request.
        index: usize,
        /// Length of its key.
        len: usize,
    },
    /// An explicit hash key that is not a decimal integer in `0..=2^128-1`.
    #[error("invalid explicit hash key {0:?}: must be a decimal integer from 0 to 2^128-1")]
    InvalidHashKey(String),
    /// A record larger than the stream's record size limit (key and value together).
    #[error("record {index}: {bytes} bytes exceeds the record limit of {max} bytes")]
    RecordTooLarge {
        /// Position of the record in the request.
        index: usize,
        /// Its key and value bytes.
        bytes: usize,
        /// The stream's limit.
        max: usize,
    },
    /// A put with no records.
    #[error("a put needs at least one record")]
    EmptyPut,
    /// A put with more records than allowed.
    #[error("{count} records in one put exceeds the limit of {max}")]
    TooManyRecords {
        /// Records in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A put with more bytes than allowed.
    #[error("{bytes} bytes in one put exceeds the limit of {max}")]
    PutTooLarge {
        /// Key and value bytes in the request.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A producer-framed batch that is malformed or fails its CRC.
    #[error("batch {index}: {reason}")]
    BadBatch {
        /// Position of the batch in the request.
        index: usize,
        /// What is wrong with it.
        reason: sluice_log::FramedError,
    },
    /// A reshard of a partition that is already closed.
    #[error("partition {partition} of stream {stream:?} is closed")]
    PartitionClosed {
        /// The stream.
        stream: String,
        /// The partition.
        partition: u32,
    },
    /// A split whose hash key does not leave both children a non-empty range.
    #[error(
        "cannot split partition {partition} at {hash_key}: the key must lie in ({start}, {end}]"
    )]
    InvalidSplitKey {
        /// The partition.
        partition: u32,
        /// The requested starting hash key of the upper child.
        hash_key: u128,
        /// First hash key of the partition.
        start: u128,
        /// Last hash key of the partition.
        end: u128,
    },
    /// A merge of two partitions whose ranges do not touch (or of a partition with itself).
    #[error("partitions {a} and {b} are not adjacent")]
    NotAdjacent {
        /// One partition.
        a: u32,
        /// The other.
        b: u32,
    },
    /// The stream has as many partitions as it may hold.
    #[error("stream {stream:?} already has the maximum of {max} partitions")]
    TooManyPartitions {
        /// The stream.
        stream: String,
        /// The limit.
        max: usize,
    },
    /// A checkpoint past the end of its partition.
    #[error("checkpoint offset {offset} is past the end {end} of partition {partition}")]
    CheckpointBeyondEnd {
        /// The partition.
        partition: u32,
        /// The offset to commit.
        offset: u64,
        /// The partition's end offset.
        end: u64,
    },
    /// A group request from a member the coordinator does not know (never joined, left, or
    /// timed out).
    #[error(
        "unknown group member {0:?}: it never joined, left, or missed heartbeats past its session timeout; join again"
    )]
    UnknownMember(String),

    /// A commit under a lease the member does not hold at that epoch (fencing).
    #[error("partition {partition}: no lease at epoch {epoch} held by this member{}", current.map(|c| format!(" (the lease is at epoch {c} now)")).unwrap_or_default())]
    NotLeaseHolder {
        /// The partition.
        partition: u32,
        /// The epoch the commit named.
        epoch: u64,
        /// The lease's epoch now, if the partition is leased.
        current: Option<u64>,
    },

    /// A plain checkpoint commit while the group has live members on the stream.
    #[error(
        "consumer group {group:?} has live members on stream {stream:?}; its positions move only through their commits (stop them to reset a checkpoint)"
    )]
    GroupActive {
        /// Group name.
        group: String,
        /// Stream name.
        stream: String,
    },

    /// A group with no members and no checkpoints on the stream.
    #[error("consumer group {group:?} has no members and no checkpoints on stream {stream:?}")]
    GroupNotFound {
        /// Group name.
        group: String,
        /// Stream name.
        stream: String,
    },

    /// The group or the broker has its maximum of members.
    #[error("too many consumer group members (the most is {max})")]
    TooManyMembers {
        /// The limit.
        max: usize,
    },
    /// Another broker holds the data directory.
    #[error("data directory {} is in use by another broker{}", dir.display(), holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// What the lock file says about its holder, if anything.
        holder: Option<String>,
    },
    /// A metadata file (catalog or checkpoints) that cannot be read back.
    #[error("corrupt metadata file {}: {reason}; the broker will not start with it (restore it from a backup)", path.display())]
    CorruptMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An error from a partition's log.
    #[error(transparent)]
    Log(#[from] sluice_log::Error),
    /// An operating-system call failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for the broker.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
