//! Time to open a log as its data grows: after a clean `close()`, and after a crash (the log
//! dropped without `close()`).
//!
//! Each log has 1, 4 or 16 full 64 MiB segments of 1 KiB records in batches of 500, so the
//! active segment is full too: a crash recovery has a whole segment to scan. After a clean close,
//! open trusts the clean-shutdown marker and the index files and reads no segment data (it seals
//! the last segment and creates a new one); after a crash it scans and checks the active segment. The files are in the page cache, so a crash
//! figure is the CPU cost of that scan; from a cold cache, reading one segment at the disk's
//! speed comes on top.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use sluice_benches::{
    append_batches, batch_len, dir_bytes, fast_fill_options, records, size_label, temp_dir,
};
use sluice_log::format::{CLEAN_MARKER_NAME, FILE_HEADER_LEN};
use sluice_log::{Log, LogOptions};
use tempfile::TempDir;

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 500;
const SEGMENT_BYTES: u64 = 64 << 20;

/// Times `iters` opens of the log at `path`, dropping each log unclosed, untimed. `after_drop`
/// runs (untimed) after each drop to put the directory back as the next open expects it.
fn time_opens(path: &Path, iters: u64, mut after_drop: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let log =
            Log::open(path, LogOptions::default().segment_bytes_max(SEGMENT_BYTES)).expect("open");
        total += start.elapsed();
        drop(log);
        after_drop();
    }
    total
}

/// A log of `segments` full segments, closed cleanly once.
#[derive(Debug)]
struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    marker_path: PathBuf,
    /// The clean-shutdown marker that `close()` wrote.
    marker: Vec<u8>,
}

impl Fixture {
    fn new(segments: u64, size: &str) -> Self {
        let batch = records(BATCH_RECORDS, RECORD_BYTES);
        // As many batches as fit in a segment, so that every segment, the active one included,
        // is full.
        let per_segment = (SEGMENT_BYTES - FILE_HEADER_LEN as u64) / batch_len(&batch);
        let dir = temp_dir("recovery");
        let path = dir.path().join("log");
        let writer =
            Log::open(&path, fast_fill_options().segment_bytes_max(SEGMENT_BYTES)).expect("open");
        append_batches(&writer, &batch, segments * per_segment);
        assert_eq!(writer.segment_count() as u64, segments);
        writer.close().expect("close");
        eprintln!(
            "recovery/{size}: {segments} segments, {} bytes",
            dir_bytes(&path)
        );
        let marker_path = path.join(CLEAN_MARKER_NAME);
        let marker = std::fs::read(&marker_path).expect("read the clean-shutdown marker");
        Self {
            _dir: dir,
            path,
            marker_path,
            marker,
        }
    }

    /// Puts the directory back as `close()` left it, without timing a close per open: a clean
    /// open removes the marker and seals the last segment by starting a new, empty one, so an
    /// empty newest segment goes and the marker comes back with the same bytes.
    fn restore_clean_state(&self) {
        let newest = std::fs::read_dir(&self.path)
            .expect("list the log directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".log"))
            .max()
            .map(|n| self.path.join(n))
            .expect("a segment");
        let empty = std::fs::metadata(&newest)
            .expect("stat the newest segment")
            .len()
            == FILE_HEADER_LEN as u64;
        if empty {
            std::fs::remove_file(&newest).expect("remove the new segment");
        }
        std::fs::write(&self.marker_path, &self.marker).expect("restore the clean-shutdown marker");
    }

    /// Without the marker every open is a crash recovery, which scans the active segment and
    /// leaves the files as they were.
    fn remove_marker(&self) {
        match std::fs::remove_file(&self.marker_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("cannot remove the clean-shutdown marker: {e}")
            }
            _ => {}
        }
    }
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sampling_mode(SamplingMode::Flat);
    for segments in [1u64, 4, 16] {
        let size = size_label(segments * SEGMENT_BYTES);
        // Built by the first benchmark of this size that runs, so that a filter that selects
        // neither writes nothing.
        let mut fixture: Option<Fixture> = None;
        group.bench_function(BenchmarkId::new("clean open", &size), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(segments, &size));
            f.restore_clean_state();
            b.iter_custom(|iters| time_opens(&f.path, iters, || f.restore_clean_state()));
        });
        group.bench_function(BenchmarkId::new("crash open", &size), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(segments, &size));
            f.remove_marker();
            b.iter_custom(|iters| time_opens(&f.path, iters, || {}));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = recovery
}
criterion_main!(benches);
