//! Helpers shared by the command's integration tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The `sluice` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Starts a prepared `sluice serve --json ...` command and reads the address it listens on from
/// its first line. The caller decides where standard error goes and what it logs.
pub fn spawn_serve(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("serve printed {first:?} ({e}); did it fail to start?"));
    let addr = v["listening"]["native"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    (child, addr)
}
