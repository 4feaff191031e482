//! Power-loss simulation. A workload of appends, rolls, retention passes and a clean close runs
//! on the simulated file system until a crash point picked at random; the crash image keeps only
//! what was synced (plus, by mode, a random prefix of unsynced bytes and garbage). After every
//! crash: each record whose append returned under `FsyncPolicy::Always` is present byte for byte
//! at its offset, the recovered log is a prefix of what was written, and the log takes writes.
//!
//! The same workload runs under `Never` and `Interval`, where rolls leave the sealed segment to
//! the background flusher: there, every record covered by a `sync` (or an open, or a clean
//! close) that returned survives, and whatever a power loss tore is cut off without a hole.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_log::io::sim::{CrashMode, SimFs};
use sluice_log::{FsyncPolicy, Log, LogOptions, Record, RetentionPolicy};

fn options(clock: Arc<ManualClock>) -> LogOptions {
    options_with(clock, FsyncPolicy::Always)
}

fn options_with(clock: Arc<ManualClock>, fsync: FsyncPolicy) -> LogOptions {
    LogOptions::default()
        .fsync(fsync)
        .segment_bytes_max(2048)
        .index_interval_bytes(200)
        .segment_age_max(Duration::from_secs(3600))
        .clock(clock)
}

const MODES: [CrashMode; 3] = [
    CrashMode::DropUnsynced,
    CrashMode::RandomPrefix,
    CrashMode::RandomPrefixThenGarbage,
];

/// One crash trial: returns how many appends were acknowledged before the crash.
fn trial(seed: u64, fsync: FsyncPolicy) -> usize {
    let always = fsync == FsyncPolicy::Always;
    let options = |clock: Arc<ManualClock>| options_with(clock, fsync);
    let mut rng = SmallRng::seed_from_u64(seed);
    let fs = SimFs::new();
    let clock = ManualClock::new(1_000_000);
    let mut attempted: Vec<Record> = Vec::new(); // by offset
    // Every offset below this is durable: acknowledged under `Always`, covered by a returned
    // `sync`, open or clean close under the other policies.
    let mut acked_end = 0;
    let mut start = 0u64;

    // Some history first, closed cleanly or not, so crashes also hit a reopened log.
    {
        let log = open_sim(&fs, options(clock.clone()));
        for _ in 0..rng.gen_range(0..20) {
            let n = rng.gen_range(1..6);
            let batch: Vec<Record> = (0..n)
                .map(|i| record(attempted.len() as u64 + i, rng.gen_range(0..400)))
                .collect();
            log.append(&batch).unwrap();
            attempted.extend(batch);
            clock.advance(rng.gen_range(0..5_000));
        }
        if always {
            acked_end = attempted.len() as u64;
        }
        if rng.gen_bool(0.5) {
            log.close().unwrap();
            acked_end = attempted.len() as u64;
        }
    }

    // Up to a little past the workload's usual length, so some trials crash during or after the
    // clean close.
    let crash_at = rng.gen_range(0..450);
    fs.crash_after_ops(crash_at);
    let mut acks = 0;
    let mut run = || -> Result<(), sluice_log::Error> {
        let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), options(clock.clone()))?;
        // Open leaves everything it recovered on disk.
        acked_end = acked_end.max(log.end_offset());
        for _ in 0..200 {
            match rng.gen_range(0..10) {
                0 => {
                    clock.advance(rng.gen_range(0..600_000));
                    let policy = RetentionPolicy {
                        max_age: Some(Duration::from_secs(1200)),
                        max_bytes: Some(20_000),
                    };
                    let out = log.enforce_retention(policy, clock_now(&clock))?;
                    start = out.start_offset;
                }
                1 => {
                    let end = log.end_offset();
                    log.sync()?;
                    acked_end = acked_end.max(end);
                }
                _ => {
                    let n = rng.gen_range(1..8);
                    let base = log.end_offset();
                    assert_eq!(base, attempted.len() as u64);
                    let batch: Vec<Record> = (0..n)
                        .map(|i| record(base + i, rng.gen_range(0..300)))
                        .collect();
                    attempted.extend(batch.iter().cloned());
                    let got = log.append(&batch)?;
                    assert_eq!(got, base);
                    if always {
                        acked_end = base + n;
                    }
                    acks += 1;
                }
            }
            clock.advance(rng.gen_range(0..2_000));
        }
        let end = log.end_offset();
        log.close()?;
        acked_end = end;
        Ok(())
    };
    let result = run();
    if result.is_ok() {
        assert!(!fs.has_crashed());
    }
    // An append that failed may or may not have written its batch; either way it was never
    // acknowledged. The log may not have reached those offsets: trim the attempt list lazily.

    let mode = MODES[rng.gen_range(0..MODES.len())];
    let image = fs.crash_image(mode, seed);
    let log = Log::open_with_fs(Arc::new(image.clone()), dir(), options(clock.clone()))
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    let end = log.end_offset();
    let recovered_start = log.start_offset();
    assert!(
        end >= acked_end,
        "seed {seed} ({fsync:?}, {mode:?}, crash at op {crash_at}): durable up to {acked_end}, recovered up to {end}"
    );
    assert!(
        end <= attempted.len() as u64,
        "seed {seed}: offsets past anything written"
    );
    // A retention pass that returned had made its deletions durable (the directory is synced
    // after each segment), so the recovered log cannot start before the start it reported.
    assert!(
        recovered_start >= start,
        "seed {seed}: start went back from {start} to {recovered_start}"
    );
    let all = read_all_of(&log, seed);
    assert_eq!(
        all.len() as u64,
        end - recovered_start,
        "seed {seed}: a hole in the log"
    );
    for r in &all {
        assert_same(r, r.offset, &attempted[r.offset as usize]);
    }
    // The recovered log takes writes and survives a clean reopen.
    let o = log.append(&[Record::new("after", "crash")]).unwrap();
    assert_eq!(o, end);
    log.close().unwrap();
    let log = Log::open_with_fs(Arc::new(image), dir(), options(clock.clone())).unwrap();
    assert_eq!(log.end_offset(), end + 1);
    acks
}

/// Every readable record, failing with the trial's seed on a read error (damage served, a hole).
fn read_all_of(log: &Log, seed: u64) -> Vec<sluice_log::StoredRecord> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let limits = sluice_log::ReadLimits {
            records_max: 1000,
            bytes_max: 1 << 20,
        };
        let batch = log
            .read_from(next, limits)
            .unwrap_or_else(|e| panic!("seed {seed}: read at {next}: {e}"));
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch);
    }
    out
}

fn clock_now(clock: &ManualClock) -> u64 {
    use sluice_log::Clock;
    clock.now_ms()
}

#[test]
fn acknowledged_records_survive_power_loss_at_random_points() {
    let trials = 600;
    let mut acks = 0;
    for seed in 0..trials {
        acks += trial(seed, FsyncPolicy::Always);
    }
    // The crash points must land inside the workload, not all before it.
    assert!(
        acks > trials as usize * 5,
        "only {acks} acknowledged appends across trials"
    );
}

/// Under the policies that roll without an fsync, a power loss may tear sealed segments the
/// background flusher has not reached: recovery cuts the log at the first damage, with no hole,
/// and keeps everything a returned `sync`, open or clean close covered.
#[test]
fn synced_records_survive_power_loss_when_rolls_leave_the_fsync_to_the_flusher() {
    let trials = 400;
    let mut acks = 0;
    for seed in 0..trials {
        let fsync = if seed % 2 == 0 {
            FsyncPolicy::Never
        } else {
            FsyncPolicy::Interval(Duration::from_millis(1))
        };
        acks += trial(seed, fsync);
    }
    assert!(
        acks > trials as usize * 5,
        "only {acks} appends across trials"
    );
}

/// Several threads appending under `Always` when the power goes: every acknowledged record
/// survives at the offset its append returned.
#[test]
fn concurrent_appenders_lose_nothing_acknowledged_at_a_crash() {
    for seed in 0..60u64 {
        let fs = SimFs::new();
        let clock = ManualClock::new(0);
        let log = Arc::new(open_sim(&fs, options(clock.clone())));
        let mut rng = SmallRng::seed_from_u64(seed);
        fs.crash_after_ops(rng.gen_range(10..400));
        let acked: Arc<Mutex<HashMap<u64, Record>>> = Arc::default();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let log = Arc::clone(&log);
                let acked = Arc::clone(&acked);
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let rec = Record::new(format!("t{t}"), format!("t{t}-{i}"));
                        match log.append(std::slice::from_ref(&rec)) {
                            Ok(o) => {
                                acked.lock().unwrap().insert(o, rec);
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        let image = fs.crash_image(MODES[(seed % 3) as usize], seed);
        let log = Log::open_with_fs(Arc::new(image), dir(), options(clock)).unwrap();
        let all = read_all(&log);
        let acked = acked.lock().unwrap();
        for (offset, rec) in acked.iter() {
            let got = all
                .iter()
                .find(|r| r.offset == *offset)
                .unwrap_or_else(|| panic!("seed {seed}: acknowledged offset {offset} lost"));
            assert_same(got, *offset, rec);
        }
        // Per-thread order holds: each thread's values appear in increasing order.
        for t in 0..4 {
            let mine: Vec<u64> = all
                .iter()
                .filter(|r| r.key.as_ref() == format!("t{t}").as_bytes())
                .map(|r| {
                    let v = std::str::from_utf8(&r.value).unwrap();
                    v.rsplit('-').next().unwrap().parse().unwrap()
                })
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: thread {t} out of order"
            );
        }
    }
}

/// A log of four segments rolled under `Never` and left without a clean close, with the second
/// segment cut inside a batch, as a power loss leaves a segment the flusher never reached.
/// Returns the file system, the records and the second segment's base offset and whole records.
fn torn_second_segment(point: Option<u64>) -> (SimFs, Vec<Record>, u64, u64) {
    let fs = SimFs::new();
    let clock = ManualClock::new(1_000_000);
    let log = open_sim(&fs, options_with(clock, FsyncPolicy::Never));
    let mut records = Vec::new();
    while log.segment_count() < 4 {
        let r = record(records.len() as u64, 300);
        log.append(std::slice::from_ref(&r)).unwrap();
        records.push(r);
    }
    drop(log);
    let segments = segment_files(&fs, &dir(), "log");
    let second = &segments[1];
    let base: u64 = second
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let next: u64 = segments[2]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(next - base >= 3, "want a few batches in the torn segment");
    // Keep the header and two whole one-record batches, then half of the third.
    let bytes = fs.contents(second).unwrap();
    let batch_len = (bytes.len() - 16) / (next - base) as usize;
    fs.set_contents(second, bytes[..16 + 2 * batch_len + batch_len / 2].to_vec());
    let point_path = dir().join(sluice_log::format::RECOVERY_POINT_NAME);
    match point {
        Some(offset) => fs.set_contents(
            &point_path,
            sluice_log::format::marker::RecoveryPoint { offset }
                .encode()
                .to_vec(),
        ),
        None => {
            use sluice_log::io::FileSystem;
            let _ = fs.remove_file(&point_path);
        }
    }
    (fs, records, base, base + 2)
}

#[test]
fn a_torn_segment_past_the_recovery_point_ends_the_log_there() {
    // The point names the first segment that may be unflushed: the torn one, or an earlier one
    // that proves whole.
    for at_torn_segment in [false, true] {
        let (fs, records, base, whole_end) = torn_second_segment(None);
        let offset = if at_torn_segment { base } else { 0 };
        let point_path = dir().join(sluice_log::format::RECOVERY_POINT_NAME);
        let point = sluice_log::format::marker::RecoveryPoint { offset };
        fs.set_contents(&point_path, point.encode().to_vec());
        let clock = ManualClock::new(2_000_000);
        let log = open_sim(&fs, options_with(clock.clone(), FsyncPolicy::Never));
        assert_eq!(
            log.end_offset(),
            whole_end,
            "cut after the last whole batch"
        );
        assert_eq!(
            log.segment_count(),
            2,
            "the segments after the torn one are gone"
        );
        assert_eq!(segment_files(&fs, &dir(), "log").len(), 2);
        assert!(
            segment_files(&fs, &dir(), "index").len() <= 1,
            "only the first segment keeps an index"
        );
        // Every segment is on disk again: the point names the active segment, the cut one.
        let kept = fs
            .contents(&point_path)
            .expect("a recovery point under Never");
        assert_eq!(
            sluice_log::format::marker::RecoveryPoint::decode(&kept),
            Ok(sluice_log::format::marker::RecoveryPoint { offset: base })
        );
        let all = read_all(&log);
        assert_eq!(all.len() as u64, whole_end);
        for r in &all {
            assert_same(r, r.offset, &records[r.offset as usize]);
        }
        // The log goes on from the cut, and a clean reopen agrees.
        assert_eq!(log.append(&[Record::new("k", "after")]).unwrap(), whole_end);
        log.close().unwrap();
        let log = open_sim(&fs, options_with(clock, FsyncPolicy::Never));
        assert_eq!(log.end_offset(), whole_end + 1);
        assert_eq!(read_all(&log).len() as u64, whole_end + 1);
    }
}

#[test]
fn a_torn_segment_past_the_recovery_point_is_an_error_under_absolute_consistency() {
    let (fs, ..) = torn_second_segment(Some(0));
    let options = options_with(ManualClock::new(0), FsyncPolicy::Never)
        .recovery(sluice_log::RecoveryMode::AbsoluteConsistency);
    let err = Log::open_with_fs(Arc::new(fs.clone()), dir(), options).unwrap_err();
    assert!(matches!(err, sluice_log::Error::Corruption { .. }), "{err}");
    assert_eq!(
        segment_files(&fs, &dir(), "log").len(),
        4,
        "nothing removed"
    );
}

/// Without a recovery point every sealed segment was flushed when sealed, so damage inside one
/// is damage to data that reached the disk: it is kept and reported, never cut quietly.
#[test]
fn damage_before_the_recovery_point_is_kept_and_reported() {
    let (fs, _, base, whole_end) = torn_second_segment(None);
    let log = open_sim(&fs, options_with(ManualClock::new(0), FsyncPolicy::Never));
    assert_eq!(log.segment_count(), 4);
    assert!(log.end_offset() > whole_end);
    let err = log
        .read_from(whole_end, sluice_log::ReadLimits::default())
        .unwrap_err();
    assert!(matches!(err, sluice_log::Error::Corruption { .. }), "{err}");
    assert!(
        log.read_from(base, sluice_log::ReadLimits::default())
            .is_ok()
    );
}

/// Retention under `Never` removes an expired segment that a roll has just sealed without an
/// fsync. Between the segment leaving the log and its unlink reaching the disk, records are
/// appended and a `sync` returns; then the power goes. The segment comes back, but it was
/// flushed before it was removed, so it is whole, and recovery keeps every synced record
/// (unflushed, it would come back torn, past the recovery point, and the cut there would take
/// the synced records with it).
#[test]
fn retention_removes_only_flushed_segments_so_a_power_loss_mid_removal_keeps_synced_records() {
    let fs = SyncHookFs::new(|_, sync| sync());
    let clock = ManualClock::new(1_000_000);
    let options = options_with(clock.clone(), FsyncPolicy::Never);
    let log = Arc::new(Log::open_with_fs(Arc::new(fs.clone()), dir(), options.clone()).unwrap());
    for i in 0..3 {
        log.append(&[record(i, 100)]).unwrap();
    }
    let images: Arc<Mutex<Vec<(u64, SimFs)>>> = Arc::default();
    {
        let log = Arc::downgrade(&log);
        let images = Arc::clone(&images);
        let inner = fs.inner.clone();
        fs.on_remove(move |path| {
            // Once, at the first unlink of the expired segment: the log has already let go of
            // it, and retention is outside the log's locks.
            let mut images = images.lock().unwrap();
            let Some(log) = log.upgrade() else { return };
            if !images.is_empty() || path.extension().is_none_or(|e| e != "log") {
                return;
            }
            for i in 3..6 {
                log.append(&[record(i, 100)]).unwrap();
            }
            log.sync().unwrap();
            images.push((
                log.end_offset(),
                inner.crash_image(CrashMode::DropUnsynced, 7),
            ));
        });
    }
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(1)),
        max_bytes: None,
    };
    let out = log.enforce_retention(policy, 1_000_000 + 10_000).unwrap();
    assert_eq!(out.segments_deleted, 1);
    let (synced_end, image) = images.lock().unwrap().pop().expect("the hook ran");
    assert_eq!(synced_end, 6);
    let recovered = Log::open_with_fs(Arc::new(image), dir(), options).unwrap();
    assert!(
        recovered.end_offset() >= synced_end,
        "sync() returned for offsets below {synced_end}; recovered up to {}",
        recovered.end_offset()
    );
    let all = read_all_of(&recovered, 0);
    assert_eq!(all.len() as u64, recovered.end_offset());
    for r in &all {
        assert_same(r, r.offset, &record(r.offset, 100));
    }
}

/// Under `never` the background flusher retries after an error that leaves the log writable:
/// here the index files cannot be opened for their fsync (as when the process is out of file
/// descriptors) twice. No `sync` is called and nothing more is written after the rolls, so only
/// the flusher's own retry, a second later each time, can bring the sealed segments to disk.
#[test]
fn the_background_flusher_retries_after_an_error_that_leaves_the_log_writable() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let fs = SyncHookFs::new(|_, sync| sync());
    let clock = ManualClock::new(1_000_000);
    let options = options_with(clock, FsyncPolicy::Never);
    let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), options.clone()).unwrap();
    let failed = Arc::new(AtomicUsize::new(0));
    {
        let failed = Arc::clone(&failed);
        fs.on_open(move |path, mode| {
            let index = path.extension().is_some_and(|e| e == "index");
            if mode == sluice_log::io::OpenMode::Read && index && failed.load(Ordering::SeqCst) < 2
            {
                failed.fetch_add(1, Ordering::SeqCst);
                return Err(std::io::Error::other("too many open files"));
            }
            Ok(())
        });
    }
    // 2 KiB segments: append until the log has rolled twice, so two segments are sealed, the
    // second created by a roll that synced nothing. `sealed_end` is where the sealed part ends.
    let mut sealed_end = 0;
    let mut i = 0;
    while log.segment_count() < 3 {
        let before = log.segment_count();
        log.append(&[record(i, 100)]).unwrap();
        if log.segment_count() > before {
            sealed_end = i;
        }
        i += 1;
        assert!(i < 1000, "the log never rolled");
    }
    // The flusher fails twice, then succeeds on a retry. Until then a power loss may lose the
    // sealed records; after, none of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seed = 0;
    loop {
        seed += 1;
        let image = fs.inner.crash_image(CrashMode::DropUnsynced, seed);
        let recovered = Log::open_with_fs(Arc::new(image), dir(), options.clone()).unwrap();
        if failed.load(Ordering::SeqCst) == 2 && recovered.end_offset() >= sealed_end {
            let all = read_all_of(&recovered, seed);
            assert_eq!(all.len() as u64, recovered.end_offset());
            for r in &all {
                assert_same(r, r.offset, &record(r.offset, 100));
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sealed segments never reached the disk: {} open failures, recovered up to {} of {sealed_end}",
            failed.load(Ordering::SeqCst),
            recovered.end_offset()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log.append(&[record(i, 100)]).is_ok(),
        "the log stays writable"
    );
}
