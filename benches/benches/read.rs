//! Read throughput from the page cache, and the cost of reading one record at a random offset.
//!
//! The log holds about 256 MiB of 1 KiB records in batches of 500, written before measuring and
//! read once in full so that every page is cached: these figures are the log's own cost (reads,
//! CRC checks, decoding), not the disk's.
//!
//! Throughput counts record payload (key and value bytes), what a consumer receives.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::{Rng, append_batches, fast_fill_options, records, temp_dir};
use sluice_log::{Log, LogOptions, ReadLimits};
use tempfile::TempDir;

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 500;
const LOG_PAYLOAD_BYTES: u64 = 256 << 20;

/// The pre-written log, reopened as a broker would after a restart.
#[derive(Debug)]
struct Fixture {
    _dir: TempDir,
    log: Log,
    /// Records in the log.
    end: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = temp_dir("read");
        let path = dir.path().join("log");
        let batch = records(BATCH_RECORDS, RECORD_BYTES);
        let batches = LOG_PAYLOAD_BYTES / (BATCH_RECORDS * RECORD_BYTES) as u64;
        let writer = Log::open(&path, fast_fill_options()).expect("open");
        let end = append_batches(&writer, &batch, batches);
        writer.close().expect("close");
        let log = Log::open(&path, LogOptions::default()).expect("reopen");
        assert_eq!(log.readable_end(), end);
        // One full pass brings every page into the cache before anything is timed.
        let mut next = 0;
        while next < end {
            let got = log.read_from(next, ReadLimits::default()).expect("read");
            next = got.last().map_or(end, |r| r.offset + 1);
        }
        Self {
            _dir: dir,
            log,
            end,
        }
    }
}

fn read(c: &mut Criterion) {
    // Built by the first benchmark that runs, so that a filter that selects none of them
    // writes nothing.
    let mut fixture: Option<Fixture> = None;
    let mut group = c.benchmark_group("read");
    // Default limits stop at 10,000 records; the large limit at 64 MiB of payload.
    let scans = [
        ("default limits", ReadLimits::default(), 10_000usize),
        (
            "64MiB limit",
            ReadLimits {
                records_max: usize::MAX,
                bytes_max: 64 << 20,
            },
            (64 << 20) / RECORD_BYTES,
        ),
    ];
    for (name, limits, per_call) in scans {
        group.throughput(Throughput::Bytes((per_call * RECORD_BYTES) as u64));
        let mut from = 0u64;
        group.bench_function(BenchmarkId::new("sequential 1KiB", name), |b| {
            let Fixture { log, end, .. } = fixture.get_or_insert_with(Fixture::new);
            b.iter(|| {
                // Wrap early enough that every call returns a full `per_call` records.
                if from + per_call as u64 > *end {
                    from = 0;
                }
                let got = log.read_from(from, limits).expect("read");
                assert_eq!(got.len(), per_call);
                from += per_call as u64;
                black_box(got)
            });
        });
    }

    group.throughput(Throughput::Elements(1));
    let mut rng = Rng::new(1);
    let one = ReadLimits {
        records_max: 1,
        ..ReadLimits::default()
    };
    group.bench_function(BenchmarkId::new("random 1KiB", "1 record"), |b| {
        let Fixture { log, end, .. } = fixture.get_or_insert_with(Fixture::new);
        b.iter(|| {
            let offset = rng.below(*end);
            let got = log.read_from(offset, one).expect("read");
            assert_eq!(got.first().map(|r| r.offset), Some(offset));
            black_box(got)
        });
    });
    group.finish();
    if let Some(f) = fixture {
        f.log.close().expect("close");
    }
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = read
}
criterion_main!(benches);
