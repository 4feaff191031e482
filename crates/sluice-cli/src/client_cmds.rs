//! The commands that talk to a running server: `stream ...`, `put`, `read` (`read --group` is in
//! `group_cmds.rs`).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_client::{
    Client, ClientError, CreateStream, Producer, ProducerConfig, PutRecord, ReadFrom, ReadRequest,
    StreamInfo, WireRecord,
};

use crate::output::{CmdResult, fail, json_line};

/// `sluice stream ...`
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Create {
        /// Stream name: 1 to 128 characters of [A-Za-z0-9_.-].
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// How long records are kept (e.g. 24h, 7d, 90s).
        #[arg(long, default_value = "24h")]
        retention: String,
        /// Print the new stream as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List streams.
    List {
        /// One JSON line per stream.
        #[arg(long)]
        json: bool,
    },
    /// Show a stream's settings and partitions.
    Describe {
        /// Stream name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a stream and all its records.
    Delete {
        /// Stream name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Split an open partition in two (at the middle of its hash range by default).
    Split {
        /// Stream name.
        name: String,
        /// Partition id.
        partition: u32,
        /// First hash key (decimal) of the upper child.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Merge two open partitions with adjacent hash ranges.
    Merge {
        /// Stream name.
        name: String,
        /// One partition id.
        a: u32,
        /// The other partition id.
        b: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a stream's retention; it applies at the next retention sweep.
    Retention {
        /// Stream name.
        name: String,
        /// New retention (e.g. 48h).
        retention: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `sluice put`
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Stream name.
    pub stream: String,
    /// Partition key of every record (default: a random key per record).
    #[arg(long, conflicts_with = "hash_key")]
    pub key: Option<String>,
    /// Explicit hash key (decimal, 0 to 2^128-1) routing every record.
    #[arg(long)]
    pub hash_key: Option<String>,
    /// The record's value. Without it, every line of standard input is one record.
    pub value: Option<String>,
    /// Print {"partition": P, "offset": O} per record, in input order.
    #[arg(long)]
    pub json: bool,
}

/// `sluice read`
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Stream name.
    pub stream: String,
    /// Partition id (required unless --group is given).
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Read as a member of this consumer group: the group's partitions are shared among its
    /// members, and each printed batch is committed.
    #[arg(long)]
    pub group: Option<String>,
    /// Where to start: earliest, latest, an offset, or an RFC 3339 time. With --group: where
    /// partitions without a checkpoint start, earliest or latest (set by the group's first
    /// member).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// With --group: the member's label in `sluice group describe` [default: HOSTNAME-PID].
    #[arg(long, requires = "group", conflicts_with = "partition")]
    pub member_name: Option<String>,
    /// With --group: a member silent this long loses its partitions to the others.
    #[arg(
        long,
        requires = "group",
        conflicts_with = "partition",
        default_value = "10s"
    )]
    pub session_timeout: String,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keep waiting for new records, like `tail -f`; Ctrl-C ends it.
    #[arg(long)]
    pub follow: bool,
    /// One JSON line per record, value in standard base64.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub(crate) async fn connect(server: &str) -> Result<Client, Box<dyn std::error::Error>> {
    Client::connect(server).await.map_err(|e| {
        fail(format!(
            "cannot reach the Sluice server at {server} ({e}); is it running? Start one with `sluice serve`, or point --server (or SLUICE_SERVER) at it"
        ))
    })
}

/// Turns a client error into a one-line message for the user.
pub(crate) fn client_err(e: ClientError) -> Box<dyn std::error::Error> {
    match e {
        ClientError::Server { message, .. } => fail(message),
        other => fail(other.to_string()),
    }
}

fn retention_ms(text: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let d = humantime::parse_duration(text).map_err(|e| {
        fail(format!(
            "retention {text:?} is not a duration (like 24h or 7d): {e}"
        ))
    })?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn describe_json(s: &StreamInfo) -> Value {
    json!({
        "name": s.name,
        "retention_ms": s.retention_ms,
        "partitions": s.partitions.iter().map(|p| json!({
            "id": p.id,
            "state": if p.open { "open" } else { "closed" },
            "hash_start": p.hash_start.to_string(),
            "hash_end": p.hash_end.to_string(),
            "parents": p.parents,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
        })).collect::<Vec<_>>(),
    })
}

fn describe_text(out: &mut impl Write, s: &StreamInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "stream {}: retention {}, {} partitions",
        s.name,
        humantime::format_duration(Duration::from_millis(s.retention_ms)),
        s.partitions.len()
    )?;
    writeln!(
        out,
        "{:>4}  {:<6}  {:>10}  {:>10}  {:<8}  hash range",
        "id", "state", "start", "end", "parents"
    )?;
    for p in &s.partitions {
        let parents = if p.parents.is_empty() {
            "-".to_string()
        } else {
            p.parents
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        writeln!(
            out,
            "{:>4}  {:<6}  {:>10}  {:>10}  {:<8}  {}..={}",
            p.id,
            if p.open { "open" } else { "closed" },
            p.start_offset,
            p.end_offset,
            parents,
            p.hash_start,
            p.hash_end
        )?;
    }
    Ok(())
}

/// Runs a `stream` subcommand.
pub fn run_stream(server: &str, cmd: StreamCommand) -> CmdResult {
    runtime()?.block_on(async {
        let c = connect(server).await?;
        let mut out = std::io::stdout().lock();
        match cmd {
            StreamCommand::Create {
                name,
                partitions,
                retention,
                json,
            } => {
                let s = c
                    .create_stream(CreateStream {
                        name,
                        partitions,
                        retention_ms: retention_ms(&retention)?,
                        partition_bytes_max: None,
                        record_bytes_max: None,
                    })
                    .await
                    .map_err(client_err)?;
                if json {
                    json_line(&mut out, &describe_json(&s))?;
                } else {
                    writeln!(
                        out,
                        "created stream {} with {} partitions",
                        s.name,
                        s.partitions.len()
                    )?;
                }
            }
            StreamCommand::List { json } => {
                for name in c.list_streams().await.map_err(client_err)? {
                    if json {
                        json_line(&mut out, &json!({ "name": name }))?;
                    } else {
                        writeln!(out, "{name}")?;
                    }
                }
            }
            StreamCommand::Describe { name, json } => {
                let s = c.describe_stream(&name).await.map_err(client_err)?;
                if json {
                    json_line(&mut out, &describe_json(&s))?;
                } else {
                    describe_text(&mut out, &s)?;
                }
            }
            StreamCommand::Delete { name, json } => {
                c.delete_stream(&name).await.map_err(client_err)?;
                if json {
                    json_line(&mut out, &json!({ "deleted": name }))?;
                } else {
                    writeln!(out, "deleted stream {name}")?;
                }
            }
            StreamCommand::Split {
                name,
                partition,
                at,
                json,
            } => {
                let at = at
                    .map(|t| sluice_broker::routing::parse_hash_key(&t))
                    .transpose()
                    .map_err(|e| fail(e.to_string()))?;
                let children = c.split(&name, partition, at).await.map_err(client_err)?;
                if json {
                    json_line(
                        &mut out,
                        &json!({ "parent": partition, "children": children }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "split partition {partition} of {name} into {} and {}",
                        children[0], children[1]
                    )?;
                }
            }
            StreamCommand::Merge { name, a, b, json } => {
                let child = c.merge(&name, a, b).await.map_err(client_err)?;
                if json {
                    json_line(&mut out, &json!({ "parents": [a, b], "child": child }))?;
                } else {
                    writeln!(out, "merged partitions {a} and {b} of {name} into {child}")?;
                }
            }
            StreamCommand::Retention {
                name,
                retention,
                json,
            } => {
                let ms = retention_ms(&retention)?;
                c.set_retention(&name, Duration::from_millis(ms))
                    .await
                    .map_err(client_err)?;
                if json {
                    json_line(&mut out, &json!({ "name": name, "retention_ms": ms }))?;
                } else {
                    writeln!(out, "retention of {name} is now {retention}")?;
                }
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Random partition keys for records put without one, so they spread over the partitions. They
/// need to be unlikely to repeat, not unpredictable: a small generator seeded from the clock and
/// the process id does.
fn key_source() -> impl FnMut() -> Bytes {
    use rand::{Rng, SeedableRng};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(nanos ^ u64::from(std::process::id()) << 32);
    move || Bytes::from(format!("{:032x}", rng.r#gen::<u128>()))
}

/// Runs `put`.
pub fn run_put(server: &str, args: PutArgs) -> CmdResult {
    let hash_key = args
        .hash_key
        .as_deref()
        .map(sluice_broker::routing::parse_hash_key)
        .transpose()
        .map_err(|e| fail(e.to_string()))?;
    let mut random_key = key_source();
    let mut key_for = |k: &Option<String>| -> Bytes {
        match k {
            Some(k) => Bytes::from(k.clone()),
            None => random_key(),
        }
    };
    runtime()?.block_on(async {
        let c = connect(server).await?;
        let mut out = std::io::stdout().lock();
        let ack_line = |out: &mut std::io::StdoutLock<'_>, p: u32, o: u64| -> std::io::Result<()> {
            if args.json {
                json_line(out, &json!({ "partition": p, "offset": o }))
            } else {
                writeln!(out, "partition {p} offset {o}")
            }
        };
        if let Some(value) = &args.value {
            let record = PutRecord {
                partition_key: key_for(&args.key),
                explicit_hash_key: hash_key,
                value: Bytes::from(value.clone()),
            };
            let acks = c
                .put(&args.stream, vec![record])
                .await
                .map_err(client_err)?;
            for a in acks {
                ack_line(&mut out, a.partition, a.offset)?;
            }
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        // One record per line of standard input, streamed through the batching producer; acks
        // are printed in input order as they come back. The producer bounds the batches in
        // flight, and the queue of pending acks is drained as it goes, so memory stays bounded
        // however long the input is.
        let producer = Producer::new(c.clone(), args.stream.clone(), ProducerConfig::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4096);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            loop {
                let mut line = Vec::new();
                match lock.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        if tx.blocking_send(Ok(line)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut pending = VecDeque::new();
        let mut count: u64 = 0;
        while let Some(line) = rx.recv().await {
            let record = PutRecord {
                partition_key: key_for(&args.key),
                explicit_hash_key: hash_key,
                value: Bytes::from(line?),
            };
            pending.push_back(producer.send(record).await.map_err(client_err)?);
            count += 1;
            // Print acknowledgements that are ready, in order, without waiting for the rest.
            while pending.len() > 20_000 {
                if let Some(h) = pending.pop_front() {
                    let a = h.await.map_err(client_err)?;
                    if args.json {
                        ack_line(&mut out, a.partition, a.offset)?;
                    }
                }
            }
        }
        producer.flush().await.map_err(client_err)?;
        while let Some(h) = pending.pop_front() {
            let a = h.await.map_err(client_err)?;
            if args.json {
                ack_line(&mut out, a.partition, a.offset)?;
            }
        }
        producer.close().await;
        out.flush()?;
        if !args.json {
            eprintln!("sluice: put {count} records into {}", args.stream);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn parse_from(text: &str) -> Result<ReadFrom, Box<dyn std::error::Error>> {
    match text {
        "earliest" => Ok(ReadFrom::Earliest),
        "latest" => Ok(ReadFrom::Latest),
        t if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() => t
            .parse()
            .map(ReadFrom::Offset)
            .map_err(|_| fail(format!("offset {t} is too large"))),
        t => {
            let time = humantime::parse_rfc3339_weak(t).map_err(|_| {
                fail(format!(
                    "--from {t:?}: expected earliest, latest, an offset, or an RFC 3339 time like 2026-01-31T12:00:00Z"
                ))
            })?;
            let ms = time
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            Ok(ReadFrom::Timestamp(ms))
        }
    }
}

/// Prints one record as `read` prints it: its raw value on a line, or with `json` the JSON line
/// of DESIGN.md §5. `read --group` prints through this too, so both look the same to scripts.
pub(crate) fn write_record(
    out: &mut impl Write,
    json: bool,
    partition: u32,
    r: &WireRecord,
) -> std::io::Result<()> {
    if json {
        json_line(
            out,
            &json!({
                "partition": partition,
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "key": String::from_utf8_lossy(&r.key),
                "value": base64::engine::general_purpose::STANDARD.encode(&r.value),
            }),
        )
    } else {
        out.write_all(&r.value)?;
        out.write_all(b"\n")
    }
}

/// Runs `read`: of one partition, or as a member of a consumer group with `--group`.
pub fn run_read(server: &str, args: ReadArgs) -> CmdResult {
    // clap makes --partition and --group exclusive, and one of them required.
    let partition = match (args.partition, &args.group) {
        (_, Some(group)) => return crate::group_cmds::run_read(server, &args, group),
        (Some(p), None) => p,
        (None, None) => return Err(fail("give --partition or --group")),
    };
    let from = parse_from(&args.from)?;
    runtime()?.block_on(async {
        let c = connect(server).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut position = from;
        let mut printed: u64 = 0;
        let limit = args.limit.unwrap_or(u64::MAX);
        // One Ctrl-C listener for the whole follow, so a signal between two polls is not lost.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let left = limit - printed;
            if left == 0 {
                break;
            }
            let request = ReadRequest {
                stream: args.stream.clone(),
                partition,
                from: position,
                max_records: u32::try_from(left.min(10_000)).unwrap_or(10_000),
                max_bytes: 4 << 20,
                max_wait_ms: if args.follow { 10_000 } else { 0 },
            };
            let response = if args.follow {
                tokio::select! {
                    r = c.read(request) => r.map_err(client_err)?,
                    // Ctrl-C ends a follow normally, after flushing what was printed.
                    _ = &mut ctrl_c => break,
                }
            } else {
                c.read(request).await.map_err(client_err)?
            };
            for r in &response.records {
                write_record(&mut out, args.json, partition, r)?;
                printed += 1;
            }
            position = ReadFrom::Offset(response.next_offset);
            if args.follow {
                // Show each batch as it arrives.
                out.flush()?;
            } else if response.records.is_empty() || response.next_offset >= response.end_offset {
                break;
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_positions() {
        assert!(matches!(
            parse_from("earliest").unwrap(),
            ReadFrom::Earliest
        ));
        assert!(matches!(parse_from("latest").unwrap(), ReadFrom::Latest));
        assert!(matches!(parse_from("42").unwrap(), ReadFrom::Offset(42)));
        assert!(matches!(
            parse_from("2023-11-14T22:13:20Z").unwrap(),
            ReadFrom::Timestamp(1_700_000_000_000)
        ));
        assert!(parse_from("yesterday").is_err());
        assert!(parse_from("99999999999999999999999").is_err());
    }
}
