//! Sluice's TCP server: the native protocol (`sluice-protocol`) over the partition manager
//! (`sluice-broker`). The only crate where async code meets the engine: broker calls run on
//! tokio's blocking pool.
//!
//! # Layout
//! - `server`: [`Server`]: start, the accept loop with its connection limit, the retention
//!   sweep, graceful [`Server::shutdown`] and abrupt [`Server::abort`].
//! - `connection`: one client: framing with the size limit checked before allocating, the
//!   handshake, the in-flight limit, ordered puts with overlapping fsync waits.
//! - `handler`: requests against the broker, long-poll reads.
//! - `notify`: per-partition wake-ups for long polls. `stats`: counters and latency histogram.
//! - `errors`: engine errors to wire error codes. [`ServerConfig`]: limits and their defaults.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), sluice_server::ServerError> {
//! use sluice_server::{Server, ServerConfig};
//! let server = Server::start("./sluice-data", ServerConfig::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod connection;
mod errors;
mod handler;
mod notify;
mod server;
mod stats;

pub use config::ServerConfig;
pub use server::{Server, ServerError};
