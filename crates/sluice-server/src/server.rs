//! The server: accept loop, retention sweep, graceful and abrupt stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::connection;
use crate::notify::Notifier;
use crate::stats::Stats;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The partition manager failed (including a data directory locked by another broker).
    #[error(transparent)]
    Broker(#[from] sluice_broker::Error),
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Connections did not finish within the shutdown timeout.
    #[error("{0} connections still busy after the shutdown timeout")]
    ShutdownTimeout(u64),
    /// An internal task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// What every connection and task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub broker: Arc<Broker>,
    pub config: ServerConfig,
    pub stats: Stats,
    pub notify: Notifier,
    /// Set first thing by [`Server::abort`], so that a connection busy with requests it has
    /// already received takes no further one, whatever its thread is doing when the abort
    /// reaches it.
    pub aborted: std::sync::atomic::AtomicBool,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// A running server. Dropping it without [`Server::shutdown`] or [`Server::abort`] leaves its
/// tasks running until the runtime stops.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// The accept loop; it owns the connection tasks and returns once they have all finished.
    accept: JoinHandle<()>,
    retention: JoinHandle<()>,
}

impl Server {
    /// Opens the broker on `data_dir`, binds `config.listen`, and starts serving.
    pub async fn start(
        data_dir: impl AsRef<Path>,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        let dir = data_dir.as_ref().to_path_buf();
        let options = config.broker.clone();
        let broker = tokio::task::spawn_blocking(move || Broker::open(dir, options))
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??;
        Self::start_with_broker(broker, config).await
    }

    /// Serves an already opened broker (for instance one on a simulated file system in tests);
    /// `config.broker` is not used.
    pub async fn start_with_broker(
        broker: Broker,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        if broker.options().log.fsync_policy() == sluice_log::FsyncPolicy::Never {
            warn!("fsync=never: acknowledged data may be lost on power failure");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            broker: Arc::new(broker),
            config,
            stats: Stats::new(),
            notify: Notifier::default(),
            aborted: std::sync::atomic::AtomicBool::new(false),
            shutdown: shutdown_rx,
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        let retention = tokio::spawn(retention_loop(Arc::clone(&shared)));
        info!(%local_addr, "listening");
        Ok(Self {
            local_addr,
            shared,
            shutdown,
            accept,
            retention,
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The partition manager behind the server.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.shared.broker
    }

    /// Stops accepting, lets every request in flight finish and be answered, then closes the
    /// broker cleanly (fsync, clean-shutdown markers) and releases the data directory.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        self.retention.abort();
        let _ = (&mut self.retention).await;
        // The accept loop stops accepting at once and returns when every connection has answered
        // its requests in flight and closed.
        let timeout = self.shared.config.shutdown_timeout;
        let mut result = Ok(());
        if tokio::time::timeout(timeout, &mut self.accept)
            .await
            .is_err()
        {
            result = Err(ServerError::ShutdownTimeout(
                self.shared.stats.connections_open.load(Ordering::Relaxed),
            ));
            self.accept.abort();
            let _ = (&mut self.accept).await;
        }
        let broker = release_broker(self.shared).await?;
        tokio::task::spawn_blocking(move || broker.close())
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??;
        info!("shut down cleanly");
        result
    }

    /// Stops at once, like a crash of the process as far as the files go: connections are cut,
    /// nothing more is flushed and no clean-shutdown marker is written, so the next start
    /// recovers. What was acknowledged is durable already. Returns once the data directory is
    /// released.
    pub async fn abort(self) {
        // Before any await, so that once this future has been polled no connection takes
        // another request: each checks the flag before it reads a frame and again once it has
        // one.
        self.shared.aborted.store(true, Ordering::Release);
        self.accept.abort();
        self.retention.abort();
        let _ = self.accept.await;
        let _ = self.retention.await;
        if let Ok(broker) = release_broker(self.shared).await {
            drop(broker);
        }
    }
}

/// Waits until the server's tasks have let go of the broker (blocking calls already handed to the
/// blocking pool run to their end), and takes it.
async fn release_broker(shared: Arc<Shared>) -> Result<Broker, ServerError> {
    let mut broker = Arc::clone(&shared.broker);
    drop(shared);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Arc::try_unwrap(broker) {
            Ok(b) => return Ok(b),
            Err(b) if tokio::time::Instant::now() < deadline => {
                broker = b;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => return Err(ServerError::Task("the broker is still in use".into())),
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut shutdown = shared.shutdown_rx();
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Running out of file descriptors must not spin the loop; back off briefly.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let permit = Arc::clone(&limit).try_acquire_owned().ok();
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            shared
                .stats
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
            match permit {
                Some(permit) => {
                    shared
                        .stats
                        .connections_open
                        .fetch_add(1, Ordering::Relaxed);
                    connection::serve_on_own_thread(Arc::clone(&shared), socket, peer).await;
                    shared
                        .stats
                        .connections_open
                        .fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                }
                None => connection::refuse_busy(socket, shared.config.max_connections).await,
            }
        });
    }
    // Graceful shutdown: no new connections; the open ones finish their requests on their own.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn retention_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let b = Arc::clone(&shared.broker);
        let now = sluice_log::Clock::now_ms(&sluice_log::SystemClock);
        match tokio::task::spawn_blocking(move || b.enforce_retention(now)).await {
            Ok(Ok(r)) if r.segments_deleted > 0 || r.partitions_removed > 0 => {
                info!(
                    segments = r.segments_deleted,
                    bytes = r.bytes_deleted,
                    partitions = r.partitions_removed,
                    "retention sweep"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "retention sweep failed"),
            Err(e) => warn!(error = %e, "retention task failed"),
        }
        shared.notify.prune();
    }
}
