//! Writing results: JSON lines with `--json`, plain text otherwise, and a closed pipe (`| head`)
//! treated as a normal end.

use std::fmt;
use std::io::{self, Write};

/// An error for the user: one line, no backtrace.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// The result of a command: the exit code to use, or an error to print.
pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;

/// Builds a user-facing error.
pub fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(CliError(msg.into()))
}

/// Whether an error is a write to a closed pipe, which ends a command quietly.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Prints one JSON value on its own line.
pub fn json_line(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}
