//! Power-loss simulation. A workload of appends, rolls, retention passes and a clean close runs
//! on the simulated file system until a crash point picked at random; the crash image keeps only
//! what was synced (plus, by mode, a random prefix of unsynced bytes and garbage). After every
//! crash: each record whose append returned under `FsyncPolicy::Always` is present byte for byte
//! at its offset, the recovered log is a prefix of what was written, and the log takes writes.

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
    LogOptions::default()
        .fsync(FsyncPolicy::Always)
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
fn trial(seed: u64) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let fs = SimFs::new();
    let clock = ManualClock::new(1_000_000);
    let mut attempted: Vec<Record> = Vec::new(); // by offset
    let mut acked_end;
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
        acked_end = attempted.len() as u64;
        if rng.gen_bool(0.5) {
            log.close().unwrap();
        }
    }

    // Up to a little past the workload's usual length, so some trials crash during or after the
    // clean close.
    let crash_at = rng.gen_range(0..450);
    fs.crash_after_ops(crash_at);
    let mut acks = 0;
    let mut run = || -> Result<(), sluice_log::Error> {
        let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), options(clock.clone()))?;
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
                1 => log.sync()?,
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
                    acked_end = base + n;
                    acks += 1;
                }
            }
            clock.advance(rng.gen_range(0..2_000));
        }
        log.close()
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
        "seed {seed} ({mode:?}, crash at op {crash_at}): acknowledged up to {acked_end}, recovered up to {end}"
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
    let all = read_all(&log);
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

fn clock_now(clock: &ManualClock) -> u64 {
    use sluice_log::Clock;
    clock.now_ms()
}

#[test]
fn acknowledged_records_survive_power_loss_at_random_points() {
    let trials = 600;
    let mut acks = 0;
    for seed in 0..trials {
        acks += trial(seed);
    }
    // The crash points must land inside the workload, not all before it.
    assert!(
        acks > trials as usize * 5,
        "only {acks} acknowledged appends across trials"
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
