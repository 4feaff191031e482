//! The server over real TCP on 127.0.0.1 with port 0, spoken to with raw protocol frames:
//! byte-exact put/read round trips, pipelining, long polls that wake on a write, ordered
//! pipelined puts, restarts (graceful and abrupt), the frame-size limit checked before
//! allocating, garbage, a stalled half frame, the connection limit, checkpoints, and error codes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_log::FsyncPolicy;
use sluice_protocol::ErrorCode;
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{
    CreateStream, ErrorResponse, PROTOCOL_VERSION, PartitionRef, PutRecord, ReadFrom, ReadRequest,
    Request, Response,
};
use sluice_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }
}

/// Every fsync policy: each acknowledges at a different point, and a roll fsyncs only under
/// `always`, so each must keep the same promises.
fn policies() -> [FsyncPolicy; 3] {
    [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ]
}

fn config_with(policy: FsyncPolicy) -> ServerConfig {
    let mut c = config();
    c.broker.log = c.broker.log.clone().fsync(policy);
    c
}

/// A server under `policy` on a fresh directory (kept while the first item lives), and a
/// greeted connection to it that has created stream "s" of `partitions` partitions.
async fn serve_stream(policy: FsyncPolicy, partitions: u32) -> (tempfile::TempDir, Server, Conn) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config_with(policy))
        .await
        .unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("s", partitions)).await.unwrap();
    (dir, server, c)
}

/// A minimal test client: writes frames, reads frames, no pipelining logic of its own.
struct Conn {
    s: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

type Answer = Result<Response, ErrorResponse>;

impl Conn {
    async fn raw(addr: SocketAddr) -> Self {
        Self {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    async fn open(addr: SocketAddr) -> Self {
        let mut c = Self::raw(addr).await;
        let hello = c
            .call(Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await;
        assert_eq!(
            hello,
            Ok(Response::Hello {
                version: PROTOCOL_VERSION
            })
        );
        c
    }

    async fn send(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        req.encode(id, &mut out);
        self.s.write_all(&out).await.unwrap();
        id
    }

    /// Sends requests in one write, so that the server receives them together.
    async fn send_together(&mut self, reqs: &[Request]) -> Vec<u64> {
        let mut out = BytesMut::new();
        let ids = reqs
            .iter()
            .map(|req| {
                let id = self.next_id;
                self.next_id += 1;
                req.encode(id, &mut out);
                id
            })
            .collect();
        self.s.write_all(&out).await.unwrap();
        ids
    }

    /// Reads one frame; `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<(u64, Answer)> {
        loop {
            if let Some(h) = FrameHeader::decode(&self.buf, u32::MAX).unwrap() {
                let total = HEADER_LEN + h.body_len as usize;
                if self.buf.len() >= total {
                    let mut f = self.buf.split_to(total);
                    let body = f.split_off(HEADER_LEN).freeze();
                    assert!(h.is_response());
                    let answer = if h.is_error() {
                        Err(ErrorResponse::decode(body).unwrap())
                    } else {
                        Ok(Response::decode(h.kind, body).unwrap())
                    };
                    return Some((h.correlation_id, answer));
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_buf(&mut self.buf))
                .await
                .expect("no answer within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads `n` answers, each under its own id, once.
    async fn recv_answers(&mut self, n: usize) -> std::collections::HashMap<u64, Answer> {
        let mut answers = std::collections::HashMap::new();
        for _ in 0..n {
            let (id, answer) = self.recv().await.expect("an answer for every request");
            assert!(
                answers.insert(id, answer).is_none(),
                "id {id} answered twice"
            );
        }
        answers
    }

    async fn call(&mut self, req: Request) -> Answer {
        let id = self.send(&req).await;
        let (got, answer) = self.recv().await.expect("connection closed");
        assert_eq!(got, id);
        answer
    }
}

fn code(a: &Answer) -> Option<ErrorCode> {
    a.as_ref().err().and_then(ErrorResponse::error_code)
}

fn create(name: &str, partitions: u32) -> Request {
    Request::CreateStream(CreateStream {
        name: name.into(),
        partitions,
        retention_ms: 24 * 3600 * 1000,
        partition_bytes_max: None,
        record_bytes_max: None,
    })
}

fn rec(key: &str, value: impl Into<Bytes>) -> PutRecord {
    PutRecord {
        partition_key: Bytes::copy_from_slice(key.as_bytes()),
        explicit_hash_key: None,
        value: value.into(),
    }
}

fn read_req(stream: &str, partition: u32, from: ReadFrom, wait_ms: u32) -> Request {
    Request::Read(ReadRequest {
        stream: stream.into(),
        partition,
        from,
        max_records: 10_000,
        max_bytes: 4 << 20,
        max_wait_ms: wait_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_read_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    assert!(c.call(create("s", 1)).await.is_ok());
    let big: Vec<u8> = (0..(1 << 20) - 2).map(|i| (i * 7 % 251) as u8).collect();
    let binary: Vec<u8> = (0..=255u8).collect();
    let records = vec![
        rec("e", Bytes::new()),
        rec("b", binary.clone()),
        rec("m", big.clone()),
    ];
    let Ok(Response::Put(acks)) = c
        .call(Request::Put {
            stream: "s".into(),
            records,
        })
        .await
    else {
        panic!("put failed")
    };
    assert_eq!(
        acks.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let Ok(Response::Read(r)) = c.call(read_req("s", 0, ReadFrom::Earliest, 0)).await else {
        panic!("read failed")
    };
    assert_eq!(r.records.len(), 3);
    assert_eq!(r.records[0].value.len(), 0);
    assert_eq!(r.records[1].value.as_ref(), binary.as_slice());
    assert_eq!(r.records[2].value.as_ref(), big.as_slice());
    assert_eq!((r.start_offset, r.end_offset, r.next_offset), (0, 3, 3));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_puts_keep_their_order_and_answers_match_ids() {
    for policy in policies() {
        let (_dir, server, mut c) = serve_stream(policy, 4).await;
        let mut ids = Vec::new();
        for i in 0..100u32 {
            let req = Request::Put {
                stream: "s".into(),
                records: vec![rec("same-key", i.to_le_bytes().to_vec())],
            };
            ids.push(c.send(&req).await);
        }
        let mut offsets = std::collections::BTreeMap::new();
        for _ in 0..100 {
            let (id, answer) = c.recv().await.unwrap();
            let Ok(Response::Put(acks)) = answer else {
                panic!("put failed under {policy:?}: {answer:?}")
            };
            offsets.insert(id, acks[0].offset);
        }
        // The n-th pipelined put got the n-th offset of the key's partition.
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(offsets[id], n as u64, "{policy:?}");
        }
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_queued_together_come_back_whole_small_and_large_alike() {
    // Requests sent in one write reach the server together, so their answers queue up and
    // small ones leave in one write; a read's answer past the joining limit goes out on its
    // own, between them. Every answer must still arrive whole, once, under its own id.
    for policy in policies() {
        let (_dir, server, mut c) = serve_stream(policy, 1).await;
        let big = Bytes::from(vec![0xa5u8; 200 << 10]);
        c.call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", big.clone())],
        })
        .await
        .unwrap();
        let mut reqs = Vec::new();
        for i in 0..60u32 {
            reqs.push(if i % 20 == 10 {
                read_req("s", 0, ReadFrom::Offset(0), 0)
            } else {
                Request::Put {
                    stream: "s".into(),
                    records: vec![rec("k", i.to_le_bytes().to_vec())],
                }
            });
        }
        let ids = c.send_together(&reqs).await;
        let answers = c.recv_answers(reqs.len()).await;
        let mut next_offset = 1;
        for (req, id) in reqs.iter().zip(&ids) {
            match (req, &answers[id]) {
                (Request::Put { .. }, Ok(Response::Put(acks))) => {
                    // One partition: the puts took consecutive offsets in the order sent.
                    assert_eq!(acks[0].offset, next_offset, "{policy:?}");
                    next_offset += 1;
                }
                (Request::Read(_), Ok(Response::Read(r))) => {
                    assert_eq!(r.records[0].value, big, "{policy:?}");
                }
                (req, answer) => panic!("{req:?} under {policy:?} got {answer:?}"),
            }
        }
        server.shutdown().await.unwrap();
    }
}

/// A `PutBatches` request of one batch per partition of a two-partition stream, each of `n`
/// records whose values say which request and record they are.
fn put_batches(stream: &str, request: u32, n: u32) -> Request {
    let batches = (0..2u32)
        .map(|p| {
            let mut b = sluice_protocol::batch::BatchBuilder::new(p);
            for r in 0..n {
                b.push(b"k", format!("{request}-{r}").as_bytes()).unwrap();
            }
            b.finish().unwrap()
        })
        .collect();
    Request::PutBatches {
        stream: stream.into(),
        batches,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_framed_puts_that_arrive_together_keep_their_order_and_fail_alone() {
    // Requests that arrive together are written together, one write per partition, but each
    // is still answered on its own: a body that does not decode and a damaged batch among them
    // fail alone, and the rest land in the order sent.
    use sluice_protocol::message::Kind;
    for policy in policies() {
        let (_dir, server, mut c) = serve_stream(policy, 2).await;
        let mut out = BytesMut::new();
        let mut ids = Vec::new();
        for i in 0..12u32 {
            let id = c.next_id;
            c.next_id += 1;
            ids.push(id);
            match i {
                5 => sluice_protocol::frame::encode_frame(
                    &mut out,
                    Kind::PutBatches as u16,
                    0,
                    id,
                    |b| b.extend_from_slice(b"not a put"),
                ),
                8 => {
                    let mut bad = put_batches("s", i, 10);
                    if let Request::PutBatches { batches, .. } = &mut bad {
                        let last = batches[1].batch.len() - 1;
                        batches[1].batch[last] ^= 0x40;
                    }
                    bad.encode(id, &mut out);
                }
                _ => put_batches("s", i, 10).encode(id, &mut out),
            }
        }
        c.s.write_all(&out).await.unwrap();
        let answers = c.recv_answers(ids.len()).await;
        let mut next = 0;
        let mut stored_order = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match (i, &answers[id]) {
                (5, Err(e)) => {
                    assert_eq!(e.code, ErrorCode::MalformedRequest.as_u16(), "{policy:?}")
                }
                (8, Err(e)) => assert_eq!(e.code, ErrorCode::BadBatch.as_u16(), "{policy:?}"),
                (_, Ok(Response::PutBatches(acks))) => {
                    for a in acks {
                        assert_eq!(
                            (a.status, a.base_offset),
                            (0, next),
                            "{policy:?}, request {i}"
                        );
                    }
                    next += 10;
                    stored_order.push(i);
                }
                (i, answer) => panic!("request {i} under {policy:?}: {answer:?}"),
            }
        }
        // Each partition holds the good requests' records, in the order sent.
        for p in 0..2 {
            let Ok(Response::Read(r)) = c.call(read_req("s", p, ReadFrom::Offset(0), 0)).await
            else {
                panic!("read failed")
            };
            let values: Vec<String> = r
                .records
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect();
            let expected: Vec<String> = stored_order
                .iter()
                .flat_map(|i| (0..10).map(move |r| format!("{i}-{r}")))
                .collect();
            assert_eq!(values, expected, "partition {p} under {policy:?}");
        }
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let addr = server.local_addr();
    let mut c = Conn::open(addr).await;
    c.call(create("s", 1)).await.unwrap();
    // From offset 0 of the empty partition: whenever the read arrives, the record is new to it.
    let mut reader = Conn::open(addr).await;
    reader
        .send(&read_req("s", 0, ReadFrom::Offset(0), 20_000))
        .await;
    // The read is parked; a put on another connection wakes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let put_at = Instant::now();
    c.call(Request::Put {
        stream: "s".into(),
        records: vec![rec("k", "wake")],
    })
    .await
    .unwrap();
    let (_, answer) = reader.recv().await.unwrap();
    let woke_after = put_at.elapsed();
    let Ok(Response::Read(r)) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(r.records[0].value.as_ref(), b"wake");
    // Well under the 20 s wait: the read was woken, not timed out.
    assert!(
        woke_after < Duration::from_secs(10),
        "woke after {woke_after:?}"
    );
    // With nothing to read, a long poll ends at its deadline with no records.
    let Ok(Response::Read(r)) = c.call(read_req("s", 0, ReadFrom::Offset(1), 50)).await else {
        panic!()
    };
    assert!(r.records.is_empty());
    assert_eq!(r.next_offset, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_graceful_and_abrupt_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for round in 0..4u32 {
        let server = Server::start(dir.path(), config()).await.unwrap();
        let mut c = Conn::open(server.local_addr()).await;
        if round == 0 {
            c.call(create("s", 3)).await.unwrap();
        }
        for i in 0..20u32 {
            let value = format!("{round}-{i}");
            let Ok(Response::Put(acks)) = c
                .call(Request::Put {
                    stream: "s".into(),
                    records: vec![rec(&format!("k{i}"), value.clone())],
                })
                .await
            else {
                panic!()
            };
            expected.push((acks[0].partition, acks[0].offset, value));
        }
        if round % 2 == 0 {
            server.shutdown().await.unwrap();
        } else {
            server.abort().await;
        }
    }
    let server = Server::start(dir.path(), config()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    for (p, o, v) in &expected {
        let Ok(Response::Read(r)) = c.call(read_req("s", *p, ReadFrom::Offset(*o), 0)).await else {
            panic!()
        };
        assert_eq!(
            r.records[0].value.as_ref(),
            v.as_bytes(),
            "partition {p} offset {o}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_prefix_is_refused_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let addr = server.local_addr();
    let mut good = Conn::open(addr).await;
    good.call(create("s", 1)).await.unwrap();
    let mut bad = Conn::open(addr).await;
    // A header announcing a 4 GiB body, and no body at all: answered from the header alone.
    let header = FrameHeader {
        body_len: u32::MAX,
        kind: 6,
        flags: 0,
        correlation_id: 77,
    }
    .encode();
    bad.s.write_all(&header).await.unwrap();
    let (id, answer) = bad.recv().await.unwrap();
    assert_eq!(id, 77);
    assert_eq!(code(&answer), Some(ErrorCode::FrameTooLarge));
    assert!(
        bad.recv().await.is_none(),
        "the connection is closed after broken framing"
    );
    // Garbage bytes: the header fails its checks and the connection closes.
    let mut garbage = Conn::raw(addr).await;
    garbage.s.write_all(&[0xff; 64]).await.unwrap();
    let answer = garbage.recv().await;
    assert!(answer.is_none() || answer.is_some_and(|(_, a)| a.is_err()));
    // A put that claims a million records is refused from its count, before any decoding.
    let mut liar = Conn::open(addr).await;
    let mut out = BytesMut::new();
    sluice_protocol::frame::encode_frame(&mut out, 6, 0, 9, |b| {
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(b"s");
        b.extend_from_slice(&1_000_000u32.to_le_bytes());
    });
    liar.s.write_all(&out).await.unwrap();
    let (_, answer) = liar.recv().await.unwrap();
    assert_eq!(code(&answer), Some(ErrorCode::TooManyRecords));
    // The well-behaved client never noticed.
    assert!(
        good.call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", "v")]
        })
        .await
        .is_ok()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_inside_a_frame_is_dropped_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        frame_timeout: Duration::from_millis(300),
        ..config()
    };
    let server = Server::start(dir.path(), cfg).await.unwrap();
    let addr = server.local_addr();
    let mut staller = Conn::open(addr).await;
    let mut out = BytesMut::new();
    Request::ListStreams.encode(5, &mut out);
    Request::Put {
        stream: "s".into(),
        records: vec![rec("k", "0123456789")],
    }
    .encode(6, &mut out);
    // The whole first frame and half of the second, then silence.
    let cut = out.len() - 10;
    staller.s.write_all(&out[..cut]).await.unwrap();
    let (id, answer) = staller.recv().await.unwrap();
    assert_eq!(id, 5);
    assert!(answer.is_ok());
    // Meanwhile another client is served at once.
    let mut other = Conn::open(addr).await;
    assert!(other.call(Request::ListStreams).await.is_ok());
    // The staller is disconnected after the frame timeout.
    assert!(staller.recv().await.is_none());
    server.shutdown().await.unwrap();

    // A client that goes silent between frames is let go after the idle timeout.
    let cfg = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    };
    let server = Server::start(dir.path(), cfg).await.unwrap();
    let mut idle = Conn::open(server.local_addr()).await;
    let since = Instant::now();
    assert!(idle.recv().await.is_none());
    assert!(since.elapsed() >= Duration::from_millis(250));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_busy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        max_connections: 2,
        ..config()
    };
    let server = Server::start(dir.path(), cfg).await.unwrap();
    let addr = server.local_addr();
    let _a = Conn::open(addr).await;
    let _b = Conn::open(addr).await;
    let mut c = Conn::raw(addr).await;
    let (_, answer) = c.recv().await.unwrap();
    assert_eq!(code(&answer), Some(ErrorCode::Busy));
    assert!(c.recv().await.is_none());
    drop(_a);
    // A freed slot is usable again (the server notices the close asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = Conn::raw(addr).await;
        let id = d
            .send(&Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await;
        match d.recv().await {
            Some((got, Ok(_))) if got == id => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("slot never freed: {other:?}"),
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_round_trip_and_every_error_code_is_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let addr = server.local_addr();
    let mut seen = std::collections::HashSet::new();

    // Before the handshake.
    let mut pre = Conn::raw(addr).await;
    seen.extend(code(&pre.call(Request::ListStreams).await));
    let mut old = Conn::raw(addr).await;
    seen.extend(code(&old.call(Request::Hello { version: 99 }).await));

    let mut c = Conn::open(addr).await;
    c.call(create("s", 2)).await.unwrap();
    let target = |p| PartitionRef {
        stream: "s".into(),
        partition: p,
    };
    let acks = match c
        .call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", "v")],
        })
        .await
    {
        Ok(Response::Put(a)) => a,
        other => panic!("{other:?}"),
    };
    let p = acks[0].partition;
    assert_eq!(
        c.call(Request::FetchCheckpoint {
            group: "g".into(),
            target: target(p)
        })
        .await,
        Ok(Response::FetchCheckpoint(None))
    );
    assert_eq!(
        c.call(Request::CommitCheckpoint {
            group: "g".into(),
            target: target(p),
            offset: 1
        })
        .await,
        Ok(Response::CommitCheckpoint)
    );
    assert_eq!(
        c.call(Request::FetchCheckpoint {
            group: "g".into(),
            target: target(p)
        })
        .await,
        Ok(Response::FetchCheckpoint(Some(1)))
    );

    let put = |records: Vec<PutRecord>| Request::Put {
        stream: "s".into(),
        records,
    };
    let attempts: Vec<Request> = vec![
        create("../x", 1),
        create("s", 1),
        Request::DescribeStream {
            name: "nope".into(),
        },
        read_req("s", 9, ReadFrom::Earliest, 0),
        create("y", 0),
        put(vec![rec("", "v")]),
        put(vec![PutRecord {
            explicit_hash_key: Some(0),
            ..rec(&"k".repeat(300), "v")
        }]),
        put(vec![rec("k", vec![0u8; (1 << 20) + 1])]),
        put(vec![]),
        put(vec![rec("k", "v"); 501]),
        put(vec![rec("k", vec![0u8; 600 << 10]); 9]),
        Request::Split {
            target: target(0),
            at: Some(0),
        },
        Request::Merge {
            stream: "s".into(),
            a: 0,
            b: 0,
        },
        read_req("s", p, ReadFrom::Offset(999), 0),
        Request::CommitCheckpoint {
            group: "g".into(),
            target: target(p),
            offset: 99,
        },
    ];
    for req in attempts {
        seen.extend(code(&c.call(req).await));
    }
    // A closed partition refuses to split again.
    let Ok(Response::Split(_)) = c
        .call(Request::Split {
            target: target(0),
            at: None,
        })
        .await
    else {
        panic!()
    };
    seen.extend(code(
        &c.call(Request::Split {
            target: target(0),
            at: None,
        })
        .await,
    ));
    // An unknown kind and an undecodable body keep the connection.
    let mut out = BytesMut::new();
    sluice_protocol::frame::encode_frame(&mut out, 999, 0, 4242, |_| {});
    sluice_protocol::frame::encode_frame(&mut out, 5, 0, 4243, |b| b.extend_from_slice(&[0xff; 3]));
    c.s.write_all(&out).await.unwrap();
    for _ in 0..2 {
        let (_, a) = c.recv().await.unwrap();
        seen.extend(code(&a));
    }
    // The partition limit.
    let mut tight = {
        let dir2 = tempfile::tempdir().unwrap();
        let cfg = ServerConfig {
            broker: sluice_broker::BrokerOptions {
                partitions_max: 1,
                ..Default::default()
            },
            ..config()
        };
        let s2 = Server::start(dir2.path(), cfg).await.unwrap();
        let mut c2 = Conn::open(s2.local_addr()).await;
        c2.call(create("t", 1)).await.unwrap();
        seen.extend(code(
            &c2.call(Request::Split {
                target: PartitionRef {
                    stream: "t".into(),
                    partition: 0,
                },
                at: None,
            })
            .await,
        ));
        s2.shutdown().await.unwrap();
        Conn::raw(addr).await
    };
    // Oversized frame.
    tight
        .s
        .write_all(
            &FrameHeader {
                body_len: u32::MAX,
                kind: 6,
                flags: 0,
                correlation_id: 1,
            }
            .encode(),
        )
        .await
        .unwrap();
    seen.extend(code(&tight.recv().await.unwrap().1));

    let expected = [
        ErrorCode::UnsupportedVersion,
        ErrorCode::MalformedRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKind,
        ErrorCode::HandshakeRequired,
        ErrorCode::InvalidName,
        ErrorCode::StreamExists,
        ErrorCode::StreamNotFound,
        ErrorCode::PartitionNotFound,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidPartitionKey,
        ErrorCode::RecordTooLarge,
        ErrorCode::EmptyPut,
        ErrorCode::TooManyRecords,
        ErrorCode::PutTooLarge,
        ErrorCode::PartitionClosed,
        ErrorCode::InvalidSplitKey,
        ErrorCode::NotAdjacent,
        ErrorCode::TooManyPartitions,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::CheckpointBeyondEnd,
    ];
    for e in expected {
        assert!(seen.contains(&e), "{e:?} was never answered; saw {seen:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failures_and_corruption_are_typed_errors() {
    use sluice_log::io::sim::SimFs;
    use std::sync::Arc;

    // A failed fsync: the put is refused with StorageUnavailable, never acknowledged.
    let fs = SimFs::new();
    let broker =
        sluice_broker::Broker::open_with_fs(Arc::new(fs.clone()), "/data", Default::default())
            .unwrap();
    let server = Server::start_with_broker(broker, config()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("s", 1)).await.unwrap();
    fs.fail_sync_after(0, std::io::ErrorKind::Other);
    let answer = c
        .call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", "v")],
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::StorageUnavailable));
    server.abort().await;

    // Damage in a sealed segment: reads of it are refused with Corruption, not served.
    let dir = tempfile::tempdir().unwrap();
    let small = || ServerConfig {
        broker: sluice_broker::BrokerOptions {
            log: sluice_log::LogOptions::default().segment_bytes_max(4096),
            ..Default::default()
        },
        ..config()
    };
    let server = Server::start(dir.path(), small()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("s", 1)).await.unwrap();
    for i in 0..20u32 {
        c.call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", vec![i as u8; 1000])],
        })
        .await
        .unwrap();
    }
    server.shutdown().await.unwrap();
    let seg = dir.path().join("streams/s.0/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    let server = Server::start(dir.path(), small()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    let answer = c.call(read_req("s", 0, ReadFrom::Offset(0), 0)).await;
    assert_eq!(code(&answer), Some(ErrorCode::Corruption));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_producers_keep_per_key_order() {
    for policy in policies() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), config_with(policy))
            .await
            .unwrap();
        let addr = server.local_addr();
        Conn::open(addr).await.call(create("s", 4)).await.unwrap();
        let producers: Vec<_> = (0..100u32)
            .map(|p| {
                tokio::spawn(async move {
                    let mut c = Conn::open(addr).await;
                    // Each producer pipelines its puts, one key per producer, 10 sequence numbers.
                    for seq in 0..10u32 {
                        let value = format!("{p}:{seq}");
                        c.send(&Request::Put {
                            stream: "s".into(),
                            records: vec![rec(&format!("producer-{p}"), value)],
                        })
                        .await;
                    }
                    for _ in 0..10 {
                        let (_, answer) = c.recv().await.unwrap();
                        assert!(
                            matches!(answer, Ok(Response::Put(_))),
                            "{policy:?}: {answer:?}"
                        );
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let mut c = Conn::open(addr).await;
        let mut by_key: std::collections::BTreeMap<Vec<u8>, Vec<u32>> = Default::default();
        let mut total = 0;
        for partition in 0..4 {
            let Ok(Response::Read(r)) = c
                .call(read_req("s", partition, ReadFrom::Earliest, 0))
                .await
            else {
                panic!()
            };
            total += r.records.len();
            for rec in r.records {
                let v = String::from_utf8(rec.value.to_vec()).unwrap();
                let seq: u32 = v.split(':').nth(1).unwrap().parse().unwrap();
                by_key.entry(rec.key.to_vec()).or_default().push(seq);
            }
        }
        assert_eq!(total, 1000, "{policy:?}");
        assert_eq!(by_key.len(), 100);
        for (key, seqs) in by_key {
            assert_eq!(
                seqs,
                (0..10).collect::<Vec<_>>(),
                "{policy:?}: key {:?}",
                String::from_utf8_lossy(&key)
            );
        }
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_traffic_fsyncs_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), config()).await.unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("s", 2)).await.unwrap();
    for _ in 0..5 {
        c.call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", "12345"), rec("j", "")],
        })
        .await
        .unwrap();
    }
    c.call(read_req("s", 0, ReadFrom::Earliest, 0))
        .await
        .unwrap();
    c.call(read_req("s", 1, ReadFrom::Earliest, 0))
        .await
        .unwrap();
    let Ok(Response::Stats(st)) = c.call(Request::Stats).await else {
        panic!()
    };
    assert_eq!(st.connections_open, 1);
    assert!(st.connections_total >= 1);
    assert_eq!(st.puts, 5);
    assert!(
        st.fsyncs >= 5,
        "every acknowledged put under fsync=always was fsynced"
    );
    assert!(st.fsync_latency_us_p50 > 0 && st.fsync_latency_us_p99 >= st.fsync_latency_us_p50);
    assert!(st.put_latency_us_p50 > 0 && st.put_latency_us_max >= st.put_latency_us_p99);
    let s = st.streams.iter().find(|s| s.name == "s").unwrap();
    assert_eq!((s.records_in, s.bytes_in), (10, 5 * (1 + 5 + 1)));
    assert_eq!((s.records_out, s.bytes_out), (10, 5 * (1 + 5 + 1)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_stalls_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        max_in_flight_per_connection: 4,
        ..config()
    };
    let server = Server::start(dir.path(), cfg).await.unwrap();
    let addr = server.local_addr();
    let mut c = Conn::open(addr).await;
    c.call(create("s", 1)).await.unwrap();
    let value = vec![7u8; 512 << 10];
    for _ in 0..8 {
        c.call(Request::Put {
            stream: "s".into(),
            records: vec![rec("k", value.clone())],
        })
        .await
        .unwrap();
    }
    // A client that asks for megabytes of reads, again and again, and never reads a byte back:
    // its socket buffers fill, then its in-flight limit, then the server stops reading it.
    let mut slow = Conn::open(addr).await;
    let mut out = BytesMut::new();
    for i in 0..200u64 {
        read_req("s", 0, ReadFrom::Earliest, 0).encode(1000 + i, &mut out);
    }
    let writer = tokio::spawn(async move {
        // This write blocks once the server stops reading; it is abandoned at the end.
        let _ = slow.s.write_all(&out).await;
        slow
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Everyone else is served normally meanwhile.
    for i in 0..20u32 {
        let answer = c
            .call(Request::Put {
                stream: "s".into(),
                records: vec![rec("k", i.to_le_bytes().to_vec())],
            })
            .await;
        assert!(matches!(answer, Ok(Response::Put(_))));
    }
    let mut fresh = Conn::open(addr).await;
    assert!(fresh.call(Request::ListStreams).await.is_ok());
    writer.abort();
    server.abort().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partition_is_refused_alone_and_a_full_disk_recovers_without_restart() {
    use sluice_log::io::sim::SimFs;
    use std::sync::Arc;

    let fs = SimFs::new();
    let open = |fs: &SimFs| {
        sluice_broker::Broker::open_with_fs(Arc::new(fs.clone()), "/data", Default::default())
            .unwrap()
    };
    let server = Server::start_with_broker(open(&fs), config())
        .await
        .unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("a", 1)).await.unwrap();
    c.call(create("b", 1)).await.unwrap();
    let put = |stream: &str, v: &str| Request::Put {
        stream: stream.into(),
        records: vec![rec("k", v.to_owned())],
    };

    // EIO on fsync, in stream a's partition only.
    fs.scope_faults(Some(std::path::Path::new("/data/streams/a.0")));
    fs.fail_sync_after(0, std::io::ErrorKind::Other);
    assert_eq!(
        code(&c.call(put("a", "1")).await),
        Some(ErrorCode::StorageUnavailable)
    );
    // The other partition keeps working.
    assert!(matches!(c.call(put("b", "1")).await, Ok(Response::Put(_))));
    // The failed partition stays refused (its fsync is never retried), even once the disk is well.
    fs.fail_sync_after(u64::MAX, std::io::ErrorKind::Other);
    assert_eq!(
        code(&c.call(put("a", "2")).await),
        Some(ErrorCode::StorageUnavailable)
    );
    assert!(matches!(c.call(put("b", "2")).await, Ok(Response::Put(_))));

    // ENOSPC on write (half the batch reaches the file), in stream b's partition.
    fs.scope_faults(Some(std::path::Path::new("/data/streams/b.1")));
    fs.fail_writes(std::io::ErrorKind::StorageFull, true);
    assert_eq!(
        code(&c.call(put("b", "3")).await),
        Some(ErrorCode::StorageUnavailable)
    );
    // Space is back: writing works again at once, without a restart, at the next offset.
    fs.clear_write_error();
    let Ok(Response::Put(acks)) = c.call(put("b", "4")).await else {
        panic!()
    };
    assert_eq!(acks[0].offset, 2);
    server.abort().await;

    // After a restart, the poisoned partition takes writes again; nothing acknowledged is lost.
    let server = Server::start_with_broker(open(&fs), config())
        .await
        .unwrap();
    let mut c = Conn::open(server.local_addr()).await;
    assert!(matches!(c.call(put("a", "5")).await, Ok(Response::Put(_))));
    let Ok(Response::Read(r)) = c.call(read_req("b", 0, ReadFrom::Earliest, 0)).await else {
        panic!()
    };
    let values: Vec<&[u8]> = r.records.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(values, vec![&b"1"[..], b"2", b"4"]);
    server.shutdown().await.unwrap();
}

/// Under `never` and `interval` a roll leaves its fsync to the log's background flusher.
/// Pipelined puts that roll every partition several times are acknowledged in order (each key's
/// offsets rise in the order the puts were sent), and after a graceful or an abrupt stop of the
/// server (not a power loss: the crash tests of `sluice-log` cover that) every acknowledged
/// record is read back where its acknowledgement said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_that_roll_segments_under_never_and_interval_survive_a_restart() {
    for policy in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        for graceful in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config_with(policy);
            config.broker.log = config.broker.log.clone().segment_bytes_max(2048);
            let server = Server::start(dir.path(), config.clone()).await.unwrap();
            let mut c = Conn::open(server.local_addr()).await;
            c.call(create("s", 3)).await.unwrap();
            let mut sent = std::collections::BTreeMap::new();
            for i in 0..150u32 {
                let value = format!("{i:04}-{}", "v".repeat(200));
                let id = c
                    .send(&Request::Put {
                        stream: "s".into(),
                        records: vec![rec(&format!("k{}", i % 7), value.clone())],
                    })
                    .await;
                sent.insert(id, value);
            }
            let mut expected = Vec::new();
            let mut acked = std::collections::BTreeMap::new();
            for _ in 0..150 {
                let (id, answer) = c.recv().await.unwrap();
                let Ok(Response::Put(acks)) = answer else {
                    panic!("{policy:?}: {answer:?}")
                };
                expected.push((acks[0].partition, acks[0].offset, sent[&id].clone()));
                acked.insert(id, (acks[0].partition, acks[0].offset));
            }
            // Ids rise in send order; key `k{i % 7}` was the i-th put's.
            let mut last: std::collections::BTreeMap<usize, (u32, u64)> = Default::default();
            for (i, (partition, offset)) in acked.values().enumerate() {
                if let Some((p, o)) = last.insert(i % 7, (*partition, *offset)) {
                    assert_eq!(p, *partition, "{policy:?}: key k{} moved", i % 7);
                    assert!(o < *offset, "{policy:?}: key k{} went back", i % 7);
                }
            }
            // 150 records of over 200 bytes in 2 KiB segments: every partition rolled.
            for p in 0..3 {
                let segments = std::fs::read_dir(dir.path().join(format!("streams/s.0/{p}")))
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
                    })
                    .count();
                assert!(
                    segments > 2,
                    "{policy:?}: partition {p} has {segments} segments"
                );
            }
            if graceful {
                server.shutdown().await.unwrap();
            } else {
                server.abort().await;
            }
            let server = Server::start(dir.path(), config).await.unwrap();
            let mut c = Conn::open(server.local_addr()).await;
            for (p, o, v) in &expected {
                let Ok(Response::Read(r)) =
                    c.call(read_req("s", *p, ReadFrom::Offset(*o), 0)).await
                else {
                    panic!()
                };
                assert_eq!(
                    r.records.first().map(|r| r.value.as_ref()),
                    Some(v.as_bytes()),
                    "{policy:?}, graceful {graceful}: partition {p} offset {o}"
                );
            }
            server.shutdown().await.unwrap();
        }
    }
}

/// Lets held writes go when dropped, so that a failing test fails instead of hanging.
struct ReleaseOnDrop(sluice_log::io::sim::SimFs);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release_held();
    }
}

/// A server whose broker keeps its data in a simulated file system under `/data`, for faults.
async fn server_on_sim_fs(policy: FsyncPolicy) -> (sluice_log::io::sim::SimFs, Server) {
    let fs = sluice_log::io::sim::SimFs::new();
    let options = sluice_broker::BrokerOptions {
        log: sluice_log::LogOptions::default().fsync(policy),
        ..Default::default()
    };
    let broker =
        sluice_broker::Broker::open_with_fs(std::sync::Arc::new(fs.clone()), "/data", options)
            .unwrap();
    let server = Server::start_with_broker(broker, config()).await.unwrap();
    (fs, server)
}

/// Under `never` too, a write that fails (a full disk, half the batch written) is answered
/// with a typed error, nothing half-written is served, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_never_a_full_disk_is_a_typed_error_and_the_connection_goes_on() {
    let (fs, server) = server_on_sim_fs(FsyncPolicy::Never).await;
    let mut c = Conn::open(server.local_addr()).await;
    c.call(create("b", 1)).await.unwrap();
    let put = |v: &str| Request::Put {
        stream: "b".into(),
        records: vec![rec("k", v.to_owned())],
    };
    assert!(matches!(c.call(put("1")).await, Ok(Response::Put(_))));
    // ENOSPC, with half the batch reaching the file.
    fs.fail_writes(std::io::ErrorKind::StorageFull, true);
    assert_eq!(
        code(&c.call(put("2")).await),
        Some(ErrorCode::StorageUnavailable)
    );
    fs.clear_write_error();
    let Ok(Response::Put(acks)) = c.call(put("3")).await else {
        panic!()
    };
    assert_eq!(acks[0].offset, 1);
    let Ok(Response::Read(r)) = c.call(read_req("b", 0, ReadFrom::Earliest, 0)).await else {
        panic!()
    };
    let values: Vec<&[u8]> = r.records.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(values, vec![&b"1"[..], b"3"]);
    server.shutdown().await.unwrap();
}

/// A write the kernel holds (here: the simulated file system holds every write to one stream)
/// holds the thread that makes it. Two such writes at once, on a runtime of two threads, must
/// still leave other connections answered: each connection's puts are written on the
/// connection's own thread, never on a thread that serves other connections. (Writing them on
/// the server runtime's threads fails this test: with those held or asleep, nobody polls for
/// I/O.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_held_by_the_kernel_do_not_stop_other_connections() {
    let (fs, server) = server_on_sim_fs(FsyncPolicy::Never).await;
    let addr = server.local_addr();
    let mut admin = Conn::open(addr).await;
    admin.call(create("a", 2)).await.unwrap();
    admin.call(create("b", 1)).await.unwrap();

    // Every write to stream a's partitions now waits until released.
    fs.scope_faults(Some(std::path::Path::new("/data/streams/a.0")));
    fs.hold_writes();
    // Whatever fails below, the held writes are let go, so the runtime can stop and the test
    // fails instead of hanging.
    let _release = ReleaseOnDrop(fs.clone());
    let put_to = |partition_hash: u128| Request::Put {
        stream: "a".into(),
        records: vec![PutRecord {
            partition_key: Bytes::from_static(b"k"),
            explicit_hash_key: Some(partition_hash),
            value: Bytes::from_static(b"held"),
        }],
    };
    // One put for each of a's two partitions, from two connections: both writes are held.
    let mut first = Conn::open(addr).await;
    let mut second = Conn::open(addr).await;
    first.send(&put_to(0)).await;
    second.send(&put_to(u128::MAX)).await;
    if !fs.wait_for_held(2, Duration::from_secs(30)) {
        fs.release_held();
        panic!("the two puts never reached the disk");
    }

    // Another connection, from a runtime of its own so that it does not depend on the server's
    // threads, is still answered.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = Conn::open(addr).await;
            let listed = c.call(Request::ListStreams).await;
            let put = c
                .call(Request::Put {
                    stream: "b".into(),
                    records: vec![rec("k", "free")],
                })
                .await;
            let _ = tx.send((listed, put));
        });
    });
    let answered = rx.recv_timeout(Duration::from_secs(30));
    fs.release_held();
    let (listed, put) = answered.expect("other connections went unanswered while writes were held");
    assert!(matches!(listed, Ok(Response::ListStreams(_))), "{listed:?}");
    assert!(matches!(put, Ok(Response::Put(_))), "{put:?}");

    // Released, the held puts are written and acknowledged.
    for c in [&mut first, &mut second] {
        let (_, answer) = c.recv().await.unwrap();
        assert!(matches!(answer, Ok(Response::Put(_))), "{answer:?}");
    }
    for partition in 0..2 {
        let Ok(Response::Read(r)) = admin
            .call(read_req("a", partition, ReadFrom::Earliest, 0))
            .await
        else {
            panic!()
        };
        assert_eq!(r.records.len(), 1, "partition {partition}");
    }
    server.shutdown().await.unwrap();
}

/// A server on the simulated file system with its own runtime, and a client runtime apart from
/// it, so that the client's timeouts fire whatever the server's threads are doing.
fn split_runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (server, client)
}

fn put_one(stream: &str, value: &'static str) -> Request {
    Request::Put {
        stream: stream.into(),
        records: vec![rec("k", value)],
    }
}

/// A put held by the kernel holds up its own connection, and only it: another connection is
/// answered meanwhile, and once the write returns, the puts the client pipelined behind it are
/// written after it, in order, and its read is answered.
#[test]
fn a_held_put_holds_up_only_its_own_connection_and_keeps_its_order() {
    let (server_rt, client_rt) = split_runtimes();
    let (fs, server) = server_rt.block_on(server_on_sim_fs(FsyncPolicy::Never));
    let addr = server.local_addr();
    let _release = ReleaseOnDrop(fs.clone());
    client_rt.block_on(async {
        let mut c = Conn::open(addr).await;
        c.call(create("a", 1)).await.unwrap();
        c.call(create("b", 1)).await.unwrap();
        assert!(matches!(
            c.call(put_one("b", "free")).await,
            Ok(Response::Put(_))
        ));

        fs.scope_faults(Some(std::path::Path::new("/data/streams/a.0")));
        fs.hold_writes();
        let first = c.send(&put_one("a", "1")).await;
        let second = c.send(&put_one("a", "2")).await;
        let read = c.send(&read_req("b", 0, ReadFrom::Earliest, 0)).await;
        assert!(
            fs.wait_for_held(1, Duration::from_secs(30)),
            "the first put never reached the disk"
        );
        // Another connection is answered while this one's put is held (`recv` gives up after
        // 20 s).
        let mut other = Conn::open(addr).await;
        assert!(matches!(
            other.call(put_one("b", "other")).await,
            Ok(Response::Put(_))
        ));

        fs.release_held();
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let (id, answer) = c.recv().await.expect("connection closed");
            answers.insert(id, answer);
        }
        for (id, offset) in [(first, 0), (second, 1)] {
            let Some(Ok(Response::Put(acks))) = answers.get(&id) else {
                panic!("{answers:?}")
            };
            assert_eq!(acks[0].offset, offset);
        }
        assert!(matches!(answers.get(&read), Some(Ok(Response::Read(_)))));
        let Ok(Response::Read(r)) = c.call(read_req("a", 0, ReadFrom::Earliest, 0)).await else {
            panic!()
        };
        let values: Vec<&[u8]> = r.records.iter().map(|r| r.value.as_ref()).collect();
        assert_eq!(values, vec![&b"1"[..], b"2"]);
    });
    server_rt.block_on(server.shutdown()).unwrap();
}

/// `Server::abort` is a crash as far as the files go: the requests a connection had not yet
/// taken are dropped, not written after the abort, even when its thread was held in a write at
/// the time; the connection closes, and the data directory is released, once that write returns.
#[test]
fn an_abort_writes_nothing_behind_a_held_write() {
    let (server_rt, client_rt) = split_runtimes();
    let (fs, server) = server_rt.block_on(server_on_sim_fs(FsyncPolicy::Never));
    let addr = server.local_addr();
    let _release = ReleaseOnDrop(fs.clone());
    let (mut c, first) = client_rt.block_on(async {
        let mut c = Conn::open(addr).await;
        c.call(create("a", 1)).await.unwrap();
        fs.scope_faults(Some(std::path::Path::new("/data/streams/a.0")));
        fs.hold_writes();
        // In one write: the server reads them together, and has the later two in hand, not
        // waiting in the socket, while the first one's write is held.
        let ids = c
            .send_together(&[put_one("a", "1"), put_one("a", "2"), put_one("a", "3")])
            .await;
        let first = ids[0];
        assert!(
            fs.wait_for_held(1, Duration::from_secs(30)),
            "the first put never reached the disk"
        );
        (c, first)
    });

    // The abort's first poll stops the connections from taking further requests; it then waits
    // for the held write, so it is polled once before the write is let go.
    let mut aborted = Box::pin(server.abort());
    server_rt.block_on(async {
        let once = tokio::time::timeout(Duration::from_millis(1), &mut aborted).await;
        assert!(once.is_err(), "the abort waits for the held write");
    });
    fs.release_held();
    server_rt.block_on(aborted);
    // The connection is closed; at most the held put was answered.
    client_rt.block_on(async {
        while let Some((id, answer)) = c.recv().await {
            assert_eq!(id, first, "{answer:?}");
        }
    });

    let broker = sluice_broker::Broker::open_with_fs(
        std::sync::Arc::new(fs.clone()),
        "/data",
        sluice_broker::BrokerOptions::default(),
    )
    .unwrap();
    let records = broker
        .read("a", 0, 0, sluice_log::ReadLimits::default())
        .unwrap();
    let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(
        values,
        vec![&b"1"[..]],
        "only the put being written when the server stopped"
    );
}
