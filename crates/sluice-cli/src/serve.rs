//! `sluice serve`: runs the broker until SIGINT or SIGTERM, then shuts down cleanly.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args as ClapArgs;
use serde::Deserialize;
use sluice_log::FsyncPolicy;
use sluice_server::{Server, ServerConfig};

use crate::output::{CmdResult, fail, json_line};

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// Default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Arguments of `sluice serve`. Flags win over `SLUICE_*` environment variables, which win over
/// the config file, which wins over the defaults.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Data directory [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070; port 0 picks a free port].
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<SocketAddr>,
    /// When a put is acknowledged: always (after fdatasync), interval:<duration> (e.g.
    /// interval:100ms) or never [default: always].
    #[arg(long, env = "SLUICE_FSYNC")]
    fsync: Option<String>,
    /// A TOML file with any of the settings of docs/operations.md.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Print the listening address as one JSON line.
    #[arg(long)]
    json: bool,
}

/// The config file: every key optional, unknown keys refused (a typo must not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    fsync: Option<String>,
    segment_bytes: Option<u64>,
    segment_age: Option<String>,
    index_interval_bytes: Option<u32>,
    preallocate_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_frame_bytes: Option<u32>,
    max_in_flight_per_connection: Option<usize>,
    max_connection_buffer_bytes: Option<usize>,
    max_wait: Option<String>,
    frame_timeout: Option<String>,
    idle_timeout: Option<String>,
    retention_interval: Option<String>,
    shutdown_timeout: Option<String>,
    put_records_max: Option<usize>,
    put_bytes_max: Option<usize>,
    partitions_max: Option<usize>,
}

fn duration(key: &str, text: &str) -> Result<Duration, Box<dyn std::error::Error>> {
    humantime::parse_duration(text).map_err(|e| {
        fail(format!(
            "{key}: {text:?} is not a duration (like 100ms, 30s, 1h): {e}"
        ))
    })
}

/// Parses `always`, `never` or `interval:<duration>`.
pub fn parse_fsync(text: &str) -> Result<FsyncPolicy, Box<dyn std::error::Error>> {
    match text {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => match other.strip_prefix("interval:") {
            Some(d) => {
                let d = duration("fsync interval", d)?;
                if d.is_zero() {
                    return Err(fail("fsync interval must be positive"));
                }
                Ok(FsyncPolicy::Interval(d))
            }
            None => Err(fail(format!(
                "fsync must be always, never or interval:<duration>, not {other:?}"
            ))),
        },
    }
}

fn resolve(args: &Args) -> Result<(PathBuf, ServerConfig, String), Box<dyn std::error::Error>> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read config file {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| fail(format!("config file {}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let data = args
        .data
        .clone()
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen = match args.listen.or(file.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|_| fail("bad default listen address"))?,
    };
    let mut config = ServerConfig {
        listen,
        ..ServerConfig::default()
    };
    let fsync_text = args
        .fsync
        .clone()
        .or(file.fsync)
        .unwrap_or_else(|| "always".into());
    let mut log = config.broker.log.clone().fsync(parse_fsync(&fsync_text)?);
    if let Some(b) = file.segment_bytes {
        log = log.segment_bytes_max(b);
    }
    if let Some(a) = &file.segment_age {
        log = log.segment_age_max(duration("segment_age", a)?);
    }
    if let Some(i) = file.index_interval_bytes {
        log = log.index_interval_bytes(i);
    }
    if let Some(p) = file.preallocate_bytes {
        log = log.preallocate_bytes(p);
    }
    config.broker.log = log;
    let set_dur = |key: &str,
                   v: &Option<String>,
                   slot: &mut Duration|
     -> Result<(), Box<dyn std::error::Error>> {
        if let Some(t) = v {
            *slot = duration(key, t)?;
        }
        Ok(())
    };
    set_dur("max_wait", &file.max_wait, &mut config.max_wait)?;
    set_dur(
        "frame_timeout",
        &file.frame_timeout,
        &mut config.frame_timeout,
    )?;
    set_dur("idle_timeout", &file.idle_timeout, &mut config.idle_timeout)?;
    set_dur(
        "retention_interval",
        &file.retention_interval,
        &mut config.retention_interval,
    )?;
    set_dur(
        "shutdown_timeout",
        &file.shutdown_timeout,
        &mut config.shutdown_timeout,
    )?;
    if let Some(n) = file.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = file.max_frame_bytes {
        config.max_frame_bytes = n;
    }
    if let Some(n) = file.max_in_flight_per_connection {
        config.max_in_flight_per_connection = n.max(1);
    }
    if let Some(n) = file.max_connection_buffer_bytes {
        // Never below one whole frame, or a large request could not be taken at all.
        config.max_connection_buffer_bytes = n.max(config.max_frame_bytes as usize + (1 << 20));
    }
    if let Some(n) = file.put_records_max {
        config.broker.put_records_max = n;
    }
    if let Some(n) = file.put_bytes_max {
        config.broker.put_bytes_max = n;
    }
    if let Some(n) = file.partitions_max {
        config.broker.partitions_max = n;
    }
    Ok((data, config, fsync_text))
}

/// Runs the server until a signal.
pub fn run(args: Args) -> CmdResult {
    let (data, config, fsync_text) = resolve(&args)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if config.broker.log.fsync_policy() == FsyncPolicy::Never {
        eprintln!(
            "sluice: warning: fsync=never: acknowledged data may be lost on power failure; use it only for benchmarks and throwaway data"
        );
    }
    if let Some(open_files) = crate::limits::raise_open_files() {
        let room = crate::limits::connections_within(open_files);
        if room < config.max_connections as u64 {
            eprintln!(
                "sluice: warning: the open-file limit ({open_files}) leaves room for about {room} connections, fewer than max_connections ({}): each takes {} file descriptors; raise the limit (ulimit -n) or lower max_connections",
                config.max_connections,
                crate::limits::DESCRIPTORS_PER_CONNECTION
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::start(&data, config)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let addr = server.local_addr();
        let mut out = std::io::stdout().lock();
        if args.json {
            json_line(
                &mut out,
                &serde_json::json!({"listening": {"native": addr.to_string()}}),
            )?;
        } else {
            writeln!(
                out,
                "sluice: listening on {addr} (data {}, fsync {fsync_text}); Ctrl-C stops it",
                data.display()
            )?;
        }
        out.flush()?;
        drop(out);
        wait_for_signal().await?;
        tracing::info!("signal received; shutting down");
        server.shutdown().await.map_err(|e| fail(e.to_string()))?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
