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

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use sluice_protocol::ErrorCode;
use sluice_protocol::message::{ErrorResponse, Request};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;

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

/// Stack of a lane's thread. A put's path through the broker and the log is shallow, but a
/// panic's report (a backtrace, symbolised on this thread) needs more; a server may run a lane
/// for each of its `max_connections` connections, and only the pages a thread touches cost
/// memory.
const LANE_STACK_BYTES: usize = 1 << 20;

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
            .stack_size(LANE_STACK_BYTES)
            .spawn(move || run(&shared, &rx, &out_tx, &runtime, &flag))?;
        Ok(Self {
            tx: Some(tx),
            abandoned,
        })
    }

    /// Queues a put behind the ones already handed over. The queue needs no bound of its own:
    /// every put in it holds one of the connection's in-flight permits. Gives the job back if
    /// the lane's thread is gone, which [`run`] never lets happen short of an abort of the
    /// process; the caller then answers it and closes the connection.
    pub fn submit(&self, job: PutJob) -> Result<(), Box<PutJob>> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
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
    // The fsync waits this lane hands to the runtime. Owned here, they are aborted when the lane
    // ends: after its connection closed, every one of them has answered (the connection waits
    // for their permits), and after an abort they stop waiting for a connection that is gone.
    // (A partition's wait already handed to the blocking pool still runs to its end, and may
    // still start the group commit's fsync; it cannot be called back.)
    let mut waits = JoinSet::new();
    while let Ok(job) = rx.recv() {
        while waits.try_join_next().is_some() {}
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
        // A panic in the broker is a bug; it fails this put with `Internal` and leaves the lane
        // serving the puts behind it, as the blocking pool did, instead of leaving them
        // unanswered on a connection that stays open.
        let written =
            std::panic::catch_unwind(AssertUnwindSafe(|| handler::submit_write(shared, request)))
                .unwrap_or_else(|_| {
                    Err(ErrorResponse::new(
                        ErrorCode::Internal,
                        "the put failed inside the server",
                    ))
                });
        match written {
            Ok(put) if !put.is_acknowledged() => {
                let shared = Arc::clone(shared);
                let out_tx = out_tx.clone();
                waits.spawn_on(
                    async move {
                        // As on the lane: a panic fails this put with `Internal` rather than
                        // leave it unanswered on a connection that stays open.
                        let finish =
                            CatchUnwind(Box::pin(handler::finish_put(&shared, put, started)));
                        let answer = finish.await.unwrap_or_else(|_| Err(internal()));
                        let _ = out_tx
                            .send(encode_answer(kind, id, answer).holding(budget))
                            .await;
                        drop(permit);
                    },
                    runtime,
                );
            }
            written => {
                let answer = written.and_then(|put| {
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        handler::finish_acknowledged(shared, put, started)
                    }))
                    .unwrap_or_else(|_| Err(internal()))
                });
                // Blocks while the answers before it are still unsent (a client that does not
                // read), which stops this lane and, through the permits, the reader.
                let _ = out_tx.blocking_send(encode_answer(kind, id, answer).holding(budget));
                drop(permit);
            }
        }
    }
}

/// The answer to a put that panicked inside the server.
fn internal() -> ErrorResponse {
    ErrorResponse::new(ErrorCode::Internal, "the put failed inside the server")
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
}
