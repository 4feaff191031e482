//! Counters and the put-latency histogram behind the `Stats` request.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_protocol::message::{ServerStats, StreamStats};

#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    puts: AtomicU64,
    streams: Mutex<BTreeMap<String, StreamStats>>,
    /// Microseconds from a put's decoding to its acknowledgement, up to an hour, 3 digits.
    put_latency: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            streams: Mutex::new(BTreeMap::new()),
            put_latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("constant histogram bounds are valid"),
            ),
        }
    }

    pub fn record_put(&self, stream: &str, records: u64, bytes: u64, latency: Duration) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.with_stream(stream, |s| {
            s.records_in += records;
            s.bytes_in += bytes;
        });
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut h = self.put_latency.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    pub fn record_read(&self, stream: &str, records: u64, bytes: u64) {
        self.with_stream(stream, |s| {
            s.records_out += records;
            s.bytes_out += bytes;
        });
    }

    fn with_stream(&self, stream: &str, f: impl FnOnce(&mut StreamStats)) {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(stream) {
            m.insert(
                stream.to_owned(),
                StreamStats {
                    name: stream.to_owned(),
                    ..StreamStats::default()
                },
            );
        }
        if let Some(s) = m.get_mut(stream) {
            f(s);
        }
    }

    pub fn snapshot(&self, fsyncs: u64) -> ServerStats {
        let h = self.put_latency.lock().unwrap_or_else(|e| e.into_inner());
        ServerStats {
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            fsyncs,
            put_latency_us_p50: h.value_at_quantile(0.5),
            put_latency_us_p99: h.value_at_quantile(0.99),
            put_latency_us_max: h.max(),
            streams: self
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
        }
    }
}
