//! The consumer-group commands: `group list`, `group describe`, and `read --group`, which
//! consumes a stream as one member of a group. Leases, epochs and the at-least-once contract are
//! explained in `docs/consumer-groups.md`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{Value, json};
use sluice_client::{
    ClientError, ErrorCode, GroupBatch, GroupConfig, GroupConsumer, GroupEvent, GroupInfo,
    GroupSummary, InitialPosition,
};

use crate::client_cmds::{ReadArgs, client_err, connect, runtime, write_record};
use crate::output::{Align, CmdResult, fail, json_line, table};

/// `sluice group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups that have live members or checkpoints.
    List {
        /// One JSON line per group and stream.
        #[arg(long)]
        json: bool,
    },
    /// Show a group's members, and per partition its lease, checkpoint and lag.
    Describe {
        /// Group name.
        group: String,
        /// The stream the group consumes.
        #[arg(long)]
        stream: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Without `--follow`, how long `read --group` waits for a lease when the group's other members
/// hold every partition, before it ends with nothing read.
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// Turns a client error of a group request into a one-line message. The server's messages are
/// written for any client; these say what it means for this command and what to do.
fn group_err(e: ClientError, group: &str, stream: &str) -> Box<dyn std::error::Error> {
    match e.code() {
        Some(ErrorCode::GroupNotFound) => fail(format!(
            "no consumer group {group} on stream {stream}: it has no live members and no checkpoints there (`sluice group list` shows the groups)"
        )),
        Some(ErrorCode::UnknownMember) => fail(format!(
            "the server no longer counts this process as a member of group {group} on {stream}: it was silent longer than its --session-timeout, or the server restarted; its partitions went to other members, and records printed since their last commit will be read again"
        )),
        Some(ErrorCode::TooManyMembers) => fail(format!(
            "cannot join group {group} on {stream}: {}",
            server_message(&e)
        )),
        Some(ErrorCode::NotLeaseHolder) => fail(format!(
            "group {group} on {stream}: this member lost a lease before committing ({}); another member will read those records again",
            server_message(&e)
        )),
        _ => client_err(e),
    }
}

fn server_message(e: &ClientError) -> String {
    match e {
        ClientError::Server { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn initial_name(initial: InitialPosition) -> &'static str {
    match initial {
        InitialPosition::Earliest => "earliest",
        InitialPosition::Latest => "latest",
    }
}

/// Runs a `group` subcommand.
pub fn run(server: &str, cmd: GroupCommand) -> CmdResult {
    runtime()?.block_on(async {
        let c = connect(server).await?;
        let mut out = std::io::stdout().lock();
        match cmd {
            GroupCommand::List { json } => {
                let groups = c.list_groups().await.map_err(client_err)?;
                if json {
                    for g in &groups {
                        json_line(&mut out, &summary_json(g))?;
                    }
                } else if !groups.is_empty() {
                    list_text(&mut out, &groups)?;
                }
            }
            GroupCommand::Describe {
                group,
                stream,
                json,
            } => {
                let info = c
                    .describe_group(&group, &stream)
                    .await
                    .map_err(|e| group_err(e, &group, &stream))?;
                if json {
                    json_line(&mut out, &describe_json(&info))?;
                } else {
                    describe_text(&mut out, &info)?;
                }
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn summary_json(g: &GroupSummary) -> Value {
    json!({
        "group": g.group,
        "stream": g.stream,
        "members": g.members,
        "checkpoints": g.checkpoints,
    })
}

fn list_text(out: &mut impl Write, groups: &[GroupSummary]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.stream.clone(),
                g.members.to_string(),
                g.checkpoints.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            ("group", Align::Left),
            ("stream", Align::Left),
            ("members", Align::Right),
            ("checkpoints", Align::Right),
        ],
        &rows,
    )
}

/// The wire struct `GroupInfo` as JSON, field for field (docs/protocol.md).
fn describe_json(info: &GroupInfo) -> Value {
    json!({
        "group": info.group,
        "stream": info.stream,
        "initial": initial_name(info.initial),
        "members": info.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "name": m.name,
            "session_timeout_ms": m.session_timeout_ms,
            "last_seen_ms_ago": m.last_seen_ms_ago,
            "partitions": m.partitions,
        })).collect::<Vec<_>>(),
        "partitions": info.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "open": p.open,
            "state": p.state,
            "owner": p.owner,
            "epoch": p.epoch,
            "checkpoint": p.checkpoint,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
            "lag_records": p.lag_records,
            "lag_ms": p.lag_ms,
        })).collect::<Vec<_>>(),
    })
}

fn ms_text(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn describe_text(out: &mut impl Write, info: &GroupInfo) -> std::io::Result<()> {
    let n = info.members.len();
    writeln!(
        out,
        "group {} on stream {}: {n} live member{}, initial position {}",
        info.group,
        info.stream,
        if n == 1 { "" } else { "s" },
        initial_name(info.initial)
    )?;
    writeln!(out)?;
    if info.members.is_empty() {
        writeln!(out, "no live members")?;
    } else {
        let rows: Vec<Vec<String>> = info
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    if m.name.is_empty() {
                        "-".to_owned()
                    } else {
                        m.name.clone()
                    },
                    ms_text(u64::from(m.session_timeout_ms)),
                    format!("{} ago", ms_text(m.last_seen_ms_ago)),
                    join_or_dash(&m.partitions),
                ]
            })
            .collect();
        table(
            out,
            &[
                ("member", Align::Left),
                ("name", Align::Left),
                ("session", Align::Right),
                ("last seen", Align::Right),
                ("partitions", Align::Left),
            ],
            &rows,
        )?;
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = info
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                if p.open { "open" } else { "closed" }.to_owned(),
                p.state.clone(),
                p.owner.clone().unwrap_or_else(|| "-".to_owned()),
                p.epoch.to_string(),
                p.checkpoint
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                p.start_offset.to_string(),
                p.end_offset.to_string(),
                p.lag_records.to_string(),
                ms_text(p.lag_ms),
            ]
        })
        .collect();
    table(
        out,
        &[
            ("partition", Align::Right),
            ("writes", Align::Left),
            ("state", Align::Left),
            ("owner", Align::Left),
            ("epoch", Align::Right),
            ("checkpoint", Align::Right),
            ("start", Align::Right),
            ("end", Align::Right),
            ("lag", Align::Right),
            ("lag time", Align::Right),
        ],
        &rows,
    )
}

fn join_or_dash(ids: &[u32]) -> String {
    if ids.is_empty() {
        "-".to_owned()
    } else {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// The label a member shows in `group describe` when `--member-name` is not given: enough to
/// find the process (host and pid).
fn default_member_name() -> String {
    let pid = std::process::id();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control));
    match host {
        Some(host) => format!("{host}-{pid}"),
        None => format!("sluice-read-{pid}"),
    }
}

fn parse_initial(from: &str) -> Result<InitialPosition, Box<dyn std::error::Error>> {
    match from {
        "earliest" => Ok(InitialPosition::Earliest),
        "latest" => Ok(InitialPosition::Latest),
        other => Err(fail(format!(
            "--from {other:?} cannot be used with --group: a group resumes at its checkpoints, and --from only says where partitions without one start (earliest or latest)"
        ))),
    }
}

/// Runs `read STREAM --group GROUP`: joins the group, prints the records of the partitions it
/// leases exactly as `read` prints them, commits each batch once it is printed, and leaves.
pub fn run_read(server: &str, args: &ReadArgs, group: &str) -> CmdResult {
    let initial = parse_initial(&args.from)?;
    let session_timeout = humantime::parse_duration(&args.session_timeout).map_err(|e| {
        fail(format!(
            "--session-timeout {:?} is not a duration (like 10s or 1m): {e}",
            args.session_timeout
        ))
    })?;
    let limit = args.limit.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = GroupConfig::new(group, args.stream.clone());
    config.member_name = args.member_name.clone().unwrap_or_else(default_member_name);
    config.session_timeout = session_timeout;
    config.initial = initial;
    // Batches no larger than what is left to print, so a --limit run reads little past it.
    config.max_records =
        u32::try_from(limit.min(u64::from(config.max_records))).unwrap_or(config.max_records);
    runtime()?.block_on(async {
        let c = connect(server).await?;
        let mut member = GroupConsumer::join(c, config.clone())
            .await
            .map_err(|e| group_err(e, group, &args.stream))?;
        let consumed = consume(&mut member, args, &config, limit).await;
        // Leaving hands the partitions to the other members at once instead of after the session
        // timeout, whatever ended the run: caught up, the limit, Ctrl-C, a closed pipe or an
        // error. After an error the server may already have dropped the member, so only the
        // first error is reported.
        let left = member.leave().await;
        consumed?;
        match left {
            // The server had already forgotten the member: there is nothing left to hand over.
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => Ok(ExitCode::SUCCESS),
            // Most likely the server went away: `next` retries a lost connection by itself, so
            // leaving is where a run that looked caught up finds out.
            Err(e) => Err(fail(format!(
                "could not leave group {group} on {} ({}); its partitions move to other members after the session timeout ({})",
                args.stream,
                server_message(&e),
                humantime::format_duration(session_timeout)
            ))),
            Ok(()) => Ok(ExitCode::SUCCESS),
        }
    })
}

/// The loop of `read --group`: events until caught up (with `--follow`: forever), the limit,
/// Ctrl-C, or an error.
async fn consume(
    member: &mut GroupConsumer,
    args: &ReadArgs,
    config: &GroupConfig,
    limit: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let (group, stream) = (config.group.as_str(), config.stream.as_str());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // `next` long-polls for `max_wait` on a caught-up partition and then polls again; silence
    // for a second longer than that means every leased partition is caught up.
    let idle = config.max_wait + Duration::from_secs(1);
    let started = Instant::now();
    let mut leased_once = false;
    let mut printed: u64 = 0;
    // One Ctrl-C listener for the whole run, so a signal between two events is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while printed < limit {
        // `next` may be dropped mid-way (on the timeout or Ctrl-C): the member's positions
        // only advance when it returns a batch, so nothing is skipped.
        let next = async {
            if args.follow {
                Some(member.next().await)
            } else {
                tokio::time::timeout(idle, member.next()).await.ok()
            }
        };
        let event = tokio::select! {
            e = next => e,
            _ = &mut ctrl_c => break,
        };
        let event = match event {
            Some(e) => e.map_err(|e| group_err(e, group, stream))?,
            // Caught up. A member that has not been given a partition yet waits a little
            // longer: the group's other members may be handing some over.
            None if leased_once => break,
            None if started.elapsed() >= LEASE_WAIT => {
                eprintln!(
                    "sluice: no partition of {stream} was leased to this member within {} (the other members of group {group} may hold them all)",
                    humantime::format_duration(LEASE_WAIT)
                );
                break;
            }
            None => continue,
        };
        match event {
            GroupEvent::Assigned {
                partition,
                epoch,
                start_offset,
            } => {
                leased_once = true;
                eprintln!(
                    "sluice: leased partition {partition} (epoch {epoch}) from offset {start_offset}"
                );
            }
            GroupEvent::Revoked { partition } => {
                eprintln!("sluice: released partition {partition}");
            }
            GroupEvent::Records(batch) => {
                printed += print_and_commit(member, &mut out, args.json, &batch, limit - printed)
                    .await
                    .map_err(|e| match e {
                        Printed::Io(e) => e.into(),
                        Printed::Commit(e) => group_err(e, group, stream),
                    })?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Why printing a batch failed: writing it out (a closed pipe ends the run quietly), or
/// committing it.
#[derive(Debug)]
enum Printed {
    Io(std::io::Error),
    Commit(ClientError),
}

/// Prints up to `left` records of a batch, flushes them, and commits what was printed. Returns
/// how many were printed.
async fn print_and_commit(
    member: &mut GroupConsumer,
    out: &mut impl Write,
    json: bool,
    batch: &GroupBatch,
    left: u64,
) -> Result<u64, Printed> {
    let take = usize::try_from(left).map_or(batch.records.len(), |l| l.min(batch.records.len()));
    let shown = &batch.records[..take];
    for r in shown {
        write_record(out, json, batch.partition, r).map_err(Printed::Io)?;
    }
    // Committed records are never delivered again: they must be out of this process first.
    out.flush().map_err(Printed::Io)?;
    let Some(last) = shown.last() else {
        return Ok(0);
    };
    // Under --limit, a batch can end past the last record printed; the group resumes after
    // what was printed, not after what was read.
    let next_offset = if take == batch.records.len() {
        batch.next_offset
    } else {
        last.offset + 1
    };
    match member
        .commit_offset(batch.partition, batch.epoch, next_offset)
        .await
    {
        Ok(()) => {}
        // The lease moved on while the batch was printed: this process stalled past its session
        // timeout, or the server restarted, and the member joined again under a new id. The
        // next holder reads these records again: that is the at-least-once contract, not a
        // failure of this run, so it goes on with the leases it holds now.
        Err(e)
            if matches!(
                e.code(),
                Some(ErrorCode::NotLeaseHolder | ErrorCode::UnknownMember)
            ) =>
        {
            eprintln!(
                "sluice: partition {} moved to another member before its last {} records were committed; they will be read again",
                batch.partition,
                shown.len()
            );
        }
        Err(e) => return Err(Printed::Commit(e)),
    }
    Ok(shown.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_earliest_and_latest_start_a_group() {
        assert_eq!(
            parse_initial("earliest").unwrap(),
            InitialPosition::Earliest
        );
        assert_eq!(parse_initial("latest").unwrap(), InitialPosition::Latest);
        let e = parse_initial("42").unwrap_err().to_string();
        assert!(e.contains("--group"), "{e}");
        assert!(parse_initial("2026-01-31T12:00:00Z").is_err());
    }

    #[test]
    fn the_default_member_name_names_the_process() {
        let name = default_member_name();
        assert!(
            name.ends_with(&format!("-{}", std::process::id())),
            "{name}"
        );
        assert!(name.len() <= 256);
    }
}
