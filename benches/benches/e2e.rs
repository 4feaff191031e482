//! End to end over loopback TCP: producers send batches of 500 × 1 KiB records through the
//! native protocol to a real `sluice-server` with durable acknowledgements (`fsync=always`), each
//! into its own partition (every put waits for its partition's fsync), or all into one partition
//! (their puts share fsyncs through group commit). In the same group, the
//! disk's own figure for the same bytes: a plain `write` + `fdatasync` loop writing as much per
//! iteration as the producers together. Acknowledgement latency percentiles are printed after
//! each run (criterion reports only throughput).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use sluice_benches::temp_dir;
use sluice_client::{Client, CreateStream, EncodedPut, PutRecord};
use sluice_server::{Server, ServerConfig};

const PRODUCERS: usize = 4;
const BATCH: usize = 500;
const RECORD_BYTES: usize = 1024;
/// Baseline file size at which it starts over, so disk use stays bounded.
const BASELINE_FILE_MAX: u64 = 1 << 30;

fn e2e(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = temp_dir("e2e");
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    };
    let server = rt
        .block_on(Server::start(dir.path().join("data"), config))
        .expect("server");
    let addr = server.local_addr();
    let (clients, batches, shared_batches) = rt.block_on(async {
        let admin = Client::connect(addr).await.expect("connect");
        let info = admin
            .create_stream(CreateStream {
                name: "bench".into(),
                partitions: PRODUCERS as u32,
                retention_ms: 24 * 3600 * 1000,
                partition_bytes_max: None,
                record_bytes_max: None,
            })
            .await
            .expect("create");
        let mut clients = Vec::new();
        let mut batches = Vec::new();
        let mut shared_batches = Vec::new();
        for p in &info.partitions {
            clients.push(Client::connect(addr).await.expect("connect"));
            // An explicit hash key in the partition's range sends every record of this producer
            // to its own partition.
            let value = Bytes::from(vec![0x5a; RECORD_BYTES - 16]);
            let batch: Vec<PutRecord> = (0..BATCH)
                .map(|i| PutRecord {
                    partition_key: Bytes::from(format!(
                        "producer-{:07}",
                        p.id * 1_000_000 + i as u32
                    )),
                    explicit_hash_key: Some(p.hash_start),
                    value: value.clone(),
                })
                .collect();
            // The same records aimed at partition 0, for the case where producers share one
            // partition (and so its fsyncs).
            let shared: Vec<PutRecord> = batch
                .iter()
                .map(|r| PutRecord {
                    explicit_hash_key: Some(0),
                    ..r.clone()
                })
                .collect();
            // Encoded once, as `sluice bench` does, so the client spends the shared cores on
            // sending, not on encoding the same records again.
            batches.push(Arc::new(EncodedPut::new("bench", &batch)));
            shared_batches.push(Arc::new(EncodedPut::new("bench", &shared)));
        }
        (clients, batches, shared_batches)
    });
    let bytes_per_round = (PRODUCERS * BATCH * RECORD_BYTES) as u64;
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid"),
    ));

    let mut group = c.benchmark_group("e2e");
    group.throughput(Throughput::Bytes(bytes_per_round));
    for (name, batches) in [
        (
            "produce 1KiB x500/4 producers, own partitions/always",
            &batches,
        ),
        (
            "produce 1KiB x500/4 producers, one partition/always",
            &shared_batches,
        ),
    ] {
        latency.lock().expect("latency lock").reset();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(produce(&clients, batches, iters, &latency)))
        });
        let h = latency.lock().expect("latency lock");
        eprintln!(
            "{name}: ack latency over {} puts of {BATCH} records: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }

    // The disk alone, same bytes per iteration, one write and one fdatasync.
    let baseline_dir = temp_dir("e2e-baseline");
    let path = baseline_dir.path().join("baseline");
    let chunk = vec![0x5au8; bytes_per_round as usize];
    group.bench_function("write+fdatasync baseline", |b| {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).expect("baseline file");
        let mut written = 0u64;
        b.iter(|| {
            if written >= BASELINE_FILE_MAX {
                file = std::fs::File::create(&path).expect("baseline file");
                written = 0;
            }
            file.write_all(&chunk).expect("write");
            file.sync_data().expect("fdatasync");
            written += chunk.len() as u64;
        })
    });
    group.finish();

    let stats = rt.block_on(clients[0].stats()).expect("stats");
    eprintln!(
        "e2e server: {} puts, {} fsyncs ({:.2} puts per fsync), fsync p50 {} us, p99 {} us",
        stats.puts,
        stats.fsyncs,
        stats.puts as f64 / stats.fsyncs.max(1) as f64,
        stats.fsync_latency_us_p50,
        stats.fsync_latency_us_p99
    );
    drop(clients);
    rt.block_on(server.shutdown()).expect("shutdown");
}

/// Each producer sends `iters` puts back to back, waiting for each acknowledgement; returns the
/// wall time of the whole round and records each put's latency.
async fn produce(
    clients: &[Client],
    batches: &[Arc<EncodedPut>],
    iters: u64,
    latency: &Arc<Mutex<Histogram<u64>>>,
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .zip(batches)
        .map(|(client, batch)| {
            let (client, batch, latency) = (client.clone(), Arc::clone(batch), Arc::clone(latency));
            tokio::spawn(async move {
                for _ in 0..iters {
                    let sent = Instant::now();
                    client.put_encoded(&batch).await.expect("put");
                    let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.lock().expect("latency lock").saturating_record(us);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("producer task");
    }
    start.elapsed()
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(4));
    targets = e2e
}
criterion_main!(benches);
