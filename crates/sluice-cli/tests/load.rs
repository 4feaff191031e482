//! Load and bad input at the real server: the live-leaderboard case (a thousand riders' devices
//! connecting at once, each sending one small record), then a storm of bad clients (garbage,
//! huge length prefixes, truncated frames, invalid names, half-sent frames, clients that never
//! read) alongside well-behaved ones. The server stays up, the good clients are served, every
//! acknowledged record is stored once, and the server's resident memory stays bounded; the
//! figures are printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::{Client, ClientConfig, CreateStream, PutRecord, ReadFrom, ReadRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

struct Serve(Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &std::path::Path) -> Serve {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--json", "--data"])
        .arg(data)
        .env("SLUICE_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let addr = v["listening"]["native"].as_str().unwrap().to_owned();
    Serve(child, addr)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn config() -> ClientConfig {
    ClientConfig::default()
        .connect_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_riders_at_once_then_a_storm_of_bad_clients() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"));
    let pid = s.0.id();
    let admin = Client::connect_with(s.1.as_str(), config()).await.unwrap();
    admin
        .create_stream(CreateStream {
            name: "riders".into(),
            partitions: 4,
            retention_ms: 3_600_000,
            partition_bytes_max: None,
            record_bytes_max: None,
        })
        .await
        .unwrap();
    let rss_start = rss_kib(pid);

    // A thousand devices connect at once and each sends one telemetry record.
    let started = Instant::now();
    let riders: Vec<_> = (0..1000u32)
        .map(|i| {
            let addr = s.1.clone();
            tokio::spawn(async move {
                let c = Client::connect_with(addr.as_str(), config()).await.unwrap();
                let value = format!("{{\"rider\":{i},\"watts\":{}}}", 150 + i % 200);
                let acks = c
                    .put(
                        "riders",
                        vec![PutRecord {
                            partition_key: Bytes::from(format!("rider-{i}")),
                            explicit_hash_key: None,
                            value: Bytes::from(value),
                        }],
                    )
                    .await
                    .unwrap();
                (c, acks[0])
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut acks = Vec::new();
    for r in riders {
        let (c, ack) = r.await.unwrap();
        held.push(c); // keep all thousand connections open while memory is measured
        acks.push(ack);
    }
    let took = started.elapsed();
    let rss_riders = rss_kib(pid);
    let stats = admin.stats().await.unwrap();
    eprintln!(
        "1000 riders: all acknowledged in {took:?}; {} connections open; {} puts in {} fsyncs; server RSS {} -> {} KiB",
        stats.connections_open, stats.puts, stats.fsyncs, rss_start, rss_riders
    );
    assert!(stats.connections_open >= 1000);
    let mut unique: Vec<_> = acks.iter().map(|a| (a.partition, a.offset)).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 1000, "every record has its own place");
    drop(held);

    // The storm: bad clients of every kind, while good clients keep working.
    let addr = s.1.clone();
    let mut bad = Vec::new();
    for i in 0..200u32 {
        let addr = addr.clone();
        bad.push(tokio::spawn(async move {
            let mut sock = TcpStream::connect(addr.as_str()).await.unwrap();
            let mut out = BytesMut::new();
            match i % 5 {
                // Garbage bytes.
                0 => out.extend_from_slice(&[0xa5u8; 4096]),
                // A huge length prefix.
                1 => out.extend_from_slice(
                    &sluice_protocol::frame::FrameHeader {
                        body_len: u32::MAX,
                        kind: 6,
                        flags: 0,
                        correlation_id: 1,
                    }
                    .encode(),
                ),
                // A valid handshake, then a truncated frame and silence (held until the end).
                2 => {
                    sluice_protocol::Request::Hello {
                        version: sluice_protocol::PROTOCOL_VERSION,
                    }
                    .encode(1, &mut out);
                    sluice_protocol::Request::ListStreams.encode(2, &mut out);
                    out.truncate(out.len() - 3);
                }
                // Invalid names, including path traversal.
                3 => {
                    sluice_protocol::Request::Hello {
                        version: sluice_protocol::PROTOCOL_VERSION,
                    }
                    .encode(1, &mut out);
                    for (n, name) in ["../../etc", "/abs", "a/b", "..", ""].iter().enumerate() {
                        sluice_protocol::Request::DescribeStream {
                            name: (*name).into(),
                        }
                        .encode(2 + n as u64, &mut out);
                    }
                }
                // Many large reads whose answers are never read.
                _ => {
                    sluice_protocol::Request::Hello {
                        version: sluice_protocol::PROTOCOL_VERSION,
                    }
                    .encode(1, &mut out);
                    for n in 0..200u64 {
                        sluice_protocol::Request::Read(sluice_protocol::message::ReadRequest {
                            stream: "riders".into(),
                            partition: (n % 4) as u32,
                            from: sluice_protocol::message::ReadFrom::Earliest,
                            max_records: 10_000,
                            max_bytes: 4 << 20,
                            max_wait_ms: 0,
                        })
                        .encode(2 + n, &mut out);
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(&out)).await;
            sock
        }));
    }
    let mut bad_socks = Vec::new();
    for b in bad {
        bad_socks.push(b.await.unwrap());
    }
    // Good clients are served normally while the bad ones hold their connections.
    let good = Client::connect_with(addr.as_str(), config()).await.unwrap();
    let t = Instant::now();
    for i in 0..50u32 {
        good.put(
            "riders",
            vec![PutRecord {
                partition_key: Bytes::from(format!("rider-{i}")),
                explicit_hash_key: None,
                value: Bytes::from_static(b"ok"),
            }],
        )
        .await
        .unwrap();
    }
    let during = t.elapsed();
    let rss_storm = rss_kib(pid);
    eprintln!(
        "during the storm of 200 bad clients: 50 puts in {during:?}; server RSS {rss_storm} KiB"
    );
    // Bounded: a thousand connections and the storm cost the server well under 512 MiB.
    assert!(rss_storm < 512 * 1024, "server RSS {rss_storm} KiB");
    assert!(rss_riders < 512 * 1024, "server RSS {rss_riders} KiB");
    drop(bad_socks);

    // Everything acknowledged is there once: 1000 + 50 records.
    let mut total = 0;
    for p in 0..4 {
        let r = good
            .read(ReadRequest {
                stream: "riders".into(),
                partition: p,
                from: ReadFrom::Earliest,
                max_records: 10_000,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap();
        total += r.records.len();
    }
    assert_eq!(total, 1050);
}
