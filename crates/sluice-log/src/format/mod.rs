//! The on-disk format: file names, headers, record batches and index entries, as bytes only.
//!
//! Nothing in this module does I/O. `docs/format.md` is the human description of every byte
//! written here; the golden-bytes tests in `batch.rs` and `index.rs` hold the two together.
//! Every integer on disk is little-endian.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

pub mod batch;
pub mod index;
pub mod marker;

use std::fmt;

/// The format version every file type written by this build carries.
pub const FORMAT_VERSION: u16 = 1;

/// Magic of a segment file (`{base_offset:020}.log`).
pub const SEGMENT_MAGIC: [u8; 4] = *b"SLOG";
/// Magic of an offset index file (`{base_offset:020}.index`).
pub const OFFSET_INDEX_MAGIC: [u8; 4] = *b"SIDX";
/// Magic of a time index file (`{base_offset:020}.timeindex`).
pub const TIME_INDEX_MAGIC: [u8; 4] = *b"STIX";

/// Every segment and index file starts with this 16-byte header:
/// `magic [4] | version u16 | flags u16 | base_offset u64`.
pub const FILE_HEADER_LEN: usize = 16;

/// File name suffixes.
pub const LOG_SUFFIX: &str = "log";
/// Offset index suffix.
pub const OFFSET_INDEX_SUFFIX: &str = "index";
/// Time index suffix.
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Name of the clean-shutdown marker inside a partition directory.
pub const CLEAN_MARKER_NAME: &str = "clean-shutdown";
/// Name of the synced-point hint inside a partition directory (see [`marker`]).
pub const SYNCED_POINT_NAME: &str = "synced-point";
/// Name of the recovery point inside a partition directory (see [`marker::RecoveryPoint`]).
pub const RECOVERY_POINT_NAME: &str = "recovery-point";
/// Suffix of temporary files written before an atomic rename.
pub const TEMP_SUFFIX: &str = "tmp";

/// Why bytes read back from disk are not what this format allows.
///
/// These are facts about data, never about the environment: I/O failures are reported
/// separately (`Error::Io`), so a caller can tell a bad disk from a bad byte.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The file or batch does not start with the expected magic.
    BadMagic {
        /// The magic this file type must carry.
        expected: [u8; 4],
        /// What the bytes hold instead.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    UnsupportedVersion(u16),
    /// Header flags this build does not understand.
    UnsupportedFlags(u16),
    /// The stored CRC does not match the bytes it covers.
    ChecksumMismatch {
        /// CRC stored in the data.
        expected: u32,
        /// CRC computed over the bytes read.
        actual: u32,
    },
    /// Fewer bytes are present than the structure needs.
    Truncated {
        /// Bytes the structure needs.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A batch length outside `[BATCH_HEADER_LEN, BATCH_BYTES_MAX]`.
    BadBatchLength(u32),
    /// A batch that claims to hold no records.
    EmptyBatch,
    /// A record whose fields do not fit inside its batch, or bytes left after the last record.
    BadRecordLayout {
        /// Index of the record inside its batch.
        index: u32,
    },
    /// A record whose offset delta is not its position inside the batch.
    BadOffsetDelta {
        /// Index of the record inside its batch.
        index: u32,
        /// The delta stored.
        found: u32,
    },
    /// A record timestamp after the batch's max timestamp, or a max before the first.
    BadTimestamp {
        /// Index of the record inside its batch, or `u32::MAX` for the batch header.
        index: u32,
    },
    /// A batch whose base offset is not the next offset of the log at that point.
    OffsetMismatch {
        /// The offset the log expects next.
        expected: u64,
        /// The base offset the batch holds.
        found: u64,
    },
    /// A batch whose timestamps go back in time relative to the batch before it.
    TimestampRegression {
        /// Max timestamp of the previous batch.
        previous_ms: u64,
        /// First timestamp of this batch.
        found_ms: u64,
    },
    /// A file header whose base offset is not the one in its file name.
    BaseOffsetMismatch {
        /// Base offset from the file name.
        expected: u64,
        /// Base offset from the header.
        found: u64,
    },
    /// An index file whose entries are not a valid sparse index of its segment.
    BadIndex(&'static str),
    /// A batch whose last offset would not fit in a `u64`.
    OffsetOverflow,
    /// A segment whose batches end before the offset where the next segment begins.
    MissingRecords {
        /// Offset the next segment starts at.
        expected_end: u64,
        /// Offset the segment's batches end at.
        found_end: u64,
    },
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { expected, found } => write!(
                f,
                "bad magic: expected {:?}, found {:02x?}",
                String::from_utf8_lossy(expected),
                found
            ),
            Self::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Self::UnsupportedFlags(v) => write!(f, "unsupported header flags {v:#06x}"),
            Self::ChecksumMismatch { expected, actual } => write!(
                f,
                "checksum mismatch: stored {expected:#010x}, computed {actual:#010x}"
            ),
            Self::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            Self::BadBatchLength(len) => write!(f, "impossible batch length {len}"),
            Self::EmptyBatch => write!(f, "batch holds no records"),
            Self::BadRecordLayout { index } => {
                write!(f, "record {index} does not fit its batch")
            }
            Self::BadOffsetDelta { index, found } => {
                write!(f, "record {index} has offset delta {found}")
            }
            Self::BadTimestamp { index } => write!(f, "timestamp out of range (record {index})"),
            Self::OffsetMismatch { expected, found } => {
                write!(f, "batch base offset {found}, expected {expected}")
            }
            Self::TimestampRegression {
                previous_ms,
                found_ms,
            } => write!(
                f,
                "timestamp goes back from {previous_ms} ms to {found_ms} ms"
            ),
            Self::BaseOffsetMismatch { expected, found } => write!(
                f,
                "header base offset {found} does not match file name {expected}"
            ),
            Self::BadIndex(why) => write!(f, "inconsistent index: {why}"),
            Self::OffsetOverflow => write!(f, "batch offsets overflow a u64"),
            Self::MissingRecords {
                expected_end,
                found_end,
            } => write!(
                f,
                "segment data ends at offset {found_end}, but the log continues from {expected_end}"
            ),
        }
    }
}

/// The kind of file a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `{base_offset:020}.log`
    Segment,
    /// `{base_offset:020}.index`
    OffsetIndex,
    /// `{base_offset:020}.timeindex`
    TimeIndex,
}

impl FileKind {
    /// The magic of this file kind.
    pub fn magic(self) -> [u8; 4] {
        match self {
            Self::Segment => SEGMENT_MAGIC,
            Self::OffsetIndex => OFFSET_INDEX_MAGIC,
            Self::TimeIndex => TIME_INDEX_MAGIC,
        }
    }

    /// The file name suffix of this file kind.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Segment => LOG_SUFFIX,
            Self::OffsetIndex => OFFSET_INDEX_SUFFIX,
            Self::TimeIndex => TIME_INDEX_SUFFIX,
        }
    }

    /// The file name for a segment with this base offset: 20 digits, so that name order is
    /// numeric order (`u64::MAX` has 20 digits).
    pub fn file_name(self, base_offset: u64) -> String {
        format!("{base_offset:020}.{}", self.suffix())
    }

    /// Parses `{base_offset:020}.{suffix}` back into a kind and base offset.
    pub fn parse_file_name(name: &str) -> Option<(Self, u64)> {
        let (stem, suffix) = name.split_once('.')?;
        let kind = [Self::Segment, Self::OffsetIndex, Self::TimeIndex]
            .into_iter()
            .find(|k| k.suffix() == suffix)?;
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((kind, stem.parse().ok()?))
    }
}

/// Encodes the 16-byte header that starts every segment and index file.
pub fn encode_file_header(kind: FileKind, base_offset: u64) -> [u8; FILE_HEADER_LEN] {
    let mut out = [0u8; FILE_HEADER_LEN];
    let magic = kind.magic();
    let (m, rest) = out.split_at_mut(4);
    m.copy_from_slice(&magic);
    let (version, rest) = rest.split_at_mut(2);
    version.copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let (flags, base) = rest.split_at_mut(2);
    flags.copy_from_slice(&0u16.to_le_bytes());
    base.copy_from_slice(&base_offset.to_le_bytes());
    out
}

/// Checks a file header against the kind and the base offset its name promises.
pub fn decode_file_header(
    kind: FileKind,
    expected_base_offset: u64,
    bytes: &[u8],
) -> Result<(), CorruptionKind> {
    let mut r = Reader::new(bytes);
    read_preamble(&mut r, kind.magic())?;
    let base = r.u64()?;
    if base != expected_base_offset {
        return Err(CorruptionKind::BaseOffsetMismatch {
            expected: expected_base_offset,
            found: base,
        });
    }
    Ok(())
}

/// Reads and checks the `magic [4] | version u16 | flags u16` preamble every file starts with.
pub(crate) fn read_preamble(r: &mut Reader<'_>, magic: [u8; 4]) -> Result<(), CorruptionKind> {
    let found = r.array::<4>()?;
    if found != magic {
        return Err(CorruptionKind::BadMagic {
            expected: magic,
            found,
        });
    }
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(CorruptionKind::UnsupportedVersion(version));
    }
    let flags = r.u16()?;
    if flags != 0 {
        return Err(CorruptionKind::UnsupportedFlags(flags));
    }
    Ok(())
}

/// A bounds-checked little-endian reader over a byte slice. Every read either returns the
/// value or `Truncated`, so decoding arbitrary bytes can never index out of bounds.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptionKind> {
        let end = self
            .position
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(CorruptionKind::Truncated {
                need: (self.position as u64).saturating_add(n as u64),
                have: self.bytes.len() as u64,
            })?;
        let out = self
            .bytes
            .get(self.position..end)
            .ok_or(CorruptionKind::Truncated {
                need: end as u64,
                have: self.bytes.len() as u64,
            })?;
        self.position = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptionKind> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CorruptionKind> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CorruptionKind> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CorruptionKind> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_numerically_and_parse_back() {
        let name = FileKind::Segment.file_name(42);
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(
            FileKind::parse_file_name(&name),
            Some((FileKind::Segment, 42))
        );
        assert_eq!(
            FileKind::parse_file_name(&FileKind::TimeIndex.file_name(u64::MAX)),
            Some((FileKind::TimeIndex, u64::MAX))
        );
        assert_eq!(FileKind::parse_file_name("42.log"), None);
        assert_eq!(FileKind::parse_file_name("0000000000000000004x.log"), None);
        assert_eq!(FileKind::parse_file_name("00000000000000000042.txt"), None);
        assert_eq!(FileKind::parse_file_name("99999999999999999999.log"), None);
    }

    #[test]
    fn file_header_golden_bytes() {
        // docs/format.md, "File header": segment with base offset 258.
        let bytes = encode_file_header(FileKind::Segment, 258);
        assert_eq!(
            bytes,
            [
                0x53, 0x4c, 0x4f, 0x47, 0x01, 0x00, 0x00, 0x00, 0x02, 0x01, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(decode_file_header(FileKind::Segment, 258, &bytes), Ok(()));
    }

    #[test]
    fn file_header_errors() {
        let good = encode_file_header(FileKind::OffsetIndex, 7);
        assert_eq!(
            decode_file_header(FileKind::TimeIndex, 7, &good),
            Err(CorruptionKind::BadMagic {
                expected: TIME_INDEX_MAGIC,
                found: OFFSET_INDEX_MAGIC
            })
        );
        assert_eq!(
            decode_file_header(FileKind::OffsetIndex, 8, &good),
            Err(CorruptionKind::BaseOffsetMismatch {
                expected: 8,
                found: 7
            })
        );
        let mut bad_version = good;
        bad_version[4] = 9;
        assert_eq!(
            decode_file_header(FileKind::OffsetIndex, 7, &bad_version),
            Err(CorruptionKind::UnsupportedVersion(9))
        );
        let mut bad_flags = good;
        bad_flags[6] = 1;
        assert_eq!(
            decode_file_header(FileKind::OffsetIndex, 7, &bad_flags),
            Err(CorruptionKind::UnsupportedFlags(1))
        );
        assert_eq!(
            decode_file_header(FileKind::OffsetIndex, 7, &good[..10]),
            Err(CorruptionKind::Truncated { need: 16, have: 10 })
        );
    }
}
