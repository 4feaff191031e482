//! `sluice bench produce` and `sluice bench consume`: a load generator for write throughput and
//! catch-up reads, against a server given with `--server` or, by default, an embedded server on a
//! temporary directory that is deleted afterwards.
//!
//! The generator tries to cost the server as little CPU as it can, since on a small machine the
//! two share the cores: each producer encodes a few distinct puts once and sends them again and
//! again (the server still routes, checks, writes and fsyncs every record of every put), and the
//! readers only count what they receive. Every run is bounded in records or in time.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use sluice_client::{
    Client, ClientError, CreateStream, EncodedBatches, EncodedPut, ProducerConfig, PutRecord,
    ReadFrom, ReadRequest, Router,
};
use sluice_server::{Server, ServerConfig};

use crate::output::{CmdResult, fail, json_line};

mod sink;
use crate::serve::parse_fsync;

/// Bytes of every generated partition key; the rest of a record is its value.
const KEY_BYTES: usize = 16;
/// Distinct puts each producer encodes and sends in turn.
const TEMPLATES_PER_PRODUCER: usize = 8;
/// Records a run sends when neither `--records` nor `--duration` is given.
const DEFAULT_RECORDS: u64 = 1_000_000;
/// Bytes of each write of the raw-disk baseline, as in `dd bs=512K`.
const BASELINE_CHUNK: usize = 512 << 10;
/// Most bytes the raw-disk baseline writes.
const BASELINE_MAX: u64 = 1 << 30;
/// Latencies above this (in microseconds) are recorded as this: an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

type BoxError = Box<dyn std::error::Error>;

/// `sluice bench`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure write throughput and acknowledgement latency: producers put batches of records
    /// into a fresh stream as fast as the server acknowledges them.
    Produce(ProduceArgs),
    /// Measure catch-up reads: readers read a stream from its start to its end (a fresh stream
    /// filled first, unless --stream names one).
    Consume(ConsumeArgs),
}

/// Settings of the embedded server (used when no `--server` is given).
#[derive(Debug, Args)]
pub struct EmbeddedArgs {
    /// fsync policy of the embedded server: always, never or interval:<duration> [default:
    /// always]. With --server the server's own policy applies and this flag is refused.
    #[arg(long)]
    fsync: Option<String>,
    /// Directory in which the embedded server's temporary data directory is made (and deleted
    /// afterwards); put it on the disk to measure [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `sluice bench produce`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Stop after this many records [default: 1000000 when --duration is not given].
    #[arg(long)]
    records: Option<u64>,
    /// Stop after this long (like 30s or 2m); with --records too, whichever comes first.
    #[arg(long)]
    duration: Option<String>,
    /// Bytes of each record: a 16-byte partition key and the rest value (at least 16).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per put.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Puts each producer keeps in flight, pipelined on its connection (default: as many as
    /// the client's `Producer` keeps).
    //
    // A run measures what a producer built on the client gets, as Kafka's `producer-perf-test`
    // runs with its producer's `max.in.flight.requests.per.connection`.
    #[arg(long, default_value_t = ProducerConfig::default().max_in_flight)]
    in_flight: usize,
    /// Partitions of the fresh stream the run creates.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Partition keys: random (a new key per record), N-distinct (N keys, like 100-distinct), or
    /// fixed (one key: every record to one partition).
    #[arg(long, default_value = "random", value_parser = parse_keys)]
    keys: Keys,
    /// Who frames the batches: client (the producer routes each record by its key's hash and
    /// sends one ready-made batch per partition, `PutBatches`, as `Client::put_routed` does), or
    /// server (plain puts that the server routes and frames record by record, `Put`).
    #[arg(long, default_value = "client", value_parser = parse_framing)]
    framing: Framing,
    /// Keep the stream on the server afterwards (with --server; an embedded server's data is
    /// always deleted).
    #[arg(long)]
    keep: bool,
    /// Also measure the raw disk before and after the run, as `dd bs=512K conv=fdatasync` does
    /// (512 KiB writes to a new file beside the data directory, one fdatasync at the end, as many
    /// bytes as the run writes, at most 1 GiB), and the loopback ceiling (the same load against
    /// a sink that acknowledges puts without storing them), and report the run's ratio to each.
    /// Embedded server only.
    #[arg(long)]
    baseline: bool,
    #[command(flatten)]
    embedded: EmbeddedArgs,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `sluice bench consume`
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Read this existing stream, every partition from its first record to its end at the start
    /// of the run. Without it, a fresh stream is created and filled first.
    #[arg(long)]
    stream: Option<String>,
    /// Concurrent readers, each with its own connection; partitions are dealt out among them.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Records to fill the fresh stream with.
    #[arg(long, default_value_t = DEFAULT_RECORDS, conflicts_with = "stream")]
    records: u64,
    /// Bytes of each record of the fresh stream: a 16-byte key and the rest value.
    #[arg(long, default_value_t = 1024, conflicts_with = "stream")]
    record_bytes: usize,
    /// Partitions of the fresh stream.
    #[arg(long, default_value_t = 4, conflicts_with = "stream")]
    partitions: u32,
    /// Most records one read returns.
    #[arg(long, default_value_t = 10_000)]
    max_records: u32,
    /// Most key and value bytes one read returns.
    #[arg(long, default_value_t = 4 << 20)]
    max_bytes: u32,
    /// Stop after this long even if the end is not reached.
    #[arg(long)]
    duration: Option<String>,
    #[command(flatten)]
    embedded: EmbeddedArgs,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// How partition keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// A random key per record.
    Random,
    /// Keys drawn at random from this many distinct ones.
    Distinct(u64),
    /// One key for every record.
    Fixed,
}

impl Keys {
    fn describe(self) -> String {
        match self {
            Self::Random => "random".into(),
            Self::Distinct(n) => format!("{n}-distinct"),
            Self::Fixed => "fixed".into(),
        }
    }

    fn key(self, rng: &mut SmallRng) -> Bytes {
        let text = match self {
            Self::Random => format!("{:016x}", rng.r#gen::<u64>()),
            Self::Distinct(n) => format!("key-{:012}", rng.gen_range(0..n)),
            Self::Fixed => "sluice-bench-key".to_owned(),
        };
        Bytes::from(text)
    }
}

/// Who routes records and frames batches (see `--framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The producer: `PutBatches`.
    Client,
    /// The server: `Put`.
    Server,
}

impl Framing {
    fn describe(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

fn parse_framing(text: &str) -> Result<Framing, String> {
    match text {
        "client" => Ok(Framing::Client),
        "server" => Ok(Framing::Server),
        _ => Err(format!("`{text}` is not client or server")),
    }
}

fn parse_keys(text: &str) -> Result<Keys, String> {
    match text {
        "random" => Ok(Keys::Random),
        "fixed" => Ok(Keys::Fixed),
        other => other
            .strip_suffix("-distinct")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| (1..=999_999_999_999).contains(n))
            .map(Keys::Distinct)
            .ok_or_else(|| {
                format!(
                    "{other:?} is not random, fixed or N-distinct (N from 1 to 999999999999, like 100-distinct)"
                )
            }),
    }
}

fn parse_duration(flag: &str, text: &str) -> Result<Duration, BoxError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        fail(format!(
            "{flag} {text:?} is not a duration (like 30s or 2m): {e}"
        ))
    })?;
    if d.is_zero() {
        return Err(fail(format!("{flag} must be positive")));
    }
    Ok(d)
}

/// Runs `sluice bench`.
pub fn run(server: Option<&str>, cmd: BenchCommand) -> CmdResult {
    match cmd {
        BenchCommand::Produce(args) => produce(server, args),
        BenchCommand::Consume(args) => consume(server, args),
    }
}

/// The server a run talks to: a remote one, or one started here on a temporary directory.
struct Target {
    addr: String,
    embedded: Option<Embedded>,
}

struct Embedded {
    /// The server runs on its own runtime, as it would in its own process.
    runtime: tokio::runtime::Runtime,
    server: Server,
    fsync: String,
    dir: tempfile::TempDir,
}

impl Target {
    fn open(server: Option<&str>, args: &EmbeddedArgs) -> Result<Self, BoxError> {
        if let Some(addr) = server {
            if args.fsync.is_some() || args.dir.is_some() {
                return Err(fail(format!(
                    "--fsync and --dir set up the embedded server; the server at {addr} uses its own settings"
                )));
            }
            return Ok(Self {
                addr: addr.to_owned(),
                embedded: None,
            });
        }
        let fsync = args.fsync.clone().unwrap_or_else(|| "always".into());
        let policy = parse_fsync(&fsync)?;
        let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir_in(&parent)
            .map_err(|e| {
                fail(format!(
                    "cannot make a temporary directory in {}: {e}",
                    parent.display()
                ))
            })?;
        let mut config = ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ServerConfig::default()
        };
        config.broker.log = config.broker.log.clone().fsync(policy);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-server")
            .enable_all()
            .build()?;
        let server = runtime
            .block_on(Server::start(dir.path().join("data"), config))
            .map_err(|e| fail(format!("cannot start the embedded server: {e}")))?;
        Ok(Self {
            addr: server.local_addr().to_string(),
            embedded: Some(Embedded {
                runtime,
                server,
                fsync,
                dir,
            }),
        })
    }

    fn describe(&self) -> String {
        match &self.embedded {
            Some(e) => format!(
                "embedded server on {} (fsync={})",
                e.dir.path().display(),
                e.fsync
            ),
            None => format!("server at {}", self.addr),
        }
    }

    /// The embedded server's temporary directory, where the raw-disk baseline writes.
    fn scratch_dir(&self) -> Option<&std::path::Path> {
        self.embedded.as_ref().map(|e| e.dir.path())
    }

    /// Bytes appended to segment files so far, where the server is embedded and can tell.
    fn disk_bytes(&self) -> Option<u64> {
        self.embedded
            .as_ref()
            .map(|e| e.server.broker().io_stats().bytes_appended)
    }

    /// Shuts an embedded server down and deletes its directory.
    fn close(self) -> Result<(), BoxError> {
        if let Some(e) = self.embedded {
            e.runtime
                .block_on(e.server.shutdown())
                .map_err(|err| fail(format!("the embedded server failed to stop: {err}")))?;
            drop(e.runtime);
            e.dir.close()?;
        }
        Ok(())
    }
}

fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-bench")
        .enable_all()
        .build()
}

async fn connect(addr: &str) -> Result<Client, BoxError> {
    Client::connect(addr).await.map_err(|e| {
        fail(format!(
            "cannot reach the Sluice server at {addr} ({e}); is it running? Without --server, `sluice bench` starts its own"
        ))
    })
}

fn client_err(e: ClientError) -> BoxError {
    match e {
        ClientError::Server { message, .. } => fail(message),
        other => fail(other.to_string()),
    }
}

/// A fresh stream name: a run never writes into data it did not create.
fn fresh_stream_name() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("bench-{}-{ms}", std::process::id())
}

async fn create_stream(client: &Client, name: &str, partitions: u32) -> Result<(), BoxError> {
    client
        .create_stream(CreateStream {
            name: name.to_owned(),
            partitions,
            retention_ms: 24 * 3600 * 1000,
            partition_bytes_max: None,
            record_bytes_max: None,
        })
        .await
        .map_err(client_err)?;
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_MAX_US)
}

/// A progress bar on standard error, drawn only when it is a terminal.
fn progress(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What one load or read phase measured.
struct Measured {
    records: u64,
    /// Key and value bytes.
    bytes: u64,
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// Counters shared by the tasks of one phase.
struct Shared {
    limit: Option<u64>,
    deadline: Option<Instant>,
    claimed: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn new(limit: Option<u64>, duration: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            deadline: duration.map(|d| Instant::now() + d),
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Claims up to `want` records for the next request; `None` once the run is over.
    fn claim(&self, want: u64) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        match self.limit {
            None => Some(want),
            Some(limit) => {
                let before = self.claimed.fetch_add(want, Ordering::Relaxed);
                (before < limit).then(|| want.min(limit - before))
            }
        }
    }
}

/// Updates `bar` from the shared counters until the phase ends.
async fn tick(bar: ProgressBar, shared: Arc<Shared>, started: Instant, by_time: bool) {
    loop {
        let done = shared.done.load(Ordering::Relaxed);
        if by_time {
            bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        } else {
            bar.set_position(done);
        }
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            bar.set_message(format!("{:.0} records/s", done as f64 / secs));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a load or read task returns: its latencies and request count, or why it stopped.
type TaskResult = Result<(Histogram<u64>, u64), String>;

/// Waits for every task and merges their histograms and counts; the first error wins.
async fn join_all(tasks: &mut tokio::task::JoinSet<TaskResult>) -> TaskResult {
    let mut latency = new_histogram();
    let mut requests = 0;
    let mut error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((h, n))) => {
                if let Err(e) = latency.add(h) {
                    error.get_or_insert(e.to_string());
                }
                requests += n;
            }
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(e) => {
                error.get_or_insert(e.to_string());
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((latency, requests)),
    }
}

/// Settings of one produce phase.
struct Load {
    stream: String,
    records: Option<u64>,
    duration: Option<Duration>,
    record_bytes: usize,
    batch: usize,
    producers: usize,
    in_flight: usize,
    keys: Keys,
    /// The stream's routing table when the producers frame their batches (`--framing client`);
    /// `None` for plain puts.
    router: Option<Arc<Router>>,
}

/// One put, encoded once: plain, or framed by the producer.
enum Encoded {
    Put(EncodedPut),
    Batches(EncodedBatches),
}

impl Encoded {
    fn new(
        stream: &str,
        router: Option<&Router>,
        records: &[PutRecord],
    ) -> Result<Self, ClientError> {
        Ok(match router {
            None => Self::Put(EncodedPut::new(stream, records)),
            Some(router) => {
                Self::Batches(EncodedBatches::new(stream, &router.frame(stream, records)?))
            }
        })
    }

    async fn send(&self, client: &Client) -> Result<(), ClientError> {
        match self {
            Self::Put(p) => client.put_encoded(p).await.map(drop),
            Self::Batches(b) => {
                let acks = client.put_batches_encoded(b).await?;
                // The run's stream is fresh and never resharded, so a refused batch means
                // someone else split or merged it: the run's figures would be wrong.
                match acks.iter().find(|a| !a.is_written()) {
                    None => Ok(()),
                    Some(a) => Err(ClientError::Server {
                        code: a.status,
                        kind: sluice_client::ErrorCode::from_u16(a.status),
                        message: format!(
                            "partition {} was closed during the run (resharded by someone else?)",
                            a.partition
                        ),
                    }),
                }
            }
        }
    }
}

/// The records of one producer's puts, and the puts encoded once.
struct Templates {
    records: Vec<Vec<PutRecord>>,
    encoded: Vec<Encoded>,
}

fn templates(load: &Load, producer: usize) -> Result<Templates, ClientError> {
    let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + producer as u64);
    let value_len = load.record_bytes - KEY_BYTES;
    // Values are slices of one random buffer at different starts, so records differ without a
    // buffer each.
    let mut pool = vec![0u8; value_len + 4096];
    rng.fill_bytes(&mut pool);
    let pool = Bytes::from(pool);
    let records: Vec<Vec<PutRecord>> = (0..TEMPLATES_PER_PRODUCER)
        .map(|_| {
            (0..load.batch)
                .map(|_| {
                    let start = rng.gen_range(0..4096);
                    PutRecord {
                        partition_key: load.keys.key(&mut rng),
                        explicit_hash_key: None,
                        value: pool.slice(start..start + value_len),
                    }
                })
                .collect()
        })
        .collect();
    let encoded = records
        .iter()
        .map(|r| Encoded::new(&load.stream, load.router.as_deref(), r))
        .collect::<Result<_, _>>()?;
    Ok(Templates { records, encoded })
}

/// Puts records as fast as the server acknowledges them, until the record budget or the time
/// is spent.
async fn run_load(addr: &str, load: &Load, bar: &ProgressBar) -> Result<Measured, BoxError> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut clients = Vec::with_capacity(load.producers);
    for _ in 0..load.producers {
        clients.push(connect(addr).await?);
    }
    // The time bound starts with the clock, once every connection is open.
    let shared = Shared::new(load.records, load.duration);
    let started = Instant::now();
    for (p, client) in clients.into_iter().enumerate() {
        let t = Arc::new(templates(load, p).map_err(client_err)?);
        for slot in 0..load.in_flight {
            let (client, t, shared) = (client.clone(), Arc::clone(&t), Arc::clone(&shared));
            let (batch, stream) = (load.batch as u64, load.stream.clone());
            let router = load.router.clone();
            tasks.spawn(async move {
                let mut latency = new_histogram();
                let mut requests = 0u64;
                let mut next = slot;
                while let Some(n) = shared.claim(batch) {
                    let i = next % t.encoded.len();
                    next += 1;
                    let partial;
                    let put = match t.encoded.get(i) {
                        Some(put) if n == batch => put,
                        // The last put of a record budget that the batch does not divide.
                        _ => {
                            let records = t
                                .records
                                .get(i)
                                .map_or(&[][..], |r| r.get(..n as usize).unwrap_or(r.as_slice()));
                            partial = match Encoded::new(&stream, router.as_deref(), records) {
                                Ok(p) => p,
                                Err(e) => return Err(client_err(e).to_string()),
                            };
                            &partial
                        }
                    };
                    let sent = Instant::now();
                    if let Err(e) = put.send(&client).await {
                        shared.stop.store(true, Ordering::Relaxed);
                        return Err(client_err(e).to_string());
                    }
                    latency.saturating_record(elapsed_us(sent));
                    requests += 1;
                    shared.done.fetch_add(n, Ordering::Relaxed);
                }
                Ok((latency, requests))
            });
        }
    }
    let ticker = tokio::spawn(tick(
        bar.clone(),
        Arc::clone(&shared),
        started,
        load.records.is_none(),
    ));
    let joined = join_all(&mut tasks).await;
    let elapsed = started.elapsed();
    ticker.abort();
    let (latency, requests) = joined.map_err(|e| fail(format!("a put failed: {e}")))?;
    let records = shared.done.load(Ordering::Relaxed);
    Ok(Measured {
        records,
        bytes: records * load.record_bytes as u64,
        requests,
        elapsed,
        latency,
    })
}

/// MiB/s of keys and values the load reaches against the loopback sink (see `sink.rs`).
///
/// The sink accepts on a runtime of its own and serves each connection on a thread of its own,
/// as the embedded server does, so that it meets the load as the server does: from other
/// threads, across the loopback, with the same threading. On the load generator's own runtime
/// it would share the generator's threads, and a put would often be taken off the socket by the
/// thread that had just sent it, an advantage no separate server has; on a shared runtime it
/// would stall its other connections during each write, a handicap the server no longer has.
async fn ceiling_run(target: &Target, load: &Load) -> Result<f64, BoxError> {
    let dir = target
        .scratch_dir()
        .ok_or_else(|| fail("the loopback ceiling needs the embedded server's directory"))?
        .to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-sink")
        .enable_all()
        .build()?;
    let started = runtime
        .spawn(async move { sink::Sink::start(&dir).await })
        .await;
    let measured = match started {
        Ok(Ok(sink)) => {
            let bar = ProgressBar::hidden();
            let m = run_load(&sink.addr().to_string(), load, &bar).await;
            // Stopped on its own runtime, which deletes its files before returning.
            let _ = runtime.spawn(sink.stop()).await;
            m
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(fail(format!("the loopback sink failed to start: {e}"))),
    };
    // Dropping a runtime may block, which an async context must not; its tasks are done.
    runtime.shutdown_background();
    let m = measured?;
    Ok(m.bytes as f64 / m.elapsed.as_secs_f64().max(1e-9) / MIB)
}

fn produce(server: Option<&str>, args: ProduceArgs) -> CmdResult {
    if args.record_bytes < KEY_BYTES {
        return Err(fail(format!(
            "--record-bytes must be at least {KEY_BYTES} (the partition key's size)"
        )));
    }
    for (flag, n) in [
        ("--batch", args.batch),
        ("--producers", args.producers),
        ("--in-flight", args.in_flight),
    ] {
        if n == 0 {
            return Err(fail(format!("{flag} must be at least 1")));
        }
    }
    if args.partitions == 0 {
        return Err(fail("--partitions must be at least 1"));
    }
    if args.records == Some(0) {
        return Err(fail("--records must be at least 1"));
    }
    let duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration("--duration", d))
        .transpose()?;
    let records = match (args.records, duration) {
        (None, None) => Some(DEFAULT_RECORDS),
        (r, _) => r,
    };
    if args.baseline && server.is_some() {
        return Err(fail(
            "--baseline measures the disk under the embedded server's directory; against --server, run dd on the server's disk instead",
        ));
    }
    let target = Target::open(server, &args.embedded)?;
    // The baseline writes about as many bytes as the run will (batch and record headers
    // included), so that both see the disk and the page cache alike.
    let baseline_bytes = records
        .filter(|_| duration.is_none())
        .map_or(BASELINE_MAX, |n| {
            (n * (args.record_bytes as u64 + 14)).min(BASELINE_MAX)
        })
        .max(BASELINE_CHUNK as u64);
    let baseline_before = match target.scratch_dir() {
        Some(dir) if args.baseline => Some(disk_baseline(dir, baseline_bytes)?),
        _ => None,
    };
    let mut load = Load {
        stream: fresh_stream_name(),
        records,
        duration,
        record_bytes: args.record_bytes,
        batch: args.batch,
        producers: args.producers,
        in_flight: args.in_flight,
        keys: args.keys,
        router: None,
    };
    let runtime = client_runtime()?;
    let outcome = runtime.block_on(async {
        let admin = connect(&target.addr).await?;
        create_stream(&admin, &load.stream, args.partitions).await?;
        if args.framing == Framing::Client {
            let info = admin
                .describe_stream(&load.stream)
                .await
                .map_err(client_err)?;
            load.router = Some(Arc::new(Router::new(&info)));
        }
        let before = admin.stats().await.map_err(client_err)?;
        // The ceiling is measured before and after the run, like the disk, and the better of the
        // two is kept: on a virtual machine whichever writes into memory the host took back
        // pays for it, and either run can be the one (after a durable run it usually is the
        // second).
        let ceiling_before = if args.baseline {
            Some(ceiling_run(&target, &load).await?)
        } else {
            None
        };
        let disk_before = target.disk_bytes();
        let bar = match records {
            Some(n) => progress(n, "records"),
            None => progress(
                duration.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                "ms",
            ),
        };
        let measured = run_load(&target.addr, &load, &bar).await;
        bar.finish_and_clear();
        let measured = measured?;
        let after = admin.stats().await.map_err(client_err)?;
        let disk = target.disk_bytes().zip(disk_before).map(|(a, b)| a - b);
        if target.embedded.is_none() && !args.keep {
            admin
                .delete_stream(&load.stream)
                .await
                .map_err(client_err)?;
        }
        let fsyncs = after.fsyncs.saturating_sub(before.fsyncs);
        let ceiling = match ceiling_before {
            Some(before) => Some((before, ceiling_run(&target, &load).await?)),
            None => None,
        };
        Ok::<_, BoxError>((measured, fsyncs, disk, after, ceiling))
    });
    drop(runtime);
    let baseline_after = match (target.scratch_dir(), &outcome) {
        (Some(dir), Ok(_)) if args.baseline => Some(disk_baseline(dir, baseline_bytes)?),
        _ => None,
    };
    let described = target.describe();
    target.close()?;
    let (m, fsyncs, disk, stats, ceilings) = outcome?;
    let ceiling = ceilings.map(|(before, after)| before.max(after));
    // The run is compared with the mean of the better way before it and after it.
    let baseline = baseline_before
        .zip(baseline_after)
        .map(|(a, b)| (a, b, (a.best() + b.best()) / 2.0));

    let secs = m.elapsed.as_secs_f64().max(1e-9);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "produce: {} records of {} bytes in {} puts of up to {} ({} keys, framed by the {}), {} producers x {} in flight, {} partitions, {described}",
        m.records,
        args.record_bytes,
        m.requests,
        args.batch,
        args.keys.describe(),
        args.framing.describe(),
        args.producers,
        args.in_flight,
        args.partitions,
    )?;
    write_figures(&mut out, &m, "ack latency")?;
    match disk {
        Some(d) => writeln!(
            out,
            "  disk:        {d} bytes appended to segments ({:.1} MiB/s), {fsyncs} fsyncs",
            d as f64 / secs / MIB
        )?,
        None => writeln!(
            out,
            "  disk:        {fsyncs} fsyncs on the server (bytes on disk are counted only for the embedded server)"
        )?,
    }
    // The server's own view: its latency histograms count since it started (for an embedded
    // server, exactly this run).
    writeln!(
        out,
        "  server:      put p50 {:.2} ms, p99 {:.2} ms (decoded to acknowledged); fsync p50 <= {:.2} ms, p99 <= {:.2} ms{}",
        ms(stats.put_latency_us_p50),
        ms(stats.put_latency_us_p99),
        ms(stats.fsync_latency_us_p50),
        ms(stats.fsync_latency_us_p99),
        if server.is_some() {
            " (since the server started)"
        } else {
            ""
        }
    )?;
    let disk_mib_s = disk.map(|d| d as f64 / secs / MIB);
    let ratio = disk_mib_s.zip(baseline).map(|(d, (_, _, mean))| d / mean);
    if let (Some((before, after, mean)), Some(ratio)) = (baseline, ratio) {
        writeln!(
            out,
            "  raw disk:    512 KiB writes with one fdatasync (dd conv=fdatasync) {:.1} MiB/s before, {:.1} after; with an fdatasync each {:.1} before, {:.1} after",
            before.one_sync, after.one_sync, before.sync_each, after.sync_each
        )?;
        writeln!(
            out,
            "  ratio:       {ratio:.2}x the raw disk (the run's disk MiB/s over the mean of the better baseline before and after, {mean:.1} MiB/s)"
        )?;
    }
    let run_mib_s = m.bytes as f64 / secs / MIB;
    let ceiling_ratio = ceiling.map(|c| run_mib_s / c);
    if let (Some(c), Some(r)) = (ceiling, ceiling_ratio) {
        writeln!(
            out,
            "  ceiling:     {c:.1} MiB/s of keys and values to a loopback sink that only appends each put to a file (no fsync); the run reached {r:.2}x"
        )?;
        if let Some((before, after)) = ceilings {
            writeln!(
                out,
                "               (the better of {before:.1} before the run and {after:.1} after it)"
            )?;
        }
    }
    let rss = peak_rss_bytes().filter(|_| server.is_none());
    if let Some(rss) = rss {
        writeln!(
            out,
            "  peak RSS:    {:.1} MiB (this process: embedded server and load generator)",
            rss as f64 / MIB
        )?;
    }
    if args.json {
        let mut v = report_json("produce", &m);
        if let Some(o) = v.as_object_mut() {
            o.insert("record_bytes".into(), json!(args.record_bytes));
            o.insert("batch".into(), json!(args.batch));
            o.insert("producers".into(), json!(args.producers));
            o.insert("in_flight".into(), json!(args.in_flight));
            o.insert("partitions".into(), json!(args.partitions));
            o.insert("keys".into(), json!(args.keys.describe()));
            o.insert("framing".into(), json!(args.framing.describe()));
            o.insert("server".into(), json!(server.unwrap_or("embedded")));
            o.insert(
                "fsync".into(),
                json!(
                    server
                        .is_none()
                        .then(|| args.embedded.fsync.as_deref().unwrap_or("always"))
                ),
            );
            o.insert("disk_bytes".into(), json!(disk));
            o.insert("disk_mib_per_sec".into(), json!(disk_mib_s));
            o.insert("baseline_mib_per_sec".into(), json!(baseline.map(|b| b.2)));
            for (key, value) in [
                ("baseline_dd_before", baseline.map(|b| b.0.one_sync)),
                ("baseline_dd_after", baseline.map(|b| b.1.one_sync)),
                ("baseline_sync_each_before", baseline.map(|b| b.0.sync_each)),
                ("baseline_sync_each_after", baseline.map(|b| b.1.sync_each)),
            ] {
                o.insert(format!("{key}_mib_per_sec"), json!(value));
            }
            o.insert("ratio_to_baseline".into(), json!(ratio));
            o.insert("ceiling_mib_per_sec".into(), json!(ceiling));
            o.insert(
                "ceiling_before_mib_per_sec".into(),
                json!(ceilings.map(|c| c.0)),
            );
            o.insert(
                "ceiling_after_mib_per_sec".into(),
                json!(ceilings.map(|c| c.1)),
            );
            o.insert("ratio_to_ceiling".into(), json!(ceiling_ratio));
            o.insert("fsyncs".into(), json!(fsyncs));
            o.insert(
                "server_put_p50_ms".into(),
                json!(ms(stats.put_latency_us_p50)),
            );
            o.insert(
                "server_put_p99_ms".into(),
                json!(ms(stats.put_latency_us_p99)),
            );
            o.insert(
                "server_fsync_p50_ms".into(),
                json!(ms(stats.fsync_latency_us_p50)),
            );
            o.insert(
                "server_fsync_p99_ms".into(),
                json!(ms(stats.fsync_latency_us_p99)),
            );
            o.insert("peak_rss_bytes".into(), json!(rss));
        }
        json_line(&mut out, &v)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

const MIB: f64 = 1024.0 * 1024.0;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn write_figures(out: &mut impl Write, m: &Measured, what: &str) -> std::io::Result<()> {
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "  throughput:  {:.0} records/s, {:.1} MiB/s of keys and values, over {:.2} s",
        m.records as f64 / secs,
        m.bytes as f64 / secs / MIB,
        secs
    )?;
    let h = &m.latency;
    writeln!(
        out,
        "  {what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}

fn report_json(command: &str, m: &Measured) -> serde_json::Value {
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    let h = &m.latency;
    json!({
        "command": command,
        "records": m.records,
        "bytes": m.bytes,
        "requests": m.requests,
        "elapsed_s": secs,
        "records_per_sec": m.records as f64 / secs,
        "mib_per_sec": m.bytes as f64 / secs / MIB,
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// The raw disk's sequential write bandwidth in MiB/s, two ways, each writing `bytes` in 512 KiB
/// writes to a new file in `dir` (deleted afterwards): as `dd if=/dev/zero of=FILE bs=512K
/// conv=fdatasync` does, with one `fdatasync` at the end; and with an `fdatasync` after every
/// write, the discipline of a log that acknowledges each append. The better of the two is what
/// the run is compared with.
fn disk_baseline(dir: &std::path::Path, bytes: u64) -> Result<Baseline, BoxError> {
    let path = dir.join("baseline");
    let mut rng = SmallRng::seed_from_u64(0xba5e);
    let mut chunk = vec![0u8; BASELINE_CHUNK];
    rng.fill_bytes(&mut chunk);
    let written = bytes.div_ceil(BASELINE_CHUNK as u64) * BASELINE_CHUNK as u64;
    let measure = |sync_each: bool| -> Result<f64, BoxError> {
        let run = || -> std::io::Result<Duration> {
            let mut file = std::fs::File::create(&path)?;
            let started = Instant::now();
            let mut done = 0u64;
            while done < written {
                file.write_all(&chunk)?;
                if sync_each {
                    file.sync_data()?;
                }
                done += BASELINE_CHUNK as u64;
            }
            file.sync_data()?;
            Ok(started.elapsed())
        };
        let took = run();
        let _ = std::fs::remove_file(&path);
        let took = took.map_err(|e| {
            fail(format!(
                "the raw-disk baseline could not write {}: {e}",
                path.display()
            ))
        })?;
        Ok(written as f64 / took.as_secs_f64().max(1e-9) / MIB)
    };
    Ok(Baseline {
        one_sync: measure(false)?,
        sync_each: measure(true)?,
    })
}

/// Raw-disk bandwidth, MiB/s, from [`disk_baseline`].
#[derive(Debug, Clone, Copy)]
struct Baseline {
    /// 512 KiB writes and one fdatasync at the end (`dd conv=fdatasync`).
    one_sync: f64,
    /// An fdatasync after every 512 KiB write.
    sync_each: f64,
}

impl Baseline {
    fn best(self) -> f64 {
        self.one_sync.max(self.sync_each)
    }
}

/// This process's peak resident set size (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One partition to read, from `start` up to `end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    partition: u32,
    start: u64,
    end: u64,
}

/// Reads every span to its end with `consumers` readers, each with its own connection.
async fn run_reads(
    addr: &str,
    stream: &str,
    spans: &[Span],
    args: &ConsumeArgs,
    duration: Option<Duration>,
    bar: &ProgressBar,
) -> Result<Measured, BoxError> {
    let total: u64 = spans.iter().map(|s| s.end - s.start).sum();
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut clients = Vec::with_capacity(args.consumers);
    for _ in 0..args.consumers {
        clients.push(connect(addr).await?);
    }
    let shared = Shared::new(None, duration);
    let started = Instant::now();
    for (c, client) in clients.into_iter().enumerate() {
        let mine: Vec<Span> = spans
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.consumers == c)
            .map(|(_, s)| *s)
            .collect();
        let (shared, bytes, stream) = (Arc::clone(&shared), Arc::clone(&bytes), stream.to_owned());
        let (max_records, max_bytes) = (args.max_records, args.max_bytes);
        tasks.spawn(async move {
            let mut latency = new_histogram();
            let mut requests = 0u64;
            for span in mine {
                let mut next = span.start;
                while next < span.end && shared.claim(0).is_some() {
                    let sent = Instant::now();
                    let r = client
                        .read(ReadRequest {
                            stream: stream.clone(),
                            partition: span.partition,
                            from: ReadFrom::Offset(next),
                            max_records,
                            max_bytes,
                            max_wait_ms: 0,
                        })
                        .await;
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            shared.stop.store(true, Ordering::Relaxed);
                            return Err(client_err(e).to_string());
                        }
                    };
                    latency.saturating_record(elapsed_us(sent));
                    requests += 1;
                    if r.next_offset <= next {
                        // Nothing more below `end` (retention removed it, or the stream was
                        // cut); the span is done.
                        break;
                    }
                    // Records past the end seen at the start of the run are not counted.
                    let kept = r.records.iter().take_while(|w| w.offset < span.end);
                    let (mut n, mut b) = (0u64, 0u64);
                    for w in kept {
                        n += 1;
                        b += (w.key.len() + w.value.len()) as u64;
                    }
                    shared.done.fetch_add(n, Ordering::Relaxed);
                    bytes.fetch_add(b, Ordering::Relaxed);
                    next = r.next_offset;
                }
            }
            Ok((latency, requests))
        });
    }
    let ticker = tokio::spawn(tick(bar.clone(), Arc::clone(&shared), started, false));
    let joined = join_all(&mut tasks).await;
    let elapsed = started.elapsed();
    ticker.abort();
    let (latency, requests) = joined.map_err(|e| fail(format!("a read failed: {e}")))?;
    let records = shared.done.load(Ordering::Relaxed);
    debug_assert!(records <= total);
    Ok(Measured {
        records,
        bytes: bytes.load(Ordering::Relaxed),
        requests,
        elapsed,
        latency,
    })
}

fn consume(server: Option<&str>, args: ConsumeArgs) -> CmdResult {
    if args.consumers == 0 {
        return Err(fail("--consumers must be at least 1"));
    }
    if args.max_records == 0 || args.max_bytes == 0 {
        return Err(fail("--max-records and --max-bytes must be at least 1"));
    }
    if args.stream.is_none() {
        if args.record_bytes < KEY_BYTES {
            return Err(fail(format!(
                "--record-bytes must be at least {KEY_BYTES} (the partition key's size)"
            )));
        }
        if args.partitions == 0 || args.records == 0 {
            return Err(fail("--partitions and --records must be at least 1"));
        }
    }
    let duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration("--duration", d))
        .transpose()?;
    let target = Target::open(server, &args.embedded)?;
    let runtime = client_runtime()?;
    let outcome = runtime.block_on(async {
        let admin = connect(&target.addr).await?;
        let (stream, fresh) = match &args.stream {
            Some(s) => (s.clone(), false),
            None => {
                let load = Load {
                    stream: fresh_stream_name(),
                    records: Some(args.records),
                    duration: None,
                    record_bytes: args.record_bytes,
                    batch: 500,
                    producers: 4,
                    in_flight: 1,
                    keys: Keys::Random,
                    router: None,
                };
                create_stream(&admin, &load.stream, args.partitions).await?;
                let bar = progress(args.records, "records filled");
                let filled = run_load(&target.addr, &load, &bar).await;
                bar.finish_and_clear();
                let filled = filled?;
                eprintln!(
                    "filled {} with {} records in {:.2} s",
                    load.stream,
                    filled.records,
                    filled.elapsed.as_secs_f64()
                );
                (load.stream, true)
            }
        };
        let info = admin.describe_stream(&stream).await.map_err(client_err)?;
        let spans: Vec<Span> = info
            .partitions
            .iter()
            .filter(|p| p.end_offset > p.start_offset)
            .map(|p| Span {
                partition: p.id,
                start: p.start_offset,
                end: p.end_offset,
            })
            .collect();
        let total: u64 = spans.iter().map(|s| s.end - s.start).sum();
        let bar = progress(total, "records");
        let measured = run_reads(&target.addr, &stream, &spans, &args, duration, &bar).await;
        bar.finish_and_clear();
        let measured = measured?;
        if fresh && target.embedded.is_none() {
            admin.delete_stream(&stream).await.map_err(client_err)?;
        }
        Ok::<_, BoxError>((measured, stream, spans.len()))
    });
    drop(runtime);
    let described = target.describe();
    target.close()?;
    let (m, stream, partitions) = outcome?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "consume: {} records of {stream} from {partitions} partitions in {} reads by {} consumers, {described}",
        m.records, m.requests, args.consumers,
    )?;
    write_figures(&mut out, &m, "read latency")?;
    let rss = peak_rss_bytes().filter(|_| server.is_none());
    if let Some(rss) = rss {
        writeln!(
            out,
            "  peak RSS:    {:.1} MiB (this process: embedded server and readers)",
            rss as f64 / MIB
        )?;
    }
    if args.json {
        let mut v = report_json("consume", &m);
        if let Some(o) = v.as_object_mut() {
            o.insert("stream".into(), json!(stream));
            o.insert("partitions".into(), json!(partitions));
            o.insert("consumers".into(), json!(args.consumers));
            o.insert("server".into(), json!(server.unwrap_or("embedded")));
            o.insert("peak_rss_bytes".into(), json!(rss));
        }
        json_line(&mut out, &v)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
