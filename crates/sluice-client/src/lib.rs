//! Clients for Sluice's native protocol.
//!
//! [`Client`] is an async client over one TCP connection on which requests are pipelined and
//! matched to their responses by correlation id; it reconnects with backoff when the
//! connection drops. [`Producer`] batches records for one stream, and [`PartitionReader`]
//! follows a partition's tail with long polls. [`BlockingClient`] offers the same calls as
//! plain blocking functions. Timeouts do not undo anything: a put that timed out may still
//! have been appended.
//!
//! # Layout
//! - [`client`]: the async client and its requests.
//! - `connection`: one connection's writer and reader tasks and the table of pending requests.
//! - [`config`]: timeouts, the response size limit, reconnect backoff.
//! - [`producer`]: batching, linger, bounded in-flight batches.
//! - [`routed`]: client-side routing for [`Client::put_routed`], the fast put that frames one
//!   batch per partition.
//! - [`partition_reader`]: reading a partition from a starting point onwards.
//! - [`blocking`]: the blocking wrapper.
//! - [`error`]: the one error type, [`ClientError`], and what each variant means.
//!
//! # Example
//! ```no_run
//! use sluice_client::{
//!     Client, CreateStream, PartitionReader, Producer, ProducerConfig, PutRecord, ReadFrom,
//!     ReaderConfig,
//! };
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), sluice_client::ClientError> {
//!     let client = Client::connect("127.0.0.1:7070").await?;
//!     client
//!         .create_stream(CreateStream {
//!             name: "orders".into(),
//!             partitions: 1,
//!             retention_ms: 24 * 3600 * 1000,
//!             partition_bytes_max: None,
//!             record_bytes_max: None,
//!         })
//!         .await?;
//!
//!     let producer = Producer::new(client.clone(), "orders", ProducerConfig::default());
//!     let ack = producer
//!         .send(PutRecord { partition_key: "user-1".into(), explicit_hash_key: None, value: "hello".into() })
//!         .await?;
//!     let ack = ack.await?;
//!     println!("appended at partition {} offset {}", ack.partition, ack.offset);
//!     producer.close().await;
//!
//!     let mut reader =
//!         PartitionReader::new(client, "orders", 0, ReadFrom::Earliest, ReaderConfig::default());
//!     let record = reader.next().await?;
//!     println!("read offset {}: {:?}", record.offset, record.value);
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]

pub mod blocking;
pub mod client;
pub mod config;
mod connection;
pub mod error;
pub mod group;
pub mod partition_reader;
pub mod producer;
pub mod routed;

pub use blocking::BlockingClient;
pub use client::{Client, EncodedBatches, EncodedPut};
pub use config::ClientConfig;
pub use error::ClientError;
pub use group::{GroupBatch, GroupConfig, GroupConsumer, GroupEvent};
pub use partition_reader::{PartitionReader, ReaderConfig};
pub use producer::{AckHandle, Producer, ProducerConfig};
pub use routed::Router;
pub use sluice_protocol::batch::{BatchAck, BatchBuilder, FramedBatch};
pub use sluice_protocol::message::{
    CreateStream, GroupInfo, GroupPartitionInfo, GroupSummary, InitialPosition, JoinGroup, Joined,
    LeaseInfo, MemberInfo, MemberRef, PartitionInfo, PutAck, PutRecord, ReadFrom, ReadRequest,
    ReadResponse, ServerStats, StreamInfo, StreamStats, WireRecord,
};
pub use sluice_protocol::{ErrorCode, PROTOCOL_VERSION, WireError};
