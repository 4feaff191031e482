//! Model test: random appends, reads, timestamp seeks, retention passes and reopens (clean or
//! as after a crash), checked step by step against an in-memory `Vec` of every record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_log::io::sim::SimFs;
use sluice_log::{Error, FsyncPolicy, Log, LogOptions, ReadLimits, Record, RetentionPolicy};

#[derive(Debug, Clone)]
struct Expected {
    record: Record,
    timestamp_ms: u64,
}

fn options(rng: &mut SmallRng, clock: Arc<ManualClock>) -> LogOptions {
    let fsync = match rng.gen_range(0..3) {
        0 => FsyncPolicy::Always,
        1 => FsyncPolicy::Interval(Duration::from_millis(50)),
        _ => FsyncPolicy::Never,
    };
    LogOptions::default()
        .segment_bytes_max(rng.gen_range(300..5000))
        .index_interval_bytes(rng.gen_range(1..700))
        .segment_age_max(Duration::from_secs(rng.gen_range(30..600)))
        .fsync(fsync)
        .clock(clock)
}

fn run(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let fs = SimFs::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let mut log = open_sim(&fs, options(&mut rng, clock.clone()));
    let mut model: Vec<Expected> = Vec::new(); // indexed by offset
    let mut start = 0u64;
    let max_age = Duration::from_secs(rng.gen_range(60..3600));

    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.gen_range(0..100) {
            0..=49 => {
                let n = rng.gen_range(1..12);
                let batch: Vec<Record> = (0..n)
                    .map(|i| record(model.len() as u64 + i, rng.gen_range(0..400)))
                    .collect();
                let first = log.append(&batch).unwrap();
                assert_eq!(first, model.len() as u64, "{ctx}");
                let ts = log.read_from(first, ReadLimits::default()).unwrap()[0].timestamp_ms;
                assert!(ts >= model.last().map_or(0, |e| e.timestamp_ms), "{ctx}");
                model.extend(batch.into_iter().map(|record| Expected {
                    record,
                    timestamp_ms: ts,
                }));
            }
            50..=69 => {
                let end = model.len() as u64;
                let from = rng.gen_range(start..=end);
                let limits = ReadLimits {
                    records_max: rng.gen_range(1..50),
                    bytes_max: rng.gen_range(1..5000),
                };
                let got = log.read_from(from, limits).unwrap();
                if from < end {
                    assert!(!got.is_empty(), "{ctx}: nothing read at {from} of {end}");
                }
                assert!(got.len() <= limits.records_max, "{ctx}");
                let bytes: usize = got.iter().map(|r| r.key.len() + r.value.len()).sum();
                assert!(got.len() == 1 || bytes <= limits.bytes_max, "{ctx}");
                for (i, r) in got.iter().enumerate() {
                    let e = &model[from as usize + i];
                    assert_same(r, from + i as u64, &e.record);
                    assert_eq!(r.timestamp_ms, e.timestamp_ms, "{ctx}");
                }
                if start > 0 {
                    assert!(
                        matches!(
                            log.read_from(start - 1, limits),
                            Err(Error::OffsetOutOfRange { .. })
                        ),
                        "{ctx}"
                    );
                }
            }
            70..=77 => {
                let lo = model.get(start as usize).map_or(0, |e| e.timestamp_ms);
                let hi = model.last().map_or(0, |e| e.timestamp_ms);
                let t = rng.gen_range(lo.saturating_sub(10)..=hi + 10);
                let expected = model[start as usize..]
                    .iter()
                    .position(|e| e.timestamp_ms >= t)
                    .map(|i| start + i as u64);
                assert_eq!(
                    log.offset_for_timestamp(t).unwrap(),
                    expected,
                    "{ctx}: t={t}"
                );
            }
            78..=85 => clock.advance(rng.gen_range(0..120_000)),
            86..=90 => {
                let now = clock.now();
                let out = log
                    .enforce_retention(
                        RetentionPolicy {
                            max_age: Some(max_age),
                            max_bytes: None,
                        },
                        now,
                    )
                    .unwrap();
                assert!(out.start_offset >= start, "{ctx}");
                for e in &model[start as usize..out.start_offset as usize] {
                    assert!(
                        now - e.timestamp_ms > max_age.as_millis() as u64,
                        "{ctx}: an unexpired record was deleted"
                    );
                }
                start = out.start_offset;
                assert_eq!(log.start_offset(), start, "{ctx}");
            }
            91..=95 => {
                // Reopen, after a clean close or as after a process crash (files as written).
                if rng.gen_bool(0.5) {
                    log.close().unwrap();
                } else {
                    drop(log);
                }
                log = open_sim(&fs, options(&mut rng, clock.clone()));
                assert_eq!(log.start_offset(), start, "{ctx}");
                assert_eq!(log.end_offset(), model.len() as u64, "{ctx}");
            }
            _ => log.sync().unwrap(),
        }
    }
    let all = read_all(&log);
    assert_eq!(all.len() as u64, model.len() as u64 - start);
    for r in &all {
        assert_same(r, r.offset, &model[r.offset as usize].record);
    }
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        sluice_log::Clock::now_ms(self)
    }
}

#[test]
fn random_operations_match_the_model() {
    for seed in 0..150 {
        run(seed, 400);
    }
}

#[test]
fn the_model_holds_on_the_real_file_system() {
    // One shorter run through the real file system and memory maps.
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let opts = || {
        LogOptions::default()
            .segment_bytes_max(2000)
            .index_interval_bytes(100)
            .clock(clock.clone())
    };
    let mut expected = Vec::new();
    let mut log = Log::open(tmp.path(), opts()).unwrap();
    for round in 0..20u64 {
        for i in 0..10u64 {
            let r = record(round * 10 + i, 150);
            log.append(std::slice::from_ref(&r)).unwrap();
            expected.push(r);
            clock.advance(1000);
        }
        log.close().unwrap();
        log = Log::open(tmp.path(), opts()).unwrap();
        let all = read_all(&log);
        assert_eq!(all.len(), expected.len());
        for r in &all {
            assert_same(r, r.offset, &expected[r.offset as usize]);
        }
        assert_eq!(log.offset_for_timestamp(5_500).unwrap(), Some(6));
    }
}
