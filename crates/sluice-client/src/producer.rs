//! A batching producer for one stream.
//!
//! Records go through a bounded queue to a background task that gathers them into `Put`
//! batches. A batch goes out when it reaches `max_records` or `max_bytes`, when its first
//! record has waited `linger`, or on `flush`. Batches are queued on the client's connection
//! one after another, in the order they were formed, so records keep their send order; up to
//! `max_in_flight` batches may wait for their acknowledgements at once. While that many are
//! pending the task takes no new records, the queue fills, and `send` waits: memory stays
//! bounded by about `max_in_flight + 1` batches plus the queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sluice_protocol::message::{PutAck, PutRecord};
use sluice_protocol::{Request, Response, WireError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use crate::client::Client;
use crate::error::ClientError;

/// Settings of a [`Producer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// How long the first record of a batch waits for others to join it. Default: 5 ms.
    pub linger: Duration,
    /// Most records in one put; 0 counts as 1. Default: 500 (the server's default limit).
    pub max_records: usize,
    /// Most key and value bytes in one put; a record larger than this alone goes in a batch of
    /// its own. Default: 5 MiB (the server's default limit).
    pub max_bytes: usize,
    /// Most batches waiting for their acknowledgements at once; 0 counts as 1. Default: 4.
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_records: 500,
            max_bytes: 5 << 20,
            max_in_flight: 4,
        }
    }
}

impl ProducerConfig {
    /// Sets [`linger`](Self::linger). Default: 5 ms.
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`max_records`](Self::max_records). Default: 500.
    #[must_use]
    pub fn max_records(mut self, records: usize) -> Self {
        self.max_records = records;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes). Default: 5 MiB.
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight). Default: 4.
    #[must_use]
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches;
        self
    }
}

/// Sends records to one stream in batches.
///
/// Cloning is cheap; clones feed the same batches. Records sent through one handle keep their
/// order, so records with the same key land in their partition in send order, as long as
/// every put succeeds. After a failed batch (a timeout, a dropped connection, a server error)
/// later batches may still be appended: a caller that needs strict order stops at the first
/// error.
///
/// The background task runs on the tokio runtime that [`Producer::new`] is called on. If every
/// handle is dropped without [`close`](Self::close), the task still sends what it holds.
#[derive(Clone)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
    stream: Arc<str>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Command {
    Record(PutRecord, oneshot::Sender<Result<PutAck, ClientError>>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

impl Producer {
    /// Starts a producer for `stream`. Must be called within a tokio runtime, which runs its
    /// background task.
    pub fn new(client: Client, stream: impl Into<String>, config: ProducerConfig) -> Self {
        let stream: String = stream.into();
        let config = ProducerConfig {
            max_records: config.max_records.max(1),
            max_in_flight: config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            ..config
        };
        // One batch worth of queue lets senders fill the next batch while the task waits.
        let (commands, queue) = mpsc::channel(config.max_records);
        let batcher = Batcher {
            client,
            stream: stream.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            batch: Batch::default(),
            linger_until: None,
            config,
        };
        tokio::spawn(batcher.run(queue));
        Self {
            commands,
            stream: stream.into(),
        }
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Adds a record to the current batch and returns a handle that resolves to the record's
    /// acknowledgement once its batch is acknowledged. Waits only while the producer already
    /// has `max_in_flight` batches pending and its queue is full. Dropping the handle does not
    /// withdraw the record.
    pub async fn send(&self, record: PutRecord) -> Result<AckHandle, ClientError> {
        let (ack, rx) = oneshot::channel();
        self.commands
            .send(Command::Record(record, ack))
            .await
            .map_err(|_| ClientError::ProducerClosed)?;
        Ok(AckHandle { rx })
    }

    /// Sends the current batch at once and waits until every record sent before this call is
    /// acknowledged or has failed (failures go to the records' handles).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .await
            .map_err(|_| ClientError::ProducerClosed)?;
        rx.await.map_err(|_| ClientError::ProducerClosed)
    }

    /// Stops taking records, sends what is left and waits for every acknowledgement. Sends
    /// through other clones fail with [`ClientError::ProducerClosed`] from then on. Returns at
    /// once if the producer was already closed.
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The acknowledgement of one record sent by a [`Producer`]: a future resolving to where the
/// record landed, or to the error that failed its batch.
#[derive(Debug)]
pub struct AckHandle {
    rx: oneshot::Receiver<Result<PutAck, ClientError>>,
}

impl Future for AckHandle {
    type Output = Result<PutAck, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|ack| ack.unwrap_or(Err(ClientError::ProducerClosed)))
    }
}

#[derive(Default)]
struct Batch {
    records: Vec<PutRecord>,
    acks: Vec<oneshot::Sender<Result<PutAck, ClientError>>>,
    bytes: usize,
}

struct Batcher {
    client: Client,
    stream: String,
    config: ProducerConfig,
    /// One permit per batch that may wait for its acknowledgement.
    in_flight: Arc<Semaphore>,
    batch: Batch,
    /// When the current batch goes out even if it is not full.
    linger_until: Option<Instant>,
}

impl Batcher {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut closers = Vec::new();
        loop {
            let command = match self.linger_until {
                Some(at) => tokio::select! {
                    command = queue.recv() => command,
                    () = sleep_until(at) => {
                        self.dispatch().await;
                        continue;
                    }
                },
                None => queue.recv().await,
            };
            match command {
                Some(Command::Record(record, ack)) => self.add(record, ack).await,
                Some(Command::Flush(done)) => {
                    self.dispatch().await;
                    self.wait_idle().await;
                    let _ = done.send(());
                }
                Some(Command::Close(done)) => {
                    // Commands queued before the close are still taken; `recv` returns `None`
                    // after the last of them.
                    closers.push(done);
                    queue.close();
                }
                None => break,
            }
        }
        self.dispatch().await;
        self.wait_idle().await;
        for done in closers {
            let _ = done.send(());
        }
    }

    async fn add(&mut self, record: PutRecord, ack: oneshot::Sender<Result<PutAck, ClientError>>) {
        let size = record.partition_key.len() + record.value.len();
        if !self.batch.records.is_empty() && self.batch.bytes + size > self.config.max_bytes {
            self.dispatch().await;
        }
        if self.batch.records.is_empty() {
            self.linger_until = Some(Instant::now() + self.config.linger);
        }
        self.batch.records.push(record);
        self.batch.acks.push(ack);
        self.batch.bytes += size;
        if self.batch.records.len() >= self.config.max_records
            || self.batch.bytes >= self.config.max_bytes
        {
            self.dispatch().await;
        }
    }

    /// Sends the current batch, if any. Returns once it is queued on the connection, so the
    /// next batch is queued behind it.
    async fn dispatch(&mut self) {
        self.linger_until = None;
        if self.batch.records.is_empty() {
            return;
        }
        let Batch { records, acks, .. } = std::mem::take(&mut self.batch);
        // Waiting here, before the next command is taken, is what makes `send` wait while
        // `max_in_flight` batches are pending.
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            // The semaphore is never closed; should that change, the records fail cleanly.
            resolve(acks, Err(ClientError::ProducerClosed));
            return;
        };
        let request = Request::Put {
            stream: self.stream.clone(),
            records,
        };
        match self.client.submit(&request, Duration::ZERO).await {
            Ok(in_flight) => {
                tokio::spawn(async move {
                    resolve(acks, in_flight.wait().await);
                    drop(permit);
                });
            }
            Err(error) => resolve(acks, Err(error)),
        }
    }

    /// Waits until no batch is pending.
    async fn wait_idle(&self) {
        let all = u32::try_from(self.config.max_in_flight).unwrap_or(u32::MAX);
        // Every permit free means every batch has been answered.
        let _ = self.in_flight.acquire_many(all).await;
    }
}

/// Hands each record of a batch its acknowledgement, or the batch's error.
fn resolve(
    acks: Vec<oneshot::Sender<Result<PutAck, ClientError>>>,
    result: Result<Response, ClientError>,
) {
    let error = match result {
        Ok(Response::Put(got)) if got.len() == acks.len() => {
            for (ack, got) in acks.into_iter().zip(got) {
                let _ = ack.send(Ok(got));
            }
            return;
        }
        Ok(_) => ClientError::Wire(WireError::Invalid("ack count")),
        Err(error) => error,
    };
    for ack in acks {
        let _ = ack.send(Err(error.duplicate()));
    }
}
