//! The log's public behaviour: dense offsets, reads and their limits, reopening after a clean
//! close (without reading segment data) and after a crash, rolling, timestamp seek, retention,
//! and the block reservation ahead of the appends.

mod common;

use std::time::Duration;

use common::*;
use sluice_log::io::sim::SimFs;
use sluice_log::{Error, FsyncPolicy, Log, LogOptions, ReadLimits, Record, RetentionPolicy};

fn small_segments(clock: std::sync::Arc<ManualClock>) -> LogOptions {
    LogOptions::default()
        .segment_bytes_max(4096)
        .index_interval_bytes(256)
        .clock(clock)
}

#[test]
fn append_and_read_back_on_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(
        tmp.path(),
        LogOptions::default().segment_bytes_max(64 << 10),
    )
    .unwrap();
    let mut written = Vec::new();
    for i in 0..200u64 {
        let batch: Vec<Record> = (0..5).map(|j| record(i * 5 + j, 300)).collect();
        assert_eq!(log.append(&batch).unwrap(), i * 5);
        written.extend(batch);
    }
    assert_eq!(log.end_offset(), 1000);
    assert!(log.segment_count() > 1, "64 KiB segments must have rolled");
    let all = read_all(&log);
    assert_eq!(all.len(), 1000);
    // One read crosses segment boundaries until a limit stops it.
    assert_eq!(log.read_from(0, ReadLimits::default()).unwrap().len(), 1000);
    assert_eq!(
        log.read_from(
            10,
            ReadLimits {
                records_max: 700,
                bytes_max: 1 << 30
            }
        )
        .unwrap()
        .len(),
        700
    );
    for (i, (got, want)) in all.iter().zip(&written).enumerate() {
        assert_same(got, i as u64, want);
    }
    log.close().unwrap();

    let log = Log::open(
        tmp.path(),
        LogOptions::default().segment_bytes_max(64 << 10),
    )
    .unwrap();
    assert_eq!(log.end_offset(), 1000);
    let again = read_all(&log);
    assert_eq!(again, all);
    // Appending after a reopen continues the offsets.
    assert_eq!(log.append(&[Record::new("k", "v")]).unwrap(), 1000);
    drop(log); // no close: the next open recovers
    let log = Log::open(
        tmp.path(),
        LogOptions::default().segment_bytes_max(64 << 10),
    )
    .unwrap();
    assert_eq!(log.end_offset(), 1001);
    assert_eq!(
        log.read_from(1000, ReadLimits::default()).unwrap()[0]
            .value
            .as_ref(),
        b"v"
    );
}

#[test]
fn read_limits_and_range_errors() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    for i in 0..10u64 {
        log.append(&[record(i, 100)]).unwrap();
    }
    let r = log
        .read_from(
            2,
            ReadLimits {
                records_max: 3,
                bytes_max: 1 << 20,
            },
        )
        .unwrap();
    assert_eq!(
        r.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    // A byte limit smaller than one record still returns that one record.
    let r = log
        .read_from(
            5,
            ReadLimits {
                records_max: 100,
                bytes_max: 1,
            },
        )
        .unwrap();
    assert_eq!(r.len(), 1);
    // Two records of 105 bytes each fit in 250 bytes; three do not.
    let r = log
        .read_from(
            0,
            ReadLimits {
                records_max: 100,
                bytes_max: 250,
            },
        )
        .unwrap();
    assert_eq!(r.len(), 2);
    assert!(log.read_from(10, ReadLimits::default()).unwrap().is_empty());
    assert!(matches!(
        log.read_from(11, ReadLimits::default()),
        Err(Error::OffsetOutOfRange {
            requested: 11,
            start: 0,
            end: 10
        })
    ));
    assert!(matches!(log.append(&[]), Err(Error::InvalidAppend(_))));
}

#[test]
fn invalid_options_are_rejected() {
    let fs = SimFs::new();
    for opts in [
        LogOptions::default().segment_bytes_max(10),
        LogOptions::default().segment_bytes_max(u64::from(u32::MAX) + 1),
        LogOptions::default().index_interval_bytes(0),
        LogOptions::default().segment_age_max(Duration::ZERO),
        LogOptions::default().fsync(FsyncPolicy::Interval(Duration::ZERO)),
    ] {
        let r = Log::open_with_fs(std::sync::Arc::new(fs.clone()), dir(), opts);
        assert!(matches!(r, Err(Error::InvalidOptions(_))));
    }
}

#[test]
fn clean_reopen_reads_no_segment_data_and_crash_reopen_scans_only_past_the_synced_point() {
    let fs = SimFs::new();
    let opts = || LogOptions::default().segment_bytes_max(1 << 20);
    let log = open_sim(&fs, opts());
    for i in 0..400u64 {
        let batch: Vec<Record> = (0..10).map(|j| record(i * 10 + j, 1000)).collect();
        log.append(&batch).unwrap();
    }
    assert!(log.segment_count() >= 4);
    log.close().unwrap();
    let data: u64 = segment_files(&fs, &dir(), "log")
        .iter()
        .map(|p| fs.contents(p).unwrap().len() as u64)
        .sum();
    assert!(data > 4_000_000);

    let before = fs.bytes_read();
    let log = open_sim(&fs, opts());
    let read_by_clean_open = fs.bytes_read() - before;
    // Headers, index files and one batch header per segment: a tiny fraction of the data.
    assert!(
        read_by_clean_open < data / 100,
        "clean open read {read_by_clean_open} of {data} bytes"
    );
    assert_eq!(log.end_offset(), 4000);
    // The clean open sealed the last segment; fill the new active one, leave one batch written
    // but never acknowledged (past the synced point), then crash.
    for i in 0..100u64 {
        log.append(&[record(4000 + i, 1000)]).unwrap();
    }
    let tail = log
        .write(&(0..20).map(|i| record(4100 + i, 1000)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(tail.end_offset, 4120);
    drop(log); // a crash, as far as the files know

    let active_len = {
        let mut logs = segment_files(&fs, &dir(), "log");
        logs.sort();
        fs.contents(logs.last().unwrap()).unwrap().len() as u64
    };
    assert!(
        active_len > 120_000,
        "the active segment holds the records put after reopening"
    );
    let tail_len = 20 * 1000;
    let before = fs.bytes_read();
    let log = open_sim(&fs, opts());
    let read_by_crash_open = fs.bytes_read() - before;
    // Below the synced point only the 100 batch headers are read; past it, the whole tail.
    assert!(
        read_by_crash_open >= tail_len,
        "the tail past the synced point must be scanned: read {read_by_crash_open}"
    );
    assert!(
        read_by_crash_open < tail_len + 100 * 40 + data / 100,
        "only headers below the synced point: read {read_by_crash_open} of an active segment of {active_len}"
    );
    assert_eq!(read_all(&log).len(), 4120);
}

#[test]
fn timestamps_never_go_back_and_seek_finds_the_first_record_at_or_after() {
    let fs = SimFs::new();
    let clock = ManualClock::new(1_000);
    let log = open_sim(&fs, small_segments(clock.clone()));
    // Ten records per millisecond step, over many segments.
    for step in 0..100u64 {
        clock.set(1_000 + step * 10);
        let batch: Vec<Record> = (0..10).map(|j| record(step * 10 + j, 50)).collect();
        log.append(&batch).unwrap();
    }
    assert!(log.segment_count() > 5);
    // The clock going back does not make timestamps go back.
    clock.set(500);
    let o = log.append(&[record(1000, 10)]).unwrap();
    assert_eq!(
        log.read_from(o, ReadLimits::default()).unwrap()[0].timestamp_ms,
        1_990
    );

    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_001).unwrap(), Some(10));
    assert_eq!(log.offset_for_timestamp(1_500).unwrap(), Some(500));
    assert_eq!(log.offset_for_timestamp(1_505).unwrap(), Some(510));
    assert_eq!(log.offset_for_timestamp(1_990).unwrap(), Some(990));
    assert_eq!(log.offset_for_timestamp(1_991).unwrap(), None);
    // Every answer agrees with a linear scan, across segment boundaries, and after reopening.
    let all = read_all(&log);
    log.close().unwrap();
    let log = open_sim(&fs, small_segments(clock.clone()));
    for t in (990..2_000).step_by(7) {
        let expected = all.iter().find(|r| r.timestamp_ms >= t).map(|r| r.offset);
        assert_eq!(log.offset_for_timestamp(t).unwrap(), expected, "t = {t}");
    }
}

#[test]
fn the_active_segment_rolls_by_age() {
    let fs = SimFs::new();
    let clock = ManualClock::new(0);
    let opts = LogOptions::default()
        .segment_age_max(Duration::from_secs(60))
        .clock(clock.clone());
    let log = open_sim(&fs, opts);
    log.append(&[record(0, 10)]).unwrap();
    clock.advance(59_999);
    log.append(&[record(1, 10)]).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance(1);
    log.append(&[record(2, 10)]).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn retention_deletes_whole_expired_segments_and_moves_the_start() {
    let fs = SimFs::new();
    let clock = ManualClock::new(0);
    let opts = || small_segments(clock.clone()).segment_age_max(Duration::from_secs(3600));
    let log = open_sim(&fs, opts());
    // 1 minute apart, 40 batches of ~1 KiB: several per 4 KiB segment.
    for i in 0..40u64 {
        clock.set(i * 60_000);
        log.append(&[record(i, 1000)]).unwrap();
    }
    let segments_before = log.segment_count();
    assert!(segments_before >= 10);
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(20 * 60)),
        max_bytes: None,
    };
    let now = 40 * 60_000;
    let out = log.enforce_retention(policy, now).unwrap();
    assert!(out.segments_deleted > 0);
    let start = log.start_offset();
    assert_eq!(out.start_offset, start);
    // Everything older than 20 minutes whose whole segment expired is gone; nothing younger.
    assert!(start > 0 && start <= 20, "start {start}");
    let first = log.read_from(start, ReadLimits::default()).unwrap();
    assert_eq!(first[0].offset, start);
    // The records right below the start were in a segment whose newest record had expired.
    assert!(now - (start - 1) * 60_000 > 20 * 60_000);
    assert!(matches!(
        log.read_from(start - 1, ReadLimits::default()),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(segment_files(&fs, &dir(), "log").len(), log.segment_count());
    assert_eq!(
        segment_files(&fs, &dir(), "index").len(),
        log.segment_count() - 1
    );
    // The new start survives a reopen.
    log.close().unwrap();
    let log = open_sim(&fs, opts());
    assert_eq!(log.start_offset(), start);

    // Much later, everything has expired: the active segment is rolled and removed too.
    let out = log
        .enforce_retention(policy, now + 3 * 3600 * 1000)
        .unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.start_offset(), 40);
    assert_eq!(log.end_offset(), 40);
    assert!(log.read_from(40, ReadLimits::default()).unwrap().is_empty());
    assert_eq!(log.append(&[record(40, 10)]).unwrap(), 40);
}

#[test]
fn retention_by_size_keeps_the_newest_segments_under_the_cap() {
    let fs = SimFs::new();
    let clock = ManualClock::new(0);
    let log = open_sim(&fs, small_segments(clock.clone()));
    for i in 0..100u64 {
        log.append(&[record(i, 500)]).unwrap();
    }
    let total = |fs: &SimFs| -> u64 {
        segment_files(fs, &dir(), "log")
            .iter()
            .map(|p| fs.contents(p).unwrap().len() as u64)
            .sum()
    };
    assert!(total(&fs) > 40_000);
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(20_000),
    };
    let out = log.enforce_retention(policy, 0).unwrap();
    assert!(out.segments_deleted > 0);
    assert!(total(&fs) <= 20_000, "{} bytes left", total(&fs));
    // No more than needed went: adding back the newest removed segment would break the cap.
    assert!(total(&fs) + 4096 > 20_000);
    let rest = read_all(&log);
    assert_eq!(rest.first().unwrap().offset, log.start_offset());
    assert_eq!(rest.last().unwrap().offset, 99);
}

#[test]
fn write_then_acknowledge_keeps_order_and_hides_unsynced_records() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    let a = log.write(&[record(0, 10)]).unwrap();
    let b = log.write(&[record(1, 10), record(2, 10)]).unwrap();
    assert_eq!((a.first_offset, b.first_offset, b.end_offset), (0, 1, 3));
    // Written but not yet acknowledged under `Always`: not served to readers.
    assert_eq!(log.readable_end(), 0);
    assert!(log.read_from(0, ReadLimits::default()).unwrap().is_empty());
    let syncs = fs.sync_data_calls();
    log.acknowledge(b).unwrap();
    assert_eq!(fs.sync_data_calls(), syncs + 1);
    // The fsync for the later batch covered the earlier one.
    log.acknowledge(a).unwrap();
    assert_eq!(fs.sync_data_calls(), syncs + 1);
    assert_eq!(read_all(&log).len(), 3);
}

/// How far the file at `path` reaches, and how far its reserved blocks do.
fn len_and_reserved_end(fs: &SimFs, path: &std::path::Path) -> (u64, u64) {
    let len = fs.contents(path).expect("the segment exists").len() as u64;
    (
        len,
        len + fs.reserved_past_end(path).expect("the segment exists"),
    )
}

#[test]
fn the_active_segment_reserves_its_blocks_ahead_in_steps_and_a_roll_gives_the_rest_back() {
    let fs = SimFs::new();
    let log = open_sim(
        &fs,
        LogOptions::default()
            .segment_bytes_max(10_000)
            .preallocate_bytes(4096),
    );
    let first = dir().join("00000000000000000000.log");
    let mut reserved_ends = Vec::new();
    let mut i = 0;
    while log.segment_count() == 1 {
        let (len, reserved_end) = len_and_reserved_end(&fs, &first);
        if i > 0 {
            // Always ahead of the data, by whole steps, but never past where the segment rolls.
            assert!(reserved_end >= len, "{reserved_end} < {len}");
            assert!(
                reserved_end % 4096 == 0 || reserved_end == 10_000,
                "{reserved_end}"
            );
            assert!(reserved_end - len < 4096 || reserved_end == 10_000);
            reserved_ends.push(reserved_end);
        }
        log.append(&[record(i, 300)]).unwrap();
        i += 1;
    }
    reserved_ends.dedup();
    assert_eq!(reserved_ends, [4096, 8192, 10_000]);
    // The sealed segment holds nothing past its end; the new one reserves its own first step.
    assert_eq!(fs.reserved_past_end(&first), Some(0));
    let next = fs
        .file_names()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log") && *p != first)
        .collect::<Vec<_>>();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(len_and_reserved_end(&fs, &next[0]).1, 4096);
    // Every record reads back as written: reserving blocks changes no byte.
    let all = read_all(&log);
    assert_eq!(all.len() as u64, i);
    for (n, r) in all.iter().enumerate() {
        assert_same(r, n as u64, &record(n as u64, 300));
    }
    // A closed log holds no disk beyond its data.
    log.close().unwrap();
    assert_eq!(fs.reserved_past_end(&next[0]), Some(0));
}

#[test]
fn no_blocks_are_reserved_when_preallocation_is_off() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default().preallocate_bytes(0));
    for i in 0..20 {
        log.append(&[record(i, 300)]).unwrap();
    }
    let seg = dir().join("00000000000000000000.log");
    assert_eq!(fs.reserved_past_end(&seg), Some(0));
}

/// A batch of three records, `i * 3` to `i * 3 + 2`, ready to write.
fn prepared(i: u64) -> sluice_log::PreparedBatch<Vec<u8>> {
    let records: Vec<Record> = (i * 3..i * 3 + 3).map(|n| record(n, 300)).collect();
    sluice_log::PreparedBatch::new(records.iter().map(|r| (r.key.as_ref(), r.value.as_ref())))
        .unwrap()
}

#[test]
fn batches_written_together_take_consecutive_offsets_and_roll_between_them() {
    let fs = SimFs::new();
    // About a kilobyte a batch: a segment holds three, so the group rolls twice or more.
    let log = open_sim(&fs, LogOptions::default().segment_bytes_max(4096));
    log.append(&[record(999, 10)]).unwrap();
    let mut batches: Vec<_> = (0..10).map(prepared).collect();
    let mut refs: Vec<_> = batches.iter_mut().collect();
    let (written, failed) = log.write_prepared_many(&mut refs);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(written.len(), 10);
    for (i, w) in written.iter().enumerate() {
        assert_eq!(
            (w.first_offset, w.end_offset),
            (1 + 3 * i as u64, 4 + 3 * i as u64)
        );
    }
    assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
    // Written, and readable once acknowledged (the policy is `always`).
    for w in &written {
        log.acknowledge(*w).unwrap();
    }
    let check = |log: &Log| {
        let all = read_all(log);
        assert_eq!(all.len(), 31);
        for (n, r) in all.iter().skip(1).enumerate() {
            assert_same(r, 1 + n as u64, &record(n as u64, 300));
        }
    };
    check(&log);
    log.close().unwrap();
    check(&open_sim(
        &fs,
        LogOptions::default().segment_bytes_max(4096),
    ));
}

#[test]
fn a_failed_write_of_batches_written_together_writes_none_of_them() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    log.append(&[record(999, 10)]).unwrap();
    let mut batches: Vec<_> = (0..4).map(prepared).collect();
    fs.fail_writes(std::io::ErrorKind::StorageFull, true);
    let mut refs: Vec<_> = batches.iter_mut().collect();
    let (written, failed) = log.write_prepared_many(&mut refs);
    assert!(written.is_empty());
    assert!(matches!(failed, Some(Error::Io { .. })), "{failed:?}");
    assert_eq!(log.end_offset(), 1, "no offsets were given out");
    // The half written was taken back: the same batches go in whole once the disk has room.
    fs.clear_write_error();
    let mut refs: Vec<_> = batches.iter_mut().collect();
    let (written, failed) = log.write_prepared_many(&mut refs);
    assert!(failed.is_none());
    assert_eq!(written.last().unwrap().end_offset, 13);
    log.sync().unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 13);
    for (n, r) in all.iter().skip(1).enumerate() {
        assert_same(r, 1 + n as u64, &record(n as u64, 300));
    }
}
