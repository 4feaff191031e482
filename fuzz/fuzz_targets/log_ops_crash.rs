//! Runs a sequence of log operations on `SimFs`, with process crashes, power losses and crashes
//! in the middle of an operation, against an in-memory model of every record ever attempted.
//!
//! The input is decoded with `arbitrary`: a small configuration (segment size 300..4096 bytes,
//! index interval, segment age), then up to 64 operations. Every integer is reduced into a small
//! range so that a mutation of the input changes the scenario in a meaningful way. The log always
//! runs under `FsyncPolicy::Always`, because durability is what is checked, with a manual clock
//! that only moves forward, so that each record's timestamp is the clock's reading at its write.
//!
//! The model keeps every attempted record by offset, the end of what was acknowledged (an append
//! or acknowledge that returned, a sync or a close that returned), and the start left by the
//! last retention pass that returned. Checked throughout:
//!
//! - open never fails; the only I/O failures come from an armed crash, after which the target
//!   reopens the crash image of the file system;
//! - after every reopen, the end is at least the acknowledged end and at most what was attempted,
//!   and exactly what was attempted when no power was lost (a process crash loses nothing that
//!   reached the operating system); the start never goes back, and moves forward only past
//!   records that an interrupted retention pass was allowed to delete;
//! - the log reads back densely from start to end, byte for byte equal to the model, with the
//!   timestamps the model predicts;
//! - reads return a non-empty run of consecutive records whenever one is readable, within their
//!   limits, and never a record that was written but not yet acknowledged;
//! - `offset_for_timestamp` agrees with a linear scan of the readable records.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_log::io::sim::{CrashMode, SimFs};
use sluice_log::{
    Clock, Error, FsyncPolicy, Log, LogOptions, ReadLimits, Record, RetentionPolicy, StoredRecord,
};

const DIR: &str = "/fuzz/partition";
const MAX_OPS: usize = 64;
const CLOCK_START_MS: u64 = 1_700_000_000_000;

/// A clock moved by hand. It only goes forward, so every record is stamped with its reading.
#[derive(Debug)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Mode {
    DropUnsynced,
    RandomPrefix,
    RandomPrefixThenGarbage,
}

impl Mode {
    fn sim(self) -> CrashMode {
        match self {
            Mode::DropUnsynced => CrashMode::DropUnsynced,
            Mode::RandomPrefix => CrashMode::RandomPrefix,
            Mode::RandomPrefixThenGarbage => CrashMode::RandomPrefixThenGarbage,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Config {
    segment_bytes: u16,
    index_interval: u16,
    segment_age_s: u16,
}

impl Config {
    fn options(&self, clock: &Arc<ManualClock>) -> LogOptions {
        LogOptions::default()
            .fsync(FsyncPolicy::Always)
            .segment_bytes_max(300 + u64::from(self.segment_bytes) % 3797)
            .index_interval_bytes(1 + u32::from(self.index_interval) % 1024)
            .segment_age_max(Duration::from_secs(10 + u64::from(self.segment_age_s) % 3600))
            .clock(clock.clone())
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Appends `1 + records % 7` records with values of `value_len % 300` bytes.
    Append { records: u8, value_len: u16, fill: u8 },
    /// The same, as `write` then `acknowledge`, checking in between that the batch is invisible.
    WriteThenAck { records: u8, value_len: u16, fill: u8 },
    /// Reads from a point in `[start, end]` with small limits.
    Read { at: u16, records_max: u8, bytes_max: u16 },
    /// Seeks by a time around the range of the log's timestamps.
    SeekTime { at: u16 },
    /// Moves the clock forward by `ms * 50` milliseconds (up to about 55 minutes).
    AdvanceClock { ms: u16 },
    /// Deletes sealed segments older than `max_age_s % 3600` seconds.
    Retention { max_age_s: u16 },
    Sync,
    CloseAndReopen,
    /// A process crash: the files stay as written, the process reopens them.
    DropAndReopen,
    PowerLoss { mode: Mode, seed: u64 },
    /// The `n % 64 + 1`-th mutating file system operation from now fails, and every later one:
    /// the process is gone. The target then takes a crash image and reopens it.
    CrashAfterOps { n: u8, mode: Mode, seed: u64 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct Expected {
    record: Record,
    timestamp_ms: u64,
}

struct Harness {
    fs: SimFs,
    clock: Arc<ManualClock>,
    options: LogOptions,
    log: Option<Log>,
    /// Every record whose write was attempted, by offset. Cut back to the recovered end after a
    /// reopen, so it always describes the offsets the log may hold.
    attempted: Vec<Expected>,
    /// Every offset below this was acknowledged as durable.
    acked_end: u64,
    /// The start reported by the last retention pass that returned.
    start: u64,
    /// Retention passes (now, max age) that failed part way: they may have deleted segments
    /// durably without reporting it.
    interrupted_retention: Vec<(u64, u64)>,
    /// The crash image to take when an armed crash has fired.
    armed: Option<(CrashMode, u64)>,
}

fn record(offset: u64, value_len: usize, fill: u8) -> Record {
    // The offset is spelled in the key and the value, so a record served at the wrong offset
    // never compares equal.
    let key = format!("key-{offset}");
    let mut value = format!("value-{offset}-").into_bytes();
    value.resize(value_len.max(value.len()), fill);
    Record::new(key, value)
}

impl Harness {
    fn log(&self) -> &Log {
        self.log.as_ref().expect("the log is open between operations")
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Handles a failed operation. Failures may only come from an armed crash; the process is
    /// then gone, and what is left is the file system after a power loss.
    fn crashed(&mut self, what: &str, e: Error) {
        assert!(
            self.fs.has_crashed(),
            "{what} failed without an injected crash: {e}"
        );
        self.power_loss_reopen();
    }

    fn power_loss_reopen(&mut self) {
        let (mode, seed) = self.armed.take().unwrap_or((CrashMode::DropUnsynced, 0));
        let image = self.fs.crash_image(mode, seed);
        self.log = None;
        self.fs = image;
        self.reopen(false);
    }

    /// Opens the log on the current file system. `kept_all` says that no power was lost since
    /// the last open, so every record written must be found again.
    fn reopen(&mut self, kept_all: bool) {
        self.log = None;
        if self.fs.has_crashed() {
            // An operation whose failure the log absorbed (a hint it could not write) already
            // hit the armed crash: the process is as good as gone.
            self.power_loss_reopen();
            return;
        }
        let opened = Log::open_with_fs(Arc::new(self.fs.clone()), DIR, self.options.clone());
        let log = match opened {
            Ok(log) => log,
            Err(e) => {
                assert!(self.fs.has_crashed(), "open failed: {e}");
                // The armed crash fired during recovery; the next open sees its image.
                self.power_loss_reopen();
                return;
            }
        };
        let start = log.start_offset();
        let end = log.end_offset();
        let attempted = self.attempted.len() as u64;
        assert!(
            end <= attempted,
            "recovered up to {end}, but only {attempted} records were ever written"
        );
        assert!(
            end >= self.acked_end,
            "acknowledged up to {}, recovered up to {end}",
            self.acked_end
        );
        if kept_all {
            assert_eq!(end, attempted, "records written before a process crash were lost");
        }
        assert!(
            start >= self.start,
            "start went back from {} to {start}",
            self.start
        );
        assert!(start <= end);
        if start > self.start {
            // Only an interrupted retention pass may have moved the start, and only past records
            // it was allowed to delete.
            for e in &self.attempted[self.start as usize..start as usize] {
                assert!(
                    self.interrupted_retention
                        .iter()
                        .any(|&(now, age)| now.saturating_sub(e.timestamp_ms) > age),
                    "start moved from {} to {start} past unexpired records",
                    self.start
                );
            }
            self.start = start;
        }
        self.interrupted_retention.clear();
        self.attempted.truncate(end as usize);
        // Open fsyncs what it recovered, so all of it is durable now.
        self.acked_end = end;
        self.log = Some(log);
        if self.fs.has_crashed() {
            // Open absorbed the failure of a hint write that met the armed crash.
            self.power_loss_reopen();
            return;
        }
        self.check_all();
    }

    fn check_record(&self, r: &StoredRecord, offset: u64) {
        assert_eq!(r.offset, offset, "records out of order");
        let e = &self.attempted[offset as usize];
        assert_eq!(r.key, e.record.key, "key at offset {offset}");
        assert_eq!(r.value, e.record.value, "value at offset {offset}");
        assert_eq!(r.timestamp_ms, e.timestamp_ms, "timestamp at offset {offset}");
    }

    /// Reads every readable record and checks it against the model: dense from start to the
    /// readable end, each byte for byte.
    fn read_all(&self) -> Vec<StoredRecord> {
        let log = self.log();
        let mut out = Vec::new();
        let mut next = log.start_offset();
        loop {
            let got = log
                .read_from(
                    next,
                    ReadLimits {
                        records_max: 1000,
                        bytes_max: 1 << 20,
                    },
                )
                .unwrap_or_else(|e| panic!("read at {next} failed: {e}"));
            let Some(last) = got.last() else { break };
            next = last.offset + 1;
            out.extend(got);
        }
        out
    }

    fn check_all(&self) {
        let log = self.log();
        assert_eq!(log.start_offset(), self.start);
        assert_eq!(log.end_offset(), self.attempted.len() as u64);
        assert_eq!(log.readable_end(), self.acked_end);
        let all = self.read_all();
        assert_eq!(
            all.len() as u64,
            self.acked_end - self.start,
            "a hole in the log"
        );
        for (i, r) in all.iter().enumerate() {
            self.check_record(r, self.start + i as u64);
        }
        if self.start > 0 {
            assert!(
                matches!(
                    log.read_from(self.start - 1, ReadLimits::default()),
                    Err(Error::OffsetOutOfRange { .. })
                ),
                "read below the start did not fail with OffsetOutOfRange"
            );
        }
    }

    fn push_batch(&mut self, records: u8, value_len: u16, fill: u8) -> Vec<Record> {
        let base = self.attempted.len() as u64;
        let n = 1 + u64::from(records % 7);
        let now = self.now();
        let batch: Vec<Record> = (0..n)
            .map(|i| record(base + i, usize::from(value_len % 300), fill))
            .collect();
        self.attempted
            .extend(batch.iter().cloned().map(|record| Expected {
                record,
                timestamp_ms: now,
            }));
        batch
    }

    fn run(&mut self, op: &Op) {
        if self.fs.has_crashed() {
            // The armed crash fired inside an operation that still returned (the log does not
            // fail an append because its synced-point hint could not be written). The process is
            // gone all the same, and the simulated file system fails even reads from now on.
            self.power_loss_reopen();
        }
        match *op {
            Op::Append {
                records,
                value_len,
                fill,
            } => {
                let base = self.attempted.len() as u64;
                let batch = self.push_batch(records, value_len, fill);
                match self.log().append(&batch) {
                    Ok(first) => {
                        assert_eq!(first, base, "append returned the wrong offset");
                        self.acked_end = self.attempted.len() as u64;
                    }
                    Err(e) => self.crashed("append", e),
                }
            }
            Op::WriteThenAck {
                records,
                value_len,
                fill,
            } => {
                let base = self.attempted.len() as u64;
                let batch = self.push_batch(records, value_len, fill);
                let written = match self.log().write(&batch) {
                    Ok(w) => w,
                    Err(e) => return self.crashed("write", e),
                };
                assert_eq!(written.first_offset, base);
                assert_eq!(written.end_offset, self.attempted.len() as u64);
                if self.fs.has_crashed() {
                    return self.power_loss_reopen();
                }
                // Not acknowledged yet, so under `Always` not readable either.
                let log = self.log();
                assert!(log.readable_end() <= base, "an unacknowledged write is readable");
                let seen = log
                    .read_from(base, ReadLimits::default())
                    .unwrap_or_else(|e| panic!("read at the readable end failed: {e}"));
                assert!(seen.is_empty(), "an unacknowledged write was served");
                match self.log().acknowledge(written) {
                    Ok(()) => self.acked_end = written.end_offset,
                    Err(e) => self.crashed("acknowledge", e),
                }
            }
            Op::Read {
                at,
                records_max,
                bytes_max,
            } => {
                let from = self.start + u64::from(at) % (self.acked_end - self.start + 1);
                let limits = ReadLimits {
                    records_max: 1 + usize::from(records_max % 32),
                    bytes_max: 1 + usize::from(bytes_max % 4096),
                };
                let got = self
                    .log()
                    .read_from(from, limits)
                    .unwrap_or_else(|e| panic!("read at {from} failed: {e}"));
                if from < self.acked_end {
                    assert!(!got.is_empty(), "nothing read at {from} of {}", self.acked_end);
                }
                assert!(got.len() <= limits.records_max);
                let bytes: usize = got.iter().map(|r| r.key.len() + r.value.len()).sum();
                assert!(got.len() <= 1 || bytes <= limits.bytes_max, "read past bytes_max");
                assert!(from + got.len() as u64 <= self.acked_end, "read past the readable end");
                for (i, r) in got.iter().enumerate() {
                    self.check_record(r, from + i as u64);
                }
            }
            Op::SeekTime { at } => {
                let readable = self.read_all();
                let lo = readable.first().map_or(self.now(), |r| r.timestamp_ms);
                let hi = readable.last().map_or(self.now(), |r| r.timestamp_ms);
                let t = lo.saturating_sub(10) + u64::from(at) % (hi - lo + 21);
                let expected = readable
                    .iter()
                    .find(|r| r.timestamp_ms >= t)
                    .map(|r| r.offset);
                let got = self
                    .log()
                    .offset_for_timestamp(t)
                    .unwrap_or_else(|e| panic!("offset_for_timestamp({t}) failed: {e}"));
                assert_eq!(got, expected, "offset_for_timestamp({t})");
            }
            Op::AdvanceClock { ms } => {
                self.clock.0.fetch_add(u64::from(ms) * 50, Ordering::SeqCst);
            }
            Op::Retention { max_age_s } => {
                let now = self.now();
                let age_ms = u64::from(max_age_s % 3600) * 1000;
                let policy = RetentionPolicy {
                    max_age: Some(Duration::from_millis(age_ms)),
                    max_bytes: None,
                };
                self.interrupted_retention.push((now, age_ms));
                match self.log().enforce_retention(policy, now) {
                    Ok(out) => {
                        self.interrupted_retention.pop();
                        assert!(out.start_offset >= self.start, "retention moved the start back");
                        assert!(out.start_offset <= self.acked_end);
                        for e in &self.attempted[self.start as usize..out.start_offset as usize] {
                            assert!(
                                now.saturating_sub(e.timestamp_ms) > age_ms,
                                "retention deleted an unexpired record"
                            );
                        }
                        self.start = out.start_offset;
                        assert_eq!(self.log().start_offset(), self.start);
                    }
                    Err(e) => self.crashed("retention", e),
                }
            }
            Op::Sync => match self.log().sync() {
                Ok(()) => self.acked_end = self.attempted.len() as u64,
                Err(e) => self.crashed("sync", e),
            },
            Op::CloseAndReopen => {
                let log = self.log.take().expect("open");
                match log.close() {
                    Ok(()) => {
                        self.acked_end = self.attempted.len() as u64;
                        self.reopen(true);
                    }
                    Err(e) => self.crashed("close", e),
                }
            }
            Op::DropAndReopen => {
                self.log = None;
                self.reopen(true);
            }
            Op::PowerLoss { mode, seed } => {
                self.armed = Some((mode.sim(), seed));
                self.power_loss_reopen();
            }
            Op::CrashAfterOps { n, mode, seed } => {
                self.fs.crash_after_ops(u64::from(n % 64));
                self.armed = Some((mode.sim(), seed));
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let clock = Arc::new(ManualClock(AtomicU64::new(CLOCK_START_MS)));
    let options = input.config.options(&clock);
    let fs = SimFs::new();
    let mut h = Harness {
        fs,
        clock,
        options,
        log: None,
        attempted: Vec::new(),
        acked_end: 0,
        start: 0,
        interrupted_retention: Vec::new(),
        armed: None,
    };
    h.reopen(true);
    for op in input.ops.iter().take(MAX_OPS) {
        h.run(op);
        if h.log.is_some() && !h.fs.has_crashed() {
            let log = h.log();
            assert_eq!(log.end_offset(), h.attempted.len() as u64);
        }
    }
    // Finally the power goes, with or without an armed crash: everything acknowledged survives.
    h.power_loss_reopen();
});
