//! The Rust client against the real server over loopback: the batching producer's records all
//! land, in send order per key, and the partition reader gets them back and follows the tail; the
//! blocking client works from synchronous code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{
    BlockingClient, Client, CreateStream, PartitionReader, Producer, ProducerConfig, PutRecord,
    ReadFrom, ReaderConfig,
};
use sluice_server::{Server, ServerConfig};

fn config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }
}

fn stream(name: &str, partitions: u32) -> CreateStream {
    CreateStream {
        name: name.into(),
        partitions,
        retention_ms: 3_600_000,
        partition_bytes_max: None,
        record_bytes_max: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_reader_round_trip_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let client = Client::connect(server.local_addr()).await.unwrap();
    let info = client.create_stream(stream("events", 3)).await.unwrap();
    assert_eq!(info.partitions.len(), 3);

    let producer = Producer::new(client.clone(), "events", ProducerConfig::default());
    let mut handles = Vec::new();
    for i in 0..2000u32 {
        let record = PutRecord {
            partition_key: Bytes::from(format!("key-{}", i % 17)),
            explicit_hash_key: None,
            value: Bytes::from(format!("{}:{i}", i % 17)),
        };
        handles.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut acks = Vec::new();
    for h in handles {
        acks.push(h.await.unwrap());
    }
    producer.close().await;

    // Read every partition back and check per-key order and completeness.
    let mut per_key: BTreeMap<Bytes, Vec<u32>> = BTreeMap::new();
    let mut total = 0;
    for p in 0..3 {
        let mut reader = PartitionReader::new(
            client.clone(),
            "events",
            p,
            ReadFrom::Earliest,
            ReaderConfig::default(),
        );
        let count = acks.iter().filter(|a| a.partition == p).count();
        for _ in 0..count {
            let r = reader.next().await.unwrap();
            let i: u32 = std::str::from_utf8(&r.value)
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            per_key.entry(r.key).or_default().push(i);
            total += 1;
        }
    }
    assert_eq!(total, 2000);
    for seq in per_key.values() {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "send order kept per key: {seq:?}"
        );
    }

    // The reader follows the tail: a record put later reaches a reader already waiting.
    let end = client.describe_stream("events").await.unwrap().partitions[0].end_offset;
    let mut tail = PartitionReader::new(
        client.clone(),
        "events",
        0,
        ReadFrom::Offset(end),
        ReaderConfig::default(),
    );
    let waiting = tokio::spawn(async move { tail.next().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let key = (0..).map(|n| format!("t{n}")).find(|k| {
        // A key that routes to partition 0: its MD5 is in partition 0's range.
        let h = sluice_broker::routing::hash_key(k.as_bytes());
        h <= info.partitions[0].hash_end
    });
    let key = key.unwrap();
    client
        .put(
            "events",
            vec![PutRecord {
                partition_key: Bytes::from(key),
                explicit_hash_key: None,
                value: Bytes::from_static(b"late"),
            }],
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.value.as_ref(), b"late");
    server.shutdown().await.unwrap();
}

#[test]
fn the_blocking_client_works_from_plain_threads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(dir.path(), config())).unwrap();
    let addr = server.local_addr();
    let done = std::thread::spawn(move || {
        let c = BlockingClient::connect(addr).unwrap();
        c.create_stream(stream("b", 1)).unwrap();
        let acks = c
            .put(
                "b",
                vec![PutRecord {
                    partition_key: Bytes::from_static(b"k"),
                    explicit_hash_key: None,
                    value: Bytes::from_static(b"v"),
                }],
            )
            .unwrap();
        assert_eq!(acks[0].offset, 0);
        c.commit_checkpoint("g", "b", 0, 1).unwrap();
        assert_eq!(c.fetch_checkpoint("g", "b", 0).unwrap(), Some(1));
        c.list_streams().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(done, vec!["b".to_string()]);
    rt.block_on(server.shutdown()).unwrap();
}
