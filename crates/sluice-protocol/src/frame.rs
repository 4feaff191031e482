//! Frames: a fixed 16-byte header and a body.
//!
//! ```text
//! 0   body_len        u32   bytes of body after the header
//! 4   kind            u16   message kind (a response carries its request's kind)
//! 6   flags           u16   bit 0 RESPONSE, bit 1 ERROR (the body is an error); others 0
//! 8   correlation_id  u64   chosen by the client, echoed by the response
//! 16  body            [body_len]
//! ```
//! All integers little-endian.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::{BufMut, BytesMut};

use crate::error::WireError;

/// Length of a frame header.
pub const HEADER_LEN: usize = 16;
/// Flag of a response frame.
pub const FLAG_RESPONSE: u16 = 1;
/// Flag of a response frame whose body is an error.
pub const FLAG_ERROR: u16 = 2;
const KNOWN_FLAGS: u16 = FLAG_RESPONSE | FLAG_ERROR;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the body.
    pub body_len: u32,
    /// Message kind.
    pub kind: u16,
    /// Flags.
    pub flags: u16,
    /// Correlation id.
    pub correlation_id: u64,
}

impl FrameHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let (a, rest) = out.split_at_mut(4);
        a.copy_from_slice(&self.body_len.to_le_bytes());
        let (b, rest) = rest.split_at_mut(2);
        b.copy_from_slice(&self.kind.to_le_bytes());
        let (c, d) = rest.split_at_mut(2);
        c.copy_from_slice(&self.flags.to_le_bytes());
        d.copy_from_slice(&self.correlation_id.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `buf`. `Ok(None)` when fewer than 16 bytes are there.
    /// A body longer than `max_body` is refused here, before anything is allocated for it.
    pub fn decode(buf: &[u8], max_body: u32) -> Result<Option<Self>, WireError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [
            l0,
            l1,
            l2,
            l3,
            k0,
            k1,
            f0,
            f1,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
        ] = *h;
        let header = Self {
            body_len: u32::from_le_bytes([l0, l1, l2, l3]),
            kind: u16::from_le_bytes([k0, k1]),
            flags: u16::from_le_bytes([f0, f1]),
            correlation_id: u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
        };
        if header.body_len > max_body {
            return Err(WireError::FrameTooLarge {
                len: header.body_len,
                max: max_body,
            });
        }
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags(header.flags));
        }
        Ok(Some(header))
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether this response carries an error.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/// Appends a whole frame to `out`. The body is written by `body`, and its length is patched
/// into the header afterwards, so bodies are encoded straight into the output buffer.
pub fn encode_frame(
    out: &mut BytesMut,
    kind: u16,
    flags: u16,
    correlation_id: u64,
    body: impl FnOnce(&mut BytesMut),
) {
    let start = out.len();
    out.put_slice(
        &FrameHeader {
            body_len: 0,
            kind,
            flags,
            correlation_id,
        }
        .encode(),
    );
    body(out);
    let body_len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    if let Some(len) = out.get_mut(start..start + 4) {
        len.copy_from_slice(&body_len.to_le_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_limits() {
        let h = FrameHeader {
            body_len: 5,
            kind: 6,
            flags: FLAG_RESPONSE,
            correlation_id: 0x0102_0304_0506_0708,
        };
        let bytes = h.encode();
        assert_eq!(bytes, [5, 0, 0, 0, 6, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(FrameHeader::decode(&bytes, 5).unwrap(), Some(h));
        assert_eq!(FrameHeader::decode(&bytes[..15], 5).unwrap(), None);
        assert_eq!(
            FrameHeader::decode(&bytes, 4),
            Err(WireError::FrameTooLarge { len: 5, max: 4 })
        );
        let mut odd = bytes;
        odd[6] = 4;
        assert_eq!(
            FrameHeader::decode(&odd, 5),
            Err(WireError::UnknownFlags(4))
        );
        // A header announcing 4 GiB is refused from its 16 bytes alone.
        let mut huge = bytes;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&huge, 8 << 20),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn encode_frame_patches_the_length() {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 4, 0, 9, |b| b.put_slice(b"abc"));
        let h = FrameHeader::decode(&out, 100).unwrap().unwrap();
        assert_eq!((h.body_len, h.kind, h.correlation_id), (3, 4, 9));
        assert_eq!(&out[HEADER_LEN..], b"abc");
    }
}
