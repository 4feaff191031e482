//! Server settings and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_broker::BrokerOptions;

/// Settings of a [`crate::Server`]. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default: `127.0.0.1:7070` (loopback: reachable from this machine
    /// only unless told otherwise).
    pub listen: SocketAddr,
    /// Options of the partition manager and of every partition's log (fsync policy, segment
    /// size, put limits). Default: `BrokerOptions::default()` (`fsync=always`, 500 records and
    /// 5 MiB per put).
    pub broker: BrokerOptions,
    /// Largest frame body accepted. A larger length prefix is refused from the 16-byte header,
    /// before anything is allocated, and the connection closed. Default: 8 MiB.
    pub max_frame_bytes: u32,
    /// Most connections at once; further ones are answered with a `Busy` error and closed.
    /// Default: 1024.
    pub max_connections: usize,
    /// Most requests of one connection being processed at once; past that the server stops
    /// reading from that connection until one finishes. Default: 64.
    pub max_in_flight_per_connection: usize,
    /// A connection on which no frame starts for this long is closed, so clients that vanished
    /// without closing (half-open connections) do not hold connection slots forever. Default:
    /// 10 minutes (Kafka's `connections.max.idle.ms`).
    pub idle_timeout: Duration,
    /// Memory one connection may hold in requests being processed and answers not yet written;
    /// past it the server stops reading from that connection. Bounds what a client that sends
    /// much and reads nothing can cost. At least the frame limit. Default: 16 MiB.
    pub max_connection_buffer_bytes: usize,
    /// Longest long-poll wait a read may ask for; longer asks are cut to this. Default: 30 s.
    pub max_wait: Duration,
    /// Once a frame has started arriving, the rest must arrive within this, or the connection is
    /// closed: a client that sends half a frame and stalls holds nothing for long. Default: 30 s.
    pub frame_timeout: Duration,
    /// How often the retention sweep runs. Default: 60 s.
    pub retention_interval: Duration,
    /// How long a graceful shutdown waits for requests in flight. Default: 30 s.
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            broker: BrokerOptions::default(),
            max_frame_bytes: 8 << 20,
            max_connections: 1024,
            max_in_flight_per_connection: 64,
            idle_timeout: Duration::from_secs(600),
            max_connection_buffer_bytes: 16 << 20,
            max_wait: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            retention_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}
