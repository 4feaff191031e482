//! Group commit on the real disk: eight threads appending under `FsyncPolicy::Always` get
//! contiguous, unique offsets, every record is stored, and the threads share fsyncs (fewer
//! fsyncs than appends). Readers running alongside only ever see a growing, consistent prefix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use sluice_log::{FsyncPolicy, Log, LogOptions, ReadLimits, Record};

#[test]
fn eight_appenders_share_fsyncs_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            tmp.path(),
            LogOptions::default()
                .fsync(FsyncPolicy::Always)
                .segment_bytes_max(256 << 10),
        )
        .unwrap(),
    );
    const THREADS: u64 = 8;
    const APPENDS: u64 = 150;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let log = log.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !done.load(Ordering::Acquire) {
                let got = log
                    .read_from(
                        seen,
                        ReadLimits {
                            records_max: 500,
                            bytes_max: 1 << 20,
                        },
                    )
                    .unwrap();
                for r in &got {
                    assert_eq!(r.offset, seen, "readers see a dense prefix");
                    seen += 1;
                }
            }
            seen
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..APPENDS {
                    let batch = [
                        Record::new(format!("t{t}"), format!("{t}:{i}:a")),
                        Record::new(format!("t{t}"), format!("{t}:{i}:b")),
                    ];
                    let first = log.append(&batch).unwrap();
                    mine.push(first);
                }
                mine
            })
        })
        .collect();
    let mut firsts: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    done.store(true, Ordering::Release);
    reader.join().unwrap();

    firsts.sort_unstable();
    let expected: Vec<u64> = (0..THREADS * APPENDS).map(|i| i * 2).collect();
    assert_eq!(firsts, expected, "offsets are contiguous and unique");
    let all = read_all(&log);
    assert_eq!(all.len() as u64, THREADS * APPENDS * 2);
    // Each batch is stored whole and each thread's batches keep their order.
    let mut last_i = vec![-1i64; THREADS as usize];
    for pair in all.chunks(2) {
        let a = std::str::from_utf8(&pair[0].value).unwrap();
        let b = std::str::from_utf8(&pair[1].value).unwrap();
        assert_eq!(a.strip_suffix('a'), b.strip_suffix('b'));
        let mut parts = a.split(':');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: i64 = parts.next().unwrap().parse().unwrap();
        assert!(i > last_i[t]);
        last_i[t] = i;
    }
    let stats = log.stats();
    assert_eq!(stats.appends, THREADS * APPENDS);
    assert_eq!(
        stats.fsync_latency_buckets.iter().sum::<u64>(),
        stats.fsyncs,
        "every fsync is timed"
    );
    assert!(
        stats.fsyncs < stats.appends,
        "group commit: {} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
}
