//! Producer-framed puts over loopback: `Client::put_routed` routes and frames on the client, the
//! server writes the batches as they came, and the records land exactly where a plain `Put`
//! puts them; after a split the client's stale batches are refused, it routes again, and every
//! key stays in order, and a table naming a parent that retention has since removed is refreshed
//! the same way; a damaged batch is refused with `BadBatch` and nothing is written; the
//! statistics count framed records like any others.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use sluice_client::{
    BatchBuilder, Client, ClientError, CreateStream, ErrorCode, PutRecord, ReadFrom, ReadRequest,
    WireRecord,
};
use sluice_log::FsyncPolicy;
use sluice_server::{Server, ServerConfig};

fn config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }
}

fn config_with(policy: FsyncPolicy) -> ServerConfig {
    let mut c = config();
    c.broker.log = c.broker.log.clone().fsync(policy);
    c
}

async fn stream(c: &Client, name: &str, partitions: u32) {
    c.create_stream(CreateStream {
        name: name.into(),
        partitions,
        retention_ms: 3_600_000,
        partition_bytes_max: None,
        record_bytes_max: None,
    })
    .await
    .unwrap();
}

fn records(n: usize, tag: &str) -> Vec<PutRecord> {
    (0..n)
        .map(|i| PutRecord {
            partition_key: Bytes::from(format!("key-{}", i % 23)),
            explicit_hash_key: None,
            value: Bytes::from(format!("{tag}:{}:{i}", i % 23)),
        })
        .collect()
}

async fn read_all(c: &Client, stream: &str, partition: u32) -> Vec<WireRecord> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Earliest;
    loop {
        let r = c
            .read(ReadRequest {
                stream: stream.into(),
                partition,
                from,
                max_records: 10_000,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap();
        if r.records.is_empty() {
            return out;
        }
        from = ReadFrom::Offset(r.next_offset);
        out.extend(r.records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_puts_land_where_plain_puts_do() {
    // Under `always` and `never` alike the same records land in the same places.
    for policy in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), config_with(policy))
            .await
            .unwrap();
        let c = Client::connect(server.local_addr()).await.unwrap();
        stream(&c, "s", 4).await;
        let recs = records(300, "x");
        let plain = c.put("s", recs[..150].to_vec()).await.unwrap();
        let routed = c.put_routed("s", &recs[150..]).await.unwrap();
        assert_eq!(routed.len(), 150);
        // The same key goes to the same partition either way: the client's hash rule is the
        // server's. (Records i and i + 150 share a key only when 150 is a multiple of 23; compare
        // by key instead.)
        let mut partition_of: BTreeMap<Bytes, u32> = BTreeMap::new();
        for (r, a) in recs.iter().zip(plain.iter().chain(&routed)) {
            let p = *partition_of
                .entry(r.partition_key.clone())
                .or_insert(a.partition);
            assert_eq!(p, a.partition, "{policy:?}: key {:?}", r.partition_key);
        }
        // Every acknowledgement points at its record, and offsets are contiguous per partition.
        for p in 0..4 {
            let stored = read_all(&c, "s", p).await;
            for (i, r) in stored.iter().enumerate() {
                assert_eq!(r.offset, i as u64);
            }
            for (rec, ack) in recs.iter().zip(plain.iter().chain(&routed)) {
                if ack.partition == p {
                    let s = &stored[ack.offset as usize];
                    assert_eq!((&s.key, &s.value), (&rec.partition_key, &rec.value));
                }
            }
        }
        let stats = c.stats().await.unwrap();
        let s = stats.streams.iter().find(|s| s.name == "s").unwrap();
        assert_eq!(s.records_in, 300);
        // Keys and values: "key-N" and "x:N:i" for each record, the same count either way.
        let bytes: u64 = recs
            .iter()
            .map(|r| (r.partition_key.len() + r.value.len()) as u64)
            .sum();
        assert_eq!(s.bytes_in, bytes);
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_makes_the_routing_stale_and_the_client_routes_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let c = Client::connect(server.local_addr()).await.unwrap();
    stream(&c, "s", 2).await;
    // The first put fills the client's routing table.
    let first = c.put_routed("s", &records(100, "a")).await.unwrap();
    // Another client splits partition 0; this client's table still names it.
    let admin = Client::connect(server.local_addr()).await.unwrap();
    let [lo, hi] = admin.split("s", 0, None).await.unwrap();
    let second = c.put_routed("s", &records(100, "b")).await.unwrap();
    assert!(
        second.iter().all(|a| a.partition != 0),
        "nothing went to the closed parent"
    );
    assert!(
        second
            .iter()
            .any(|a| a.partition == lo || a.partition == hi)
    );
    // Parent 0 holds only the first put's records; for each key, its records read parent first,
    // then children, are in the order they were put.
    let parent = read_all(&c, "s", 0).await;
    assert_eq!(
        parent.len(),
        first.iter().filter(|a| a.partition == 0).count()
    );
    let mut per_key: BTreeMap<Bytes, Vec<Bytes>> = BTreeMap::new();
    for p in [0, 1, lo, hi] {
        for r in read_all(&c, "s", p).await {
            per_key.entry(r.key).or_default().push(r.value);
        }
    }
    for (key, values) in per_key {
        let sent: Vec<Bytes> = records(100, "a")
            .into_iter()
            .chain(records(100, "b"))
            .filter(|r| r.partition_key == key)
            .map(|r| r.value)
            .collect();
        assert_eq!(values, sent, "key {key:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let c = Client::connect(server.local_addr()).await.unwrap();
    stream(&c, "s", 2).await;
    let mut good = BatchBuilder::new(1);
    good.push(b"k", b"fine").unwrap();
    let good = good.finish().unwrap();
    let mut bad = BatchBuilder::new(0);
    bad.push(b"k", b"value").unwrap();
    let mut bad = bad.finish().unwrap();
    // One bit flipped after the CRC was taken, as a bad cable or a buggy client would.
    let last = bad.batch.len() - 1;
    bad.batch[last] ^= 1;
    let e = c
        .put_batches("s", vec![good.clone(), bad])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadBatch), "{e}");
    assert!(e.to_string().contains("batch 1"), "{e}");
    // A partition the stream does not have.
    let mut stray = good.clone();
    stray.partition = 7;
    let e = c.put_batches("s", vec![stray]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PartitionNotFound), "{e}");
    for p in 0..2 {
        assert!(read_all(&c, "s", p).await.is_empty());
    }
    // More batches than a put may hold records is refused before the batches are decoded
    // (each costs memory to decode, far more than its 12 bytes of wire).
    let e = c
        .put_batches("s", vec![good.clone(); 501])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooManyRecords), "{e}");
    assert!(e.to_string().contains("501 batches"), "{e}");
    // The connection is still good, and so is the good batch alone.
    let acks = c.put_batches("s", vec![good]).await.unwrap();
    assert_eq!(
        (acks[0].partition, acks[0].base_offset, acks[0].status),
        (1, 0, 0)
    );
    // A stream that does not exist, through the routed put.
    let e = c.put_routed("nope", &records(1, "z")).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                kind: Some(ErrorCode::StreamNotFound),
                ..
            }
        ),
        "{e}"
    );
    server.shutdown().await.unwrap();
}

/// A routing table can name a partition that is gone altogether: split, then removed by
/// retention once drained. The put's batch for it is refused with `PartitionNotFound`, having
/// written nothing, and `put_routed` describes the stream again and routes the records anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_removed_by_retention_makes_the_client_route_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let c = Client::connect(server.local_addr()).await.unwrap();
    stream(&c, "s", 1).await;
    // The first put fills the client's routing table: partition 0 holds every hash.
    let first = c.put_routed("s", &records(50, "a")).await.unwrap();
    assert!(first.iter().all(|a| a.partition == 0));

    // Elsewhere, partition 0 is split and, once its records expire, removed.
    let admin = Client::connect(server.local_addr()).await.unwrap();
    let [lo, hi] = admin.split("s", 0, None).await.unwrap();
    let broker = std::sync::Arc::clone(server.broker());
    let removed = tokio::task::spawn_blocking(move || {
        let later = sluice_log::Clock::now_ms(&sluice_log::SystemClock) + 2 * 3_600_000;
        broker.enforce_retention(later)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(removed.partitions_removed, 1);
    let left = admin.describe_stream("s").await.unwrap();
    assert!(left.partitions.iter().all(|p| p.id != 0), "{left:?}");

    let second = c.put_routed("s", &records(50, "b")).await.unwrap();
    assert_eq!(second.len(), 50);
    assert!(
        second
            .iter()
            .all(|a| a.partition == lo || a.partition == hi),
        "{second:?}"
    );
    // Each child holds exactly the records acknowledged to it, at their offsets, in input order.
    let mut stored = 0;
    for p in [lo, hi] {
        let read: Vec<(u64, Bytes)> = read_all(&c, "s", p)
            .await
            .into_iter()
            .map(|r| (r.offset, r.value))
            .collect();
        let acked: Vec<(u64, Bytes)> = records(50, "b")
            .into_iter()
            .zip(&second)
            .filter(|(_, a)| a.partition == p)
            .map(|(r, a)| (a.offset, r.value))
            .collect();
        assert_eq!(read, acked, "partition {p}");
        stored += read.len();
    }
    assert_eq!(stored, 50);
    server.shutdown().await.unwrap();
}
