//! Sluice's native wire protocol, without I/O: frames, requests, responses, error codes.
//!
//! A connection carries length-prefixed frames in both directions. The client sends requests,
//! each with a correlation id of its choosing, and may pipeline them; the server answers each with
//! a response frame carrying the same id. The first request on a connection is `Hello`, which
//! fixes the protocol version. `docs/protocol.md` describes every byte.
//!
//! # Layout
//! - [`batch`]: batches a producer frames and routes itself, for `PutBatches`.
//! - [`frame`]: the 16-byte header; the size limit checked before any allocation.
//! - [`message`]: requests and responses, and their bodies.
//! - [`codes`]: error codes with stable numbers.
//! - [`error`]: decoding errors.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
//! use sluice_protocol::message::{Request, PutRecord};
//!
//! let mut out = BytesMut::new();
//! let put = Request::Put {
//!     stream: "orders".into(),
//!     records: vec![PutRecord { partition_key: "k".into(), explicit_hash_key: None, value: "v".into() }],
//! };
//! put.encode(7, &mut out);
//! let header = FrameHeader::decode(&out, 1 << 20).unwrap().unwrap();
//! let body = out.split_off(HEADER_LEN).freeze();
//! assert_eq!(Request::decode(header.kind, body).unwrap(), put);
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod codes;
pub mod error;
pub mod frame;
pub mod message;

pub use codes::ErrorCode;
pub use error::WireError;
pub use message::{PROTOCOL_VERSION, Request, Response};
