//! `sluice verify DIR`: reads every segment and index file under a directory and checks every
//! checksum, offset, timestamp and index entry (no server needed).
//!
//! Plain output is one line per problem, `PATH: byte N: MESSAGE`, then a summary line
//! `verified N segments in M partitions: clean` (or `: K problems`). With `--json`: one
//! `{"path", "position", "kind", "message", "repairable"}` object per problem, then
//! `{"segments": N, "partitions": M, "problems": K}`. Exit 0 when clean, 1 when anything is
//! damaged.

use std::fs::{File, TryLockError};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use serde_json::json;
use sluice_broker::LOCK_FILE_NAME;
use sluice_log::io::StdFs;
use sluice_log::verify::{Problem, verify_dir};

use crate::output::{CmdResult, fail, json_line};

/// Arguments of `sluice verify`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A data directory (or any directory below it, such as one partition's).
    pub dir: std::path::PathBuf,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> CmdResult {
    let report = verify_dir(&StdFs, &args.dir).map_err(log_error)?;
    warn_if_in_use(&args.dir);
    let mut out = BufWriter::new(io::stdout().lock());
    for p in &report.problems {
        if args.json {
            json_line(&mut out, &problem_json(p))?;
        } else {
            writeln!(out, "{p}")?;
        }
    }
    let (segments, partitions) = (report.segments, report.partitions.len());
    let problems = report.problems.len();
    if args.json {
        json_line(
            &mut out,
            &json!({ "segments": segments, "partitions": partitions, "problems": problems }),
        )?;
    } else {
        let verdict = match problems {
            0 => "clean".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        };
        writeln!(
            out,
            "verified {} in {}: {verdict}",
            count(segments, "segment", "segments"),
            count(partitions, "partition", "partitions"),
        )?;
    }
    out.flush()?;
    if partitions == 0 {
        eprintln!(
            "sluice: warning: no partition directory (one holding .log segment files) under {}",
            args.dir.display()
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A problem as a JSON object, shared with `sluice inspect`.
pub fn problem_json(p: &Problem) -> serde_json::Value {
    json!({
        "path": p.path.display().to_string(),
        "position": p.position,
        "kind": p.kind.name(),
        "message": p.message(),
        "repairable": p.is_repairable(),
    })
}

/// A storage error as one line for the user: the path and what the system said about it.
pub fn log_error(e: sluice_log::Error) -> Box<dyn std::error::Error> {
    match e {
        sluice_log::Error::Io { path, source } => fail(format!("{}: {source}", path.display())),
        other => fail(other.to_string()),
    }
}

/// Warns when a server holds the data directory that `dir` is in: its active segments may be
/// written while they are read, and a batch half-written at that moment looks like a torn tail.
/// The check takes the directory lock shared and lets it go at once, so it never blocks.
fn warn_if_in_use(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Some(lock) = dir
        .ancestors()
        .map(|a| a.join(LOCK_FILE_NAME))
        .find(|p| p.is_file())
    else {
        return;
    };
    let held = File::open(&lock)
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)));
    if held {
        eprintln!(
            "sluice: warning: a running server holds {}; segments being written may show \
             problems that are not there once it stops",
            lock.display()
        );
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
