//! The loopback and memory ceiling: a server that speaks just enough of the protocol to take
//! puts, appends each put's body to one file (no fsync, so into the page cache) and
//! acknowledges it. Every log server has to do at least that much: take the bytes off the socket
//! and hand them to the kernel's page cache. The same load against it measures what the client,
//! the framing, the loopback network and that one write cost by themselves, so `sluice bench
//! produce --baseline` can say how close Sluice comes to the ceiling (with `--fsync never`, where
//! the disk is out of the way, that ratio is the whole story).
//!
//! The sink reserves its file's blocks ahead of its writes as the server's partitions do
//! (`LogOptions::preallocate_bytes`), since that makes a write into the page cache cheaper: a
//! ceiling that skipped it would not be one.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use sluice_protocol::batch::BatchAck;
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{ErrorResponse, Kind, PutAck, put_record_count};
use sluice_protocol::{ErrorCode, PROTOCOL_VERSION, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest frame body the sink takes: the server's default limit.
const MAX_BODY: u32 = 8 << 20;

/// A running sink; it stops when dropped.
pub struct Sink {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// The files written, one per connection (as the server writes one file per partition).
    paths: Arc<Mutex<Vec<PathBuf>>>,
    /// The connections: each one's thread, which holds its file open, and a handle on its
    /// socket to cut it.
    conns: Arc<Mutex<Vec<Connection>>>,
}

/// A connection's thread, and a handle on its socket to cut it.
type Connection = (std::thread::JoinHandle<()>, std::net::TcpStream);

impl Sink {
    /// Listens on a free loopback port; each connection appends to a new file in `dir`, on a
    /// thread of its own under a single-threaded runtime, as the server serves its connections.
    pub async fn start(dir: &Path) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let paths = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let dir = dir.to_path_buf();
        let made = Arc::clone(&paths);
        let spawned = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((conn, _)) = listener.accept().await {
                n += 1;
                let path = dir.join(format!("ceiling-sink-{n}"));
                let Ok(file) = File::create(&path) else {
                    continue;
                };
                if let Ok(mut made) = made.lock() {
                    made.push(path);
                }
                let Ok(conn) = conn.into_std() else {
                    continue;
                };
                let Ok(cut) = conn.try_clone() else {
                    continue;
                };
                // A broken connection only ends its own thread; the load generator reports the
                // failed put.
                let thread = std::thread::Builder::new()
                    .name("sluice-sink-conn".into())
                    .spawn(move || {
                        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        else {
                            return;
                        };
                        runtime.block_on(async move {
                            if let Ok(conn) = TcpStream::from_std(conn) {
                                let _ = serve(conn, file).await;
                            }
                        });
                    });
                if let (Ok(thread), Ok(mut spawned)) = (thread, spawned.lock()) {
                    spawned.push((thread, cut));
                }
            }
        });
        Ok(Self {
            addr,
            task,
            paths,
            conns,
        })
    }

    /// Stops the sink and deletes its files, and returns once they are gone: the kernel drops a
    /// deleted file's pages when its last descriptor closes, which for a gigabyte of page cache
    /// takes a while, and it must not overlap the run measured next. Connections still open
    /// after the load's clients left are cut after a second.
    pub async fn stop(self) {
        self.task.abort();
        let conns: Vec<_> = self
            .conns
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let paths: Vec<PathBuf> = self
            .paths
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        // On a blocking thread: joining the connections' threads, then deleting (with the
        // descriptors closed, the unlink frees the pages).
        let _ = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            for (thread, cut) in conns {
                while !thread.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let _ = cut.shutdown(std::net::Shutdown::Both);
                let _ = thread.join();
            }
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(conns) = self.conns.lock() {
            for (_, cut) in conns.iter() {
                let _ = cut.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Ok(paths) = self.paths.lock() {
            for p in paths.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Answers `Hello`, `Put` (with one made-up acknowledgement per record, which is what the
/// client checks) and `PutBatches` (one per batch) and refuses the rest, in order, like the
/// server does per connection. The write blocks the connection's thread, as a short pwrite into
/// the page cache does, and as the server's writes block its connections' threads.
async fn serve(conn: TcpStream, file: File) -> io::Result<()> {
    let mut file = SinkFile {
        file,
        len: 0,
        reserved_end: 0,
    };
    conn.set_nodelay(true)?;
    let (mut rd, mut wr) = conn.into_split();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut out = BytesMut::new();
    loop {
        let header = loop {
            match FrameHeader::decode(&buf, MAX_BODY) {
                Ok(Some(h)) if buf.len() >= HEADER_LEN + h.body_len as usize => break h,
                Ok(Some(h)) => buf.reserve(HEADER_LEN + h.body_len as usize - buf.len()),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let mut frame = buf.split_to(HEADER_LEN + header.body_len as usize);
        let body = frame.get(HEADER_LEN..).unwrap_or_default();
        out.clear();
        match Kind::from_u16(header.kind) {
            Ok(Kind::Hello) => Response::Hello {
                version: PROTOCOL_VERSION,
            }
            .encode(header.correlation_id, &mut out),
            Ok(Kind::Put) => {
                // One write per put, in place, as the server writes one batch per partition.
                file.append(body)?;
                let count = put_record_count(body).unwrap_or(0);
                let acks = (0..u64::from(count))
                    .map(|offset| PutAck {
                        partition: 0,
                        offset,
                    })
                    .collect();
                Response::Put(acks).encode(header.correlation_id, &mut out);
            }
            Ok(Kind::PutBatches) => {
                // The whole request in one write, as the server writes each batch where it
                // arrived; the batches are then found in place (no copy) to acknowledge them.
                file.append(body)?;
                let acks = match Request::decode_mut(header.kind, frame.split_off(HEADER_LEN)) {
                    Ok(Request::PutBatches { batches, .. }) => batches
                        .iter()
                        .map(|b| BatchAck {
                            partition: b.partition,
                            status: 0,
                            record_count: b.record_count(),
                            base_offset: 0,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Response::PutBatches(acks).encode(header.correlation_id, &mut out);
            }
            _ => ErrorResponse::new(ErrorCode::UnknownKind, "the loopback sink only takes puts")
                .encode(header.kind, header.correlation_id, &mut out),
        }
        wr.write_all(&out).await?;
    }
}

/// The sink's file, appended to with its blocks reserved ahead in the steps a partition uses.
struct SinkFile {
    file: File,
    len: u64,
    reserved_end: u64,
}

impl SinkFile {
    fn append(&mut self, body: &[u8]) -> io::Result<()> {
        let end = self.len + body.len() as u64;
        if end > self.reserved_end {
            let step = sluice_log::DEFAULT_PREALLOCATE_BYTES;
            let to = end.div_ceil(step) * step;
            // As in the log, only a hint: the write reports its own error.
            let _ = sluice_log::io::preallocate(
                &self.file,
                self.reserved_end.max(self.len),
                to - self.reserved_end.max(self.len),
            );
            self.reserved_end = to;
        }
        self.file.write_all(body)?;
        self.len = end;
        Ok(())
    }
}
