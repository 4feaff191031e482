//! The client's error type.

use std::io;

use sluice_protocol::{ErrorCode, WireError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing the socket failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that do not decode, or a response frame larger than
    /// [`ClientConfig::max_frame_body_bytes`](crate::ClientConfig::max_frame_body_bytes).
    #[error("bad response: {0}")]
    Wire(#[from] WireError),
    /// The server answered with an error.
    #[error("server error {code}: {message}")]
    Server {
        /// The code's number on the wire.
        code: u16,
        /// The code, when this build knows the number (a newer server may send new ones).
        kind: Option<ErrorCode>,
        /// The server's explanation.
        message: String,
    },
    /// No answer within the request timeout. The request may still have been carried out: a
    /// timed-out put may have been appended.
    #[error("request timed out")]
    Timeout,
    /// The connection closed before the answer came. As with a timeout, the request may have
    /// been carried out.
    #[error("connection closed")]
    ConnectionClosed,
    /// The server speaks a protocol version this client does not.
    #[error("server speaks protocol version {0}, this client speaks {PROTOCOL_VERSION}", PROTOCOL_VERSION = sluice_protocol::PROTOCOL_VERSION)]
    UnsupportedVersion(u16),
    /// The producer was closed (or its task stopped) before the record could be sent.
    #[error("producer closed")]
    ProducerClosed,
}

impl ClientError {
    /// The protocol error code behind this error: the server's code for
    /// [`ClientError::Server`] (when this build knows the number), and
    /// [`ErrorCode::UnsupportedVersion`] for [`ClientError::UnsupportedVersion`], which means
    /// the same thing found on the client's side. `None` for everything else.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { kind, .. } => *kind,
            Self::UnsupportedVersion(_) => Some(ErrorCode::UnsupportedVersion),
            _ => None,
        }
    }

    /// A copy of this error for each record of a failed batch. `io::Error` is not `Clone`,
    /// so an I/O error is copied as its kind and message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Io(e) => Self::Io(io::Error::new(e.kind(), e.to_string())),
            Self::Wire(e) => Self::Wire(e.clone()),
            Self::Server {
                code,
                kind,
                message,
            } => Self::Server {
                code: *code,
                kind: *kind,
                message: message.clone(),
            },
            Self::Timeout => Self::Timeout,
            Self::ConnectionClosed => Self::ConnectionClosed,
            Self::UnsupportedVersion(v) => Self::UnsupportedVersion(*v),
            Self::ProducerClosed => Self::ProducerClosed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_maps_known_and_unknown_numbers() {
        let known = ClientError::Server {
            code: 12,
            kind: ErrorCode::from_u16(12),
            message: "no such stream".into(),
        };
        assert_eq!(known.code(), Some(ErrorCode::StreamNotFound));
        let unknown = ClientError::Server {
            code: 9999,
            kind: None,
            message: String::new(),
        };
        assert_eq!(unknown.code(), None);
        assert_eq!(
            ClientError::UnsupportedVersion(9).code(),
            Some(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(ClientError::Timeout.code(), None);
    }

    #[test]
    fn duplicate_keeps_the_variant() {
        let io = ClientError::Io(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        assert!(
            matches!(io.duplicate(), ClientError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
        );
        assert!(matches!(
            ClientError::Timeout.duplicate(),
            ClientError::Timeout
        ));
    }
}
