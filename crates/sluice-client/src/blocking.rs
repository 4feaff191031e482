//! A blocking client for programs without an async runtime.

use std::time::Duration;

use sluice_protocol::message::{
    CreateStream, PutAck, PutRecord, ReadRequest, ReadResponse, ServerStats, StreamInfo,
};
use tokio::net::ToSocketAddrs;
use tokio::runtime::{Builder, Runtime};

use crate::client::Client;
use crate::config::ClientConfig;
use crate::error::ClientError;

/// A [`Client`] driven by its own current-thread tokio runtime: every method blocks until the
/// answer comes.
///
/// The connection's tasks only run while a call is in progress, so the connection going down
/// is noticed on the next call (which then reconnects as [`Client`] does). Do not use it from
/// inside an async runtime: blocking there panics; use [`Client`] instead.
#[derive(Debug)]
pub struct BlockingClient {
    inner: Client,
    runtime: Runtime,
}

impl BlockingClient {
    /// Connects with the default [`ClientConfig`] and performs the version handshake.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        Self::connect_with(addr, ClientConfig::default())
    }

    /// Connects and performs the version handshake.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let runtime = Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let inner = runtime.block_on(Client::connect_with(addr, config))?;
        Ok(Self { inner, runtime })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        self.inner.config()
    }

    /// See [`Client::create_stream`].
    pub fn create_stream(&self, settings: CreateStream) -> Result<StreamInfo, ClientError> {
        self.runtime.block_on(self.inner.create_stream(settings))
    }

    /// See [`Client::delete_stream`].
    pub fn delete_stream(&self, name: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.delete_stream(name))
    }

    /// See [`Client::list_streams`].
    pub fn list_streams(&self) -> Result<Vec<String>, ClientError> {
        self.runtime.block_on(self.inner.list_streams())
    }

    /// See [`Client::describe_stream`].
    pub fn describe_stream(&self, name: &str) -> Result<StreamInfo, ClientError> {
        self.runtime.block_on(self.inner.describe_stream(name))
    }

    /// See [`Client::put`]; a timed-out put may still have been appended.
    pub fn put(&self, stream: &str, records: Vec<PutRecord>) -> Result<Vec<PutAck>, ClientError> {
        self.runtime.block_on(self.inner.put(stream, records))
    }

    /// See [`Client::put_routed`], the fast put that frames one batch per partition.
    pub fn put_routed(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<PutAck>, ClientError> {
        self.runtime
            .block_on(self.inner.put_routed(stream, records))
    }

    /// See [`Client::read`]; blocks for up to the long-poll wait when no records are there.
    pub fn read(&self, request: ReadRequest) -> Result<ReadResponse, ClientError> {
        self.runtime.block_on(self.inner.read(request))
    }

    /// See [`Client::split`].
    pub fn split(
        &self,
        stream: &str,
        partition: u32,
        at: Option<u128>,
    ) -> Result<[u32; 2], ClientError> {
        self.runtime
            .block_on(self.inner.split(stream, partition, at))
    }

    /// See [`Client::merge`].
    pub fn merge(&self, stream: &str, a: u32, b: u32) -> Result<u32, ClientError> {
        self.runtime.block_on(self.inner.merge(stream, a, b))
    }

    /// See [`Client::set_retention`].
    pub fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.set_retention(stream, retention))
    }

    /// See [`Client::commit_checkpoint`].
    pub fn commit_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.runtime.block_on(
            self.inner
                .commit_checkpoint(group, stream, partition, offset),
        )
    }

    /// See [`Client::fetch_checkpoint`].
    pub fn fetch_checkpoint(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
    ) -> Result<Option<u64>, ClientError> {
        self.runtime
            .block_on(self.inner.fetch_checkpoint(group, stream, partition))
    }

    /// See [`Client::stats`].
    pub fn stats(&self) -> Result<ServerStats, ClientError> {
        self.runtime.block_on(self.inner.stats())
    }
}
