//! Helpers shared by the criterion benchmarks in `benches/`: where their data lives on disk,
//! records of a given size, a deterministic clock and random numbers, and pre-written logs.
//!
//! Every benchmark writes to a temporary directory under [`bench_root`], which is on the real
//! disk by default: a log on tmpfs would measure memory copies, not the fsyncs the log promises.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_log::format::batch::encoded_len;
use sluice_log::{Clock, Log, LogOptions, Record};
use tempfile::TempDir;

/// Bytes of every benchmark record's key; the value makes up the rest of the record size.
pub const KEY_LEN: usize = 16;

/// The environment variable that moves benchmark data elsewhere (it must be on the disk under
/// test).
pub const BENCH_DIR_VAR: &str = "SLUICE_BENCH_DIR";

/// The directory under which benchmarks make their temporary data: `$SLUICE_BENCH_DIR`, or
/// `target/bench-tmp` in the workspace. Created if missing. On first use, prints which file
/// system it is on, and warns when that is a memory file system.
pub fn bench_root() -> PathBuf {
    let root = std::env::var_os(BENCH_DIR_VAR).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("bench-tmp")
        },
        PathBuf::from,
    );
    fs::create_dir_all(&root).expect("cannot create the benchmark directory");
    let root = root
        .canonicalize()
        .expect("cannot resolve the benchmark directory");
    static ANNOUNCED: std::sync::Once = std::sync::Once::new();
    ANNOUNCED.call_once(|| announce_file_system(&root));
    root
}

/// A fresh temporary directory under [`bench_root`], removed when dropped.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{label}-"))
        .tempdir_in(bench_root())
        .expect("cannot create a temporary benchmark directory")
}

/// Prints the mount that holds `dir` (the longest matching mount point in /proc/self/mounts).
/// The figures are only meaningful on the disk they claim to measure, so a memory file system
/// gets a loud warning rather than silently flattering numbers.
fn announce_file_system(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let best = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            dir.starts_with(mount_point)
                .then_some((mount_point, device, fs_type))
        })
        .max_by_key(|(mount_point, _, _)| mount_point.len());
    if let Some((mount_point, device, fs_type)) = best {
        eprintln!(
            "benchmark data in {} ({device} {fs_type} on {mount_point})",
            dir.display()
        );
        if matches!(fs_type, "tmpfs" | "ramfs") {
            eprintln!(
                "WARNING: {fs_type} is memory, not disk: set {BENCH_DIR_VAR} to a directory on a real disk"
            );
        }
    }
}

/// `count` records of `size` bytes each (key and value together; at least [`KEY_LEN`]), with
/// distinct keys and pseudo-random values, so that nothing below the log can shortcut the
/// writes of repeated or zero bytes.
pub fn records(count: usize, size: usize) -> Vec<Record> {
    assert!(
        size >= KEY_LEN,
        "a record holds at least its {KEY_LEN}-byte key"
    );
    let mut rng = Rng::new(size as u64);
    (0..count)
        .map(|i| {
            let key = format!("key-{i:012}").into_bytes();
            let mut value = Vec::with_capacity(size - KEY_LEN + 8);
            while value.len() < size - KEY_LEN {
                value.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            value.truncate(size - KEY_LEN);
            Record::new(key, value)
        })
        .collect()
}

/// Bytes the batch of these records occupies in a segment (headers included).
pub fn batch_len(records: &[Record]) -> u64 {
    encoded_len(records.iter().map(|r| (r.key.as_ref(), r.value.as_ref())))
}

/// A short size label for benchmark ids: `100B`, `1KiB`, `64MiB`, `1GiB`.
pub fn size_label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    // The units are powers of two, so a mask tells whether one divides the size exactly.
    for (unit, name) in UNITS {
        if bytes >= unit && bytes & (unit - 1) == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// Appends the same batch `batches` times. Returns the number of records appended.
pub fn append_batches(log: &Log, batch: &[Record], batches: u64) -> u64 {
    for _ in 0..batches {
        log.append(batch)
            .expect("append failed while preparing a benchmark log");
    }
    batches * batch.len() as u64
}

/// Total size of the regular files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Options for writing a benchmark log quickly: no fsync per append (rolls and `close` still
/// make everything durable), so that preparing data does not dominate the run.
pub fn fast_fill_options() -> LogOptions {
    LogOptions::default().fsync(sluice_log::FsyncPolicy::Never)
}

/// A clock that moves one millisecond forward each time it is read. The log reads the clock
/// once per append, so every batch gets its own timestamp and a time index has one distinct
/// entry per indexed batch, however fast the appends run.
#[derive(Debug)]
pub struct TickClock {
    next_ms: AtomicU64,
}

impl TickClock {
    /// A clock whose first reading is `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            next_ms: AtomicU64::new(start_ms),
        }
    }
}

impl Clock for TickClock {
    fn now_ms(&self) -> u64 {
        self.next_ms.fetch_add(1, Ordering::Relaxed)
    }
}

/// A small deterministic random number generator (SplitMix64): the same offsets and timestamps
/// are probed on every run, so runs compare.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)`; `n` must be positive. The modulo bias is negligible for the small
    /// ranges used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The criterion settings every benchmark here uses: ten samples over `measurement` after a
/// one-second warm-up, so the whole suite runs in minutes on a small machine.
pub fn criterion_config(measurement: std::time::Duration) -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(measurement)
}
