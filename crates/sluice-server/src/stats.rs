//! Counters and the put-latency histogram behind the `Stats` request.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_broker::IoStats;
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

    pub fn snapshot(&self, io: IoStats) -> ServerStats {
        let buckets = io.fsync_latency_buckets;
        let h = self.put_latency.lock().unwrap_or_else(|e| e.into_inner());
        ServerStats {
            fsync_latency_us_p50: bucket_quantile(&buckets, 0.5),
            fsync_latency_us_p99: bucket_quantile(&buckets, 0.99),
            fsync_latency_us_max: buckets
                .iter()
                .rposition(|n| *n > 0)
                .map_or(0, bucket_upper_us),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            fsyncs: io.fsyncs,
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

/// The exclusive upper bound, in microseconds, of power-of-two bucket `i`.
fn bucket_upper_us(i: usize) -> u64 {
    1u64.checked_shl(u32::try_from(i + 1).unwrap_or(u32::MAX))
        .unwrap_or(u64::MAX)
}

/// The upper bound of the bucket holding quantile `q` of the counts.
fn bucket_quantile(buckets: &[u64], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    // The rank of the quantile, at least 1: the smallest bucket whose running count reaches it.
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_upper_us(i);
        }
    }
    bucket_upper_us(buckets.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::LATENCY_BUCKETS;

    #[test]
    fn bucket_quantiles() {
        let mut b = [0u64; LATENCY_BUCKETS];
        assert_eq!(bucket_quantile(&b, 0.5), 0);
        b[3] = 98; // 8..16 us
        b[10] = 2; // 1024..2048 us
        assert_eq!(bucket_quantile(&b, 0.5), 16);
        assert_eq!(bucket_quantile(&b, 0.98), 16);
        assert_eq!(bucket_quantile(&b, 0.99), 2048);
    }
}
