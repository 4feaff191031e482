//! Index lookups: `offset_for_timestamp` and single-record reads at random offsets, on the same
//! data split into many small segments or a few large ones.
//!
//! Both logs hold 256 MiB of 1 KiB records in batches of 16 (about 16 KiB, so the sparse index
//! has an entry for every batch). A clock that ticks once per append gives every batch its own
//! timestamp, so a time lookup lands on a definite batch. The data is in the page cache: the
//! figures are the cost of finding the segment, the index entry and the record, not of the disk.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::{
    Rng, TickClock, append_batches, fast_fill_options, records, size_label, temp_dir,
};
use sluice_log::{Log, LogOptions, ReadLimits};
use tempfile::TempDir;

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: u64 = 16;
const LOG_PAYLOAD_BYTES: u64 = 256 << 20;
/// The first timestamp the ticking clock hands out (September 2020, in ms).
const START_MS: u64 = 1_600_000_000_000;

/// Batches in each log.
const BATCHES: u64 = LOG_PAYLOAD_BYTES / (BATCH_RECORDS * RECORD_BYTES as u64);

/// A log of [`BATCHES`] batches in segments of at most `segment_bytes`, reopened for reading.
#[derive(Debug)]
struct Fixture {
    _dir: TempDir,
    log: Log,
    /// Records in the log.
    end: u64,
}

impl Fixture {
    fn new(segment_bytes: u64, layout: &str) -> Self {
        let dir = temp_dir("index");
        let path = dir.path().join("log");
        let options = fast_fill_options()
            .segment_bytes_max(segment_bytes)
            .clock(Arc::new(TickClock::new(START_MS)));
        let writer = Log::open(&path, options).expect("open");
        let batch = records(BATCH_RECORDS as usize, RECORD_BYTES);
        let end = append_batches(&writer, &batch, BATCHES);
        writer.close().expect("close");
        let log = Log::open(&path, LogOptions::default()).expect("reopen");
        eprintln!(
            "index/{layout}: {} segments, {end} records",
            log.segment_count()
        );
        // Batch k was stamped START_MS + k, so its first record is the answer for that time.
        for k in [0, 1, BATCHES / 2, BATCHES - 1] {
            assert_eq!(
                log.offset_for_timestamp(START_MS + k).expect("seek"),
                Some(k * BATCH_RECORDS)
            );
        }
        Self {
            _dir: dir,
            log,
            end,
        }
    }
}

fn index(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(1));
    for segment_bytes in [1u64 << 20, 256 << 20] {
        let layout = format!("{} segments", size_label(segment_bytes));
        // Built by the first benchmark of this layout that runs, so that a filter that selects
        // neither writes nothing.
        let mut fixture: Option<Fixture> = None;

        let mut rng = Rng::new(2);
        group.bench_function(BenchmarkId::new("offset_for_timestamp", &layout), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(segment_bytes, &layout));
            b.iter(|| {
                let k = rng.below(BATCHES);
                let found = f.log.offset_for_timestamp(START_MS + k).expect("seek");
                debug_assert_eq!(found, Some(k * BATCH_RECORDS));
                black_box(found)
            });
        });

        let mut rng = Rng::new(3);
        let one = ReadLimits {
            records_max: 1,
            ..ReadLimits::default()
        };
        group.bench_function(BenchmarkId::new("read_from 1 record", &layout), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(segment_bytes, &layout));
            b.iter(|| {
                let offset = rng.below(f.end);
                let got = f.log.read_from(offset, one).expect("read");
                debug_assert_eq!(got.first().map(|r| r.offset), Some(offset));
                black_box(got)
            });
        });
        if let Some(f) = fixture {
            f.log.close().expect("close");
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = index
}
criterion_main!(benches);
