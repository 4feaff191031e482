//! Error codes: stable numbers that a client in any language can switch on. A number, once
//! given, keeps its meaning forever; new codes get new numbers, and gaps are left between groups
//! for them.

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The client's protocol version is not one the server speaks.
    UnsupportedVersion = 1,
    /// The request body does not decode.
    MalformedRequest = 2,
    /// The frame is larger than the server accepts.
    FrameTooLarge = 3,
    /// The request kind is unknown.
    UnknownKind = 4,
    /// A request came before the `Hello` handshake.
    HandshakeRequired = 5,
    /// A stream or group name that is not allowed.
    InvalidName = 10,
    /// The stream already exists.
    StreamExists = 11,
    /// The stream does not exist.
    StreamNotFound = 12,
    /// The partition does not exist.
    PartitionNotFound = 13,
    /// A stream setting out of range.
    InvalidConfig = 14,
    /// A partition key of 0 or more than 256 bytes.
    InvalidPartitionKey = 20,
    /// A record larger than the stream's limit.
    RecordTooLarge = 22,
    /// A put with no records.
    EmptyPut = 23,
    /// A put with more records than allowed.
    TooManyRecords = 24,
    /// A put with more bytes than allowed.
    PutTooLarge = 25,
    /// A producer-framed batch (`PutBatches`) whose layout is wrong or whose records do not
    /// match the CRC sent with them; nothing of the request was written.
    BadBatch = 26,
    /// The partition is closed by a reshard.
    PartitionClosed = 30,
    /// A split key outside the partition's range.
    InvalidSplitKey = 31,
    /// A merge of partitions that are not adjacent.
    NotAdjacent = 32,
    /// The stream has the most partitions it may have.
    TooManyPartitions = 33,
    /// A read below the start or past the end of a partition.
    OffsetOutOfRange = 40,
    /// A checkpoint past the end of its partition.
    CheckpointBeyondEnd = 41,
    /// Stored data failed its checksum or structure checks; nothing corrupt was returned.
    Corruption = 50,
    /// The partition cannot be written now (a failed fsync, a full disk, an I/O error).
    StorageUnavailable = 51,
    /// The server already has its maximum of connections; retry later. (A connection with too
    /// many requests in flight is not answered with this: the server stops reading from it.)
    Busy = 52,
    /// A group request from a member the coordinator does not know: it never joined, it left,
    /// or it missed heartbeats for longer than its session timeout (and lost its leases). The
    /// member should join again.
    UnknownMember = 70,
    /// A group commit for a partition lease the member no longer holds at that epoch: the
    /// lease moved to another member (fencing), so the commit was not applied.
    NotLeaseHolder = 71,
    /// The consumer group has no members and no checkpoints on this stream.
    GroupNotFound = 72,
    /// The group, or the server, has the most members it may have.
    TooManyMembers = 73,
    /// A plain checkpoint commit while the group has live members on the stream: only they
    /// move its positions.
    GroupActive = 74,
    /// A failure inside the server that no request should be able to cause (a bug); the message
    /// says what.
    Internal = 60,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 31] = [
        Self::UnsupportedVersion,
        Self::MalformedRequest,
        Self::FrameTooLarge,
        Self::UnknownKind,
        Self::HandshakeRequired,
        Self::InvalidName,
        Self::StreamExists,
        Self::StreamNotFound,
        Self::PartitionNotFound,
        Self::InvalidConfig,
        Self::InvalidPartitionKey,
        Self::RecordTooLarge,
        Self::EmptyPut,
        Self::TooManyRecords,
        Self::PutTooLarge,
        Self::BadBatch,
        Self::PartitionClosed,
        Self::InvalidSplitKey,
        Self::NotAdjacent,
        Self::TooManyPartitions,
        Self::OffsetOutOfRange,
        Self::CheckpointBeyondEnd,
        Self::Corruption,
        Self::StorageUnavailable,
        Self::Busy,
        Self::Internal,
        Self::UnknownMember,
        Self::NotLeaseHolder,
        Self::GroupNotFound,
        Self::TooManyMembers,
        Self::GroupActive,
    ];

    /// The code's number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, `None` for a number this build does not know (a client should
    /// treat it like `Internal` and show the message).
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u16()), "{c:?} reuses a number");
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
        }
        assert_eq!(ErrorCode::from_u16(9999), None);
        // Stable numbers: these must never change.
        assert_eq!(ErrorCode::StreamNotFound.as_u16(), 12);
        assert_eq!(ErrorCode::OffsetOutOfRange.as_u16(), 40);
        assert_eq!(ErrorCode::Internal.as_u16(), 60);
    }
}
