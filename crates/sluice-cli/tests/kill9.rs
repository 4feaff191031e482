//! Restart-and-replay under `kill -9`: the real `sluice serve` binary takes puts from several
//! producers with random keys and is SIGKILLed at a random moment, then restarted on the same
//! directory, over and over. After every cycle: every acknowledged record is at its acknowledged
//! offset, byte for byte; each partition's offsets are contiguous; each key's records are in the
//! order they were sent; nothing appears that was never sent; and a consumer's committed
//! checkpoint is where it was committed. Half the producers send plain puts and half frame their
//! batches themselves (`put_routed`). Runs under `fsync=always` and `fsync=interval:50ms` (a
//! process crash loses nothing acknowledged under either).
//!
//! CI runs 20 cycles per mode; for a long run set the cycle count:
//! `SLUICE_KILL_CYCLES=500 cargo test --release -p sluice-cli --test kill9`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_client::{Client, ClientConfig, CreateStream, PutRecord, ReadFrom, ReadRequest};

mod common;

use common::{BIN, spawn_serve};
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 4;

fn start(data: &Path, fsync: &str) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--fsync",
        fsync,
        "--data",
    ])
    .arg(data)
    .env("SLUICE_LOG", "error")
    .stderr(Stdio::null());
    spawn_serve(cmd)
}

/// What the producers sent: value → (key, producer, sequence), and what was acknowledged: value →
/// (partition, offset). Sequences count per producer and key: order is promised for one
/// producer's records of a key, not between producers.
#[derive(Default)]
struct Ledger {
    sent: HashMap<Bytes, (Bytes, usize, u64)>,
    acked: HashMap<Bytes, (u32, u64)>,
    next_seq: HashMap<(usize, Bytes), u64>,
}

async fn client(addr: &str) -> Client {
    let config = ClientConfig::default()
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(10));
    Client::connect_with(addr, config).await.unwrap()
}

async fn read_partition(c: &Client, partition: u32) -> Vec<sluice_client::WireRecord> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Earliest;
    loop {
        let r = c
            .read(ReadRequest {
                stream: "replay".into(),
                partition,
                from,
                max_records: 10_000,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap();
        let done = r.records.is_empty() || r.next_offset >= r.end_offset;
        out.extend(r.records);
        from = ReadFrom::Offset(r.next_offset);
        if done {
            return out;
        }
    }
}

async fn cycle(
    dir: &Path,
    fsync: &str,
    ledger: &Arc<Mutex<Ledger>>,
    rng: &mut SmallRng,
    checkpoint: &mut Option<(u32, u64)>,
    first: bool,
    produce: bool,
) {
    let (mut server, addr) = start(dir, fsync);
    let admin = client(&addr).await;
    if first {
        admin
            .create_stream(CreateStream {
                name: "replay".into(),
                partitions: PARTITIONS,
                retention_ms: 24 * 3600 * 1000,
                partition_bytes_max: None,
                record_bytes_max: None,
            })
            .await
            .unwrap();
    }

    // Check what the previous cycle left, before writing more. The reads happen first, so the
    // ledger's lock is never held across an await.
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(read_partition(&admin, p).await);
    }
    let committed = match *checkpoint {
        Some((p, _)) => Some(
            admin
                .fetch_checkpoint("consumer", "replay", p)
                .await
                .unwrap(),
        ),
        None => None,
    };
    {
        let l = ledger.lock().unwrap();
        let mut seen_values = 0usize;
        let mut per_key: HashMap<(usize, Bytes), u64> = HashMap::new();
        for (p, records) in (0..PARTITIONS).zip(&partitions) {
            for (i, r) in records.iter().enumerate() {
                assert_eq!(
                    r.offset, i as u64,
                    "partition {p}: offsets are contiguous from 0"
                );
                let (key, producer, seq) = l.sent.get(&r.value).unwrap_or_else(|| {
                    panic!(
                        "partition {p} offset {}: a record that was never sent",
                        r.offset
                    )
                });
                assert_eq!(&r.key, key, "the record kept its key");
                // Keys never move partitions (no reshards here), so per-key order is the order
                // within the partition.
                let last = per_key.entry((*producer, key.clone())).or_insert(0);
                assert!(
                    *seq >= *last,
                    "producer {producer}, key {key:?}: sequence {seq} after {last}: out of order"
                );
                *last = *seq + 1;
                seen_values += 1;
            }
            for (value, (ap, ao)) in &l.acked {
                if *ap == p {
                    let r = records.get(*ao as usize).unwrap_or_else(|| {
                        panic!("acknowledged record at partition {p} offset {ao} lost")
                    });
                    assert_eq!(
                        &r.value, value,
                        "partition {p} offset {ao} holds other bytes"
                    );
                }
            }
        }
        assert!(seen_values >= l.acked.len());
        if let (Some((_, o)), Some(got)) = (*checkpoint, committed) {
            assert_eq!(got, Some(o), "the committed checkpoint moved");
        }
    }

    if !produce {
        server.kill().unwrap();
        server.wait().unwrap();
        return;
    }

    // A consumer commits a checkpoint for a random partition, at its current end.
    let p = rng.gen_range(0..PARTITIONS);
    let end = admin.describe_stream("replay").await.unwrap().partitions[p as usize].end_offset;
    admin
        .commit_checkpoint("consumer", "replay", p, end)
        .await
        .unwrap();
    *checkpoint = Some((p, end));

    // Producers put until the server dies under them.
    let mut producers = Vec::new();
    for t in 0..PRODUCERS {
        let c = client(&addr).await;
        let ledger = Arc::clone(ledger);
        let mut prng = SmallRng::seed_from_u64(rng.r#gen());
        producers.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                let n = prng.gen_range(1..20);
                let mut records = Vec::new();
                {
                    let mut l = ledger.lock().unwrap();
                    for _ in 0..n {
                        let key = Bytes::from(format!("k{}", prng.gen_range(0..50)));
                        let seq = {
                            let s = l.next_seq.entry((t, key.clone())).or_insert(0);
                            *s += 1;
                            *s - 1
                        };
                        let value = Bytes::from(format!(
                            "{t}:{}:{seq}:{}",
                            String::from_utf8_lossy(&key),
                            prng.r#gen::<u64>()
                        ));
                        l.sent.insert(value.clone(), (key.clone(), t, seq));
                        records.push(PutRecord {
                            partition_key: key,
                            explicit_hash_key: None,
                            value,
                        });
                    }
                }
                // Half the producers frame their batches themselves (`PutBatches`), so both write
                // paths are killed under load.
                let put = if t % 2 == 0 {
                    c.put("replay", records.clone()).await
                } else {
                    c.put_routed("replay", &records).await
                };
                match put {
                    Ok(acks) => {
                        let mut l = ledger.lock().unwrap();
                        for (r, a) in records.iter().zip(acks) {
                            l.acked.insert(r.value.clone(), (a.partition, a.offset));
                        }
                    }
                    // The server was killed: this put may or may not have landed.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
    server.kill().unwrap();
    server.wait().unwrap();
    for p in producers {
        p.await.unwrap();
    }
}

fn run(fsync: &str, seed: u64) {
    let cycles: usize = std::env::var("SLUICE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut checkpoint = None;
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..cycles {
        rt.block_on(cycle(
            &data,
            fsync,
            &ledger,
            &mut rng,
            &mut checkpoint,
            i == 0,
            true,
        ));
    }
    // One more start to check what the last kill left.
    rt.block_on(cycle(
        &data,
        fsync,
        &ledger,
        &mut rng,
        &mut checkpoint,
        false,
        false,
    ));
    let l = ledger.lock().unwrap();
    assert!(
        l.acked.len() > cycles * 10,
        "only {} records acknowledged over {cycles} cycles",
        l.acked.len()
    );
    let keys: BTreeMap<_, _> = l.next_seq.iter().collect();
    assert!(keys.len() > 10);
}

#[test]
fn kill_9_and_replay_under_fsync_always() {
    run("always", 1);
}

#[test]
fn kill_9_and_replay_under_fsync_interval() {
    run("interval:50ms", 2);
}
