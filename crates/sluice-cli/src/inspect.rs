//! `sluice inspect FILE`: what one segment or index file holds, batch by batch or entry by
//! entry, read straight from the file (no server needed).
//!
//! Plain output is a header line, one line per batch or entry, then one line per problem
//! (`PATH: byte N: MESSAGE`, as `sluice verify` prints them). With `--json`: a first line
//! `{"file", "kind", "base_offset", "bytes"}`, one object per batch or entry, and a
//! `{"problem": {...}}` line per problem. Exit 0 when the file is intact, 1 when it is damaged.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args as ClapArgs;
use serde_json::json;
use sluice_log::format::FileKind;
use sluice_log::io::StdFs;
use sluice_log::verify::{BatchSummary, FileContents, FileReport, inspect_file};

use crate::output::{CmdResult, json_line};
use crate::verify::{log_error, problem_json};

/// Arguments of `sluice inspect`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A segment (`.log`), offset index (`.index`) or time index (`.timeindex`) file.
    pub file: std::path::PathBuf,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> CmdResult {
    let report = inspect_file(&StdFs, &args.file).map_err(log_error)?;
    let mut out = BufWriter::new(io::stdout().lock());
    if args.json {
        print_json(&mut out, &report)?;
    } else {
        print_plain(&mut out, &report)?;
    }
    out.flush()?;
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The name of a file kind in JSON output.
fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Segment => "segment",
        FileKind::OffsetIndex => "offset_index",
        FileKind::TimeIndex => "time_index",
    }
}

fn print_json(out: &mut impl Write, report: &FileReport) -> io::Result<()> {
    json_line(
        out,
        &json!({
            "file": report.path.display().to_string(),
            "kind": kind_name(report.kind()),
            "base_offset": report.base_offset,
            "bytes": report.len,
        }),
    )?;
    let base = report.base_offset;
    match &report.contents {
        FileContents::Segment(batches) => {
            for b in batches {
                json_line(
                    out,
                    &json!({
                        "position": b.position,
                        "base_offset": b.base_offset,
                        "records": b.record_count,
                        "first_timestamp_ms": b.first_timestamp_ms,
                        "max_timestamp_ms": b.max_timestamp_ms,
                        "bytes": b.batch_len,
                        "crc": b.crc,
                    }),
                )?;
            }
        }
        FileContents::OffsetIndex(entries) => {
            for e in entries {
                json_line(
                    out,
                    &json!({
                        "relative_offset": e.relative_offset,
                        "offset": base.saturating_add(u64::from(e.relative_offset)),
                        "position": e.position,
                    }),
                )?;
            }
        }
        FileContents::TimeIndex(entries) => {
            for e in entries {
                json_line(
                    out,
                    &json!({
                        "timestamp_ms": e.timestamp_ms,
                        "relative_offset": e.relative_offset,
                        "offset": base.saturating_add(u64::from(e.relative_offset)),
                    }),
                )?;
            }
        }
    }
    for p in &report.problems {
        json_line(out, &json!({ "problem": problem_json(p) }))?;
    }
    Ok(())
}

fn print_plain(out: &mut impl Write, report: &FileReport) -> io::Result<()> {
    let base = report.base_offset;
    let (kind, contents) = match &report.contents {
        FileContents::Segment(batches) => {
            let contents = match (batches.first(), batches.last()) {
                (Some(first), Some(last)) => format!(
                    "{} (offsets {} to {})",
                    count(batches.len(), "batch", "batches"),
                    first.base_offset,
                    last.end_offset().saturating_sub(1)
                ),
                _ => "no batches".to_owned(),
            };
            ("segment", contents)
        }
        FileContents::OffsetIndex(e) => ("offset index", count(e.len(), "entry", "entries")),
        FileContents::TimeIndex(e) => ("time index", count(e.len(), "entry", "entries")),
    };
    let health = match report.problems.len() {
        0 => "intact".to_owned(),
        n => format!("damaged ({})", count(n, "problem", "problems")),
    };
    writeln!(
        out,
        "{}: {kind}, base offset {base}, {} bytes, {contents}, {health}",
        report.path.display(),
        report.len
    )?;
    match &report.contents {
        FileContents::Segment(batches) => {
            for b in batches {
                writeln!(out, "{}", batch_line(b))?;
            }
        }
        FileContents::OffsetIndex(entries) => {
            for (i, e) in entries.iter().enumerate() {
                writeln!(
                    out,
                    "byte {}: offset {} (relative {}) at byte {}",
                    entry_position(i, 8),
                    base.saturating_add(u64::from(e.relative_offset)),
                    e.relative_offset,
                    e.position
                )?;
            }
        }
        FileContents::TimeIndex(entries) => {
            for (i, e) in entries.iter().enumerate() {
                writeln!(
                    out,
                    "byte {}: time {} at offset {} (relative {})",
                    entry_position(i, 12),
                    time(e.timestamp_ms),
                    base.saturating_add(u64::from(e.relative_offset)),
                    e.relative_offset
                )?;
            }
        }
    }
    for p in &report.problems {
        writeln!(out, "{p}")?;
    }
    Ok(())
}

fn batch_line(b: &BatchSummary) -> String {
    let offsets = if b.record_count == 1 {
        format!("offset {} (1 record)", b.base_offset)
    } else {
        format!(
            "offsets {} to {} ({} records)",
            b.base_offset,
            b.end_offset().saturating_sub(1),
            b.record_count
        )
    };
    let times = if b.first_timestamp_ms == b.max_timestamp_ms {
        format!("time {}", time(b.max_timestamp_ms))
    } else {
        format!(
            "time {} to {}",
            time(b.first_timestamp_ms),
            time(b.max_timestamp_ms)
        )
    };
    format!(
        "byte {}: {offsets}, {} bytes, {times}, crc {:#010x}",
        b.position, b.batch_len, b.crc
    )
}

/// Byte position of entry `i` of an index file, after its 16-byte header.
fn entry_position(i: usize, entry_len: u64) -> u64 {
    (i as u64).saturating_mul(entry_len).saturating_add(16)
}

/// A timestamp for people: RFC 3339 in UTC with milliseconds, and the raw value. Timestamps
/// past year 9999 cannot be written that way, so they are shown raw only.
fn time(ms: u64) -> String {
    const RFC3339_MAX_MS: u64 = 253_402_300_800_000;
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) if ms < RFC3339_MAX_MS => {
            format!("{} ({ms} ms)", humantime::format_rfc3339_millis(t))
        }
        _ => format!("{ms} ms"),
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
