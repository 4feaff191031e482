//! Mapping the engine's errors to wire error codes. Only the server knows both sides.

use sluice_broker::Error as BrokerError;
use sluice_log::Error as LogError;
use sluice_protocol::ErrorCode;
use sluice_protocol::message::ErrorResponse;

/// The wire error for a broker error.
pub fn to_wire(e: &BrokerError) -> ErrorResponse {
    let code = match e {
        BrokerError::InvalidName { .. } => ErrorCode::InvalidName,
        BrokerError::StreamExists(_) => ErrorCode::StreamExists,
        BrokerError::StreamNotFound(_) => ErrorCode::StreamNotFound,
        BrokerError::PartitionNotFound { .. } => ErrorCode::PartitionNotFound,
        BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        BrokerError::InvalidPartitionKey { .. } => ErrorCode::InvalidPartitionKey,
        // Hash keys travel as 128-bit integers, so the server never parses text into one;
        // this only comes from a caller parsing text, and is a bad request like any other.
        BrokerError::InvalidHashKey(_) => ErrorCode::MalformedRequest,
        BrokerError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        BrokerError::EmptyPut => ErrorCode::EmptyPut,
        BrokerError::TooManyRecords { .. } => ErrorCode::TooManyRecords,
        BrokerError::PutTooLarge { .. } => ErrorCode::PutTooLarge,
        BrokerError::BadBatch { .. } => ErrorCode::BadBatch,
        BrokerError::PartitionClosed { .. } => ErrorCode::PartitionClosed,
        BrokerError::InvalidSplitKey { .. } => ErrorCode::InvalidSplitKey,
        BrokerError::NotAdjacent { .. } => ErrorCode::NotAdjacent,
        BrokerError::TooManyPartitions { .. } => ErrorCode::TooManyPartitions,
        BrokerError::CheckpointBeyondEnd { .. } => ErrorCode::CheckpointBeyondEnd,
        BrokerError::UnknownMember(_) => ErrorCode::UnknownMember,
        BrokerError::NotLeaseHolder { .. } => ErrorCode::NotLeaseHolder,
        BrokerError::GroupNotFound { .. } => ErrorCode::GroupNotFound,
        BrokerError::TooManyMembers { .. } => ErrorCode::TooManyMembers,
        BrokerError::GroupActive { .. } => ErrorCode::GroupActive,
        BrokerError::Log(l) => match l {
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Corruption { .. } => ErrorCode::Corruption,
            LogError::Io { .. }
            | LogError::Poisoned { .. }
            | LogError::OffsetSpaceExhausted { .. } => ErrorCode::StorageUnavailable,
            _ => ErrorCode::Internal,
        },
        BrokerError::Io { .. } => ErrorCode::StorageUnavailable,
        _ => ErrorCode::Internal,
    };
    ErrorResponse::new(code, e.to_string())
}
