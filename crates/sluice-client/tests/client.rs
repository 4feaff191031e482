//! The client against a small fake server (tokio and `sluice-protocol`, one in-memory
//! partition): responses are matched by correlation id even out of order, server errors keep
//! their codes, timeouts and dropped connections fail only the requests they hit and the
//! client reconnects, oversized responses are refused from their header, the producer batches
//! by linger, count and bytes and maps acks back to records in order, the partition reader
//! follows the tail with long polls, and the blocking client round-trips.
//!
//! The fake server reacts to names: `DescribeStream` of `drop` closes the connection, `never`
//! gets no answer, `missing` gets `StreamNotFound`, `held-*` are answered three at a time in
//! reverse, `big` gets a real but large body, `huge-header` a header announcing 4 GiB. Puts to
//! `held` are answered three at a time in reverse, puts to `gated` wait for the test's permits.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_client::{
    BlockingClient, Client, ClientConfig, ClientError, CreateStream, ErrorCode, PROTOCOL_VERSION,
    PartitionReader, Producer, ProducerConfig, PutAck, PutRecord, ReadFrom, ReadRequest,
    ReaderConfig, StreamInfo, WireError, WireRecord,
};
use sluice_protocol::frame::{FLAG_RESPONSE, FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ErrorResponse, ReadResponse};
use sluice_protocol::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

/// Longest any test waits for a condition or for its whole body.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The fake server.

struct State {
    log: Mutex<Log>,
    appended: Notify,
    /// Connections accepted, including rejected ones.
    connections: AtomicUsize,
    hellos: AtomicUsize,
    /// Close this many of the next accepted connections at once.
    reject_next: AtomicUsize,
    hello_version: AtomicU16,
    /// Record count of each put, in arrival order.
    puts: Mutex<Vec<usize>>,
    /// Where each read asked to start, in arrival order.
    reads: Mutex<Vec<ReadFrom>>,
    /// Long polls parked now.
    parked_reads: AtomicUsize,
    /// Puts to `gated` waiting for `gate`, now and at most.
    gated_now: AtomicUsize,
    gated_max: AtomicUsize,
    gate: Semaphore,
    checkpoint: Mutex<Option<u64>>,
}

/// One partition: records from `start` on.
struct Log {
    start: u64,
    records: Vec<WireRecord>,
}

impl Log {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    fn append(&mut self, key: Bytes, value: Bytes) -> u64 {
        let offset = self.end();
        self.records.push(WireRecord {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key,
            value,
        });
        offset
    }
}

struct FakeServer {
    addr: std::net::SocketAddr,
    state: Arc<State>,
}

impl FakeServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            log: Mutex::new(Log {
                start: 0,
                records: Vec::new(),
            }),
            appended: Notify::new(),
            connections: AtomicUsize::new(0),
            hellos: AtomicUsize::new(0),
            reject_next: AtomicUsize::new(0),
            hello_version: AtomicU16::new(PROTOCOL_VERSION),
            puts: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
            parked_reads: AtomicUsize::new(0),
            gated_now: AtomicUsize::new(0),
            gated_max: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            checkpoint: Mutex::new(None),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Self { addr, state }
    }

    /// Replaces the log with `count` records starting at offset `start`.
    fn fill(&self, start: u64, count: u64) {
        let mut log = self.state.log.lock().unwrap();
        log.start = start;
        log.records.clear();
        for i in 0..count {
            log.append(
                Bytes::from(format!("k{i}")),
                Bytes::from(format!("v{}", start + i)),
            );
        }
    }

    fn values(&self) -> Vec<Bytes> {
        let log = self.state.log.lock().unwrap();
        log.records.iter().map(|r| r.value.clone()).collect()
    }

    fn puts(&self) -> Vec<usize> {
        self.state.puts.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let rejected = state
            .reject_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if rejected {
            drop(socket);
            continue;
        }
        tokio::spawn(serve_connection(socket, Arc::clone(&state)));
    }
}

type Out = mpsc::UnboundedSender<Bytes>;

fn reply(out: &Out, id: u64, response: Response) {
    let mut frame = BytesMut::new();
    response.encode(id, &mut frame);
    let _ = out.send(frame.freeze());
}

fn reply_error(out: &Out, id: u64, kind: u16, code: ErrorCode, message: &str) {
    let mut frame = BytesMut::new();
    ErrorResponse::new(code, message).encode(kind, id, &mut frame);
    let _ = out.send(frame.freeze());
}

fn info(name: String) -> StreamInfo {
    StreamInfo {
        name,
        retention_ms: 86_400_000,
        partition_bytes_max: None,
        record_bytes_max: 1 << 20,
        partitions: Vec::new(),
    }
}

async fn read_frame(read: &mut OwnedReadHalf) -> Option<(FrameHeader, Bytes)> {
    let mut header = [0u8; HEADER_LEN];
    read.read_exact(&mut header).await.ok()?;
    let header = FrameHeader::decode(&header, 64 << 20).ok()??;
    let mut body = vec![0u8; header.body_len as usize];
    read.read_exact(&mut body).await.ok()?;
    Some((header, Bytes::from(body)))
}

async fn serve_connection(socket: tokio::net::TcpStream, state: Arc<State>) {
    let (mut read, mut write) = socket.into_split();
    let (out, mut queue) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut held_describes: Vec<(u64, String)> = Vec::new();
    let mut held_puts: Vec<(u64, Vec<PutAck>)> = Vec::new();
    while let Some((header, body)) = read_frame(&mut read).await {
        let id = header.correlation_id;
        let kind = header.kind;
        let request = Request::decode(kind, body).expect("the client sends valid requests");
        match request {
            Request::Hello { version } => {
                assert_eq!(version, PROTOCOL_VERSION);
                state.hellos.fetch_add(1, Ordering::SeqCst);
                let version = state.hello_version.load(Ordering::SeqCst);
                reply(&out, id, Response::Hello { version });
            }
            Request::DescribeStream { name } => match name.as_str() {
                "drop" => break,
                "never" => {}
                "missing" => reply_error(
                    &out,
                    id,
                    kind,
                    ErrorCode::StreamNotFound,
                    "stream missing does not exist",
                ),
                "big" => reply(&out, id, Response::DescribeStream(info("x".repeat(4000)))),
                "huge-header" => {
                    let header = FrameHeader {
                        body_len: u32::MAX,
                        kind,
                        flags: FLAG_RESPONSE,
                        correlation_id: id,
                    };
                    let _ = out.send(Bytes::copy_from_slice(&header.encode()));
                }
                held if held.starts_with("held-") => {
                    held_describes.push((id, name));
                    if held_describes.len() == 3 {
                        for (id, name) in held_describes.drain(..).rev() {
                            reply(&out, id, Response::DescribeStream(info(name)));
                        }
                    }
                }
                _ => reply(&out, id, Response::DescribeStream(info(name))),
            },
            Request::Put { stream, records } => {
                if stream == "missing" {
                    reply_error(&out, id, kind, ErrorCode::StreamNotFound, "no such stream");
                    continue;
                }
                state.puts.lock().unwrap().push(records.len());
                // Records are appended on arrival, so the log shows the order puts came in
                // whatever order they are answered in.
                let acks: Vec<PutAck> = {
                    let mut log = state.log.lock().unwrap();
                    records
                        .into_iter()
                        .map(|r| PutAck {
                            partition: 0,
                            offset: log.append(r.partition_key, r.value),
                        })
                        .collect()
                };
                state.appended.notify_waiters();
                match stream.as_str() {
                    "held" => {
                        held_puts.push((id, acks));
                        if held_puts.len() == 3 {
                            for (id, acks) in held_puts.drain(..).rev() {
                                reply(&out, id, Response::Put(acks));
                            }
                        }
                    }
                    "gated" => {
                        let now = state.gated_now.fetch_add(1, Ordering::SeqCst) + 1;
                        state.gated_max.fetch_max(now, Ordering::SeqCst);
                        let state = Arc::clone(&state);
                        let out = out.clone();
                        tokio::spawn(async move {
                            state.gate.acquire().await.unwrap().forget();
                            state.gated_now.fetch_sub(1, Ordering::SeqCst);
                            reply(&out, id, Response::Put(acks));
                        });
                    }
                    _ => reply(&out, id, Response::Put(acks)),
                }
            }
            Request::Read(read) => {
                tokio::spawn(long_poll(Arc::clone(&state), out.clone(), id, kind, read));
            }
            Request::CreateStream(settings) => {
                reply(&out, id, Response::CreateStream(info(settings.name)));
            }
            Request::DeleteStream { .. } => reply(&out, id, Response::DeleteStream),
            Request::ListStreams => {
                reply(&out, id, Response::ListStreams(vec!["orders".into()]));
            }
            Request::Split { target, .. } => {
                let first = target.partition + 1;
                reply(&out, id, Response::Split([first, first + 1]));
            }
            Request::Merge { a, b, .. } => reply(&out, id, Response::Merge(a.max(b) + 1)),
            Request::SetRetention { .. } => reply(&out, id, Response::SetRetention),
            Request::CommitCheckpoint { offset, .. } => {
                *state.checkpoint.lock().unwrap() = Some(offset);
                reply(&out, id, Response::CommitCheckpoint);
            }
            Request::FetchCheckpoint { .. } => {
                let offset = *state.checkpoint.lock().unwrap();
                reply(&out, id, Response::FetchCheckpoint(offset));
            }
            Request::Stats => reply(&out, id, Response::Stats(Default::default())),
            other => panic!("the fake server does not know {other:?}"),
        }
    }
    // Dropping both halves closes the socket; answers still queued are lost on purpose.
    writer.abort();
}

/// Answers a read at once when records are there, otherwise when some are appended or the
/// wait is over. The starting point is resolved once, as the real server does.
async fn long_poll(state: Arc<State>, out: Out, id: u64, kind: u16, read: ReadRequest) {
    state.reads.lock().unwrap().push(read.from);
    let deadline = Instant::now() + Duration::from_millis(u64::from(read.max_wait_ms));
    let from = {
        let log = state.log.lock().unwrap();
        match read.from {
            ReadFrom::Offset(offset) => offset,
            ReadFrom::Earliest => log.start,
            ReadFrom::Latest => log.end(),
            ReadFrom::Timestamp(t) => log
                .records
                .iter()
                .find(|r| r.timestamp_ms >= t)
                .map_or(log.end(), |r| r.offset),
        }
    };
    loop {
        // Registered before looking, so an append between the look and the wait is not missed.
        let appended = state.appended.notified();
        let response = {
            let log = state.log.lock().unwrap();
            if from < log.start || from > log.end() {
                drop(log);
                reply_error(&out, id, kind, ErrorCode::OffsetOutOfRange, "out of range");
                return;
            }
            let records: Vec<WireRecord> = log
                .records
                .iter()
                .skip((from - log.start) as usize)
                .take(read.max_records as usize)
                .cloned()
                .collect();
            let next_offset = records.last().map_or(from, |r| r.offset + 1);
            (!records.is_empty() || Instant::now() >= deadline).then(|| ReadResponse {
                start_offset: log.start,
                end_offset: log.end(),
                next_offset,
                records,
            })
        };
        if let Some(response) = response {
            reply(&out, id, Response::Read(response));
            return;
        }
        state.parked_reads.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = appended => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        state.parked_reads.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn record(key: &str, value: &str) -> PutRecord {
    PutRecord {
        partition_key: Bytes::copy_from_slice(key.as_bytes()),
        explicit_hash_key: None,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// Polls `condition` until it holds, failing the test after `PATIENCE`.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs a test body, failing it instead of hanging if it takes longer than `PATIENCE`.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, body)
        .await
        .expect("the test took too long")
}

fn fast_reconnect() -> ClientConfig {
    ClientConfig::default().reconnect_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

// ---------------------------------------------------------------------------------------------
// Client.

#[tokio::test]
async fn pipelined_requests_are_matched_by_id_when_answered_out_of_order() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        // The server answers these three only once all three are in, and in reverse order.
        let (a, b, c) = tokio::join!(
            client.describe_stream("held-a"),
            client.describe_stream("held-b"),
            client.describe_stream("held-c"),
        );
        assert_eq!(a.unwrap().name, "held-a");
        assert_eq!(b.unwrap().name, "held-b");
        assert_eq!(c.unwrap().name, "held-c");

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let client = client.clone();
            tasks.spawn(async move { (i, client.describe_stream(&format!("s{i}")).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, info) = done.unwrap();
            assert_eq!(info.unwrap().name, format!("s{i}"));
        }
        assert_eq!(server.connections(), 1, "clones share one connection");
    })
    .await;
}

#[tokio::test]
async fn a_server_error_keeps_its_code() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        let error = client.describe_stream("missing").await.unwrap_err();
        assert!(
            matches!(
                &error,
                ClientError::Server { code: 12, kind: Some(ErrorCode::StreamNotFound), message }
                    if message.contains("missing")
            ),
            "{error:?}"
        );
        assert_eq!(error.code(), Some(ErrorCode::StreamNotFound));
        let error = client
            .put("missing", vec![record("k", "v")])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::StreamNotFound));
        // An error answer leaves the connection in use.
        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
        assert_eq!(server.connections(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_the_connection_stays() {
    within(async {
        let server = FakeServer::start().await;
        let config = ClientConfig::default().request_timeout(Duration::from_secs(1));
        let client = Client::connect_with(server.addr, config).await.unwrap();
        let error = client.describe_stream("never").await.unwrap_err();
        assert!(matches!(error, ClientError::Timeout), "{error:?}");
        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
        assert_eq!(server.connections(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_requests_and_the_next_request_reconnects() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect_with(server.addr, fast_reconnect())
            .await
            .unwrap();
        // Parked on the same connection, so the drop fails it too.
        let parked = client.read(ReadRequest {
            stream: "s".into(),
            partition: 0,
            from: ReadFrom::Latest,
            max_records: 10,
            max_bytes: 1 << 20,
            max_wait_ms: 60_000,
        });
        let dropped = async {
            wait_until("the read to park", || {
                server.state.parked_reads.load(Ordering::SeqCst) == 1
            })
            .await;
            client.describe_stream("drop").await
        };
        let (parked, dropped) = tokio::join!(parked, dropped);
        assert!(
            matches!(parked, Err(ClientError::ConnectionClosed)),
            "{parked:?}"
        );
        assert!(
            matches!(dropped, Err(ClientError::ConnectionClosed)),
            "{dropped:?}"
        );

        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
        assert_eq!(server.connections(), 2);
        assert_eq!(
            server.state.hellos.load(Ordering::SeqCst),
            2,
            "the handshake is repeated"
        );
    })
    .await;
}

#[tokio::test]
async fn reconnect_backs_off_and_gives_up_after_the_attempt_limit() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect_with(server.addr, fast_reconnect().reconnect_attempts(3))
            .await
            .unwrap();

        // Two refused attempts, then one that works.
        server.state.reject_next.store(2, Ordering::SeqCst);
        assert!(matches!(
            client.describe_stream("drop").await,
            Err(ClientError::ConnectionClosed)
        ));
        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
        assert_eq!(server.connections(), 1 + 3);

        // More refusals than attempts: the request fails after exactly three.
        server.state.reject_next.store(10, Ordering::SeqCst);
        assert!(client.describe_stream("drop").await.is_err());
        let before = server.connections();
        let error = client.describe_stream("ok").await.unwrap_err();
        assert!(
            matches!(error, ClientError::ConnectionClosed | ClientError::Io(_)),
            "{error:?}"
        );
        assert_eq!(server.connections(), before + 3);

        // The next request tries again from scratch.
        server.state.reject_next.store(0, Ordering::SeqCst);
        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
    })
    .await;
}

#[tokio::test]
async fn a_server_of_another_version_is_refused() {
    within(async {
        let server = FakeServer::start().await;
        server.state.hello_version.store(99, Ordering::SeqCst);
        let error = Client::connect(server.addr).await.unwrap_err();
        assert!(
            matches!(error, ClientError::UnsupportedVersion(99)),
            "{error:?}"
        );
        assert_eq!(error.code(), Some(ErrorCode::UnsupportedVersion));
    })
    .await;
}

#[tokio::test]
async fn a_response_over_the_frame_limit_is_refused() {
    within(async {
        let server = FakeServer::start().await;
        let config = fast_reconnect().max_frame_body_bytes(1024);
        let client = Client::connect_with(server.addr, config).await.unwrap();

        let error = client.describe_stream("big").await.unwrap_err();
        assert!(
            matches!(error, ClientError::Wire(WireError::FrameTooLarge { len, max: 1024 }) if len > 1024),
            "{error:?}"
        );
        // A header announcing 4 GiB is refused from its 16 bytes.
        let error = client.describe_stream("huge-header").await.unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::Wire(WireError::FrameTooLarge { len: u32::MAX, max: 1024 })
            ),
            "{error:?}"
        );
        // The connection was given up; the next request gets a new one.
        assert_eq!(client.describe_stream("ok").await.unwrap().name, "ok");
        assert_eq!(server.connections(), 3);
    })
    .await;
}

#[tokio::test]
async fn every_call_round_trips() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        let created = client
            .create_stream(CreateStream {
                name: "orders".into(),
                partitions: 1,
                retention_ms: 1000,
                partition_bytes_max: None,
                record_bytes_max: None,
            })
            .await
            .unwrap();
        assert_eq!(created.name, "orders");
        assert_eq!(client.list_streams().await.unwrap(), vec!["orders"]);
        assert_eq!(client.split("orders", 0, None).await.unwrap(), [1, 2]);
        assert_eq!(client.merge("orders", 1, 2).await.unwrap(), 3);
        client
            .set_retention("orders", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            client.fetch_checkpoint("g", "orders", 0).await.unwrap(),
            None
        );
        client.commit_checkpoint("g", "orders", 0, 7).await.unwrap();
        assert_eq!(
            client.fetch_checkpoint("g", "orders", 0).await.unwrap(),
            Some(7)
        );
        assert_eq!(client.stats().await.unwrap(), Default::default());
        client.delete_stream("orders").await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Producer.

async fn send_all(producer: &Producer, count: usize) -> Vec<sluice_client::AckHandle> {
    let mut handles = Vec::new();
    for i in 0..count {
        let key = format!("key-{}", i % 4);
        handles.push(producer.send(record(&key, &format!("v{i}"))).await.unwrap());
    }
    handles
}

async fn offsets(handles: Vec<sluice_client::AckHandle>) -> Vec<u64> {
    let mut offsets = Vec::new();
    for handle in handles {
        let ack = handle.await.unwrap();
        assert_eq!(ack.partition, 0);
        offsets.push(ack.offset);
    }
    offsets
}

fn sent_values(count: usize) -> Vec<Bytes> {
    (0..count).map(|i| Bytes::from(format!("v{i}"))).collect()
}

#[tokio::test]
async fn records_sent_within_the_linger_go_in_one_put() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        let config = ProducerConfig::default().linger(Duration::from_millis(300));
        let producer = Producer::new(client, "s", config);
        let handles = send_all(&producer, 10).await;
        // No flush: the linger alone sends the batch.
        assert_eq!(offsets(handles).await, (0..10).collect::<Vec<_>>());
        assert_eq!(server.puts(), vec![10]);
        producer.close().await;
    })
    .await;
}

#[tokio::test]
async fn batches_split_at_max_records_and_max_bytes_and_acks_map_back() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        let linger = Duration::from_secs(600);

        let producer = Producer::new(
            client.clone(),
            "s",
            ProducerConfig::default().linger(linger).max_records(4),
        );
        let handles = send_all(&producer, 10).await;
        producer.flush().await.unwrap();
        assert_eq!(server.puts(), vec![4, 4, 2]);
        assert_eq!(offsets(handles).await, (0..10).collect::<Vec<_>>());
        assert_eq!(server.values(), sent_values(10));
        producer.close().await;

        // Each record has 7 key and value bytes, so two fit in 16 and a third does not.
        server.state.puts.lock().unwrap().clear();
        let producer = Producer::new(
            client,
            "s",
            ProducerConfig::default().linger(linger).max_bytes(16),
        );
        let handles = send_all(&producer, 5).await;
        producer.flush().await.unwrap();
        assert_eq!(server.puts(), vec![2, 2, 1]);
        assert_eq!(offsets(handles).await, (10..15).collect::<Vec<_>>());
        producer.close().await;
    })
    .await;
}

#[tokio::test]
async fn several_batches_in_flight_keep_send_order() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        // The server answers puts to `held` three at a time, in reverse: only a producer with
        // three batches in flight gets answers at all.
        let config = ProducerConfig::default()
            .linger(Duration::from_secs(600))
            .max_records(2)
            .max_in_flight(3);
        let producer = Producer::new(client.clone(), "held", config);
        let handles = send_all(&producer, 6).await;
        producer.flush().await.unwrap();
        assert_eq!(server.puts(), vec![2, 2, 2]);
        assert_eq!(offsets(handles).await, (0..6).collect::<Vec<_>>());
        producer.close().await;

        // Many small batches and a short linger: the log holds every record in send order.
        let config = ProducerConfig::default()
            .linger(Duration::from_millis(1))
            .max_records(3);
        let producer = Producer::new(client, "s", config);
        let handles = send_all(&producer, 60).await;
        assert_eq!(offsets(handles).await, (6..66).collect::<Vec<_>>());
        let values = server.values();
        assert_eq!(values[6..], sent_values(60)[..]);

        let closed = producer.clone();
        producer.close().await;
        let error = closed.send(record("k", "v")).await.unwrap_err();
        assert!(matches!(error, ClientError::ProducerClosed), "{error:?}");
    })
    .await;
}

#[tokio::test]
async fn send_waits_while_max_in_flight_batches_are_pending() {
    within(async {
        let server = FakeServer::start().await;
        let client = Client::connect(server.addr).await.unwrap();
        let config = ProducerConfig::default()
            .linger(Duration::from_millis(1))
            .max_records(1)
            .max_in_flight(2);
        let producer = Producer::new(client, "gated", config);
        // Two batches go out and wait at the server; the task holds a third while it waits for
        // a slot, and the queue (one batch's worth) holds a fourth.
        let mut handles = Vec::new();
        for i in 0..4 {
            handles.push(producer.send(record("k", &format!("v{i}"))).await.unwrap());
        }
        wait_until("two puts at the server", || {
            server.state.gated_now.load(Ordering::SeqCst) == 2
        })
        .await;
        let fifth = {
            let fifth = producer.send(record("k", "v4"));
            tokio::pin!(fifth);
            let early = tokio::time::timeout(Duration::from_millis(100), &mut fifth).await;
            assert!(early.is_err(), "send must wait while the producer is full");
            server.state.gate.add_permits(1000);
            fifth.await.unwrap()
        };
        handles.push(fifth);
        assert_eq!(offsets(handles).await, (0..5).collect::<Vec<_>>());
        assert_eq!(server.state.gated_max.load(Ordering::SeqCst), 2);
        producer.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Partition reader.

fn reader_config() -> ReaderConfig {
    ReaderConfig::default()
        .max_records(2)
        .max_wait(Duration::from_secs(30))
}

#[tokio::test]
async fn the_reader_follows_the_tail_with_long_polls() {
    within(async {
        let server = FakeServer::start().await;
        server.fill(0, 3);
        let client = Client::connect(server.addr).await.unwrap();
        let mut reader =
            PartitionReader::new(client.clone(), "s", 0, ReadFrom::Earliest, reader_config());
        for offset in 0..3 {
            let record = reader.next().await.unwrap();
            assert_eq!(record.offset, offset);
            assert_eq!(record.value, Bytes::from(format!("v{offset}")));
        }
        assert_eq!(reader.position(), ReadFrom::Offset(3));

        // Nothing more yet: the read parks at the server until a put arrives.
        let writer = async {
            wait_until("the read to park", || {
                server.state.parked_reads.load(Ordering::SeqCst) == 1
            })
            .await;
            client.put("s", vec![record("k", "late")]).await.unwrap()
        };
        let (next, acks) = tokio::join!(reader.next(), writer);
        let next = next.unwrap();
        assert_eq!((next.offset, next.value), (3, Bytes::from("late")));
        assert_eq!(
            acks,
            vec![PutAck {
                partition: 0,
                offset: 3
            }]
        );
        assert_eq!(reader.position(), ReadFrom::Offset(4));

        let reads = server.state.reads.lock().unwrap().clone();
        assert_eq!(reads[0], ReadFrom::Earliest);
        assert_eq!(
            reads[1..],
            [ReadFrom::Offset(2), ReadFrom::Offset(3)],
            "later reads continue at next_offset"
        );
    })
    .await;
}

#[tokio::test]
async fn the_reader_resolves_latest_and_earliest_once() {
    within(async {
        let server = FakeServer::start().await;
        // Offsets 5 to 7: retention took the first five.
        server.fill(5, 3);
        let client = Client::connect(server.addr).await.unwrap();

        let mut earliest =
            PartitionReader::new(client.clone(), "s", 0, ReadFrom::Earliest, reader_config());
        assert_eq!(earliest.position(), ReadFrom::Earliest);
        assert_eq!(earliest.next().await.unwrap().offset, 5);

        let mut latest =
            PartitionReader::new(client.clone(), "s", 0, ReadFrom::Latest, reader_config());
        assert_eq!(latest.position(), ReadFrom::Latest);
        let writer = async {
            wait_until("the read to park", || {
                server.state.parked_reads.load(Ordering::SeqCst) == 1
            })
            .await;
            client.put("s", vec![record("k", "new")]).await.unwrap()
        };
        let (next, _) = tokio::join!(latest.next(), writer);
        let next = next.unwrap();
        assert_eq!((next.offset, next.value), (8, Bytes::from("new")));
        assert_eq!(latest.position(), ReadFrom::Offset(9));

        // The earliest reader goes on by offset and sees the new record too.
        let seen: Vec<u64> = [
            earliest.next().await.unwrap().offset,
            earliest.next().await.unwrap().offset,
            earliest.next().await.unwrap().offset,
        ]
        .into();
        assert_eq!(seen, [6, 7, 8]);

        let reads = server.state.reads.lock().unwrap().clone();
        assert_eq!(
            reads
                .iter()
                .filter(|from| !matches!(from, ReadFrom::Offset(_)))
                .count(),
            2,
            "each reader resolves its starting point once: {reads:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Blocking client.

#[test]
fn the_blocking_client_round_trips() {
    // The fake server runs on its own thread and runtime: the blocking client must not be used
    // inside one.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = FakeServer::start().await;
            addr_tx.send(server.addr).unwrap();
            let _ = tokio::time::timeout(PATIENCE, stop_rx).await;
        });
    });
    let addr = addr_rx.recv_timeout(PATIENCE).unwrap();

    let client = BlockingClient::connect(addr).unwrap();
    let acks = client
        .put("s", vec![record("a", "one"), record("b", "two")])
        .unwrap();
    assert_eq!(
        acks,
        vec![
            PutAck {
                partition: 0,
                offset: 0
            },
            PutAck {
                partition: 0,
                offset: 1
            }
        ]
    );
    let read = client
        .read(ReadRequest {
            stream: "s".into(),
            partition: 0,
            from: ReadFrom::Earliest,
            max_records: 10,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .unwrap();
    assert_eq!(read.next_offset, 2);
    let values: Vec<Bytes> = read.records.into_iter().map(|r| r.value).collect();
    assert_eq!(values, vec![Bytes::from("one"), Bytes::from("two")]);
    assert_eq!(client.describe_stream("s").unwrap().name, "s");
    let error = client.describe_stream("missing").unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::StreamNotFound));
    client.commit_checkpoint("g", "s", 0, 2).unwrap();
    assert_eq!(client.fetch_checkpoint("g", "s", 0).unwrap(), Some(2));

    drop(client);
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}
