//! The partition manager's costs: routing one record (MD5 of its key plus a binary search over
//! the open partitions' ranges) for 1, 16 and 1024 partitions, and in-process put throughput of
//! 1 KiB records with random keys over 4 partitions under `fsync=always` (each put's records for
//! the 4 partitions are appended, and fsynced, in parallel).

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::{Rng, temp_dir};
use sluice_broker::routing::{RoutingTable, hash_key, uniform};
use sluice_broker::{Broker, BrokerOptions, PutRecord, StreamConfig};

fn keys(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    (0..n)
        .map(|_| format!("user-{:016x}", rng.next_u64()).into_bytes())
        .collect()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let keys = keys(1024);
    group.throughput(Throughput::Elements(keys.len() as u64));
    for partitions in [1u32, 16, 1024] {
        let table = RoutingTable::new(uniform(partitions).into_iter().zip(0..).collect())
            .expect("uniform ranges tile the space");
        group.bench_function(BenchmarkId::new("md5+lookup", partitions), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for k in &keys {
                    sum += u64::from(table.route(hash_key(std::hint::black_box(k))));
                }
                sum
            })
        });
    }
    group.finish();
}

fn put(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker put");
    let dir = temp_dir("broker");
    let broker = Broker::open(dir.path(), BrokerOptions::default()).expect("open");
    broker
        .create_stream(
            "bench",
            StreamConfig {
                partitions: 4,
                ..StreamConfig::default()
            },
        )
        .expect("create");
    let value = Bytes::from(vec![0x5a; 1024 - 22]);
    let mut rng = Rng::new(11);
    let batch: Vec<PutRecord> = (0..500)
        .map(|_| {
            let key = format!("user-{:016x}", rng.next_u64());
            PutRecord::new(key, value.clone())
        })
        .collect();
    let bytes: usize = batch
        .iter()
        .map(|r| r.partition_key.len() + r.value.len())
        .sum();
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("1KiB x500 random keys/4 partitions/always", |b| {
        b.iter(|| broker.put("bench", &batch).expect("put"))
    });
    group.finish();
    broker.close().expect("close");
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = route, put
}
criterion_main!(benches);
