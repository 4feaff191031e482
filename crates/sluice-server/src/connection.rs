//! One client connection: framing, the handshake, request limits, ordered puts, and responses.
//!
//! The reader decodes frames and hands each request on; a writer task sends the answers as they
//! complete, matched by correlation id (so a slow read never holds up a fast put). Reads and admin
//! requests run as tasks of their own. Puts go to the connection's put lane (`put_lane.rs`), a
//! thread that writes them one after another in arrival order, so a client that pipelines puts
//! for a key keeps their order, and only their acknowledgements (the fsync waits) overlap. At most
//! `max_in_flight_per_connection` requests run at once; past that the reader stops reading, which
//! pushes back on the client through TCP.
//!
//! A put's write is usually a short copy into the page cache, but it can block for long: under
//! `fsync=always` on a segment roll (which fsyncs the sealed segment under the partition's lock),
//! under every policy on the kernel throttling a writer far ahead of the disk, or on a split or
//! merge holding the partition. It must not block a runtime thread: tasks queued there would wait,
//! and while the other threads sleep nobody polls for I/O, so other connections would go
//! unanswered until the write returns (the test
//! `writes_held_by_the_kernel_do_not_stop_other_connections` shows it). Hence a thread of the
//! connection's own. Unlike the blocking pool, which the reader had to wait for to keep the
//! order, the lane keeps the order itself, so the reader goes on reading, and a held put holds up
//! only the puts behind it. It costs about as much CPU per put as the pool did: the saving that
//! writing on the reader's own thread measured came from doing the whole put on one thread
//! (docs/benchmarks.md, "The put lane").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ErrorResponse, Kind, PROTOCOL_VERSION, Request, Response};
use sluice_protocol::{ErrorCode, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::debug;

use crate::handler;
use crate::put_lane::{PutJob, PutLane};
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
pub(crate) async fn refuse_busy(mut socket: TcpStream, limit: usize) {
    let mut out = BytesMut::new();
    ErrorResponse::new(
        ErrorCode::Busy,
        format!("the server already has its maximum of {limit} connections; retry later"),
    )
    .encode(Kind::Hello as u16, 0, &mut out);
    let _ = socket.write_all(&out).await;
    let _ = socket.shutdown().await;
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
                // The length was checked against the limit before this reservation.
                buf.reserve(total - buf.len());
            }
            Ok(None) => {}
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
        // to the in-flight limit of them may wait in the put lane.
        Request::Put { records, .. } => {
            4096 + records.len() * std::mem::size_of::<sluice_protocol::message::PutRecord>()
        }
        Request::PutBatches { batches, .. } => {
            4096 + batches.len() * std::mem::size_of::<sluice_protocol::batch::FramedBatch>()
        }
        _ => 4096,
    };
    (body_len + answer).min(shared.config.max_connection_buffer_bytes)
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
pub(crate) async fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    let (mut rd, mut wr) = socket.into_split();
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight_per_connection));
    // Memory a connection may hold in requests and answers not yet written: past it, the server
    // stops reading from the connection, so a client that sends much and reads nothing holds at
    // most this much.
    let budget = Arc::new(Semaphore::new(shared.config.max_connection_buffer_bytes));
    let (out_tx, mut out_rx) =
        mpsc::channel::<Outgoing>(shared.config.max_in_flight_per_connection);

    // The writer: sends answers as they come. A client that stops reading fills its socket
    // buffer, this task stalls, and the bounded channel and the in-flight limit stop the reader.
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        // Each frame's budget is released (dropped) once the frame has been written.
        while let Some(out) = out_rx.recv().await {
            if wr.write_all(&out.frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    }));

    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut shutdown = shared.shutdown_rx();
    let mut greeted = false;
    let mut requests = tokio::task::JoinSet::new();
    // Started with the connection's first put, so connections that only read cost no thread.
    // Declared after the writer, it is dropped before the writer's task is aborted when this
    // future is dropped (`Server::abort`): the lane is told to drop its queued puts before the
    // answer channel closes.
    let mut lane: Option<PutLane> = None;
    loop {
        let outcome = tokio::select! {
            o = read_frame(&shared, &mut rd, &mut buf) => o,
            // Stop taking requests; the ones in flight are still answered below.
            _ = shutdown.wait_for(|s| *s) => break,
        };
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
        let Ok(budget) = Arc::clone(&budget)
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
            request @ (Request::Put { .. } | Request::PutBatches { .. }) => {
                // Handed to the lane in arrival order; the reader goes on at once.
                let job = PutJob {
                    kind,
                    id,
                    request,
                    started: Instant::now(),
                    permit,
                    budget,
                };
                if lane.is_none() {
                    match PutLane::start(Arc::clone(&shared), out_tx.clone()) {
                        Ok(started) => lane = Some(started),
                        Err(e) => {
                            // Closing is the only answer that keeps the order of the puts the
                            // client has pipelined behind this one: a later one must not land
                            // before this one's retry.
                            let e = ErrorResponse::new(
                                ErrorCode::Busy,
                                format!(
                                    "cannot start a thread for this connection's puts ({e}); retry later"
                                ),
                            );
                            let _ = out_tx
                                .send(encode_answer(kind, id, Err(e)).holding(job.budget))
                                .await;
                            break;
                        }
                    }
                }
                if let Some(Err(job)) = lane.as_ref().map(|lane| lane.submit(job)) {
                    let e = ErrorResponse::new(
                        ErrorCode::Internal,
                        "this connection's put lane has stopped",
                    );
                    let _ = out_tx
                        .send(encode_answer(kind, id, Err(e)).holding(job.budget))
                        .await;
                    break;
                }
            }
            other => {
                let shared = Arc::clone(&shared);
                let out_tx = out_tx.clone();
                requests.spawn(async move {
                    let answer = handler::handle(shared, other).await;
                    let _ = out_tx
                        .send(encode_answer(kind, id, answer).holding(budget))
                        .await;
                    drop(permit);
                });
                while requests.try_join_next().is_some() {}
            }
        }
    }
    // Finish what was taken: every request read is answered before the connection closes.
    while requests.join_next().await.is_some() {}
    // Puts handed to the lane, and their fsync waits, each hold an in-flight permit until their
    // answer is queued: once every permit is back, every put is answered.
    let all = u32::try_from(shared.config.max_in_flight_per_connection).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(all).await;
    if let Some(lane) = lane {
        lane.finish();
    }
    drop(out_tx);
    let _ = (&mut writer.0).await;
    debug!(%peer, "connection closed");
}
