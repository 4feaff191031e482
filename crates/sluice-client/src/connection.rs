//! One TCP connection, shared by every request of a client.
//!
//! Requests are pipelined. A caller registers a oneshot under a fresh correlation id, then
//! queues its encoded frame for the writer task; the reader task hands each response to the
//! oneshot registered under its id, so responses may come back in any order. When either task
//! stops (end of stream, an I/O error, a frame that breaks the framing) the connection closes
//! and every request still waiting fails with [`ClientError::ConnectionClosed`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::ErrorResponse;
use sluice_protocol::{PROTOCOL_VERSION, Request, Response, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};

use crate::config::ClientConfig;
use crate::error::ClientError;

/// Frames that may wait for the writer task. A full queue makes callers wait, which bounds the
/// memory that requests can pin before they reach the socket.
const QUEUE_FRAMES: usize = 1024;
/// Frames written before one flush at most, so a busy queue cannot postpone a flush forever.
const COALESCE_FRAMES: usize = 64;
/// Bytes the writer buffers before a system call.
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Spare room the reader keeps in its buffer before each read.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A response frame (header and body) or the reason none will come.
type Reply = Result<(FrameHeader, Bytes), ClientError>;

/// An open connection that has completed the `Hello` handshake.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Outgoing>,
    peer: SocketAddr,
}

/// A frame queued for the writer: its header (or whole frame), and a body encoded earlier and
/// shared, which is written as it is instead of being copied into a new frame.
struct Outgoing {
    head: Bytes,
    body: Bytes,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// State shared by the connection handle and its two tasks.
struct Shared {
    pending: Mutex<Pending>,
    /// Turns `true` once, when the connection closes; both tasks watch it so that neither
    /// outlives the other.
    closed: watch::Sender<bool>,
}

struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The lock is never held across code that can panic, so a poisoned lock still holds
        // consistent data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection closed and fails every request still waiting. Idempotent.
    fn close(&self) {
        let waiting = {
            let mut pending = self.pending();
            pending.closed = true;
            std::mem::take(&mut pending.waiting)
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(ClientError::ConnectionClosed));
        }
        self.closed.send_replace(true);
    }

    /// Hands a reply to the request waiting under `id`. A reply nobody waits for (its request
    /// timed out or was dropped) is discarded.
    fn complete(&self, id: u64, reply: Reply) {
        let waiter = self.pending().waiting.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }
}

impl Connection {
    /// Connects to the first address that answers and performs the `Hello` handshake, all
    /// within `config.connect_timeout`.
    pub(crate) async fn open(
        addrs: &[SocketAddr],
        config: &ClientConfig,
        hello_id: u64,
    ) -> Result<Arc<Self>, ClientError> {
        let deadline = deadline_after(config.connect_timeout);
        let stream = timeout_at(deadline, TcpStream::connect(addrs))
            .await
            .map_err(|_| ClientError::Timeout)??;
        // Requests are small and latency-bound; Nagle's algorithm would hold them back.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (read_half, write_half) = stream.into_split();

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                closed: false,
            }),
            closed: watch::channel(false).0,
        });
        let (frames, queue) = mpsc::channel(QUEUE_FRAMES);
        tokio::spawn(write_loop(
            write_half,
            queue,
            Arc::clone(&shared),
            shared.closed.subscribe(),
        ));
        tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            config.max_frame_body_bytes,
            shared.closed.subscribe(),
        ));
        let conn = Arc::new(Self {
            shared,
            frames,
            peer,
        });

        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
        };
        match conn
            .submit(hello_id, &hello, deadline)
            .await?
            .wait()
            .await?
        {
            Response::Hello { version } if version == PROTOCOL_VERSION => Ok(conn),
            Response::Hello { version } => Err(ClientError::UnsupportedVersion(version)),
            _ => Err(WireError::Invalid("hello response").into()),
        }
    }

    /// Whether the connection has closed; a closed connection never opens again.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.pending().closed
    }

    /// Queues `request` under `id` and returns the handle that waits for its response. Returns
    /// once the frame is queued, so requests submitted one after another go out in that order.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        id: u64,
        request: &Request,
        deadline: Instant,
    ) -> Result<InFlight, ClientError> {
        let mut frame = BytesMut::new();
        request.encode(id, &mut frame);
        let outgoing = Outgoing {
            head: frame.freeze(),
            body: Bytes::new(),
        };
        self.queue(id, request.kind() as u16, outgoing, deadline)
            .await
    }

    /// Like [`Connection::submit`], for a request body encoded beforehand: only the 16-byte
    /// header is new, the body goes out as it is.
    pub(crate) async fn submit_encoded(
        self: &Arc<Self>,
        id: u64,
        kind: u16,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<InFlight, ClientError> {
        let header = FrameHeader {
            body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            kind,
            flags: 0,
            correlation_id: id,
        };
        let outgoing = Outgoing {
            head: Bytes::copy_from_slice(&header.encode()),
            body: body.clone(),
        };
        self.queue(id, kind, outgoing, deadline).await
    }

    async fn queue(
        self: &Arc<Self>,
        id: u64,
        kind: u16,
        outgoing: Outgoing,
        deadline: Instant,
    ) -> Result<InFlight, ClientError> {
        let (reply, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(ClientError::ConnectionClosed);
            }
            pending.waiting.insert(id, reply);
        }
        // From here on, dropping `in_flight` unregisters the id.
        let in_flight = InFlight {
            conn: Arc::clone(self),
            id,
            kind,
            deadline,
            rx,
        };
        match timeout_at(deadline, self.frames.send(outgoing)).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::ConnectionClosed),
            Ok(Ok(())) => Ok(in_flight),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The tasks hold only the shared state, so the last handle going away must stop them.
        self.shared.close();
    }
}

/// A request that has been queued and waits for its response.
pub(crate) struct InFlight {
    /// Keeps the connection open while the response is awaited.
    conn: Arc<Connection>,
    id: u64,
    kind: u16,
    deadline: Instant,
    rx: oneshot::Receiver<Reply>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// Waits for the response until the request's deadline. An error frame becomes
    /// [`ClientError::Server`].
    pub(crate) async fn wait(mut self) -> Result<Response, ClientError> {
        let (header, body) = match timeout_at(self.deadline, &mut self.rx).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(_)) => return Err(ClientError::ConnectionClosed),
            Ok(Ok(reply)) => reply?,
        };
        if header.kind != self.kind {
            return Err(WireError::Invalid("response kind").into());
        }
        if header.is_error() {
            let error = ErrorResponse::decode(body)?;
            return Err(ClientError::Server {
                code: error.code,
                kind: error.error_code(),
                message: error.message,
            });
        }
        Ok(Response::decode(header.kind, body)?)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // A request that timed out or was cancelled must not leave its oneshot behind.
        self.conn.shared.pending().waiting.remove(&self.id);
    }
}

/// A deadline `after` from now; a duration too large for the clock means no deadline in
/// practice.
pub(crate) fn deadline_after(after: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn write_loop(
    write_half: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    mut closed: watch::Receiver<bool>,
) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    loop {
        // Racing the close signal also frees a writer stuck on a peer that stopped reading.
        let written = tokio::select! {
            written = write_queued(&mut out, &mut queue) => written,
            _ = closed.wait_for(|closed| *closed) => Ok(false),
        };
        if !matches!(written, Ok(true)) {
            break;
        }
    }
    shared.close();
}

/// Writes the next queued frame and those already queued behind it, then flushes, so
/// pipelined requests share system calls. `Ok(false)` once the queue is closed.
async fn write_queued(
    out: &mut BufWriter<OwnedWriteHalf>,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> std::io::Result<bool> {
    let Some(frame) = queue.recv().await else {
        return Ok(false);
    };
    // A body larger than the buffer bypasses it (`BufWriter` writes it straight to the socket
    // after flushing what it holds), so a shared body is never copied here.
    out.write_all(&frame.head).await?;
    out.write_all(&frame.body).await?;
    for _ in 0..COALESCE_FRAMES {
        match queue.try_recv() {
            Ok(frame) => {
                out.write_all(&frame.head).await?;
                out.write_all(&frame.body).await?;
            }
            Err(_) => break,
        }
    }
    out.flush().await?;
    Ok(true)
}

async fn read_loop(
    mut read_half: OwnedReadHalf,
    shared: Arc<Shared>,
    max_body: u32,
    mut closed: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'connection: loop {
        // Hand out every whole frame already buffered.
        loop {
            match FrameHeader::decode(&buf, max_body) {
                Ok(None) => break,
                Ok(Some(header)) => {
                    let frame_len = HEADER_LEN + header.body_len as usize;
                    if buf.len() < frame_len {
                        // The header passed the size limit, so this reservation is bounded.
                        buf.reserve(frame_len - buf.len());
                        break;
                    }
                    if !header.is_response() {
                        // A server never sends requests; the stream cannot be trusted.
                        break 'connection;
                    }
                    let mut frame = buf.split_to(frame_len);
                    let body = frame.split_off(HEADER_LEN).freeze();
                    shared.complete(header.correlation_id, Ok((header, body)));
                }
                Err(error) => {
                    // The refused header still names its request, which learns the reason; the
                    // body cannot be skipped without reading it, so the connection goes.
                    if let Some(id) = correlation_id(&buf) {
                        shared.complete(id, Err(ClientError::Wire(error)));
                    }
                    break 'connection;
                }
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let read = tokio::select! {
            read = read_half.read_buf(&mut buf) => read,
            _ = closed.wait_for(|closed| *closed) => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    shared.close();
}

/// The correlation id of the header at the start of `buf`.
fn correlation_id(buf: &[u8]) -> Option<u64> {
    let id = buf.get(8..HEADER_LEN)?;
    Some(u64::from_le_bytes(id.try_into().ok()?))
}
