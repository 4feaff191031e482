//! Decodes arbitrary bytes as offset and time index bodies.
//!
//! Input: 8 bytes of lookup target (little-endian `u64`; its low 32 bits are the offset target),
//! then the index body, which is decoded both as offset entries and as time entries.
//!
//! Decoding must never panic, and whatever it accepts must be a valid sparse index: entries
//! strictly increasing, the first one past the file header, and the body exactly the entries
//! re-encoded. The binary-search views must agree with a linear scan on every accepted body and
//! must not panic on rejected ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_log::format::FILE_HEADER_LEN;
use sluice_log::format::index::{
    OFFSET_ENTRY_LEN, OffsetEntry, OffsetIndexView, TIME_ENTRY_LEN, TimeEntry, TimeIndexView,
    decode_offset_entries, decode_time_entries,
};

fuzz_target!(|data: &[u8]| {
    let Some((target, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let target = u64::from_le_bytes(*target);
    check_offsets(body, target as u32);
    check_times(body, target);
});

fn check_offsets(body: &[u8], target: u32) {
    let view = OffsetIndexView::new(body);
    let Ok(entries) = decode_offset_entries(body) else {
        // The view must stay total on bytes that decoding refuses.
        let _ = view.floor(target);
        let _ = view.get(view.len());
        return;
    };
    assert_eq!(body.len() % OFFSET_ENTRY_LEN, 0);
    assert_eq!(entries.len(), body.len() / OFFSET_ENTRY_LEN);
    if let Some(first) = entries.first() {
        assert!(first.position as usize >= FILE_HEADER_LEN, "first entry inside the file header");
    }
    for pair in entries.windows(2) {
        assert!(
            pair[0].relative_offset < pair[1].relative_offset && pair[0].position < pair[1].position,
            "offset entries not strictly increasing: {pair:?}"
        );
    }
    let encoded: Vec<u8> = entries.iter().flat_map(OffsetEntry::encode).collect();
    assert_eq!(encoded, body);

    assert_eq!(view.len(), entries.len());
    assert_eq!(view.is_empty(), entries.is_empty());
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(view.get(i), Some(*e));
    }
    assert_eq!(view.get(entries.len()), None);

    let mut targets = vec![0, u32::MAX, target];
    for e in &entries {
        targets.extend([
            e.relative_offset.wrapping_sub(1),
            e.relative_offset,
            e.relative_offset.wrapping_add(1),
        ]);
    }
    for t in targets {
        let expected = entries.iter().rev().find(|e| e.relative_offset <= t).copied();
        assert_eq!(view.floor(t), expected, "floor({t}) disagrees with a linear scan");
    }
}

fn check_times(body: &[u8], target: u64) {
    let view = TimeIndexView::new(body);
    let Ok(entries) = decode_time_entries(body) else {
        let _ = view.last_before(target);
        let _ = view.last();
        return;
    };
    assert_eq!(body.len() % TIME_ENTRY_LEN, 0);
    assert_eq!(entries.len(), body.len() / TIME_ENTRY_LEN);
    for pair in entries.windows(2) {
        assert!(
            pair[0].timestamp_ms < pair[1].timestamp_ms
                && pair[0].relative_offset < pair[1].relative_offset,
            "time entries not strictly increasing: {pair:?}"
        );
    }
    let encoded: Vec<u8> = entries.iter().flat_map(TimeEntry::encode).collect();
    assert_eq!(encoded, body);

    assert_eq!(view.len(), entries.len());
    assert_eq!(view.is_empty(), entries.is_empty());
    assert_eq!(view.last(), entries.last().copied());
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(view.get(i), Some(*e));
    }

    let mut targets = vec![0, u64::MAX, target];
    for e in &entries {
        targets.extend([
            e.timestamp_ms.wrapping_sub(1),
            e.timestamp_ms,
            e.timestamp_ms.wrapping_add(1),
        ]);
    }
    for t in targets {
        let expected = entries.iter().rev().find(|e| e.timestamp_ms < t).copied();
        assert_eq!(view.last_before(t), expected, "last_before({t}) disagrees with a linear scan");
    }
}
