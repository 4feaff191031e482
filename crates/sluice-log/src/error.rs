//! The log's one error type.

use std::io;
use std::path::PathBuf;

pub use crate::format::CorruptionKind;

/// Everything that can go wrong in the log. I/O failures (the environment) and corruption (bad
/// bytes on disk) are separate variants, so a caller can tell a full disk from a flipped bit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what the format allows.
    #[error("corrupt data in {path} at byte {position}: {kind}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged structure inside the file.
        position: u64,
        /// What is wrong.
        kind: CorruptionKind,
    },
    /// A read asked for an offset the log does not hold.
    #[error("offset {requested} is outside the log's range [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// First offset still held (the trim horizon).
        start: u64,
        /// Next offset to be written.
        end: u64,
    },
    /// An earlier fsync or an unrecoverable write failed; the log refuses writes until reopened.
    #[error("the log at {path} refuses writes after an earlier failure ({reason}); reopen it")]
    Poisoned {
        /// The partition directory.
        path: PathBuf,
        /// What failed first.
        reason: String,
    },
    /// The log has assigned every offset a `u64` can hold.
    #[error("the log has no offsets left after {end}")]
    OffsetSpaceExhausted {
        /// The log's end offset.
        end: u64,
    },
    /// An append that breaks a limit or carries no records.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// Options that cannot work together.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

/// Result alias for the log.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        position: u64,
        kind: CorruptionKind,
    ) -> Self {
        Self::Corruption {
            path: path.into(),
            position,
            kind,
        }
    }

    /// True for corruption of data on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Corruption { .. })
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
