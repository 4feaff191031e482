//! The clean-shutdown marker: written last by a clean close, removed first by the next open.
//!
//! ```text
//! clean-shutdown (36 B), all integers little-endian:
//!   0  magic               [4]  "SCLN"
//!   4  version             u16  1
//!   6  flags               u16  0
//!   8  end_offset          u64  next offset the log would assign
//!  16  active_base_offset  u64  base offset of the active (last) segment
//!  24  active_len          u64  length in bytes of the active segment file
//!  32  crc32               u32  CRC-32 of bytes [0, 32)
//! ```
//!
//! Its presence means every file was fsynced and the indexes are complete, so open need not read
//! the segment data. Any mismatch with the files found sends open down the crash path instead.

use super::{CorruptionKind, FORMAT_VERSION, Reader, read_preamble};

/// Magic of the clean-shutdown marker.
pub const MARKER_MAGIC: [u8; 4] = *b"SCLN";
/// Magic of the synced-point hint, which has the same layout: the active segment's base offset
/// and the end offset and file length up to which it was last fsynced.
pub const SYNCED_MAGIC: [u8; 4] = *b"SSYN";
/// Encoded size of the marker.
pub const MARKER_LEN: usize = 36;

/// What a clean close knew about the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanMarker {
    /// Next offset the log would assign.
    pub end_offset: u64,
    /// Base offset of the active segment.
    pub active_base_offset: u64,
    /// Length of the active segment file.
    pub active_len: u64,
}

impl CleanMarker {
    /// Encodes the marker.
    pub fn encode(&self) -> [u8; MARKER_LEN] {
        self.encode_as(MARKER_MAGIC)
    }

    /// Encodes the same fields under another magic (the synced-point hint).
    pub fn encode_as(&self, magic: [u8; 4]) -> [u8; MARKER_LEN] {
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for v in [self.end_offset, self.active_base_offset, self.active_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let mut fixed = [0u8; MARKER_LEN];
        fixed.copy_from_slice(&out);
        fixed
    }

    /// Decodes and checks a marker.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptionKind> {
        Self::decode_as(MARKER_MAGIC, bytes)
    }

    /// Decodes the same fields under another magic (the synced-point hint).
    pub fn decode_as(magic: [u8; 4], bytes: &[u8]) -> Result<Self, CorruptionKind> {
        if bytes.len() != MARKER_LEN {
            return Err(CorruptionKind::Truncated {
                need: MARKER_LEN as u64,
                have: bytes.len() as u64,
            });
        }
        let mut r = Reader::new(bytes);
        read_preamble(&mut r, magic)?;
        let marker = Self {
            end_offset: r.u64()?,
            active_base_offset: r.u64()?,
            active_len: r.u64()?,
        };
        let covered = r.position();
        let expected = r.u32()?;
        let actual = crc32fast::hash(bytes.get(..covered).unwrap_or_default());
        if expected != actual {
            return Err(CorruptionKind::ChecksumMismatch { expected, actual });
        }
        Ok(marker)
    }
}

/// Magic of the recovery point.
pub const RECOVERY_POINT_MAGIC: [u8; 4] = *b"SRCP";
/// Encoded size of the recovery point.
pub const RECOVERY_POINT_LEN: usize = 20;

/// The recovery point of a log (Kafka's recovery-point checkpoint):
///
/// ```text
/// recovery-point (20 B), all integers little-endian:
///   0  magic     [4]  "SRCP"
///   4  version   u16  1
///   6  flags     u16  0
///   8  offset    u64  every sealed segment that starts below it was flushed when it was sealed
///  16  crc32     u32  CRC-32 of bytes [0, 16)
/// ```
///
/// Under the fsync policies that do not acknowledge after fsync, a rolled segment is flushed in
/// the background rather than under the partition's lock, so after a power loss a sealed
/// segment may hold a torn tail. The file names the first segment that may: after a crash, open
/// checks every sealed segment from there on in full and cuts the log at the first damage. With
/// no file, every sealed segment was flushed before its successor was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// Sealed segments whose base offset is below this were durable when sealed.
    pub offset: u64,
}

impl RecoveryPoint {
    /// Encodes the recovery point.
    pub fn encode(&self) -> [u8; RECOVERY_POINT_LEN] {
        let mut out = Vec::with_capacity(RECOVERY_POINT_LEN);
        out.extend_from_slice(&RECOVERY_POINT_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let mut fixed = [0u8; RECOVERY_POINT_LEN];
        fixed.copy_from_slice(&out);
        fixed
    }

    /// Decodes and checks a recovery point.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptionKind> {
        if bytes.len() != RECOVERY_POINT_LEN {
            return Err(CorruptionKind::Truncated {
                need: RECOVERY_POINT_LEN as u64,
                have: bytes.len() as u64,
            });
        }
        let mut r = Reader::new(bytes);
        read_preamble(&mut r, RECOVERY_POINT_MAGIC)?;
        let point = Self { offset: r.u64()? };
        let covered = r.position();
        let expected = r.u32()?;
        let actual = crc32fast::hash(bytes.get(..covered).unwrap_or_default());
        if expected != actual {
            return Err(CorruptionKind::ChecksumMismatch { expected, actual });
        }
        Ok(point)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn recovery_point_round_trip_and_damage() {
        let p = RecoveryPoint { offset: 0x0102 };
        let bytes = p.encode();
        assert_eq!(
            bytes[..16],
            *b"SRCP\x01\x00\x00\x00\x02\x01\x00\x00\x00\x00\x00\x00"
        );
        assert_eq!(RecoveryPoint::decode(&bytes), Ok(p));
        let mut bad = bytes;
        bad[9] ^= 1;
        assert!(matches!(
            RecoveryPoint::decode(&bad),
            Err(CorruptionKind::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            RecoveryPoint::decode(&bytes[..19]),
            Err(CorruptionKind::Truncated { need: 20, have: 19 })
        ));
        assert!(matches!(
            RecoveryPoint::decode(
                &CleanMarker {
                    end_offset: 1,
                    active_base_offset: 0,
                    active_len: 0
                }
                .encode()[..20]
            ),
            Err(CorruptionKind::BadMagic { .. })
        ));
    }

    #[test]
    fn round_trip_and_damage() {
        let m = CleanMarker {
            end_offset: 10,
            active_base_offset: 4,
            active_len: 400,
        };
        let bytes = m.encode();
        assert_eq!(&bytes[..8], b"SCLN\x01\x00\x00\x00");
        assert_eq!(CleanMarker::decode(&bytes), Ok(m));
        let mut bad = bytes;
        bad[20] ^= 4;
        assert!(matches!(
            CleanMarker::decode(&bad),
            Err(CorruptionKind::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            CleanMarker::decode(&bytes[..35]),
            Err(CorruptionKind::Truncated { need: 36, have: 35 })
        ));
    }
}
