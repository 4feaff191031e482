//! A connection's put lane: a thread of its own that writes the connection's puts one after
//! another, in the order the reader took them off the socket, and answers them.
//!
//! The reader hands each put over and goes straight on to the next frame, so receiving the next
//! put overlaps with writing this one, and the reader never waits for a write. A write that
//! blocks (the kernel throttling a writer far ahead of the disk, a segment roll's fsync, a split
//! holding the partition) blocks this connection's lane only: no runtime thread waits on it, so
//! other connections are served meanwhile. The connection's in-flight and memory limits still
//! hold, because each put keeps its permits until its answer is queued for the socket.
//!
//! A put that is acknowledged once written (every policy but `fsync=always`) is answered from the
//! lane. A put that waits for an fsync is handed back to the runtime, where its partitions'
//! fsync waits overlap with each other and with the puts that follow (group commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use sluice_protocol::message::Request;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::connection::{Outgoing, encode_answer};
use crate::handler;
use crate::server::Shared;

/// One put on its way to the lane, with the permits it holds until its answer is queued.
pub(crate) struct PutJob {
    pub kind: u16,
    pub id: u64,
    pub request: Request,
    pub started: Instant,
    pub permit: OwnedSemaphorePermit,
    pub budget: OwnedSemaphorePermit,
}

/// The reader's end of a lane. Dropped without [`PutLane::finish`] (the connection's future was
/// dropped, as by `Server::abort`), it tells the lane to drop the puts still queued unwritten,
/// as a crash would, instead of writing them after the connection is gone.
pub(crate) struct PutLane {
    tx: Option<std_mpsc::Sender<PutJob>>,
    abandoned: Arc<AtomicBool>,
}

impl PutLane {
    /// Starts the lane's thread. It ends once the lane is finished or dropped and its queue is
    /// empty.
    pub fn start(shared: Arc<Shared>, out_tx: mpsc::Sender<Outgoing>) -> std::io::Result<Self> {
        let runtime = Handle::current();
        let (tx, rx) = std_mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&abandoned);
        std::thread::Builder::new()
            .name("sluice-put".into())
            .spawn(move || run(&shared, &rx, &out_tx, &runtime, &flag))?;
        Ok(Self {
            tx: Some(tx),
            abandoned,
        })
    }

    /// Queues a put behind the ones already handed over. The queue needs no bound of its own:
    /// every put in it holds one of the connection's in-flight permits.
    pub fn submit(&self, job: PutJob) {
        if let Some(tx) = &self.tx {
            // The lane's thread only stops once this sender is gone, so the send succeeds; were
            // the thread to die, the job's permits would be released with it and the put left
            // unanswered, which the client sees as a connection that closes.
            let _ = tx.send(job);
        }
    }

    /// Lets the lane finish the puts queued and end.
    pub fn finish(mut self) {
        self.tx = None;
    }
}

impl Drop for PutLane {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.abandoned.store(true, Ordering::Release);
        }
    }
}

fn run(
    shared: &Arc<Shared>,
    rx: &std_mpsc::Receiver<PutJob>,
    out_tx: &mpsc::Sender<Outgoing>,
    runtime: &Handle,
    abandoned: &AtomicBool,
) {
    while let Ok(job) = rx.recv() {
        if abandoned.load(Ordering::Acquire) {
            continue;
        }
        let PutJob {
            kind,
            id,
            request,
            started,
            permit,
            budget,
        } = job;
        match handler::submit_write(shared, request) {
            Ok(put) if !put.is_acknowledged() => {
                let shared = Arc::clone(shared);
                let out_tx = out_tx.clone();
                // Were the runtime shutting down, the task would be dropped unrun, and with it
                // the permits; the connection is going away then anyway.
                runtime.spawn(async move {
                    let answer = handler::finish_put(&shared, put, started).await;
                    let _ = out_tx
                        .send(encode_answer(kind, id, answer).holding(budget))
                        .await;
                    drop(permit);
                });
            }
            written => {
                let answer =
                    written.and_then(|put| handler::finish_acknowledged(shared, put, started));
                // Blocks while the answers before it are still unsent (a client that does not
                // read), which stops this lane and, through the permits, the reader.
                let _ = out_tx.blocking_send(encode_answer(kind, id, answer).holding(budget));
                drop(permit);
            }
        }
    }
}
