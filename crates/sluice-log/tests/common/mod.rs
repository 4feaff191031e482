//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_log::io::sim::SimFs;
use sluice_log::{Clock, Log, LogOptions, ReadLimits, Record, StoredRecord};

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(start_ms)))
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn dir() -> PathBuf {
    PathBuf::from("/data/p0")
}

pub fn open_sim(fs: &SimFs, options: LogOptions) -> Log {
    Log::open_with_fs(Arc::new(fs.clone()), dir(), options).expect("open")
}

/// A record whose value says where it came from, so a test can check bytes, not just counts.
pub fn record(i: u64, value_len: usize) -> Record {
    let key = format!("key-{}", i % 7);
    let mut value = format!("value-{i}-").into_bytes();
    value.resize(value_len.max(value.len()), (i % 251) as u8);
    Record::new(key, value)
}

/// Reads every readable record from the start.
pub fn read_all(log: &Log) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let batch = log
            .read_from(
                next,
                ReadLimits {
                    records_max: 1000,
                    bytes_max: 1 << 20,
                },
            )
            .expect("read");
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch);
    }
    out
}

pub fn assert_same(stored: &StoredRecord, offset: u64, expected: &Record) {
    assert_eq!(stored.offset, offset);
    assert_eq!(stored.key, expected.key, "key at offset {offset}");
    assert_eq!(stored.value, expected.value, "value at offset {offset}");
}

pub fn segment_files(fs: &SimFs, dir: &Path, suffix: &str) -> Vec<PathBuf> {
    fs.file_names()
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == suffix))
        .collect()
}
