//! Connection settings.

use std::time::Duration;

/// Settings of a [`Client`](crate::Client). Every field has a default; change them with the
/// chainable setters.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::ClientConfig;
///
/// let config = ClientConfig::default()
///     .request_timeout(Duration::from_secs(10))
///     .reconnect_attempts(3);
/// assert_eq!(config.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Longest wait for the TCP connection and the `Hello` handshake, per attempt.
    /// Default: 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for a response, counted from when the request is queued for sending. A
    /// read's long-poll wait (`max_wait_ms`) is added to it. Default: 30 s.
    pub request_timeout: Duration,
    /// Largest response body accepted, in bytes; a frame is this plus its 16-byte header. A
    /// response announcing a larger body is refused from its header alone, before anything is
    /// allocated for it, and the connection is closed (its bytes cannot be skipped cheaply).
    /// Default: 8 MiB.
    pub max_frame_body_bytes: u32,
    /// Wait after the first failed reconnect attempt; each further failure doubles it.
    /// Default: 50 ms.
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnect attempts. Default: 2 s.
    pub reconnect_backoff_max: Duration,
    /// Most connection attempts a request makes when the connection is down before it
    /// gives up with the last attempt's error. Default: 5.
    pub reconnect_attempts: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame_body_bytes: 8 << 20,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            reconnect_attempts: 5,
        }
    }
}

impl ClientConfig {
    /// Sets [`connect_timeout`](Self::connect_timeout). Default: 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout). Default: 30 s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`max_frame_body_bytes`](Self::max_frame_body_bytes). Default: 8 MiB.
    #[must_use]
    pub fn max_frame_body_bytes(mut self, bytes: u32) -> Self {
        self.max_frame_body_bytes = bytes;
        self
    }

    /// Sets [`reconnect_backoff`](Self::reconnect_backoff) and
    /// [`reconnect_backoff_max`](Self::reconnect_backoff_max). Default: 50 ms doubling to 2 s.
    #[must_use]
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff = first;
        self.reconnect_backoff_max = max;
        self
    }

    /// Sets [`reconnect_attempts`](Self::reconnect_attempts); 0 counts as 1. Default: 5.
    #[must_use]
    pub fn reconnect_attempts(mut self, attempts: u32) -> Self {
        self.reconnect_attempts = attempts;
        self
    }
}
