//! Small metadata files (the catalog, consumer checkpoints): a checked envelope around a
//! postcard body, always replaced atomically.
//!
//! ```text
//! magic [4] | version u16 | flags u16 | body_len u32 | crc32 u32 of the body | body (postcard)
//! ```
//! All integers little-endian; the CRC is CRC-32/ISO-HDLC (crc32fast).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_log::io::FileSystem;

use crate::error::{Error, IoContext, Result};

/// Version of every metadata envelope this build writes.
pub const META_VERSION: u16 = 1;
const HEADER_LEN: usize = 16;

/// Encodes `value` in an envelope with `magic`.
pub fn encode<T: Serialize>(magic: [u8; 4], value: &T) -> Vec<u8> {
    // Serializing plain structs of integers, strings and maps into a Vec cannot fail.
    let body = postcard::to_allocvec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes an envelope written by [`encode`], naming `path` in any error.
pub fn decode<T: DeserializeOwned>(magic: [u8; 4], bytes: &[u8], path: &Path) -> Result<T> {
    let corrupt = |reason: String| Error::CorruptMetadata {
        path: path.to_path_buf(),
        reason,
    };
    let (header, body) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or_else(|| corrupt(format!("{} bytes is shorter than its header", bytes.len())))?;
    let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
    if field(0..4) != magic {
        return Err(corrupt(format!("bad magic {:02x?}", field(0..4))));
    }
    let u16_at = |i: usize| {
        let mut b = [0u8; 2];
        b.copy_from_slice(field(i..i + 2));
        u16::from_le_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(field(i..i + 4));
        u32::from_le_bytes(b)
    };
    if u16_at(4) != META_VERSION {
        return Err(corrupt(format!("unsupported version {}", u16_at(4))));
    }
    if u16_at(6) != 0 {
        return Err(corrupt(format!("unsupported flags {:#06x}", u16_at(6))));
    }
    if u32_at(8) as usize != body.len() {
        return Err(corrupt(format!(
            "body is {} bytes, header says {}",
            body.len(),
            u32_at(8)
        )));
    }
    let crc = crc32fast::hash(body);
    if crc != u32_at(12) {
        return Err(corrupt(format!(
            "checksum mismatch: stored {:#010x}, computed {crc:#010x}",
            u32_at(12)
        )));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(format!("undecodable body: {e}")))
}

/// Reads and decodes a metadata file; `Ok(None)` if it does not exist.
pub fn load<T: DeserializeOwned>(
    fs: &dyn FileSystem,
    magic: [u8; 4],
    path: &Path,
) -> Result<Option<T>> {
    if !fs.exists(path).at(path)? {
        return Ok(None);
    }
    let bytes = fs.read_all(path).at(path)?;
    decode(magic, &bytes, path).map(Some)
}

/// Replaces a metadata file atomically (temp, fsync, rename, fsync of the directory).
pub fn store<T: Serialize>(
    fs: &dyn FileSystem,
    magic: [u8; 4],
    path: &Path,
    value: &T,
) -> Result<()> {
    fs.write_atomic(path, &encode(magic, value)).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_and_every_damage_is_an_error() {
        let mut v: BTreeMap<String, u128> = BTreeMap::new();
        v.insert("a".into(), u128::MAX);
        let bytes = encode(*b"TEST", &v);
        let p = Path::new("x");
        assert_eq!(
            decode::<BTreeMap<String, u128>>(*b"TEST", &bytes, p).unwrap(),
            v
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(
                    decode::<BTreeMap<String, u128>>(*b"TEST", &bad, p),
                    Err(Error::CorruptMetadata { .. })
                ),
                "flip at {i}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(decode::<BTreeMap<String, u128>>(*b"TEST", &bytes[..cut], p).is_err());
        }
    }
}
