//! The `sluice` command driven as a user or a script would: `serve --listen 127.0.0.1:0 --json`
//! on a temporary directory, its address read from its first line, then every client subcommand
//! with the JSON shapes of DESIGN.md §5, exit codes, error messages, `read --follow` receiving a
//! record written after it started, clean shutdown on SIGTERM, and the directory lock.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{BIN, spawn_serve};

/// A `sluice serve` child process, stopped with SIGTERM when dropped.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--json", "--data"])
            .arg(data)
            .args(extra);
        Self::spawn(cmd)
    }

    /// Starts a prepared `sluice serve --json` command and reads its address from its first line.
    fn spawn(mut cmd: Command) -> Self {
        cmd.env("SLUICE_LOG", "warn").stderr(Stdio::piped());
        let (child, addr) = spawn_serve(cmd);
        Self { child, addr }
    }

    fn sluice(&self, args: &[&str]) -> Output {
        sluice(&self.addr, args, None)
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (i32, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--server").arg(addr).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_client_command_prints_the_documented_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);

    let created = json_lines(&s.sluice(&[
        "stream",
        "create",
        "orders",
        "--partitions",
        "2",
        "--retention",
        "2h",
        "--json",
    ]));
    assert_eq!(created[0]["name"], "orders");
    assert_eq!(created[0]["retention_ms"], 7_200_000);
    let listed = json_lines(&s.sluice(&["stream", "list", "--json"]));
    assert_eq!(listed, vec![serde_json::json!({"name": "orders"})]);

    // put: one line per record, in input order, exactly {"partition", "offset"}.
    let one = json_lines(&s.sluice(&["put", "orders", "--key", "user-1", "hello", "--json"]));
    assert_eq!(keys(&one[0]), vec!["partition", "offset"]);
    let p = one[0]["partition"].as_u64().unwrap();
    let many = sluice(
        &s.addr,
        &["put", "orders", "--key", "user-1", "--json"],
        Some(b"a\nb\r\nc\n"),
    );
    let acks = json_lines(&many);
    assert_eq!(acks.len(), 3);
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a["partition"].as_u64(), Some(p), "same key, same partition");
        assert_eq!(a["offset"].as_u64(), Some(i as u64 + 1));
    }
    // Explicit hash keys route; a bad one is a clear error.
    let routed = json_lines(&s.sluice(&["put", "orders", "--hash-key", "0", "x", "--json"]));
    assert_eq!(routed[0]["partition"], 0);
    let bad = s.sluice(&["put", "orders", "--hash-key=-1", "x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("explicit hash key"));

    // read: exact fields, value in standard base64; raw values by default.
    let read = json_lines(&s.sluice(&["read", "orders", "--partition", &p.to_string(), "--json"]));
    assert_eq!(
        keys(&read[0]),
        vec!["partition", "offset", "timestamp_ms", "key", "value"]
    );
    assert_eq!(read[0]["key"], "user-1");
    assert_eq!(read[0]["value"], "aGVsbG8=");
    let values: Vec<&str> = read
        .iter()
        .skip(1)
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, vec!["YQ==", "Yg==", "Yw=="]);
    let raw = s.sluice(&[
        "read",
        "orders",
        "--partition",
        &p.to_string(),
        "--from",
        "1",
        "--limit",
        "2",
    ]);
    assert_eq!(String::from_utf8(raw.stdout).unwrap(), "a\nb\n");
    let latest = s.sluice(&[
        "read",
        "orders",
        "--partition",
        &p.to_string(),
        "--from",
        "latest",
    ]);
    assert!(latest.status.success() && latest.stdout.is_empty());
    let by_time = s.sluice(&[
        "read",
        "orders",
        "--partition",
        &p.to_string(),
        "--from",
        "2000-01-01T00:00:00Z",
        "--limit",
        "1",
    ]);
    assert_eq!(String::from_utf8(by_time.stdout).unwrap(), "hello\n");

    // describe: the documented shape, hash keys as decimal strings, lineage after a split.
    let split = json_lines(&s.sluice(&["stream", "split", "orders", "0", "--json"]));
    assert_eq!(split[0]["children"], serde_json::json!([2, 3]));
    let d = &json_lines(&s.sluice(&["stream", "describe", "orders", "--json"]))[0];
    assert_eq!(keys(d)[..3], ["name", "retention_ms", "partitions"]);
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(
        keys(&parts[0]),
        vec![
            "id",
            "state",
            "hash_start",
            "hash_end",
            "parents",
            "start_offset",
            "end_offset"
        ]
    );
    assert_eq!(parts[0]["state"], "closed");
    assert_eq!(parts[0]["hash_start"], "0");
    assert_eq!(parts[2]["parents"], serde_json::json!([0]));
    assert_eq!(parts[3]["hash_end"], parts[0]["hash_end"]);
    let merged = json_lines(&s.sluice(&["stream", "merge", "orders", "2", "3", "--json"]));
    assert_eq!(merged[0]["child"], 4);
    let ret = json_lines(&s.sluice(&["stream", "retention", "orders", "48h", "--json"]));
    assert_eq!(ret[0]["retention_ms"], 172_800_000);
    let human = s.sluice(&["stream", "describe", "orders"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("closed"));

    // Errors: one line on stderr, non-zero exit, no panic.
    for (args, needle) in [
        (vec!["stream", "describe", "nope"], "does not exist"),
        (vec!["stream", "create", "../etc"], "invalid name"),
        (vec!["stream", "create", "orders"], "already exists"),
        (vec!["read", "orders", "--partition", "9"], "no partition 9"),
        (
            vec!["read", "orders", "--partition", "1", "--from", "yesterday"],
            "RFC 3339",
        ),
        (vec!["stream", "merge", "orders", "0", "1"], "closed"),
        (vec!["read", "orders"], "--partition"),
        (
            vec!["stream", "create", "x", "--partitions", "many"],
            "many",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let out = s.sluice(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
    let deleted = json_lines(&s.sluice(&["stream", "delete", "orders", "--json"]));
    assert_eq!(deleted[0]["deleted"], "orders");
    let (code, _) = s.stop();
    assert_eq!(code, 0, "SIGTERM is a clean shutdown");
}

#[test]
fn follow_receives_a_record_written_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    s.sluice(&["stream", "create", "t"]);
    let mut follower = Command::new(BIN)
        .args([
            "--server",
            &s.addr,
            "read",
            "t",
            "--partition",
            "0",
            "--follow",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // Written after the follower started: it must arrive through the long poll.
    std::thread::sleep(Duration::from_millis(300));
    let put = s.sluice(&["put", "t", "--key", "k", "late-record"]);
    assert!(put.status.success());
    let started = Instant::now();
    let line = lines.next().unwrap().unwrap();
    // A follow polls for up to 10 s at a time: well under that means the put woke the poll.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["value"], "bGF0ZS1yZWNvcmQ=");
    // Ctrl-C (SIGINT) ends a follow with exit 0.
    Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(follower.wait().unwrap().code(), Some(0));
}

#[test]
fn a_closed_pipe_ends_read_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    s.sluice(&["stream", "create", "p"]);
    let input: String = (0..20_000).map(|i| format!("line-{i}\n")).collect();
    let put = sluice(&s.addr, &["put", "p", "--key", "k"], Some(input.as_bytes()));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    // Like `sluice read ... | head -1`: the reader of the pipe goes away after one line.
    let mut reader = Command::new(BIN)
        .args(["--server", &s.addr, "read", "p", "--partition", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(reader.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "line-0\n");
    let out = reader.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clear_errors_for_an_unreachable_server_and_a_locked_directory() {
    // Nothing listens on port 1.
    let out = sluice("127.0.0.1:1", &["stream", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("127.0.0.1:1") && err.contains("sluice serve"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Serve::start(&data, &[]);
    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_ne!(second.status.code(), Some(0));
    assert!(
        err.contains("in use by another broker") && err.contains("pid"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    drop(s);
}

#[test]
fn serve_reads_flags_env_and_config_with_flags_winning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "fsync = \"interval:50ms\"\nmax_connections = 8\n").unwrap();
    // The data directory given three ways: the flag wins over the environment, which wins over
    // the config file.
    std::fs::write(
        &config,
        format!(
            "fsync = \"interval:50ms\"\nmax_connections = 8\npreallocate_bytes = 1048576\ndata = {:?}\n",
            dir.path().join("from-file")
        ),
    )
    .unwrap();
    let serve_with = |flag: Option<&Path>, env: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--json", "--config"])
            .arg(&config)
            .env_remove("SLUICE_DATA");
        if let Some(f) = flag {
            cmd.arg("--data").arg(f);
        }
        if let Some(e) = env {
            cmd.env("SLUICE_DATA", e);
        }
        drop(Serve::spawn(cmd));
    };
    let (flag, env, file) = (
        dir.path().join("from-flag"),
        dir.path().join("from-env"),
        dir.path().join("from-file"),
    );
    serve_with(Some(&flag), Some(&env));
    assert!(flag.join("LOCK").exists() && !env.exists() && !file.exists());
    serve_with(None, Some(&env));
    assert!(env.join("LOCK").exists() && !file.exists());
    serve_with(None, None);
    assert!(file.join("LOCK").exists());
    // A typo in the config file is refused, not ignored.
    std::fs::write(&config, "fsnyc = \"never\"\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
    // fsync=never warns.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--fsync",
        "never",
        "--data",
    ])
    .arg(dir.path().join("never"));
    let (_, err) = Serve::spawn(cmd).stop();
    assert!(err.contains("may be lost on power failure"), "{err}");
}
