//! Requests and responses, and their bodies.
//!
//! Record data travels in fixed binary layouts (`Put` and `Read`); every other body is a
//! postcard-encoded struct (see `docs/protocol.md`). Decoding never trusts a count or a length:
//! each is checked against the bytes actually present before anything is allocated.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchAck, FramedBatch};
use crate::codes::ErrorCode;
use crate::error::WireError;
use crate::frame::{FLAG_ERROR, FLAG_RESPONSE, encode_frame};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Magic at the start of a `Hello` body.
pub const HELLO_MAGIC: [u8; 4] = *b"SLCE";

/// Message kinds. A response carries the kind of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum Kind {
    /// Version handshake; must be the first request on a connection.
    Hello = 1,
    /// Create a stream.
    CreateStream = 2,
    /// Delete a stream.
    DeleteStream = 3,
    /// List stream names.
    ListStreams = 4,
    /// Describe a stream.
    DescribeStream = 5,
    /// Append records.
    Put = 6,
    /// Read records of a partition.
    Read = 7,
    /// Split a partition.
    Split = 8,
    /// Merge two partitions.
    Merge = 9,
    /// Change a stream's retention.
    SetRetention = 10,
    /// Commit a consumer checkpoint.
    CommitCheckpoint = 11,
    /// Fetch a consumer checkpoint.
    FetchCheckpoint = 12,
    /// Server statistics.
    Stats = 13,
    /// Join a consumer group.
    JoinGroup = 14,
    /// A group member's heartbeat; answered with its leases.
    Heartbeat = 15,
    /// Commit a leased partition's position, fenced by the lease epoch.
    CommitLease = 16,
    /// Leave a consumer group.
    LeaveGroup = 17,
    /// Describe a consumer group on a stream.
    DescribeGroup = 18,
    /// List consumer groups.
    ListGroups = 19,
    /// Append batches the producer framed and routed itself (see [`crate::batch`]).
    PutBatches = 20,
}

impl Kind {
    const ALL: [Kind; 20] = [
        Kind::Hello,
        Kind::CreateStream,
        Kind::DeleteStream,
        Kind::ListStreams,
        Kind::DescribeStream,
        Kind::Put,
        Kind::Read,
        Kind::Split,
        Kind::Merge,
        Kind::SetRetention,
        Kind::CommitCheckpoint,
        Kind::FetchCheckpoint,
        Kind::Stats,
        Kind::JoinGroup,
        Kind::Heartbeat,
        Kind::CommitLease,
        Kind::LeaveGroup,
        Kind::DescribeGroup,
        Kind::ListGroups,
        Kind::PutBatches,
    ];

    /// The kind for a number.
    pub fn from_u16(n: u16) -> Result<Self, WireError> {
        Self::ALL
            .into_iter()
            .find(|k| *k as u16 == n)
            .ok_or(WireError::UnknownKind(n))
    }
}

/// One record of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// Partition key (1 to 256 bytes; the server checks).
    pub partition_key: Bytes,
    /// Explicit hash key overriding the key's MD5.
    pub explicit_hash_key: Option<u128>,
    /// Value.
    pub value: Bytes,
}

/// Where a put record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutAck {
    /// Partition id.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// At this offset.
    Offset(u64),
    /// At the first offset still held.
    Earliest,
    /// At the end: only records written after the read.
    Latest,
    /// At the first record with a timestamp at or after this many ms since the Unix epoch.
    Timestamp(u64),
}

/// A read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Stream name.
    pub stream: String,
    /// Partition id.
    pub partition: u32,
    /// Where to start.
    pub from: ReadFrom,
    /// Most records to return.
    pub max_records: u32,
    /// Most key and value bytes to return (at least one record is returned if any is there).
    pub max_bytes: u32,
    /// How long to wait for data when there is none yet (long poll); 0 answers at once.
    pub max_wait_ms: u32,
}

/// A record in a read response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    /// Offset.
    pub offset: u64,
    /// Arrival timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Partition key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
}

/// A read response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResponse {
    /// First offset the partition still holds.
    pub start_offset: u64,
    /// Next offset to be written in the partition.
    pub end_offset: u64,
    /// Where the next read should start: after the last record returned, or where this read
    /// started if it returned none.
    pub next_offset: u64,
    /// The records.
    pub records: Vec<WireRecord>,
}

/// Settings of a new stream (postcard body of `CreateStream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateStream {
    /// Stream name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Retention in ms.
    pub retention_ms: u64,
    /// Optional size cap per partition.
    pub partition_bytes_max: Option<u64>,
    /// Record size limit; `None` for the server's default (1 MiB).
    pub record_bytes_max: Option<u64>,
}

/// A partition as described (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Id.
    pub id: u32,
    /// True while it takes writes.
    pub open: bool,
    /// First hash key.
    pub hash_start: u128,
    /// Last hash key (inclusive).
    pub hash_end: u128,
    /// Parent ids.
    pub parents: Vec<u32>,
    /// First offset held.
    pub start_offset: u64,
    /// Next offset to be written (where a closed partition ended).
    pub end_offset: u64,
}

/// A stream as described (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// Retention in ms.
    pub retention_ms: u64,
    /// Size cap per partition.
    pub partition_bytes_max: Option<u64>,
    /// Record size limit.
    pub record_bytes_max: u64,
    /// Partitions by id.
    pub partitions: Vec<PartitionInfo>,
}

/// Traffic counters of one stream (postcard, inside [`ServerStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Stream name.
    pub name: String,
    /// Records appended.
    pub records_in: u64,
    /// Key and value bytes appended.
    pub bytes_in: u64,
    /// Records read.
    pub records_out: u64,
    /// Key and value bytes read.
    pub bytes_out: u64,
}

/// Server statistics (postcard body of the `Stats` response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Time since the server started, ms.
    pub uptime_ms: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Put requests that wrote records (each waits for the fsyncs its records need).
    pub puts: u64,
    /// `fdatasync` calls on partition data since start.
    pub fsyncs: u64,
    /// fsync latency, microseconds, 50th percentile (the upper bound of a power-of-two bucket).
    pub fsync_latency_us_p50: u64,
    /// 99th percentile, same resolution.
    pub fsync_latency_us_p99: u64,
    /// Upper bound of the slowest fsync's bucket.
    pub fsync_latency_us_max: u64,
    /// Put latency (request decoded to acknowledgement ready), microseconds: 50th percentile.
    pub put_latency_us_p50: u64,
    /// 99th percentile.
    pub put_latency_us_p99: u64,
    /// Maximum.
    pub put_latency_us_max: u64,
    /// Per-stream traffic.
    pub streams: Vec<StreamStats>,
}

/// Stream name and partition (postcard), used by several requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRef {
    /// Stream name.
    pub stream: String,
    /// Partition id.
    pub partition: u32,
}

/// Where a consumer group starts reading a partition it has no checkpoint for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitialPosition {
    /// The oldest record still held (Kinesis's `TRIM_HORIZON`, Kafka's `earliest`).
    #[default]
    Earliest,
    /// The partition's end when the lease is granted: only records appended later.
    Latest,
}

/// A member asks to join a consumer group on a stream (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGroup {
    /// Group name.
    pub group: String,
    /// Stream the group consumes.
    pub stream: String,
    /// A label for `describe` (a host name, a process id); need not be unique.
    pub member_name: String,
    /// A member that sends no heartbeat for this long loses its leases.
    pub session_timeout_ms: u32,
    /// Where to start in partitions the group has no checkpoint for. The first member to join
    /// a group (when it has no members) sets it for the group.
    pub initial: InitialPosition,
}

/// The answer to [`JoinGroup`] (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The member's id, unique for the server's lifetime; every later group request names it.
    pub member_id: String,
    /// How often the member should heartbeat (a third of its session timeout).
    pub heartbeat_interval_ms: u32,
}

/// A member, named in a group request (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRef {
    /// Group name.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// The id [`Joined`] gave.
    pub member_id: String,
}

/// A partition lease held by a member (postcard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Partition id.
    pub partition: u32,
    /// The lease's epoch: it grows each time the partition changes hands, and a commit must
    /// name the epoch of the lease it was made under.
    pub epoch: u64,
    /// Where the member starts reading: the group's checkpoint, or the initial position when
    /// there is none.
    pub start_offset: u64,
    /// The coordinator wants the partition for another member: stop reading it, commit what
    /// was processed, and release it in the next heartbeat.
    pub revoking: bool,
}

/// A heartbeat (postcard): the member is alive, and gives back the leases it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The member.
    pub member: MemberRef,
    /// Leases released, as `(partition, epoch)`.
    pub released: Vec<(u32, u64)>,
}

/// A commit under a lease (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLease {
    /// The member.
    pub member: MemberRef,
    /// Partition id.
    pub partition: u32,
    /// Epoch of the lease the records were read under.
    pub epoch: u64,
    /// Next offset the group will read in the partition.
    pub offset: u64,
}

/// A member of a group as described (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// The label it joined with.
    pub name: String,
    /// Its session timeout.
    pub session_timeout_ms: u32,
    /// Time since its last heartbeat or commit.
    pub last_seen_ms_ago: u64,
    /// Partitions it leases.
    pub partitions: Vec<u32>,
}

/// One partition of a described group (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartitionInfo {
    /// Partition id.
    pub partition: u32,
    /// True while the partition takes writes.
    pub open: bool,
    /// `leased`, `revoking` (being handed to another member), `unassigned` (no live member
    /// took it yet), `waiting` (a parent is not consumed to its end), or `finished` (closed and
    /// consumed to its end).
    pub state: String,
    /// Member holding the lease.
    pub owner: Option<String>,
    /// Epoch of the lease (0 if it was not leased since the group last had members).
    pub epoch: u64,
    /// The group's committed offset.
    pub checkpoint: Option<u64>,
    /// First offset held.
    pub start_offset: u64,
    /// Next offset to be written (where a closed partition ended).
    pub end_offset: u64,
    /// Records between the group's position (its checkpoint, else the start) and the end.
    pub lag_records: u64,
    /// Milliseconds between the next record the group will process and the newest record
    /// (Kinesis's `MillisBehindLatest`); 0 when caught up.
    pub lag_ms: u64,
}

/// A consumer group on a stream as described (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Group name.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// Where partitions without a checkpoint start.
    pub initial: InitialPosition,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Every partition of the stream.
    pub partitions: Vec<GroupPartitionInfo>,
}

/// A consumer group in a listing (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Group name.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// Live members.
    pub members: u32,
    /// Partitions with a committed checkpoint.
    pub checkpoints: u32,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Handshake: the client's protocol version.
    Hello {
        /// Version the client speaks.
        version: u16,
    },
    /// Create a stream.
    CreateStream(CreateStream),
    /// Delete a stream.
    DeleteStream {
        /// Stream name.
        name: String,
    },
    /// List streams.
    ListStreams,
    /// Describe a stream.
    DescribeStream {
        /// Stream name.
        name: String,
    },
    /// Append records.
    Put {
        /// Stream name.
        stream: String,
        /// Records.
        records: Vec<PutRecord>,
    },
    /// Append batches the producer framed and routed itself.
    PutBatches {
        /// Stream name.
        stream: String,
        /// One batch per partition (or several, written in order).
        batches: Vec<FramedBatch>,
    },
    /// Read records.
    Read(ReadRequest),
    /// Split a partition (at the middle when `at` is `None`).
    Split {
        /// Stream and partition.
        target: PartitionRef,
        /// Starting hash key of the upper child.
        at: Option<u128>,
    },
    /// Merge two adjacent partitions.
    Merge {
        /// Stream name.
        stream: String,
        /// One partition.
        a: u32,
        /// The other.
        b: u32,
    },
    /// Change retention.
    SetRetention {
        /// Stream name.
        stream: String,
        /// New retention, ms.
        retention_ms: u64,
    },
    /// Commit a checkpoint.
    CommitCheckpoint {
        /// Consumer group.
        group: String,
        /// Stream and partition.
        target: PartitionRef,
        /// Next offset the group will read.
        offset: u64,
    },
    /// Fetch a checkpoint.
    FetchCheckpoint {
        /// Consumer group.
        group: String,
        /// Stream and partition.
        target: PartitionRef,
    },
    /// Server statistics.
    Stats,
    /// Join a consumer group.
    JoinGroup(JoinGroup),
    /// A member's heartbeat.
    Heartbeat(Heartbeat),
    /// Commit under a lease.
    CommitLease(CommitLease),
    /// Leave a group, giving up every lease at once.
    LeaveGroup(MemberRef),
    /// Describe a group on a stream.
    DescribeGroup {
        /// Group name.
        group: String,
        /// Stream name.
        stream: String,
    },
    /// List consumer groups.
    ListGroups,
}

/// A successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// The version the server will speak on this connection.
    Hello {
        /// Version.
        version: u16,
    },
    /// The created stream.
    CreateStream(StreamInfo),
    /// Deleted.
    DeleteStream,
    /// Stream names.
    ListStreams(Vec<String>),
    /// The stream.
    DescribeStream(StreamInfo),
    /// One acknowledgement per record, in request order.
    Put(Vec<PutAck>),
    /// One acknowledgement per batch, in request order.
    PutBatches(Vec<BatchAck>),
    /// Records.
    Read(ReadResponse),
    /// Children ids.
    Split([u32; 2]),
    /// Child id.
    Merge(u32),
    /// Changed.
    SetRetention,
    /// Committed.
    CommitCheckpoint,
    /// The committed offset, if any.
    FetchCheckpoint(Option<u64>),
    /// Statistics.
    Stats(ServerStats),
    /// The member's id.
    JoinGroup(Joined),
    /// The member's leases.
    Heartbeat(Vec<LeaseInfo>),
    /// Committed.
    CommitLease,
    /// Left.
    LeaveGroup,
    /// The group.
    DescribeGroup(GroupInfo),
    /// Groups, by group then stream.
    ListGroups(Vec<GroupSummary>),
}

/// An error response body: `code u16 | message_len u16 | message (UTF-8)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The code's number (see [`ErrorCode`]; unknown numbers are possible from newer servers).
    pub code: u16,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorResponse {
    /// An error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_u16(),
            message: message.into(),
        }
    }

    /// The code, if this build knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl Request {
    /// The message kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello { .. } => Kind::Hello,
            Self::CreateStream(_) => Kind::CreateStream,
            Self::DeleteStream { .. } => Kind::DeleteStream,
            Self::ListStreams => Kind::ListStreams,
            Self::DescribeStream { .. } => Kind::DescribeStream,
            Self::Put { .. } => Kind::Put,
            Self::PutBatches { .. } => Kind::PutBatches,
            Self::Read(_) => Kind::Read,
            Self::Split { .. } => Kind::Split,
            Self::Merge { .. } => Kind::Merge,
            Self::SetRetention { .. } => Kind::SetRetention,
            Self::CommitCheckpoint { .. } => Kind::CommitCheckpoint,
            Self::FetchCheckpoint { .. } => Kind::FetchCheckpoint,
            Self::Stats => Kind::Stats,
            Self::JoinGroup(_) => Kind::JoinGroup,
            Self::Heartbeat(_) => Kind::Heartbeat,
            Self::CommitLease(_) => Kind::CommitLease,
            Self::LeaveGroup(_) => Kind::LeaveGroup,
            Self::DescribeGroup { .. } => Kind::DescribeGroup,
            Self::ListGroups => Kind::ListGroups,
        }
    }

    /// Appends the request as a frame.
    pub fn encode(&self, correlation_id: u64, out: &mut BytesMut) {
        encode_frame(out, self.kind() as u16, 0, correlation_id, |b| {
            self.encode_body(b)
        });
    }

    fn encode_body(&self, b: &mut BytesMut) {
        match self {
            Self::Hello { version } => {
                b.put_slice(&HELLO_MAGIC);
                b.put_u16_le(*version);
            }
            Self::CreateStream(c) => postcard_into(b, c),
            Self::DeleteStream { name } | Self::DescribeStream { name } => postcard_into(b, name),
            Self::ListStreams | Self::Stats | Self::ListGroups => {}
            Self::JoinGroup(j) => postcard_into(b, j),
            Self::Heartbeat(h) => postcard_into(b, h),
            Self::CommitLease(c) => postcard_into(b, c),
            Self::LeaveGroup(m) => postcard_into(b, m),
            Self::DescribeGroup { group, stream } => postcard_into(b, &(group, stream)),
            Self::Put { stream, records } => encode_put_body(stream, records, b),
            Self::PutBatches { stream, batches } => encode_put_batches_body(stream, batches, b),
            Self::Read(r) => {
                put_str(b, &r.stream);
                b.put_u32_le(r.partition);
                let (tag, value) = match r.from {
                    ReadFrom::Offset(o) => (0u8, o),
                    ReadFrom::Earliest => (1, 0),
                    ReadFrom::Latest => (2, 0),
                    ReadFrom::Timestamp(t) => (3, t),
                };
                b.put_u8(tag);
                b.put_u64_le(value);
                b.put_u32_le(r.max_records);
                b.put_u32_le(r.max_bytes);
                b.put_u32_le(r.max_wait_ms);
            }
            Self::Split { target, at } => postcard_into(b, &(target, at)),
            Self::Merge {
                stream,
                a,
                b: other,
            } => postcard_into(b, &(stream, a, other)),
            Self::SetRetention {
                stream,
                retention_ms,
            } => postcard_into(b, &(stream, retention_ms)),
            Self::CommitCheckpoint {
                group,
                target,
                offset,
            } => postcard_into(b, &(group, target, offset)),
            Self::FetchCheckpoint { group, target } => postcard_into(b, &(group, target)),
        }
    }

    /// [`Request::decode`] for a body the caller owns: a `PutBatches` request keeps its batches
    /// where they are in `body` (mutable views of it, no copy), so a server can fill in their
    /// headers in place and write them as they came.
    pub fn decode_mut(kind: u16, mut body: BytesMut) -> Result<Self, WireError> {
        if kind != Kind::PutBatches as u16 {
            return Self::decode(kind, body.freeze());
        }
        fn take(body: &mut BytesMut, n: usize, field: &'static str) -> Result<BytesMut, WireError> {
            if n > body.len() {
                return Err(WireError::Truncated {
                    field,
                    need: n,
                    have: body.len(),
                });
            }
            Ok(body.split_to(n))
        }
        fn u32_of(body: &mut BytesMut, field: &'static str) -> Result<u32, WireError> {
            let b = take(body, 4, field)?;
            let b: [u8; 4] = b
                .as_ref()
                .try_into()
                .map_err(|_| WireError::Invalid(field))?;
            Ok(u32::from_le_bytes(b))
        }
        let name_len = take(&mut body, 2, "stream name")?;
        let name_len: [u8; 2] = name_len
            .as_ref()
            .try_into()
            .map_err(|_| WireError::Invalid("stream name"))?;
        let name_len = usize::from(u16::from_le_bytes(name_len));
        let name = take(&mut body, name_len, "stream name")?;
        let stream =
            String::from_utf8(name.to_vec()).map_err(|_| WireError::BadUtf8("stream name"))?;
        let count = u32_of(&mut body, "batch count")? as usize;
        if count > body.len() / 12 {
            return Err(WireError::Invalid("batch count"));
        }
        let mut batches = Vec::with_capacity(count.min(PREALLOCATE_MAX));
        for _ in 0..count {
            let partition = u32_of(&mut body, "partition")?;
            let records_crc = u32_of(&mut body, "records crc")?;
            let len = u32_of(&mut body, "batch length")? as usize;
            let batch = take(&mut body, len, "batch")?;
            batches.push(FramedBatch {
                partition,
                records_crc,
                batch,
            });
        }
        if !body.is_empty() {
            return Err(WireError::TrailingBytes(body.len()));
        }
        Ok(Self::PutBatches { stream, batches })
    }

    /// Decodes a request body of the given kind.
    pub fn decode(kind: u16, body: Bytes) -> Result<Self, WireError> {
        let kind = Kind::from_u16(kind)?;
        let mut r = BodyReader::new(body);
        let req = match kind {
            Kind::Hello => {
                if r.take(4, "hello magic")?.as_ref() != HELLO_MAGIC {
                    return Err(WireError::Invalid("hello magic"));
                }
                Self::Hello {
                    version: r.u16("version")?,
                }
            }
            Kind::CreateStream => Self::CreateStream(r.postcard()?),
            Kind::DeleteStream => Self::DeleteStream {
                name: r.postcard()?,
            },
            Kind::ListStreams => Self::ListStreams,
            Kind::DescribeStream => Self::DescribeStream {
                name: r.postcard()?,
            },
            Kind::Put => {
                let stream = r.str("stream name")?;
                let count = r.u32("record count")? as usize;
                // Each record takes at least 7 bytes; a larger count than fits is a lie.
                if count > r.remaining() / 7 {
                    return Err(WireError::Invalid("record count"));
                }
                // The count is only a claim: reserve a little and grow with records actually read.
                let mut records = Vec::with_capacity(count.min(PREALLOCATE_MAX));
                for _ in 0..count {
                    let explicit_hash_key = match r.u8("record flags")? {
                        0 => None,
                        1 => Some(r.u128("explicit hash key")?),
                        _ => return Err(WireError::Invalid("record flags")),
                    };
                    let klen = usize::from(r.u16("key length")?);
                    let partition_key = r.take(klen, "key")?;
                    let vlen = r.u32("value length")? as usize;
                    let value = r.take(vlen, "value")?;
                    records.push(PutRecord {
                        partition_key,
                        explicit_hash_key,
                        value,
                    });
                }
                Self::Put { stream, records }
            }
            Kind::PutBatches => {
                let stream = r.str("stream name")?;
                let count = r.u32("batch count")? as usize;
                // Each batch takes at least 12 bytes; a larger count than fits is a lie.
                if count > r.remaining() / 12 {
                    return Err(WireError::Invalid("batch count"));
                }
                let mut batches = Vec::with_capacity(count.min(PREALLOCATE_MAX));
                for _ in 0..count {
                    let partition = r.u32("partition")?;
                    let records_crc = r.u32("records crc")?;
                    let len = r.u32("batch length")? as usize;
                    // The server decodes with `decode_mut`, which takes the bytes where they
                    // are; here they are copied, once, to be mutable.
                    let batch = BytesMut::from(r.take(len, "batch")?.as_ref());
                    batches.push(FramedBatch {
                        partition,
                        records_crc,
                        batch,
                    });
                }
                Self::PutBatches { stream, batches }
            }
            Kind::Read => {
                let stream = r.str("stream name")?;
                let partition = r.u32("partition")?;
                let tag = r.u8("read position kind")?;
                let value = r.u64("read position")?;
                let from = match tag {
                    0 => ReadFrom::Offset(value),
                    1 => ReadFrom::Earliest,
                    2 => ReadFrom::Latest,
                    3 => ReadFrom::Timestamp(value),
                    _ => return Err(WireError::Invalid("read position kind")),
                };
                Self::Read(ReadRequest {
                    stream,
                    partition,
                    from,
                    max_records: r.u32("max records")?,
                    max_bytes: r.u32("max bytes")?,
                    max_wait_ms: r.u32("max wait")?,
                })
            }
            Kind::Split => {
                let (target, at) = r.postcard()?;
                Self::Split { target, at }
            }
            Kind::Merge => {
                let (stream, a, b) = r.postcard()?;
                Self::Merge { stream, a, b }
            }
            Kind::SetRetention => {
                let (stream, retention_ms) = r.postcard()?;
                Self::SetRetention {
                    stream,
                    retention_ms,
                }
            }
            Kind::CommitCheckpoint => {
                let (group, target, offset) = r.postcard()?;
                Self::CommitCheckpoint {
                    group,
                    target,
                    offset,
                }
            }
            Kind::FetchCheckpoint => {
                let (group, target) = r.postcard()?;
                Self::FetchCheckpoint { group, target }
            }
            Kind::Stats => Self::Stats,
            Kind::JoinGroup => Self::JoinGroup(r.postcard()?),
            Kind::Heartbeat => Self::Heartbeat(r.postcard()?),
            Kind::CommitLease => Self::CommitLease(r.postcard()?),
            Kind::LeaveGroup => Self::LeaveGroup(r.postcard()?),
            Kind::DescribeGroup => {
                let (group, stream) = r.postcard()?;
                Self::DescribeGroup { group, stream }
            }
            Kind::ListGroups => Self::ListGroups,
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// The message kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello { .. } => Kind::Hello,
            Self::CreateStream(_) => Kind::CreateStream,
            Self::DeleteStream => Kind::DeleteStream,
            Self::ListStreams(_) => Kind::ListStreams,
            Self::DescribeStream(_) => Kind::DescribeStream,
            Self::Put(_) => Kind::Put,
            Self::PutBatches(_) => Kind::PutBatches,
            Self::Read(_) => Kind::Read,
            Self::Split(_) => Kind::Split,
            Self::Merge(_) => Kind::Merge,
            Self::SetRetention => Kind::SetRetention,
            Self::CommitCheckpoint => Kind::CommitCheckpoint,
            Self::FetchCheckpoint(_) => Kind::FetchCheckpoint,
            Self::Stats(_) => Kind::Stats,
            Self::JoinGroup(_) => Kind::JoinGroup,
            Self::Heartbeat(_) => Kind::Heartbeat,
            Self::CommitLease => Kind::CommitLease,
            Self::LeaveGroup => Kind::LeaveGroup,
            Self::DescribeGroup(_) => Kind::DescribeGroup,
            Self::ListGroups(_) => Kind::ListGroups,
        }
    }

    /// Appends the response as a frame.
    pub fn encode(&self, correlation_id: u64, out: &mut BytesMut) {
        encode_frame(
            out,
            self.kind() as u16,
            FLAG_RESPONSE,
            correlation_id,
            |b| self.encode_body(b),
        );
    }

    fn encode_body(&self, b: &mut BytesMut) {
        match self {
            Self::Hello { version } => b.put_u16_le(*version),
            Self::CreateStream(s) | Self::DescribeStream(s) => postcard_into(b, s),
            Self::DeleteStream
            | Self::SetRetention
            | Self::CommitCheckpoint
            | Self::CommitLease
            | Self::LeaveGroup => {}
            Self::JoinGroup(j) => postcard_into(b, j),
            Self::Heartbeat(leases) => postcard_into(b, leases),
            Self::DescribeGroup(g) => postcard_into(b, g),
            Self::ListGroups(groups) => postcard_into(b, groups),
            Self::ListStreams(names) => postcard_into(b, names),
            Self::Put(acks) => {
                b.put_u32_le(u32::try_from(acks.len()).unwrap_or(u32::MAX));
                for a in acks {
                    b.put_u32_le(a.partition);
                    b.put_u64_le(a.offset);
                }
            }
            Self::PutBatches(acks) => {
                b.put_u32_le(u32::try_from(acks.len()).unwrap_or(u32::MAX));
                for a in acks {
                    b.put_u32_le(a.partition);
                    b.put_u16_le(a.status);
                    b.put_u32_le(a.record_count);
                    b.put_u64_le(a.base_offset);
                }
            }
            Self::Read(r) => {
                // One reservation for the whole answer: growing a buffer of megabytes by
                // doubling would copy it several times over.
                b.reserve(
                    28 + r
                        .records
                        .iter()
                        .map(|rec| 22 + rec.key.len() + rec.value.len())
                        .sum::<usize>(),
                );
                b.put_u64_le(r.start_offset);
                b.put_u64_le(r.end_offset);
                b.put_u64_le(r.next_offset);
                b.put_u32_le(u32::try_from(r.records.len()).unwrap_or(u32::MAX));
                for rec in &r.records {
                    b.put_u64_le(rec.offset);
                    b.put_u64_le(rec.timestamp_ms);
                    b.put_u16_le(u16::try_from(rec.key.len()).unwrap_or(u16::MAX));
                    b.put_slice(&rec.key);
                    b.put_u32_le(u32::try_from(rec.value.len()).unwrap_or(u32::MAX));
                    b.put_slice(&rec.value);
                }
            }
            Self::Split(ids) => postcard_into(b, ids),
            Self::Merge(id) => postcard_into(b, id),
            Self::FetchCheckpoint(o) => postcard_into(b, o),
            Self::Stats(s) => postcard_into(b, s),
        }
    }

    /// Decodes a (non-error) response body of the given kind.
    pub fn decode(kind: u16, body: Bytes) -> Result<Self, WireError> {
        let kind = Kind::from_u16(kind)?;
        let mut r = BodyReader::new(body);
        let resp = match kind {
            Kind::Hello => Self::Hello {
                version: r.u16("version")?,
            },
            Kind::CreateStream => Self::CreateStream(r.postcard()?),
            Kind::DescribeStream => Self::DescribeStream(r.postcard()?),
            Kind::DeleteStream => Self::DeleteStream,
            Kind::SetRetention => Self::SetRetention,
            Kind::CommitCheckpoint => Self::CommitCheckpoint,
            Kind::ListStreams => Self::ListStreams(r.postcard()?),
            Kind::Put => {
                let count = r.u32("ack count")? as usize;
                if count > r.remaining() / 12 {
                    return Err(WireError::Invalid("ack count"));
                }
                let mut acks = Vec::with_capacity(count);
                for _ in 0..count {
                    acks.push(PutAck {
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                    });
                }
                Self::Put(acks)
            }
            Kind::PutBatches => {
                let count = r.u32("ack count")? as usize;
                if count > r.remaining() / 18 {
                    return Err(WireError::Invalid("ack count"));
                }
                let mut acks = Vec::with_capacity(count);
                for _ in 0..count {
                    acks.push(BatchAck {
                        partition: r.u32("partition")?,
                        status: r.u16("status")?,
                        record_count: r.u32("record count")?,
                        base_offset: r.u64("base offset")?,
                    });
                }
                Self::PutBatches(acks)
            }
            Kind::Read => {
                let start_offset = r.u64("start offset")?;
                let end_offset = r.u64("end offset")?;
                let next_offset = r.u64("next offset")?;
                let count = r.u32("record count")? as usize;
                if count > r.remaining() / 22 {
                    return Err(WireError::Invalid("record count"));
                }
                let mut records = Vec::with_capacity(count.min(PREALLOCATE_MAX));
                for _ in 0..count {
                    let offset = r.u64("offset")?;
                    let timestamp_ms = r.u64("timestamp")?;
                    let klen = usize::from(r.u16("key length")?);
                    let key = r.take(klen, "key")?;
                    let vlen = r.u32("value length")? as usize;
                    let value = r.take(vlen, "value")?;
                    records.push(WireRecord {
                        offset,
                        timestamp_ms,
                        key,
                        value,
                    });
                }
                Self::Read(ReadResponse {
                    start_offset,
                    end_offset,
                    next_offset,
                    records,
                })
            }
            Kind::Split => Self::Split(r.postcard()?),
            Kind::Merge => Self::Merge(r.postcard()?),
            Kind::FetchCheckpoint => Self::FetchCheckpoint(r.postcard()?),
            Kind::Stats => Self::Stats(r.postcard()?),
            Kind::JoinGroup => Self::JoinGroup(r.postcard()?),
            Kind::Heartbeat => Self::Heartbeat(r.postcard()?),
            Kind::CommitLease => Self::CommitLease,
            Kind::LeaveGroup => Self::LeaveGroup,
            Kind::DescribeGroup => Self::DescribeGroup(r.postcard()?),
            Kind::ListGroups => Self::ListGroups(r.postcard()?),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Most entries reserved up front from a count read off the wire.
const PREALLOCATE_MAX: usize = 1024;

/// The record count a `Put` request body announces, read without decoding the records, so a
/// server can refuse a put with too many records before spending memory on them. `None` if the
/// body is too short to say.
pub fn put_record_count(body: &[u8]) -> Option<u32> {
    let name_len = usize::from(u16::from_le_bytes(*body.first_chunk::<2>()?));
    let rest = body.get(2 + name_len..)?;
    Some(u32::from_le_bytes(*rest.first_chunk::<4>()?))
}

/// The batch count a `PutBatches` request body announces, read without decoding the batches (as
/// [`put_record_count`] for `Put`). Every batch holds at least one record, so a count above the
/// server's records-per-put limit can be refused before any memory is spent on it.
pub fn put_batches_count(body: &[u8]) -> Option<u32> {
    put_record_count(body)
}

/// Longest error message sent; longer ones are cut at a character boundary.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 4096;

impl ErrorResponse {
    /// Appends the error as a response frame of `kind`.
    pub fn encode(&self, kind: u16, correlation_id: u64, out: &mut BytesMut) {
        encode_frame(out, kind, FLAG_RESPONSE | FLAG_ERROR, correlation_id, |b| {
            let mut end = self.message.len().min(ERROR_MESSAGE_BYTES_MAX);
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            let msg = self.message.get(..end).unwrap_or_default();
            b.put_u16_le(self.code);
            b.put_u16_le(msg.len() as u16);
            b.put_slice(msg.as_bytes());
        });
    }

    /// Decodes an error body.
    pub fn decode(body: Bytes) -> Result<Self, WireError> {
        let mut r = BodyReader::new(body);
        let code = r.u16("error code")?;
        let len = usize::from(r.u16("message length")?);
        let msg = r.take(len, "message")?;
        r.finish()?;
        let message = String::from_utf8(msg.to_vec()).map_err(|_| WireError::BadUtf8("message"))?;
        Ok(Self { code, message })
    }
}

/// Appends the body of a `Put` request for `records` to `b`, sized in one reservation. Exposed so
/// a client can encode a put once and send the same bytes many times (a load generator, a replay
/// tool); [`Request::encode`] uses it for every put.
pub fn encode_put_body(stream: &str, records: &[PutRecord], b: &mut BytesMut) {
    let size = 2
        + stream.len()
        + 4
        + records
            .iter()
            .map(|r| {
                1 + r.explicit_hash_key.map_or(0, |_| 16)
                    + 2
                    + r.partition_key.len()
                    + 4
                    + r.value.len()
            })
            .sum::<usize>();
    b.reserve(size);
    put_str(b, stream);
    b.put_u32_le(u32::try_from(records.len()).unwrap_or(u32::MAX));
    for r in records {
        match r.explicit_hash_key {
            Some(h) => {
                b.put_u8(1);
                b.put_u128_le(h);
            }
            None => b.put_u8(0),
        }
        b.put_u16_le(u16::try_from(r.partition_key.len()).unwrap_or(u16::MAX));
        b.put_slice(&r.partition_key);
        b.put_u32_le(u32::try_from(r.value.len()).unwrap_or(u32::MAX));
        b.put_slice(&r.value);
    }
}

/// Appends the body of a `PutBatches` request to `b`, sized in one reservation. Exposed for the
/// same reason as [`encode_put_body`].
pub fn encode_put_batches_body(stream: &str, batches: &[FramedBatch], b: &mut BytesMut) {
    b.reserve(2 + stream.len() + 4 + batches.iter().map(|x| 12 + x.batch.len()).sum::<usize>());
    put_str(b, stream);
    b.put_u32_le(u32::try_from(batches.len()).unwrap_or(u32::MAX));
    for x in batches {
        b.put_u32_le(x.partition);
        b.put_u32_le(x.records_crc);
        b.put_u32_le(u32::try_from(x.batch.len()).unwrap_or(u32::MAX));
        b.put_slice(&x.batch);
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16_le(u16::try_from(s.len()).unwrap_or(u16::MAX));
    b.put_slice(s.as_bytes());
}

fn postcard_into<T: Serialize + ?Sized>(b: &mut BytesMut, value: &T) {
    // Serializing the plain structs of this module into a Vec cannot fail.
    let bytes = postcard::to_allocvec(value).unwrap_or_default();
    b.put_slice(&bytes);
}

/// A bounds-checked little-endian reader over a body that hands out zero-copy slices.
struct BodyReader {
    body: Bytes,
    pos: usize,
}

impl BodyReader {
    fn new(body: Bytes) -> Self {
        Self { body, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                field,
                need: n,
                have: self.remaining(),
            });
        }
        let out = self.body.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// A fixed-size field, read in place: a `Bytes` slice per integer (as `take` makes) would
    /// cost two atomic reference-count updates each, several per record of a read answer.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let Some(out) = self
            .body
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
        else {
            return Err(WireError::Truncated {
                field,
                need: N,
                have: self.remaining(),
            });
        };
        self.pos += N;
        Ok(*out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn u128(&mut self, field: &'static str) -> Result<u128, WireError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }

    fn str(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u16(field)?);
        let b = self.take(len, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadUtf8(field))
    }

    /// Decodes the rest of the body as one postcard value.
    fn postcard<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        let rest = self.body.get(self.pos..).unwrap_or_default();
        let (value, left) =
            postcard::take_from_bytes(rest).map_err(|e| WireError::Postcard(e.to_string()))?;
        self.pos = self.body.len() - left.len();
        Ok(value)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}
