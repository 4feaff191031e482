//! Append throughput by record size and fsync policy, beside a raw-disk baseline.
//!
//! The baseline (`append/1KiB x500/write+fdatasync`) is what the disk allows for the same
//! durability: a loop of `write_all` and `sync_data` on a plain file, appending exactly as many
//! bytes per iteration as one encoded 500 x 1 KiB batch. The throughput of
//! `append/1KiB x500/always` over the baseline's is the fraction of the disk that an acknowledged
//! append gets.
//!
//! A disk's speed can drift, on a virtual machine by several times within minutes, so two
//! benchmarks run one after the other can disagree for reasons that have nothing to do with the
//! code.
//! `append/1KiB x500/always-paired` therefore alternates one log append with one baseline write
//! and prints both means and their ratio: each pair sees the same disk.
//!
//! Throughput counts encoded bytes (batch and record headers included), which is what reaches
//! the file, so log and baseline figures compare directly.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::{batch_len, records, size_label, temp_dir};
use sluice_log::options::DEFAULT_SEGMENT_BYTES_MAX;
use sluice_log::{FsyncPolicy, Log, LogOptions, Record};
use tempfile::TempDir;

/// A log is recreated once this much has been appended to it, to bound disk use while the file
/// still grows across several segments as it does in service.
const LOG_BYTES_CAP: u64 = 1 << 30;

/// The baseline's file is started afresh at the log's segment size, so both write to files of
/// the same range of sizes.
const BASELINE_FILE_CAP: u64 = DEFAULT_SEGMENT_BYTES_MAX;

/// Appenders in the group-commit case.
const THREADS: u64 = 4;

/// A log being appended to, recreated in a fresh directory whenever it reaches
/// [`LOG_BYTES_CAP`]. Recreating happens outside the timed sections.
#[derive(Debug)]
struct Rig {
    dir: TempDir,
    options: LogOptions,
    log: Option<Log>,
    generation: u32,
    written: u64,
    appends: u64,
    fsyncs: u64,
}

impl Rig {
    fn new(label: &str, options: LogOptions) -> Self {
        let mut rig = Self {
            dir: temp_dir(label),
            options,
            log: None,
            generation: 0,
            written: 0,
            appends: 0,
            fsyncs: 0,
        };
        rig.open();
        rig
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("log-{}", self.generation))
    }

    fn open(&mut self) {
        let log = Log::open(self.log_path(), self.options.clone()).expect("open");
        self.log = Some(log);
        self.written = 0;
    }

    /// Makes sure `bytes` more fit under the cap, starting a new log if not.
    fn make_room(&mut self, bytes: u64) {
        if self.written + bytes > LOG_BYTES_CAP {
            self.discard();
            self.generation += 1;
            self.open();
        }
    }

    /// Drops the log without closing it (nothing reads it again, so the final fsync of a close
    /// would only cost time) and deletes its files, dirty pages included.
    fn discard(&mut self) {
        if let Some(log) = self.log.take() {
            let stats = log.stats();
            self.appends += stats.appends;
            self.fsyncs += stats.fsyncs;
            drop(log);
            std::fs::remove_dir_all(self.log_path()).expect("remove a benchmark log");
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("the rig always holds a log")
    }

    /// Times `iters` appends of `batch`, one at a time.
    fn append_timed(&mut self, batch: &[Record], batch_bytes: u64, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.make_room(batch_bytes);
            let log = self.log();
            let start = Instant::now();
            log.append(batch).expect("append");
            total += start.elapsed();
            self.written += batch_bytes;
        }
        total
    }

    /// Times `iters` rounds in which each of [`THREADS`] threads appends `batch` once (the
    /// threads do not wait for each other between rounds).
    fn append_concurrent_timed(
        &mut self,
        batch: &[Record],
        batch_bytes: u64,
        iters: u64,
    ) -> Duration {
        let per_chunk = (LOG_BYTES_CAP / (THREADS * batch_bytes)).max(1);
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(per_chunk);
            self.make_room(THREADS * n * batch_bytes);
            let log = self.log();
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for _ in 0..n {
                            log.append(batch).expect("append");
                        }
                    });
                }
            });
            total += start.elapsed();
            self.written += THREADS * n * batch_bytes;
            left -= n;
        }
        total
    }

    /// Prints how many appends shared each fsync, which shows group commit at work.
    fn report(mut self, id: &str) {
        self.discard();
        if self.fsyncs > 0 {
            eprintln!(
                "{id}: {} appends, {} fsyncs ({:.2} appends per fsync)",
                self.appends,
                self.fsyncs,
                self.appends as f64 / self.fsyncs as f64
            );
        }
    }
}

/// A plain file appended to with `write_all` and made durable with `sync_data`, started afresh
/// (outside the timed section) at [`BASELINE_FILE_CAP`].
#[derive(Debug)]
struct Baseline {
    dir: TempDir,
    file: File,
    generation: u32,
    len: u64,
}

impl Baseline {
    fn new() -> Self {
        let dir = temp_dir("append-baseline");
        let file = Self::create(&dir, 0);
        Self {
            dir,
            file,
            generation: 0,
            len: 0,
        }
    }

    fn create(dir: &TempDir, generation: u32) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join(format!("baseline-{generation}.bin")))
            .expect("create the baseline file")
    }

    fn write_timed(&mut self, buf: &[u8], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self.len + buf.len() as u64 > BASELINE_FILE_CAP {
                let old = self
                    .dir
                    .path()
                    .join(format!("baseline-{}.bin", self.generation));
                self.generation += 1;
                self.file = Self::create(&self.dir, self.generation);
                std::fs::remove_file(old).expect("remove the old baseline file");
                self.len = 0;
            }
            let start = Instant::now();
            self.file.write_all(buf).expect("write");
            self.file.sync_data().expect("fdatasync");
            total += start.elapsed();
            self.len += buf.len() as u64;
        }
        total
    }
}

/// Log appends and baseline writes taken in strict alternation, each timed on its own.
#[derive(Debug)]
struct Paired {
    rig: Rig,
    baseline: Baseline,
    log_times: Vec<Duration>,
    baseline_times: Vec<Duration>,
}

impl Paired {
    /// Times `iters` pairs and returns the log's share, which is what criterion reports.
    fn run(&mut self, batch: &[Record], buf: &[u8], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let log = self.rig.append_timed(batch, buf.len() as u64, 1);
            let baseline = self.baseline.write_timed(buf, 1);
            self.log_times.push(log);
            self.baseline_times.push(baseline);
            total += log;
        }
        total
    }

    fn report(mut self, id: &str, bytes: u64) {
        let (Some(log), Some(baseline)) = (
            Summary::of(&mut self.log_times),
            Summary::of(&mut self.baseline_times),
        ) else {
            return;
        };
        let mib_s = |d: Duration| bytes as f64 / d.as_secs_f64() / f64::from(1 << 20);
        eprintln!(
            "{id}: {} pairs; log mean {:.3} ms ({:.0} MiB/s), median {:.3} ms; \
             write+fdatasync mean {:.3} ms ({:.0} MiB/s), median {:.3} ms; \
             log/baseline throughput {:.2} (means), {:.2} (medians)",
            self.log_times.len(),
            log.mean.as_secs_f64() * 1e3,
            mib_s(log.mean),
            log.median.as_secs_f64() * 1e3,
            baseline.mean.as_secs_f64() * 1e3,
            mib_s(baseline.mean),
            baseline.median.as_secs_f64() * 1e3,
            baseline.mean.as_secs_f64() / log.mean.as_secs_f64(),
            baseline.median.as_secs_f64() / log.median.as_secs_f64(),
        );
        self.rig.report(id);
    }
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    mean: Duration,
    median: Duration,
}

impl Summary {
    fn of(times: &mut [Duration]) -> Option<Self> {
        times.sort_unstable();
        let n = u32::try_from(times.len()).ok().filter(|n| *n > 0)?;
        Some(Self {
            mean: times.iter().sum::<Duration>() / n,
            median: *times.get(times.len() / 2)?,
        })
    }
}

fn append(c: &mut Criterion) {
    let policies = [
        ("always", FsyncPolicy::Always),
        (
            "interval-100ms",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("never", FsyncPolicy::Never),
    ];
    // (record size, records per batch): small and 1 KiB records in batches of 500, large records
    // in batches of about 1 MiB.
    let shapes: [(usize, usize); 3] = [(100, 500), (1024, 500), (16 * 1024, 64)];
    let mut group = c.benchmark_group("append");
    for (size, count) in shapes {
        let batch = records(count, size);
        let bytes = batch_len(&batch);
        let shape = format!("{} x{count}", size_label(size as u64));
        group.throughput(Throughput::Bytes(bytes));
        for (name, policy) in policies {
            let mut rig = Rig::new("append", LogOptions::default().fsync(policy));
            group.bench_function(BenchmarkId::new(&shape, name), |b| {
                b.iter_custom(|iters| rig.append_timed(&batch, bytes, iters));
            });
            rig.report(&format!("append/{shape}/{name}"));
        }
        if size == 1024 {
            let mut baseline = Baseline::new();
            let buf: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
            group.bench_function(BenchmarkId::new(&shape, "write+fdatasync"), |b| {
                b.iter_custom(|iters| baseline.write_timed(&buf, iters));
            });
            drop(baseline);

            let mut paired = Paired {
                rig: Rig::new("append-paired", LogOptions::default()),
                baseline: Baseline::new(),
                log_times: Vec::new(),
                baseline_times: Vec::new(),
            };
            group.bench_function(BenchmarkId::new(&shape, "always-paired"), |b| {
                b.iter_custom(|iters| paired.run(&batch, &buf, iters));
            });
            paired.report(&format!("append/{shape}/always-paired"), bytes);

            let name = format!("always {THREADS} threads");
            group.throughput(Throughput::Bytes(THREADS * bytes));
            let mut rig = Rig::new("append-concurrent", LogOptions::default());
            group.bench_function(BenchmarkId::new(&shape, &name), |b| {
                b.iter_custom(|iters| rig.append_concurrent_timed(&batch, bytes, iters));
            });
            rig.report(&format!("append/{shape}/{name}"));
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = append
}
criterion_main!(benches);
