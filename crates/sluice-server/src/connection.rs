//! One client connection: framing, the handshake, request limits, ordered puts, and responses.
//!
//! Every connection runs on a thread of its own, under a single-threaded runtime
//! ([`serve_on_own_thread`]). Its reader decodes frames; a writer task on the same thread sends
//! the answers as they complete, matched by correlation id (so a slow read never holds up a fast
//! put). Puts are written by the reader itself, one after another before the next frame is read,
//! so a client that pipelines puts for a key keeps their order; only their acknowledgements (the
//! fsync waits) overlap, on the server's runtime. Reads and admin requests run as tasks on the
//! server's runtime too, whose blocking pool runs their broker calls. At most
//! `max_in_flight_per_connection` requests run at once; past that the reader stops reading, which
//! pushes back on the client through TCP.
//!
//! A put's write is usually a short copy into the page cache, but it can block for long: under
//! `fsync=always` on a segment roll (which fsyncs the sealed segment under the partition's lock),
//! under every policy on the kernel throttling a writer far ahead of the disk, or on a split or
//! merge holding the partition. A thread that serves other connections must not block on it:
//! tasks queued there would wait, and while the other threads sleep nobody polls for I/O, so
//! other connections would go unanswered until the write returns (the test
//! `writes_held_by_the_kernel_do_not_stop_other_connections` shows it). On a thread of the
//! connection's own, a blocked write holds up that connection only, and a put is received,
//! written and answered without a hand-off between threads, which is what the measurements in
//! docs/benchmarks.md ("A thread per connection") found to matter. The cost is a thread and
//! three file descriptors per connection (the socket, and the runtime's epoll instance and
//! eventfd); `sluice serve` raises its open-file limit accordingly.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ErrorResponse, Kind, PROTOCOL_VERSION, Request, Response};
use sluice_protocol::{ErrorCode, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::handler;
use crate::server::Shared;

/// An encoded response frame on its way to the writer, with the share of the connection's memory
/// budget its request holds until the frame is written.
pub(crate) struct Outgoing {
    frame: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    pub(crate) fn holding(mut self, permit: OwnedSemaphorePermit) -> Self {
        self._budget = Some(permit);
        self
    }
}

/// Answers a connection over the limit with `Busy` and closes it.
pub(crate) async fn refuse_busy(socket: TcpStream, limit: usize) {
    refuse(
        socket,
        format!("the server already has its maximum of {limit} connections; retry later"),
    )
    .await;
}

/// Answers a connection the server cannot serve now with `Busy` and closes it.
async fn refuse(mut socket: TcpStream, message: String) {
    let mut out = BytesMut::new();
    ErrorResponse::new(ErrorCode::Busy, message).encode(Kind::Hello as u16, 0, &mut out);
    let _ = socket.write_all(&out).await;
    let _ = socket.shutdown().await;
}

/// [`refuse`] from a plain thread: the answer is a few dozen bytes, which a fresh connection's
/// send buffer takes at once.
fn refuse_blocking(mut socket: std::net::TcpStream, message: &str) {
    use std::io::Write;
    let mut out = BytesMut::new();
    ErrorResponse::new(ErrorCode::Busy, message).encode(Kind::Hello as u16, 0, &mut out);
    let _ = socket.set_nonblocking(false);
    let _ = socket.write_all(&out);
    // Only the write side: closing both with the client's `Hello` unread could reset the
    // connection and lose the answer.
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

/// Stack of a connection's thread, as tokio gives its own threads: the connection's futures run
/// on it, and only the pages it touches cost memory.
const CONNECTION_STACK_BYTES: usize = 2 << 20;

/// Answers already queued are joined into one write up to this many bytes: a put's answer is
/// tens of bytes, a read's can be megabytes and goes out on its own.
const JOIN_ANSWER_BYTES: usize = 64 << 10;

/// Runs [`serve`] on a thread of the connection's own, under a single-threaded runtime, and
/// returns once it has ended. Dropped early (as by `Server::abort`), it tells the thread to drop
/// the connection, which happens at once unless a write holds the thread, and then when the
/// write returns: the thread outlives this future, and holds the server's shared state (so the
/// broker and its data directory) until then. `Server::abort` and `Server::shutdown` wait for
/// that, up to a minute.
pub(crate) async fn serve_on_own_thread(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    let server_rt = Handle::current();
    // The socket moves over once the thread exists, so that it can still be refused if the
    // thread cannot be started.
    let socket = match socket.into_std() {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, error = %e, "a connection closed before it could be served");
            return;
        }
    };
    let stopped = Arc::new(AtomicBool::new(false));
    let stop_seen = Arc::clone(&stopped);
    let (socket_tx, socket_rx) = std::sync::mpsc::sync_channel::<std::net::TcpStream>(1);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name("sluice-conn".into())
        .stack_size(CONNECTION_STACK_BYTES)
        .spawn(move || {
            let Ok(socket) = socket_rx.recv() else {
                return;
            };
            // Built here: a runtime must not be dropped on another runtime's thread, as it
            // would be if this thread failed to start with it inside.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(%peer, error = %e, "cannot build a runtime for a connection");
                    refuse_blocking(
                        socket,
                        &format!("the server cannot take this connection now ({e}); retry later"),
                    );
                    return;
                }
            };
            runtime.block_on(async move {
                let socket = match TcpStream::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(%peer, error = %e, "cannot register a connection");
                        return;
                    }
                };
                tokio::select! {
                    biased;
                    // The sender goes when the server drops the connection.
                    _ = stop_rx => {}
                    () = serve(shared, socket, peer, server_rt, &stop_seen) => {}
                }
            });
            // The connection's tasks end with its runtime.
            drop(runtime);
            let _ = done_tx.send(());
        });
    match started {
        Ok(_) => {
            let _ = socket_tx.send(socket);
        }
        Err(e) => {
            warn!(%peer, error = %e, "cannot start a thread for a connection");
            if let Ok(socket) = TcpStream::from_std(socket) {
                refuse(
                    socket,
                    format!(
                        "the server cannot start a thread for this connection ({e}); retry later"
                    ),
                )
                .await;
            }
            return;
        }
    }
    // Held until the thread is done; dropped with this future, it stops the connection.
    let _stop = StopOnDrop(Arc::clone(&stopped), Some(stop_tx));
    let _ = done_rx.await;
}

/// Tells a connection's thread to stop: the flag for the reader, which checks it before each
/// request (it may be busy with requests already received and never wait), and the channel for
/// a connection that waits.
struct StopOnDrop(Arc<AtomicBool>, Option<oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        drop(self.1.take());
    }
}

enum ReadOutcome {
    /// A whole frame; the body stays mutable so that a `PutBatches` request's batches can be
    /// written where they arrived.
    Frame(FrameHeader, BytesMut),
    /// The peer closed the connection between frames.
    Closed,
    /// The connection must close (broken framing, timeout, I/O error); answer first if given.
    Abort(Option<(u16, u64, ErrorResponse)>),
}

/// Reads one frame. A frame must start within `idle_timeout`, and once its first byte is in, the
/// rest must come within `frame_timeout`.
async fn read_frame(shared: &Shared, rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> ReadOutcome {
    let max = shared.config.max_frame_bytes;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        match FrameHeader::decode(buf, max) {
            Ok(Some(h)) => {
                let total = HEADER_LEN + h.body_len as usize;
                if buf.len() >= total {
                    let mut frame = buf.split_to(total);
                    let body = frame.split_off(HEADER_LEN);
                    return ReadOutcome::Frame(h, body);
                }
                // The length was checked against the limit before this allocation.
                make_room(buf, Some(total));
            }
            Ok(None) => make_room(buf, None),
            Err(WireError::FrameTooLarge { len, max }) => {
                let (kind, id) = header_ids(buf);
                let e = ErrorResponse::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame body of {len} bytes exceeds the limit of {max}"),
                );
                return ReadOutcome::Abort(Some((kind, id, e)));
            }
            Err(e) => {
                let (kind, id) = header_ids(buf);
                let e = ErrorResponse::new(ErrorCode::MalformedRequest, e.to_string());
                return ReadOutcome::Abort(Some((kind, id, e)));
            }
        }
        let now = tokio::time::Instant::now();
        let limit = if buf.is_empty() {
            now + shared.config.idle_timeout
        } else {
            *deadline.get_or_insert(now + shared.config.frame_timeout)
        };
        let read = match tokio::time::timeout_at(limit, rd.read_buf(buf)).await {
            Ok(r) => r,
            Err(_) => {
                debug!("closing a connection that stalled or went idle");
                return ReadOutcome::Abort(None);
            }
        };
        match read {
            Ok(0) if buf.is_empty() => return ReadOutcome::Closed,
            Ok(0) | Err(_) => return ReadOutcome::Abort(None),
            Ok(_) => {}
        }
    }
}

/// Bytes read while the next frame's length is not known yet.
const READ_AHEAD: usize = 8 << 10;

/// Makes room in `buf` for the frame being read: for all of it once its header is in (`total`
/// bytes, header included), else for its header and a little more.
///
/// A frame that does not fit gets a new buffer, into which what was read of it so far (at most
/// `READ_AHEAD` bytes) is copied once: of exactly its size when it is larger than `READ_AHEAD`,
/// else of `READ_AHEAD` bytes, so that the small frames behind it are read with it. So a read
/// never runs past the end of a large frame: otherwise the next frame's first bytes would share the buffer, which is held
/// for as long as the frame's batches are, and would have to be copied out again, and a put of
/// half a megabyte had up to that much copied twice.
fn make_room(buf: &mut BytesMut, total: Option<usize>) {
    let needed = match total {
        // A small frame that straddles the end of the buffer gets a buffer of the usual size,
        // so that the frames behind it are read with it.
        Some(total) if buf.capacity() < total => total.max(READ_AHEAD),
        Some(_) => return,
        None if buf.capacity() - buf.len() < HEADER_LEN => READ_AHEAD.max(buf.len() + HEADER_LEN),
        None => return,
    };
    let mut fresh = BytesMut::with_capacity(needed);
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

/// Kind and correlation id from a header that failed its checks, to address the error answer.
fn header_ids(buf: &[u8]) -> (u16, u64) {
    FrameHeader::decode(buf, u32::MAX)
        .ok()
        .flatten()
        .map_or((0, 0), |h| (h.kind, h.correlation_id))
}

pub(crate) fn encode_answer(
    kind: u16,
    id: u64,
    answer: Result<Response, ErrorResponse>,
) -> Outgoing {
    let mut out = BytesMut::new();
    match answer {
        Ok(r) => r.encode(id, &mut out),
        Err(e) => e.encode(kind, id, &mut out),
    }
    Outgoing {
        frame: out.freeze(),
        _budget: None,
    }
}

/// Bytes of the connection's budget a request reserves: its own frame, plus, for a read, the most
/// its answer can hold (key and value bytes up to the read limit, and per-record headers), and
/// for a put, what its decoded records or batches hold besides the frame's bytes.
fn reservation(shared: &Shared, body_len: usize, request: &Request) -> usize {
    let answer = match request {
        Request::Read(r) => {
            let bytes = (r.max_bytes as usize).min(shared.config.max_frame_bytes as usize / 2);
            let records = (r.max_records as usize).clamp(1, 100_000);
            bytes + records * 40
        }
        // A decoded put holds a few words per record or batch besides its frame's bytes, and up
        // to the in-flight limit of them may wait for their fsync.
        Request::Put { records, .. } => {
            4096 + records.len() * std::mem::size_of::<sluice_protocol::message::PutRecord>()
        }
        Request::PutBatches { batches, .. } => {
            return put_batches_reservation(shared, body_len, batches.len()) as usize;
        }
        _ => 4096,
    };
    (body_len + answer).min(shared.config.max_connection_buffer_bytes)
}

/// [`reservation`] of a `PutBatches` request of `batches` batches, known before it is decoded.
fn put_batches_reservation(shared: &Shared, body_len: usize, batches: usize) -> u32 {
    let held =
        body_len + 4096 + batches * std::mem::size_of::<sluice_protocol::batch::FramedBatch>();
    u32::try_from(held.min(shared.config.max_connection_buffer_bytes)).unwrap_or(u32::MAX)
}

/// A task that is aborted if the connection's future is dropped (by `Server::abort`), so no
/// part of a connection outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves one connection until the client leaves, the framing breaks, or the server shuts down.
/// It runs on the connection's own thread (see the module docs); `server_rt` is the server's
/// runtime, where its requests other than puts, and the fsync waits of puts, run.
async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    server_rt: Handle,
    stopped: &AtomicBool,
) {
    let (mut rd, mut wr) = socket.into_split();
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight_per_connection));
    // Memory a connection may hold in requests and answers not yet written: past it, the server
    // stops reading from the connection, so a client that sends much and reads nothing holds at
    // most this much.
    let memory = Arc::new(Semaphore::new(shared.config.max_connection_buffer_bytes));
    let (out_tx, mut out_rx) =
        mpsc::channel::<Outgoing>(shared.config.max_in_flight_per_connection);

    // The writer: sends answers as they come. A client that stops reading fills its socket
    // buffer, this task stalls, and the bounded channel and the in-flight limit stop the reader.
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        let mut joined = BytesMut::new();
        let mut next = None;
        loop {
            let Some(first) = next.take() else {
                match out_rx.recv().await {
                    Some(out) => {
                        next = Some(out);
                        continue;
                    }
                    None => break,
                }
            };
            // The reader queues answers while it has whole requests in hand, and this task runs
            // only once it waits for more: small answers already queued go out in one write, so
            // a client with several puts in flight gets them in one segment and one wake-up.
            let mut batch = vec![first];
            let mut size = batch[0].frame.len();
            while size < JOIN_ANSWER_BYTES {
                let Ok(out) = out_rx.try_recv() else { break };
                if size + out.frame.len() > JOIN_ANSWER_BYTES {
                    next = Some(out);
                    break;
                }
                size += out.frame.len();
                batch.push(out);
            }
            let written = if let [one] = batch.as_slice() {
                wr.write_all(&one.frame).await
            } else {
                joined.clear();
                for out in &batch {
                    joined.extend_from_slice(&out.frame);
                }
                wr.write_all(&joined).await
            };
            if written.is_err() {
                break;
            }
            // Each frame's budget is released (dropped) once the frame has been written.
            drop(batch);
        }
        let _ = wr.shutdown().await;
    }));

    let mut buf = BytesMut::with_capacity(READ_AHEAD);
    let mut shutdown = shared.shutdown_rx();
    let mut greeted = false;
    let mut requests = JoinSet::new();
    loop {
        // Dropped by the server (`Server::abort`): no further request is taken, so that what
        // the client sent after the one in hand is not written, as after a crash.
        if stopped.load(Ordering::Acquire) || shared.aborted.load(Ordering::Acquire) {
            return;
        }
        let outcome = tokio::select! {
            o = read_frame(&shared, &mut rd, &mut buf) => o,
            // Stop taking requests; the ones in flight are still answered below.
            _ = shutdown.wait_for(|s| *s) => break,
        };
        // Checked again once a frame is in hand: the reader may have been waiting for it when
        // the abort came.
        if stopped.load(Ordering::Acquire) || shared.aborted.load(Ordering::Acquire) {
            return;
        }
        let (header, body) = match outcome {
            ReadOutcome::Frame(h, b) => (h, b),
            ReadOutcome::Closed => break,
            ReadOutcome::Abort(answer) => {
                if let Some((kind, id, e)) = answer {
                    let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
                }
                break;
            }
        };
        let (kind, id) = (header.kind, header.correlation_id);
        if header.is_response() {
            let e = ErrorResponse::new(
                ErrorCode::MalformedRequest,
                "a client sends requests, not responses",
            );
            let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
            break;
        }
        // A put announcing more records than any put may hold is refused before its records are
        // decoded: decoding costs memory per record, far more than the record's wire bytes.
        // The same for `PutBatches`: each batch holds at least one record, and decoding costs
        // memory per batch.
        if (kind == Kind::Put as u16 || kind == Kind::PutBatches as u16) && greeted {
            let max = shared.broker.options().put_records_max;
            let (count, what) = if kind == Kind::Put as u16 {
                (sluice_protocol::message::put_record_count(&body), "records")
            } else {
                (
                    sluice_protocol::message::put_batches_count(&body),
                    "batches",
                )
            };
            if let Some(count) = count
                && count as usize > max
            {
                let e = ErrorResponse::new(
                    ErrorCode::TooManyRecords,
                    format!("{count} {what} in one put exceeds the limit of {max} records"),
                );
                let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
                continue;
            }
        }
        let request = match Request::decode_mut(kind, body) {
            Ok(r) => r,
            Err(e) => {
                // The frame itself was whole, so the connection can go on.
                let code = match e {
                    WireError::UnknownKind(_) => ErrorCode::UnknownKind,
                    _ => ErrorCode::MalformedRequest,
                };
                let _ = out_tx
                    .send(encode_answer(
                        kind,
                        id,
                        Err(ErrorResponse::new(code, e.to_string())),
                    ))
                    .await;
                continue;
            }
        };
        if !greeted {
            let Request::Hello { version } = request else {
                let e = ErrorResponse::new(
                    ErrorCode::HandshakeRequired,
                    "the first request must be Hello",
                );
                let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
                break;
            };
            if version != PROTOCOL_VERSION {
                let e = ErrorResponse::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                );
                let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
                break;
            }
            greeted = true;
            let answer = Ok(Response::Hello {
                version: PROTOCOL_VERSION,
            });
            let _ = out_tx.send(encode_answer(kind, id, answer)).await;
            continue;
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let reserve = reservation(&shared, header.body_len as usize, &request);
        let Ok(budget) = Arc::clone(&memory)
            .acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
            .await
        else {
            break;
        };
        match request {
            Request::Hello { .. } => {
                let answer = Ok(Response::Hello {
                    version: PROTOCOL_VERSION,
                });
                let _ = out_tx.send(encode_answer(kind, id, answer)).await;
            }
            Request::PutBatches { stream, batches } => {
                // Written here, on the connection's own thread, before the next frame is read:
                // that keeps the connection's puts in order, and a write that blocks holds up
                // this connection only. The producer's next puts, when they have already
                // arrived, are written with it (`gather_puts`).
                let started = Instant::now();
                let mut group = vec![Gathered::Put {
                    kind,
                    id,
                    stream,
                    batches,
                    held: (permit, budget),
                }];
                gather_puts(
                    &shared,
                    &rd,
                    &mut buf,
                    (&in_flight, &memory),
                    stopped,
                    &mut group,
                    HEADER_LEN + header.body_len as usize,
                );
                // The abort may have come while the group was gathered: then only the request
                // in hand is written, as without gathering (see `serve`).
                if stopped.load(Ordering::Acquire) || shared.aborted.load(Ordering::Acquire) {
                    group.truncate(1);
                }
                let mut puts = Vec::new();
                let mut answers = Vec::with_capacity(group.len());
                let mut refused = Vec::new();
                for g in group {
                    match g {
                        Gathered::Put {
                            kind,
                            id,
                            stream,
                            batches,
                            held,
                        } => {
                            puts.push((stream, batches));
                            answers.push((kind, id, held));
                        }
                        Gathered::Refused(kind, id, e) => refused.push((kind, id, e)),
                    }
                }
                let n = puts.len();
                // A panic in the broker is a bug; it fails these puts with `Internal` and the
                // connection goes on, as it would for any other request.
                let mut written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    handler::submit_batches_many(&shared, puts)
                }))
                .unwrap_or_else(|_| (0..n).map(|_| Err(internal())).collect())
                .into_iter();
                for (kind, id, held) in answers {
                    // One result per request; should one ever be missing, the request still
                    // gets an answer.
                    let written = written.next().unwrap_or_else(|| Err(internal()));
                    settle_put(
                        &shared,
                        (&mut requests, &server_rt, &out_tx),
                        (kind, id),
                        held,
                        written,
                        started,
                    )
                    .await;
                }
                for (kind, id, e) in refused {
                    let _ = out_tx.send(encode_answer(kind, id, Err(e))).await;
                }
            }
            Request::Put { stream, records } => {
                // Written on the connection's own thread, as above.
                let started = Instant::now();
                let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    handler::submit_put(&shared, stream, records)
                }))
                .unwrap_or_else(|_| Err(internal()));
                settle_put(
                    &shared,
                    (&mut requests, &server_rt, &out_tx),
                    (kind, id),
                    (permit, budget),
                    written,
                    started,
                )
                .await;
            }
            other => {
                let work = handler::handle(Arc::clone(&shared), other);
                answer_on_server(
                    &mut requests,
                    &server_rt,
                    &out_tx,
                    (kind, id),
                    (permit, budget),
                    work,
                );
            }
        }
    }
    // Finish what was taken: every request read is answered before the connection closes.
    while requests.join_next().await.is_some() {}
    drop(out_tx);
    let _ = (&mut writer.0).await;
    debug!(%peer, "connection closed");
}

/// The answer to a request that panicked inside the server.
fn internal() -> ErrorResponse {
    ErrorResponse::new(ErrorCode::Internal, "the request failed inside the server")
}

/// Runs a request's `work` as a task on the server's runtime, whose blocking pool runs the
/// broker calls (the connection's own runtime has no pool to spare), and queues its answer. The
/// answer holds the request's share of the memory budget until it is written; the in-flight
/// permit goes once it is queued. A panic answers `Internal` rather than leave the request
/// unanswered.
/// Answers a written put: at once if it is acknowledged already, or from a task on the server's
/// runtime once its fsync waits return, overlapping with the puts that follow (group commit).
async fn settle_put(
    shared: &Arc<Shared>,
    (requests, server_rt, out_tx): (&mut JoinSet<()>, &Handle, &mpsc::Sender<Outgoing>),
    (kind, id): (u16, u64),
    (permit, budget): (OwnedSemaphorePermit, OwnedSemaphorePermit),
    written: Result<handler::WrittenPut, ErrorResponse>,
    started: Instant,
) {
    match written {
        Ok(put) if !put.is_acknowledged() => {
            let shared = Arc::clone(shared);
            let work = async move { handler::finish_put(&shared, put, started).await };
            answer_on_server(
                requests,
                server_rt,
                out_tx,
                (kind, id),
                (permit, budget),
                work,
            );
        }
        written => {
            let answer = written.and_then(|put| {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    handler::finish_acknowledged(shared, put, started)
                }))
                .unwrap_or_else(|_| Err(internal()))
            });
            let _ = out_tx
                .send(encode_answer(kind, id, answer).holding(budget))
                .await;
            drop(permit);
        }
    }
}

/// A request taken off the socket by [`gather_puts`]: a put to write with the one in hand, with
/// its in-flight permit and memory reservation, or one refused, to answer.
enum Gathered {
    Put {
        kind: u16,
        id: u64,
        stream: String,
        batches: Vec<sluice_protocol::batch::FramedBatch>,
        held: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    Refused(u16, u64, ErrorResponse),
}

/// Most `PutBatches` requests written together, the one in hand included.
const GATHER_PUTS_MAX: usize = 8;

/// Most frame bytes written together, the frame in hand included (a frame that would pass it
/// is left for the next round).
const GATHER_BYTES_MAX: usize = 8 << 20;

/// Takes the `PutBatches` requests that follow the one in hand off the connection, as long as
/// they have already arrived whole (what the socket holds is read, nothing is waited for), so
/// that their batches are written together with it: one write per partition for all of them.
/// A producer that keeps several puts in flight usually has the next ones here already.
///
/// It stops at the first frame that is not a `PutBatches` request, or would be refused before
/// decoding, or when the connection has no in-flight permit or memory to spare for it: the
/// connection's loop then handles that frame as it handles any. A body that does not decode is
/// answered with its error and ends the gathering; what was gathered is still written.
fn gather_puts(
    shared: &Shared,
    rd: &OwnedReadHalf,
    buf: &mut BytesMut,
    (in_flight, budget): (&Arc<Semaphore>, &Arc<Semaphore>),
    stopped: &AtomicBool,
    group: &mut Vec<Gathered>,
    in_hand_bytes: usize,
) {
    let max = shared.config.max_frame_bytes;
    let put_max = shared.broker.options().put_records_max;
    let mut bytes = in_hand_bytes;
    while group.len() < GATHER_PUTS_MAX {
        // Nothing the client sent after an abort is written (see `serve`).
        if stopped.load(Ordering::Acquire) || shared.aborted.load(Ordering::Acquire) {
            return;
        }
        let header = loop {
            match FrameHeader::decode(buf, max) {
                Ok(Some(h)) => {
                    let total = HEADER_LEN + h.body_len as usize;
                    if buf.len() >= total {
                        break h;
                    }
                    make_room(buf, Some(total));
                }
                Ok(None) => make_room(buf, None),
                Err(_) => return,
            }
            match rd.try_read_buf(buf) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        if header.is_response() || header.kind != Kind::PutBatches as u16 {
            return;
        }
        let total = HEADER_LEN + header.body_len as usize;
        if bytes + total > GATHER_BYTES_MAX {
            return;
        }
        let Some(count) = buf
            .get(HEADER_LEN..total)
            .and_then(sluice_protocol::message::put_batches_count)
        else {
            return;
        };
        if count as usize > put_max {
            return;
        }
        let reserve = put_batches_reservation(shared, header.body_len as usize, count as usize);
        let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
            return;
        };
        let Ok(held) = Arc::clone(budget).try_acquire_many_owned(reserve) else {
            return;
        };
        let mut frame = buf.split_to(total);
        let body = frame.split_off(HEADER_LEN);
        bytes += total;
        let (kind, id) = (header.kind, header.correlation_id);
        match Request::decode_mut(kind, body) {
            Ok(Request::PutBatches { stream, batches }) => group.push(Gathered::Put {
                kind,
                id,
                stream,
                batches,
                held: (permit, held),
            }),
            // A `PutBatches` frame decodes to nothing else; should it, it is answered.
            Ok(_) => {
                group.push(Gathered::Refused(kind, id, internal()));
                return;
            }
            Err(e) => {
                let e = ErrorResponse::new(ErrorCode::MalformedRequest, e.to_string());
                group.push(Gathered::Refused(kind, id, e));
                return;
            }
        }
    }
}

fn answer_on_server(
    requests: &mut JoinSet<()>,
    server_rt: &Handle,
    out_tx: &mpsc::Sender<Outgoing>,
    (kind, id): (u16, u64),
    (permit, budget): (OwnedSemaphorePermit, OwnedSemaphorePermit),
    work: impl Future<Output = Result<Response, ErrorResponse>> + Send + 'static,
) {
    let out_tx = out_tx.clone();
    requests.spawn_on(
        async move {
            let answer = CatchUnwind(Box::pin(work))
                .await
                .unwrap_or_else(|_| Err(internal()));
            let _ = out_tx
                .send(encode_answer(kind, id, answer).holding(budget))
                .await;
            drop(permit);
        },
        server_rt,
    );
    // Reap the finished ones, so the set holds only what is still running.
    while requests.try_join_next().is_some() {}
}

/// A future whose panics come out as `Err`, as `catch_unwind` makes of a closure's: each poll of
/// the inner future runs inside `catch_unwind`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime for the test")
            .block_on(f)
    }

    #[test]
    fn catch_unwind_passes_values_through_and_turns_panics_into_errors() {
        assert_eq!(
            run(CatchUnwind(Box::pin(async { 7 }))).ok(),
            Some(7),
            "a future that completes"
        );
        let yields_then_panics = async {
            tokio::task::yield_now().await;
            panic!("inside the future");
        };
        let caught: std::thread::Result<()> = run(CatchUnwind(Box::pin(yields_then_panics)));
        let panic = caught.expect_err("the panic comes out as an error");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"inside the future"));
    }

    /// Reads frames from `stream` as `read_frame` does, each read taking at most `chunk` bytes
    /// and never more than the buffer has room for (as a socket read into it does). Returns
    /// the frames and how many bytes were copied from one buffer to another on the way.
    fn frames_read_in_chunks(stream: &[u8], chunk: usize) -> (Vec<(FrameHeader, BytesMut)>, usize) {
        let mut buf = BytesMut::with_capacity(READ_AHEAD);
        let mut at = 0;
        let mut frames = Vec::new();
        let mut copied = 0;
        loop {
            let (start, len) = (buf.as_ptr(), buf.len());
            match FrameHeader::decode(&buf, u32::MAX).expect("a valid header") {
                Some(h) => {
                    let total = HEADER_LEN + h.body_len as usize;
                    if buf.len() >= total {
                        let mut frame = buf.split_to(total);
                        frames.push((h, frame.split_off(HEADER_LEN)));
                        continue;
                    }
                    make_room(&mut buf, Some(total));
                    if total > READ_AHEAD {
                        assert_eq!(buf.capacity(), total, "a large frame's buffer is its own");
                    }
                }
                None => make_room(&mut buf, None),
            }
            if buf.as_ptr() != start {
                copied += len;
            }
            if at == stream.len() {
                return (frames, copied);
            }
            let room = buf.capacity() - buf.len();
            assert!(room > 0, "a read always has room");
            let n = room.min(chunk).min(stream.len() - at);
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
        }
    }

    #[test]
    fn frames_come_whole_with_no_more_than_the_read_ahead_copied() {
        let sizes = [
            10usize,
            600 << 10,
            3,
            0,
            100 << 10,
            5,
            7,
            READ_AHEAD * 3 + 1,
        ];
        let mut stream = BytesMut::new();
        for (i, &len) in sizes.iter().enumerate() {
            let header = FrameHeader {
                body_len: len as u32,
                kind: Kind::PutBatches as u16,
                flags: 0,
                correlation_id: i as u64,
            };
            stream.extend_from_slice(&header.encode());
            stream.extend((0..len).map(|b| (b % 251) as u8 ^ i as u8));
        }
        for chunk in [1, 7, 4096, 64 << 10, usize::MAX] {
            let (frames, copied) = frames_read_in_chunks(&stream, chunk);
            assert_eq!(frames.len(), sizes.len(), "chunks of {chunk}");
            // What was read of a frame before its length was known is copied once at most, and
            // that is never more than the read-ahead.
            let most: usize = sizes
                .iter()
                .map(|len| (HEADER_LEN + len).min(READ_AHEAD))
                .sum();
            assert!(copied <= most, "{copied} bytes copied, chunks of {chunk}");
            for (i, ((h, body), &len)) in frames.iter().zip(&sizes).enumerate() {
                assert_eq!(h.correlation_id, i as u64);
                assert_eq!(body.len(), len);
                assert!(
                    body.iter()
                        .enumerate()
                        .all(|(b, &v)| v == (b % 251) as u8 ^ i as u8),
                    "frame {i} whole, chunks of {chunk}"
                );
            }
        }
    }
}
