//! Decodes arbitrary bytes as a frame: the 16-byte header, then the body it announces.
//!
//! Header decoding must never panic and must refuse exactly what it should: fewer than 16 bytes
//! are not yet a header, a body over the limit is `FrameTooLarge` and reserved flag bits are
//! `UnknownFlags`. An accepted header re-encodes to the same 16 bytes. When the whole body is
//! there, it is decoded the way a reader would, by the header's flags: as a request, a response
//! or an error. None of these may panic, and whatever they accept must decode again, unchanged,
//! after re-encoding.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_protocol::error::WireError;
use sluice_protocol::frame::{FLAG_ERROR, FLAG_RESPONSE, FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ERROR_MESSAGE_BYTES_MAX, ErrorResponse, Request, Response};

/// The server's default limit on a frame body.
const MAX_BODY: u32 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let header = match FrameHeader::decode(data, MAX_BODY) {
        Ok(None) => {
            assert!(data.len() < HEADER_LEN);
            return;
        }
        Err(WireError::FrameTooLarge { len, max }) => {
            assert_eq!(max, MAX_BODY);
            assert!(len > MAX_BODY);
            assert_eq!(&data[..4], &len.to_le_bytes());
            return;
        }
        Err(WireError::UnknownFlags(flags)) => {
            assert_ne!(flags & !(FLAG_RESPONSE | FLAG_ERROR), 0);
            assert_eq!(&data[6..8], &flags.to_le_bytes());
            return;
        }
        Err(e) => panic!("a header can only be too large or carry unknown flags, not {e:?}"),
        Ok(Some(header)) => header,
    };
    assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
    assert!(header.body_len <= MAX_BODY);
    assert_eq!(header.flags & !(FLAG_RESPONSE | FLAG_ERROR), 0);

    let Some(body) = data[HEADER_LEN..].get(..header.body_len as usize) else {
        return;
    };
    let body = Bytes::copy_from_slice(body);
    let (kind, id) = (header.kind, header.correlation_id);
    let mut out = BytesMut::new();
    if header.is_error() {
        let Ok(err) = ErrorResponse::decode(body) else {
            return;
        };
        // The encoder cuts longer messages, so only these come back whole.
        if err.message.len() <= ERROR_MESSAGE_BYTES_MAX {
            err.encode(kind, id, &mut out);
            assert_eq!(
                reread(&out, FLAG_RESPONSE | FLAG_ERROR, kind, id),
                &err_bytes(&err)[..]
            );
            assert_eq!(
                ErrorResponse::decode(out.split_off(HEADER_LEN).freeze()),
                Ok(err)
            );
        }
    } else if header.is_response() {
        let Ok(resp) = Response::decode(kind, body) else {
            return;
        };
        assert_eq!(resp.kind() as u16, kind);
        resp.encode(id, &mut out);
        let again = Bytes::copy_from_slice(reread(&out, FLAG_RESPONSE, kind, id));
        assert_eq!(Response::decode(kind, again), Ok(resp));
    } else {
        let Ok(req) = Request::decode(kind, body) else {
            return;
        };
        assert_eq!(req.kind() as u16, kind);
        req.encode(id, &mut out);
        let again = Bytes::copy_from_slice(reread(&out, 0, kind, id));
        assert_eq!(Request::decode(kind, again), Ok(req));
    }
});

/// Checks the header of a frame just encoded and returns its body.
fn reread(frame: &[u8], flags: u16, kind: u16, id: u64) -> &[u8] {
    let header = FrameHeader::decode(frame, u32::MAX)
        .expect("an encoded header decodes")
        .expect("an encoded frame holds a whole header");
    assert_eq!(
        (header.flags, header.kind, header.correlation_id),
        (flags, kind, id)
    );
    assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
    &frame[HEADER_LEN..]
}

/// The error body as the page describes it: code, message length, message.
fn err_bytes(err: &ErrorResponse) -> Vec<u8> {
    let mut b = err.code.to_le_bytes().to_vec();
    b.extend_from_slice(&(err.message.len() as u16).to_le_bytes());
    b.extend_from_slice(err.message.as_bytes());
    b
}
