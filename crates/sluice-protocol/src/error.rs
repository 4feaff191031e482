//! Decoding errors. They describe bytes, not the broker: the server maps them to
//! `ErrorCode::MalformedRequest` (or closes the connection when the framing itself is broken).

/// What is wrong with bytes read from the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame header announcing a body larger than allowed. Nothing was allocated for it.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Header flags this version does not define.
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    /// A message kind this version does not define.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// The body ended inside a field.
    #[error("body ends inside {field}: need {need} bytes, have {have}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected bytes after the body")]
    TrailingBytes(usize),
    /// A name or message that is not UTF-8.
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
    /// A field with a value this version does not allow.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A postcard-encoded body that does not decode.
    #[error("undecodable body: {0}")]
    Postcard(String),
}
