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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

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
