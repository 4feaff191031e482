//! Damage found on disk: a torn tail is cut at every possible byte, garbage after the tail is
//! cut, a flipped bit in the tail drops that batch (or fails the open under
//! `AbsoluteConsistency`), a flipped bit in a sealed segment makes reads of that batch fail with
//! `Corruption` while the rest stays readable, and damaged or missing index files are rebuilt.

mod common;

use std::path::PathBuf;

use common::*;
use sluice_log::io::sim::SimFs;
use sluice_log::{CorruptionKind, Error, LogOptions, ReadLimits, Record, RecoveryMode};

/// A log of `batches` batches of 3 records, left as after a crash (dropped without close).
fn written(batches: u64, options: LogOptions) -> (SimFs, Vec<Record>) {
    let fs = SimFs::new();
    let log = open_sim(&fs, options);
    let mut all = Vec::new();
    for b in 0..batches {
        let batch: Vec<Record> = (0..3).map(|i| record(b * 3 + i, 40)).collect();
        log.append(&batch).unwrap();
        all.extend(batch);
    }
    drop(log);
    (fs, all)
}

fn last_segment(fs: &SimFs) -> PathBuf {
    let mut logs = segment_files(fs, &dir(), "log");
    logs.sort();
    logs.pop().unwrap()
}

fn check_prefix(fs: &SimFs, all: &[Record], expected_len: u64) {
    let log = open_sim(fs, LogOptions::default());
    assert_eq!(log.end_offset(), expected_len);
    let got = read_all(&log);
    assert_eq!(got.len() as u64, expected_len);
    for r in &got {
        assert_same(r, r.offset, &all[r.offset as usize]);
    }
}

#[test]
fn a_torn_last_batch_is_cut_at_every_byte_position() {
    let (fs, all) = written(5, LogOptions::default());
    let seg = last_segment(&fs);
    let full = fs.contents(&seg).unwrap();
    let batch_len = (full.len() - 16) / 5;
    let last_start = full.len() - batch_len;
    for cut in last_start..full.len() {
        let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
        img.set_contents(&seg, full[..cut].to_vec());
        check_prefix(&img, &all, 12);
        // The file itself was cut back to the last whole batch.
        assert_eq!(img.contents(&seg).unwrap().len(), last_start);
    }
}

#[test]
fn garbage_after_the_tail_is_cut() {
    let (fs, all) = written(4, LogOptions::default());
    let seg = last_segment(&fs);
    let full = fs.contents(&seg).unwrap();
    for garbage in [
        vec![0u8; 100],
        vec![0xff; 7],
        (0..=255u8).collect::<Vec<_>>(),
    ] {
        let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
        let mut bytes = full.clone();
        bytes.extend_from_slice(&garbage);
        img.set_contents(&seg, bytes);
        check_prefix(&img, &all, 12);
        assert_eq!(img.contents(&seg).unwrap().len(), full.len());
    }
}

#[test]
fn a_flipped_bit_in_the_tail_batch_drops_it_or_fails_an_absolute_open() {
    let (fs, all) = written(4, LogOptions::default());
    let seg = last_segment(&fs);
    let full = fs.contents(&seg).unwrap();
    let batch_len = (full.len() - 16) / 4;
    let last_start = full.len() - batch_len;
    for byte in (last_start..full.len()).step_by(3) {
        for bit in [0, 5] {
            let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
            let mut bytes = full.clone();
            bytes[byte] ^= 1 << bit;
            img.set_contents(&seg, bytes.clone());
            let strict = sluice_log::Log::open_with_fs(
                std::sync::Arc::new(img.clone()),
                dir(),
                LogOptions::default().recovery(RecoveryMode::AbsoluteConsistency),
            );
            match strict {
                Err(Error::Corruption { position, .. }) => assert_eq!(position, last_start as u64),
                other => panic!("byte {byte} bit {bit}: expected corruption, got {other:?}"),
            }
            // Nothing was truncated by the strict open.
            assert_eq!(img.contents(&seg).unwrap(), bytes);
            check_prefix(&img, &all, 9);
        }
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_a_read_error_not_wrong_bytes() {
    let opts = || {
        LogOptions::default()
            .segment_bytes_max(600)
            .index_interval_bytes(100)
    };
    let (fs, all) = written(30, opts());
    let mut logs = segment_files(&fs, &dir(), "log");
    logs.sort();
    assert!(logs.len() > 3);
    let sealed = logs[1].clone();
    let base: u64 = sealed
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut bytes = fs.contents(&sealed).unwrap();
    let flip_at = 16 + 60; // inside the first batch's records
    bytes[flip_at] ^= 0x10;
    fs.set_contents(&sealed, bytes);

    let log = open_sim(&fs, opts());
    // The damaged batch (offsets base..base+3) fails with a typed error naming the file.
    match log.read_from(base, ReadLimits::default()) {
        Err(Error::Corruption {
            path,
            position,
            kind,
        }) => {
            assert_eq!(path, sealed);
            assert_eq!(position, 16);
            assert!(matches!(kind, CorruptionKind::ChecksumMismatch { .. }));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Reading up to the damage returns the good records, then stops.
    let before = log.read_from(0, ReadLimits::default()).unwrap();
    assert_eq!(before.last().unwrap().offset, base - 1);
    // Everything after the damaged batch is still served, correctly.
    let after = log.read_from(base + 3, ReadLimits::default()).unwrap();
    assert!(!after.is_empty());
    for r in &after {
        assert_same(r, r.offset, &all[r.offset as usize]);
    }
    // A strict open succeeds too: its index check reads no data, so this damage is found by reads
    // (and by a full verification), not by open. Reads under it fail the same way.
    let strict = sluice_log::Log::open_with_fs(
        std::sync::Arc::new(fs.clone()),
        dir(),
        opts().recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap();
    assert!(
        strict
            .read_from(base + 1, ReadLimits::default())
            .unwrap_err()
            .is_corruption()
    );
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    let opts = || {
        LogOptions::default()
            .segment_bytes_max(600)
            .index_interval_bytes(100)
    };
    let (fs, all) = written(30, opts());
    let mut idx = segment_files(&fs, &dir(), "index");
    idx.sort();
    let mut tidx = segment_files(&fs, &dir(), "timeindex");
    tidx.sort();
    assert!(idx.len() >= 3);
    let original = fs.contents(&idx[0]).unwrap();
    // Three kinds of damage: entries that point to the wrong place, a ragged length, a lost file.
    let mut wrong = original.clone();
    let n = wrong.len();
    wrong[n - 4] ^= 0x01; // the last entry's position
    fs.set_contents(&idx[0], wrong);
    let ragged = fs.contents(&idx[1]).unwrap();
    fs.set_contents(&idx[1], ragged[..ragged.len() - 3].to_vec());
    let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
    use sluice_log::io::FileSystem;
    img.remove_file(&tidx[2]).unwrap();

    let log = open_sim(&img, opts());
    let got = read_all(&log);
    assert_eq!(got.len(), all.len());
    for r in &got {
        assert_same(r, r.offset, &all[r.offset as usize]);
    }
    // The rebuilt files are whole again, byte for byte what sealing wrote.
    assert_eq!(img.contents(&idx[0]).unwrap(), original);
    assert_eq!(img.contents(&idx[1]).unwrap(), ragged);
    assert!(img.contents(&tidx[2]).is_some());
    // Seeking by time works through the rebuilt indexes.
    let t = got[40].timestamp_ms;
    assert_eq!(
        log.offset_for_timestamp(t).unwrap(),
        got.iter().find(|r| r.timestamp_ms >= t).map(|r| r.offset)
    );
}

#[test]
fn a_torn_header_on_a_new_active_segment_is_recreated() {
    let opts = || LogOptions::default().segment_bytes_max(600);
    let (fs, all) = written(10, opts());
    let seg = last_segment(&fs);
    let sealed_end: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    // As if the process died while creating the segment: a few header bytes, or none.
    for torn in [vec![], b"SLO".to_vec(), vec![0u8; 16], vec![0u8; 300]] {
        let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
        img.set_contents(&seg, torn);
        check_prefix(&img, &all, sealed_end);
    }
}

#[test]
fn a_sealed_segment_that_lost_its_end_is_reported_not_skipped() {
    let opts = || {
        LogOptions::default()
            .segment_bytes_max(600)
            .index_interval_bytes(100)
    };
    let (fs, all) = written(30, opts());
    let mut logs = segment_files(&fs, &dir(), "log");
    logs.sort();
    let victim = logs[1].clone();
    let next_base: u64 = logs[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = fs.contents(&victim).unwrap();
    // Cut exactly at a batch boundary: every remaining batch is valid, but records are missing.
    let mut last_start = 16;
    while let Ok((h, _)) = sluice_log::format::batch::decode(&bytes[last_start..]) {
        if last_start + h.batch_len as usize == bytes.len() {
            break;
        }
        last_start += h.batch_len as usize;
    }
    fs.set_contents(&victim, bytes[..last_start].to_vec());

    // A strict open refuses; the default open serves what is intact and reports the rest.
    let strict = sluice_log::Log::open_with_fs(
        std::sync::Arc::new(fs.clone()),
        dir(),
        opts().recovery(RecoveryMode::AbsoluteConsistency),
    );
    assert!(matches!(
        strict,
        Err(Error::Corruption {
            kind: CorruptionKind::MissingRecords { .. },
            ..
        })
    ));
    let log = open_sim(&fs, opts());
    assert_eq!(log.start_offset(), 0);
    let missing = next_base - 3;
    match log.read_from(missing, ReadLimits::default()) {
        Err(Error::Corruption { path, kind, .. }) => {
            assert_eq!(path, victim);
            assert_eq!(
                kind,
                CorruptionKind::MissingRecords {
                    expected_end: next_base,
                    found_end: missing
                }
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Before and after the hole everything is served.
    let before = log.read_from(0, ReadLimits::default()).unwrap();
    assert_eq!(before.last().unwrap().offset, missing - 1);
    let after = log.read_from(next_base, ReadLimits::default()).unwrap();
    assert_same(&after[0], next_base, &all[next_base as usize]);
}

/// Regression (fuzz target `segment_recover`): damage in the last segment of a cleanly closed log
/// was trusted by the next open, appends landed behind it, and a crash recovery afterwards cut
/// the segment at the damage, losing those acknowledged appends.
#[test]
fn damage_before_a_clean_open_never_costs_appends_acknowledged_after_it() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    for b in 0..6u64 {
        log.append(&(0..3).map(|i| record(b * 3 + i, 40)).collect::<Vec<_>>())
            .unwrap();
    }
    log.close().unwrap();
    let seg = last_segment(&fs);
    let mut bytes = fs.contents(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs.set_contents(&seg, bytes);

    let log = open_sim(&fs, LogOptions::default());
    let acked = log.append(&[Record::new("after", "damage")]).unwrap();
    assert_eq!(acked, 18);
    drop(log);
    let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
    let log = open_sim(&img, LogOptions::default());
    assert_eq!(log.end_offset(), 19);
    let got = log.read_from(18, ReadLimits::default()).unwrap();
    assert_eq!(got[0].value.as_ref(), b"damage");
    // The damage itself is reported, not served.
    let first_err = (0..18).find_map(|o| log.read_from(o, ReadLimits::default()).err());
    assert!(first_err.is_some_and(|e| e.is_corruption()));
}

/// Regression (fuzz target `segment_recover`): at the end of the `u64` offset space appends
/// returned the same offset again instead of failing.
#[test]
fn appends_stop_at_the_end_of_the_offset_space() {
    use sluice_log::format::{FileKind, encode_file_header};
    for (base, fits) in [(u64::MAX, 0u64), (u64::MAX - 2, 2)] {
        let fs = SimFs::new();
        fs.set_contents(
            &dir().join(FileKind::Segment.file_name(base)),
            encode_file_header(FileKind::Segment, base).to_vec(),
        );
        let log = open_sim(&fs, LogOptions::default());
        for i in 0..fits {
            assert_eq!(log.append(&[record(i, 5)]).unwrap(), base + i);
        }
        assert!(matches!(
            log.append(&[record(9, 5)]),
            Err(Error::OffsetSpaceExhausted { end: u64::MAX })
        ));
        assert_eq!(log.end_offset(), u64::MAX);
    }
}

/// Damage to the active segment below its synced point (bytes that were on disk before anything
/// was acknowledged from them) is lost acknowledged data, never cut off as a torn tail. Recovery
/// only walks the headers there (the data reached the disk): a damaged header fails the open,
/// naming the position; damaged record bytes are found by the CRC when read. Past the synced
/// point, damage is a torn tail as before.
#[test]
fn damage_below_the_synced_point_is_an_error_not_a_cut() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    for b in 0..5u64 {
        log.append(&(0..3).map(|i| record(b * 3 + i, 40)).collect::<Vec<_>>())
            .unwrap();
    }
    // Written but never acknowledged: past the synced point.
    log.write(&[record(15, 40)]).unwrap();
    drop(log); // a process crash: the files stay as written
    let seg = last_segment(&fs);
    let full = fs.contents(&seg).unwrap();
    let (h, _) = sluice_log::format::batch::decode(&full[16..]).unwrap();
    let second_batch = 16 + h.batch_len as usize;
    let open = |fs: &SimFs| {
        sluice_log::Log::open_with_fs(
            std::sync::Arc::new(fs.clone()),
            dir(),
            LogOptions::default(),
        )
    };

    // A damaged header of the second (acknowledged, synced) batch: the open refuses.
    let mut bytes = full.clone();
    bytes[second_batch + 17] ^= 0x08; // inside its base offset
    fs.set_contents(&seg, bytes.clone());
    match open(&fs) {
        Err(Error::Corruption { path, position, .. }) => {
            assert_eq!(path, seg);
            assert_eq!(position, second_batch as u64);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(fs.contents(&seg).unwrap(), bytes, "nothing was cut");

    // Damaged record bytes in it: the log opens whole, and reading them is a typed error.
    let mut bytes = full.clone();
    bytes[second_batch + 50] ^= 0x08;
    fs.set_contents(&seg, bytes);
    let log = open(&fs).unwrap();
    assert_eq!(log.end_offset(), 16, "nothing was cut");
    assert!(
        log.read_from(3, ReadLimits::default())
            .unwrap_err()
            .is_corruption()
    );
    assert_eq!(log.read_from(0, ReadLimits::default()).unwrap().len(), 3);
    drop(log);

    // A flipped byte in the unacknowledged last batch: cut off as a torn tail.
    let mut bytes = full.clone();
    let last = full.len() - 5;
    bytes[last] ^= 0x08;
    fs.set_contents(&seg, bytes);
    let log = open(&fs).unwrap();
    assert_eq!(log.end_offset(), 15);
}
