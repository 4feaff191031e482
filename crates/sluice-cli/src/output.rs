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

/// How a table column lines up: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Prints a table: a header line, then one line per row, each column as wide as its widest cell
/// and two spaces between columns. Widths come from the cells, not fixed numbers, because group,
/// stream and member names can be up to 128 characters. The last column is not padded, so lines
/// carry no trailing spaces.
pub fn table(
    out: &mut impl Write,
    columns: &[(&str, Align)],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header: Vec<String> = columns.iter().map(|(t, _)| (*t).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let last = i + 1 == columns.len();
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Right => line.push_str(&format!("{cell:>width$}")),
                Align::Left if last => line.push_str(cell),
                Align::Left => line.push_str(&format!("{cell:<width$}")),
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up_without_trailing_spaces() {
        let mut out = Vec::new();
        table(
            &mut out,
            &[
                ("group", Align::Left),
                ("members", Align::Right),
                ("stream", Align::Left),
            ],
            &[
                vec!["billing".into(), "2".into(), "orders".into()],
                vec!["a".into(), "10".into(), "x".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "group    members  stream\nbilling        2  orders\na             10  x\n"
        );
    }
}
