//! Decodes arbitrary bytes as a request body.
//!
//! Input: the message kind (little-endian `u16`), then the body. `Request::decode` must never
//! panic, and the server's zero-copy `Request::decode_mut` must give the same answer, errors
//! included. A request it accepts must be of that kind and must survive a round trip: encoded as a
//! frame, its header read back and its body decoded again, it is the same request.
//!
//! The re-encoded body is also compared with the input. Binary bodies have a single spelling, so
//! they must come back byte for byte, except the position value of a `Read` from `Earliest` or
//! `Latest`, which the decoder ignores and the encoder writes as 0. Postcard bodies may have been
//! spelled with longer varints than needed, so they may only come back shorter or equal.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ReadFrom, Request};

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let kind = u16::from_le_bytes(*kind);
    let decoded = Request::decode(kind, Bytes::copy_from_slice(body));
    assert_eq!(Request::decode_mut(kind, BytesMut::from(body)), decoded);
    let Ok(req) = decoded else {
        return;
    };
    assert_eq!(req.kind() as u16, kind);

    let id = 0x5eed_0000_0000_0001;
    let mut frame = BytesMut::new();
    req.encode(id, &mut frame);
    let header = FrameHeader::decode(&frame, u32::MAX)
        .expect("an encoded header decodes")
        .expect("an encoded frame holds a whole header");
    assert_eq!(
        (header.kind, header.flags, header.correlation_id),
        (kind, 0, id)
    );
    assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
    let encoded = &frame[HEADER_LEN..];
    let again = Request::decode(header.kind, Bytes::copy_from_slice(encoded))
        .expect("an encoded request decodes");
    assert_eq!(again, req);

    match &req {
        Request::Hello { .. }
        | Request::Put { .. }
        | Request::PutBatches { .. }
        | Request::ListStreams
        | Request::Stats => {
            assert_eq!(encoded, body, "a binary body changed in a round trip");
        }
        Request::Read(r) => {
            let mut expected = body.to_vec();
            if matches!(r.from, ReadFrom::Earliest | ReadFrom::Latest) {
                // Name length, name, partition, position kind, then the 8-byte position value.
                let at = 2 + r.stream.len() + 4 + 1;
                expected[at..at + 8].fill(0);
            }
            assert_eq!(
                encoded,
                &expected[..],
                "a read body changed in a round trip"
            );
        }
        _ => assert!(
            encoded.len() <= body.len(),
            "a postcard body grew in a round trip"
        ),
    }
});
