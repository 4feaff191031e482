//! Decodes arbitrary bytes as a record batch.
//!
//! Decoding must never panic. When it accepts the bytes, the batch it returns must be exactly what
//! the encoder would write for those records: the header agrees with the records, the CRC covers
//! the batch, and re-encoding the records with `PreparedBatch` gives back the same bytes (with the
//! timestamps put back where the encoder, which stamps a whole batch with one time, cannot write
//! them itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_log::format::batch::{
    self, BATCH_HEADER_LEN, BatchHeader, PreparedBatch, RECORD_HEADER_LEN, encoded_len,
    records_of, verify,
};

fuzz_target!(|data: &[u8]| {
    let Ok((header, records)) = batch::decode(data) else {
        return;
    };
    let len = header.batch_len as usize;
    assert!(len <= data.len(), "batch_len {len} beyond the {} input bytes", data.len());
    let bytes = &data[..len];

    assert_eq!(records.len() as u64, u64::from(header.record_count));
    assert_eq!(BatchHeader::decode(bytes), Ok(header));
    assert_eq!(verify(&header, bytes), Ok(()));
    assert_eq!(header.end_offset(), header.base_offset.saturating_add(records.len() as u64));
    assert!(header.first_timestamp_ms <= header.max_timestamp_ms);
    assert_eq!(
        encoded_len(records.iter().map(|r| (r.key, r.value))),
        len as u64,
        "accepted a batch whose records do not fill it exactly"
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, header.base_offset.saturating_add(i as u64));
        assert!(
            (header.first_timestamp_ms..=header.max_timestamp_ms).contains(&r.timestamp_ms),
            "record {i} timestamp {} outside [{}, {}]",
            r.timestamp_ms,
            header.first_timestamp_ms,
            header.max_timestamp_ms
        );
    }

    // The owned decoding shares the buffer but must see the same records.
    let owned = records_of(&header, &bytes::Bytes::copy_from_slice(bytes))
        .expect("records_of rejected a batch that decode accepted");
    assert_eq!(owned.len(), records.len());
    for (o, r) in owned.iter().zip(&records) {
        assert_eq!((o.offset, o.timestamp_ms), (r.offset, r.timestamp_ms));
        assert_eq!((o.key.as_ref(), o.value.as_ref()), (r.key, r.value));
    }

    let mut prepared = PreparedBatch::new(records.iter().map(|r| (r.key, r.value)))
        .expect("a decoded batch must be encodable");
    assert_eq!(prepared.record_count(), header.record_count);
    assert_eq!(prepared.len(), len);
    let (re_header, re_bytes) = prepared.finish(header.base_offset, header.first_timestamp_ms);
    let mut re_bytes = re_bytes.to_vec();
    assert_eq!(re_header.batch_len, header.batch_len);

    let single_timestamp = header.first_timestamp_ms == header.max_timestamp_ms
        && records.iter().all(|r| r.timestamp_ms == header.first_timestamp_ms);
    if single_timestamp {
        assert_eq!(re_header, header);
        assert_eq!(re_bytes, bytes, "re-encoding a single-timestamp batch changed its bytes");
        return;
    }

    // Put back what the encoder cannot express (a max timestamp and per-record deltas), reseal,
    // and the bytes must again be identical.
    re_bytes[32..40].copy_from_slice(&header.max_timestamp_ms.to_le_bytes());
    let mut position = BATCH_HEADER_LEN;
    for r in &records {
        let delta = u32::try_from(r.timestamp_ms - header.first_timestamp_ms)
            .expect("a decoded timestamp delta fits in 32 bits");
        re_bytes[position + 4..position + 8].copy_from_slice(&delta.to_le_bytes());
        position += RECORD_HEADER_LEN + r.key.len() + r.value.len();
    }
    assert_eq!(position, len);
    let crc = crc32(&re_bytes[4..]);
    re_bytes[..4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(re_bytes, bytes, "re-encoding a batch changed its bytes");
});

/// CRC-32/ISO-HDLC, bit by bit: an implementation independent of the crate's `crc32fast`, so the
/// check above does not trust the code under test to compute its own reference.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
