//! The async client: one pipelined connection, reconnected on demand.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_protocol::batch::{BatchAck, FramedBatch};
use sluice_protocol::message::{
    CreateStream, Kind, PartitionRef, PutAck, PutRecord, ReadRequest, ReadResponse, ServerStats,
    StreamInfo, encode_put_batches_body, encode_put_body,
};
use sluice_protocol::{Request, Response, WireError};
use tokio::net::ToSocketAddrs;
use tokio::sync::Mutex;

use crate::config::ClientConfig;
use crate::connection::{Connection, InFlight, deadline_after};
use crate::error::ClientError;
use crate::routed::{RouteCache, check_answer};

/// A put request encoded once, to be sent any number of times with [`Client::put_encoded`]
/// (a load generator or a replay tool sending the same records again).
#[derive(Debug, Clone)]
pub struct EncodedPut {
    body: Bytes,
    records: usize,
}

impl EncodedPut {
    /// Encodes a put of `records` to `stream`.
    pub fn new(stream: &str, records: &[PutRecord]) -> Self {
        let mut body = BytesMut::new();
        encode_put_body(stream, records, &mut body);
        Self {
            body: body.freeze(),
            records: records.len(),
        }
    }

    /// Records in the put.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Size of the encoded request body, bytes.
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }
}

/// A `PutBatches` request encoded once, to be sent any number of times with
/// [`Client::put_batches_encoded`] (a load generator sending the same batches again).
#[derive(Debug, Clone)]
pub struct EncodedBatches {
    body: Bytes,
    /// `(partition, record count)` of each batch, to check the answer against.
    batches: Vec<(u32, u32)>,
}

impl EncodedBatches {
    /// Encodes `batches` for `stream`.
    pub fn new(stream: &str, batches: &[FramedBatch]) -> Self {
        let mut body = BytesMut::new();
        encode_put_batches_body(stream, batches, &mut body);
        Self {
            body: body.freeze(),
            batches: batches
                .iter()
                .map(|b| (b.partition, b.record_count()))
                .collect(),
        }
    }

    /// Records in all the batches.
    pub fn record_count(&self) -> usize {
        self.batches.iter().map(|(_, n)| *n as usize).sum()
    }

    /// Size of the encoded request body, bytes.
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }
}

/// An async client for one Sluice server.
///
/// Cloning is cheap and every clone shares one TCP connection, on which requests are
/// pipelined: any number may be in flight, and each response finds its request by correlation
/// id. If the connection drops, the requests waiting on it fail with
/// [`ClientError::ConnectionClosed`], and the next request reconnects (with backoff, see
/// [`ClientConfig`]) and repeats the handshake. Requests are never retried by the client:
/// after a timeout or a dropped connection a put may or may not have been appended.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The server's addresses, resolved once at connect time.
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    next_id: AtomicU64,
    /// The current connection. An async lock, so that callers who find the connection down
    /// wait for one reconnect instead of each opening their own.
    conn: Mutex<Option<Arc<Connection>>>,
    /// Connections opened so far. A group member compares it before and after a call to tell
    /// whether the call went to a server its heartbeats have not spoken to (a restart).
    connections: AtomicU64,
    /// Routing tables for [`Client::put_routed`].
    routes: RouteCache,
}

impl Inner {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

impl Client {
    /// Connects with the default [`ClientConfig`] and performs the version handshake.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects and performs the version handshake. The address is resolved once; reconnects
    /// go to the same addresses. The first connection is attempted once: a wrong address fails
    /// at once instead of after the reconnect backoff.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the server address resolved to no socket address",
            )
            .into());
        }
        let inner = Inner {
            addrs,
            config,
            next_id: AtomicU64::new(1),
            conn: Mutex::new(None),
            connections: AtomicU64::new(1),
            routes: RouteCache::default(),
        };
        let conn = Connection::open(&inner.addrs, &inner.config, inner.next_id()).await?;
        let mut inner = inner;
        *inner.conn.get_mut() = Some(conn);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn route_cache(&self) -> &RouteCache {
        &self.inner.routes
    }

    /// How many connections this client has opened: it changes when the client reconnects.
    pub(crate) fn connection_generation(&self) -> u64 {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// The open connection, reconnecting first if it has closed.
    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = self.reconnect().await?;
        self.inner.connections.fetch_add(1, Ordering::AcqRel);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn reconnect(&self) -> Result<Arc<Connection>, ClientError> {
        let config = &self.inner.config;
        let attempts = config.reconnect_attempts.max(1);
        let mut backoff = config.reconnect_backoff;
        let mut attempt = 1;
        loop {
            match Connection::open(&self.inner.addrs, config, self.inner.next_id()).await {
                Ok(conn) => return Ok(conn),
                // A server that refuses the handshake will refuse it again.
                Err(e @ (ClientError::UnsupportedVersion(_) | ClientError::Server { .. })) => {
                    return Err(e);
                }
                Err(e) if attempt >= attempts => return Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(config.reconnect_backoff_max);
                    attempt += 1;
                }
            }
        }
    }

    /// Queues a request with a fresh correlation id. The returned handle waits for the
    /// response; the deadline is the request timeout plus `extra_wait`, counted from now.
    pub(crate) async fn submit(
        &self,
        request: &Request,
        extra_wait: Duration,
    ) -> Result<InFlight, ClientError> {
        let conn = self.connection().await?;
        let deadline = deadline_after(self.inner.config.request_timeout.saturating_add(extra_wait));
        conn.submit(self.inner.next_id(), request, deadline).await
    }

    pub(crate) async fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.submit(&request, Duration::ZERO).await?.wait().await
    }

    /// Creates a stream and returns its description.
    pub async fn create_stream(&self, settings: CreateStream) -> Result<StreamInfo, ClientError> {
        match self.call(Request::CreateStream(settings)).await? {
            Response::CreateStream(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    /// Deletes a stream and all its data.
    pub async fn delete_stream(&self, name: &str) -> Result<(), ClientError> {
        match self
            .call(Request::DeleteStream { name: name.into() })
            .await?
        {
            Response::DeleteStream => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// The names of all streams.
    pub async fn list_streams(&self) -> Result<Vec<String>, ClientError> {
        match self.call(Request::ListStreams).await? {
            Response::ListStreams(names) => Ok(names),
            _ => Err(unexpected()),
        }
    }

    /// A stream's settings and partitions.
    pub async fn describe_stream(&self, name: &str) -> Result<StreamInfo, ClientError> {
        match self
            .call(Request::DescribeStream { name: name.into() })
            .await?
        {
            Response::DescribeStream(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    /// Appends records to a stream; one acknowledgement per record, in order.
    ///
    /// On [`ClientError::Timeout`] or [`ClientError::ConnectionClosed`] the records may still
    /// have been appended; retrying may append them twice.
    pub async fn put(
        &self,
        stream: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutAck>, ClientError> {
        let count = records.len();
        let request = Request::Put {
            stream: stream.into(),
            records,
        };
        match self.call(request).await? {
            Response::Put(acks) if acks.len() == count => Ok(acks),
            Response::Put(_) => Err(WireError::Invalid("ack count").into()),
            _ => Err(unexpected()),
        }
    }

    /// Sends a put encoded beforehand with [`EncodedPut::new`]; the same as [`Client::put`] with
    /// its records, without encoding them again. The body is shared, not copied, so sending
    /// one `EncodedPut` many times costs only the system calls.
    pub async fn put_encoded(&self, put: &EncodedPut) -> Result<Vec<PutAck>, ClientError> {
        let conn = self.connection().await?;
        let deadline = deadline_after(self.inner.config.request_timeout);
        let response = conn
            .submit_encoded(self.inner.next_id(), Kind::Put as u16, &put.body, deadline)
            .await?
            .wait()
            .await?;
        match response {
            Response::Put(acks) if acks.len() == put.records => Ok(acks),
            Response::Put(_) => Err(WireError::Invalid("ack count").into()),
            _ => Err(unexpected()),
        }
    }

    /// Sends batches framed with [`BatchBuilder`](sluice_protocol::batch::BatchBuilder), each
    /// for the partition it names, in one `PutBatches` request, and returns one acknowledgement
    /// per batch, in order. The routing is the caller's: [`Client::put_routed`] does it, and
    /// retries the batches a reshard refused.
    pub async fn put_batches(
        &self,
        stream: &str,
        batches: Vec<FramedBatch>,
    ) -> Result<Vec<BatchAck>, ClientError> {
        let expected: Vec<(u32, u32)> = batches
            .iter()
            .map(|b| (b.partition, b.record_count()))
            .collect();
        let request = Request::PutBatches {
            stream: stream.into(),
            batches,
        };
        match self.call(request).await? {
            Response::PutBatches(acks) if check_answer(&expected, &acks) => Ok(acks),
            Response::PutBatches(_) => Err(WireError::Invalid("ack count").into()),
            _ => Err(unexpected()),
        }
    }

    /// Sends batches encoded beforehand with [`EncodedBatches::new`]; the same as
    /// [`Client::put_batches`] without encoding them again.
    pub async fn put_batches_encoded(
        &self,
        put: &EncodedBatches,
    ) -> Result<Vec<BatchAck>, ClientError> {
        let conn = self.connection().await?;
        let deadline = deadline_after(self.inner.config.request_timeout);
        let response = conn
            .submit_encoded(
                self.inner.next_id(),
                Kind::PutBatches as u16,
                &put.body,
                deadline,
            )
            .await?
            .wait()
            .await?;
        match response {
            Response::PutBatches(acks) if check_answer(&put.batches, &acks) => Ok(acks),
            Response::PutBatches(_) => Err(WireError::Invalid("ack count").into()),
            _ => Err(unexpected()),
        }
    }

    /// Reads records from one partition. When none are there yet the server waits up to
    /// `max_wait_ms` for some (a long poll); that wait is added to the request timeout.
    pub async fn read(&self, request: ReadRequest) -> Result<ReadResponse, ClientError> {
        let wait = Duration::from_millis(u64::from(request.max_wait_ms));
        match self
            .submit(&Request::Read(request), wait)
            .await?
            .wait()
            .await?
        {
            Response::Read(response) => Ok(response),
            _ => Err(unexpected()),
        }
    }

    /// Splits an open partition at hash key `at` (the middle of its range when `None`) and
    /// returns the ids of the two children, lower range first.
    pub async fn split(
        &self,
        stream: &str,
        partition: u32,
        at: Option<u128>,
    ) -> Result<[u32; 2], ClientError> {
        let request = Request::Split {
            target: partition_ref(stream, partition),
            at,
        };
        match self.call(request).await? {
            Response::Split(children) => Ok(children),
            _ => Err(unexpected()),
        }
    }

    /// Merges two open partitions with adjacent ranges and returns the child's id.
    pub async fn merge(&self, stream: &str, a: u32, b: u32) -> Result<u32, ClientError> {
        let request = Request::Merge {
            stream: stream.into(),
            a,
            b,
        };
        match self.call(request).await? {
            Response::Merge(child) => Ok(child),
            _ => Err(unexpected()),
        }
    }

    /// Changes how long a stream keeps records (sent in whole milliseconds).
    pub async fn set_retention(
        &self,
        stream: &str,
        retention: Duration,
    ) -> Result<(), ClientError> {
        let request = Request::SetRetention {
            stream: stream.into(),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(request).await? {
            Response::SetRetention => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Stores a consumer group's checkpoint: the next offset it will read in a partition.
    pub async fn commit_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        let request = Request::CommitCheckpoint {
            group: group.into(),
            target: partition_ref(stream, partition),
            offset,
        };
        match self.call(request).await? {
            Response::CommitCheckpoint => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// A consumer group's checkpoint in a partition, `None` if it never committed one.
    pub async fn fetch_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
    ) -> Result<Option<u64>, ClientError> {
        let request = Request::FetchCheckpoint {
            group: group.into(),
            target: partition_ref(stream, partition),
        };
        match self.call(request).await? {
            Response::FetchCheckpoint(offset) => Ok(offset),
            _ => Err(unexpected()),
        }
    }

    /// The server's statistics.
    pub async fn stats(&self) -> Result<ServerStats, ClientError> {
        match self.call(Request::Stats).await? {
            Response::Stats(stats) => Ok(stats),
            _ => Err(unexpected()),
        }
    }
}

fn partition_ref(stream: &str, partition: u32) -> PartitionRef {
    PartitionRef {
        stream: stream.into(),
        partition,
    }
}

/// A response of another kind than the request's. `InFlight::wait` already compares the
/// kinds, so this only guards against a protocol change that this match was not taught.
pub(crate) fn unexpected() -> ClientError {
    WireError::Invalid("response kind").into()
}
