//! Consumer groups through the `sluice` command, against a real server on 127.0.0.1: `read
//! --group` processes run one after the other print every record exactly once (each resumes at
//! the checkpoints the one before committed, and `--limit` commits only what it printed); two
//! members running at once share the partitions and print each new record once; a member that
//! gets Ctrl-C leaves at once, and says so (exit 2) when the server is gone and it cannot; a
//! closed pipe ends a group read quietly; `group list` and `group describe` print the documented
//! human and JSON shapes; and mistakes are one line on stderr with exit code 2.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{BIN, spawn_serve};

/// A `sluice serve` child process on a temporary directory, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--json", "--data"])
            .arg(dir.path().join("data"))
            .env("SLUICE_LOG", "warn")
            .stderr(Stdio::null());
        let (child, addr) = spawn_serve(cmd);
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn sluice(&self, args: &[&str]) -> Output {
        self.sluice_with_input(args, None)
    }

    fn sluice_with_input(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(BIN)
            .arg("--server")
            .arg(&self.addr)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The first hash key of each partition of a stream, to put records into a chosen one.
    fn hash_starts(&self, stream: &str) -> Vec<String> {
        let d: Value =
            serde_json::from_str(&self.ok(&["stream", "describe", stream, "--json"])).unwrap();
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["hash_start"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Puts `values` into one partition, routed by its first hash key.
    fn put(&self, stream: &str, hash_key: &str, values: &[String]) {
        let input: String = values.iter().map(|v| format!("{v}\n")).collect();
        let out = self.sluice_with_input(
            &["put", stream, "--hash-key", hash_key],
            Some(input.as_bytes()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn describe(&self, group: &str, stream: &str) -> Value {
        serde_json::from_str(&self.ok(&["group", "describe", group, "--stream", stream, "--json"]))
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// The decoded values of `read --json` lines, with their partition and offset.
fn records(lines: &[Value]) -> Vec<(u64, u64, String)> {
    use base64::Engine as _;
    lines
        .iter()
        .map(|r| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(r["value"].as_str().unwrap())
                .unwrap();
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect()
}

fn values(recs: &[(u64, u64, String)]) -> Vec<String> {
    let mut v: Vec<String> = recs.iter().map(|r| r.2.clone()).collect();
    v.sort();
    v
}

/// `count` values per partition, named after the round, the partition and the index.
fn batch(round: &str, partition: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{round}-p{partition}-{i}"))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A `sluice read --group ... --follow` process whose output lines arrive on channels.
struct Member {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Member {
    fn start(addr: &str, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--server", addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until `n` more "leased partition" lines are on stderr, and returns every line seen.
    fn wait_leases(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut leased = 0;
        while leased < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    leased += usize::from(line.starts_with("sluice: leased partition "));
                    seen.push(line);
                }
                Err(e) => panic!("{leased} of {n} leases after {seen:?}: {e:?}"),
            }
        }
        seen
    }

    /// Ctrl-C: the member leaves the group and exits 0.
    fn interrupt(mut self) -> Vec<String> {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "Ctrl-C ends a follow normally");
        // The pipes are closed now, so this ends.
        self.stdout.iter().collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Takes lines from both members until `want` records were printed in all, or a deadline.
fn collect_records(members: &[&Member], want: usize) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<Vec<String>> = vec![Vec::new(); members.len()];
    while got.iter().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
        for (i, m) in members.iter().enumerate() {
            match m.stdout.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => got[i].push(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("member {i} exited"),
            }
        }
    }
    got
}

#[test]
fn readers_in_turn_print_every_record_once_and_the_group_is_listed_and_described() {
    let s = Serve::start();
    s.ok(&["stream", "create", "orders", "--partitions", "4"]);
    let hash = s.hash_starts("orders");
    let mut first_values = Vec::new();
    for (p, h) in hash.iter().enumerate() {
        let v = batch("first", p, 5);
        s.put("orders", h, &v);
        first_values.extend(v);
    }

    // The first reader takes every partition, prints everything, commits and leaves.
    let first = s.sluice(&["read", "orders", "--group", "billing", "--json"]);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    for p in 0..4 {
        assert!(
            err.contains(&format!("sluice: leased partition {p} (epoch ")),
            "{err}"
        );
    }
    let first = records(&json_lines(&String::from_utf8(first.stdout).unwrap()));
    assert_eq!(values(&first), sorted(first_values.clone()));

    // Records put in between; then a second reader resumes at the checkpoints: it prints only
    // the new ones, from offset 5 of each partition.
    let mut second_values = Vec::new();
    for (p, h) in hash.iter().enumerate() {
        let v = batch("second", p, 5);
        s.put("orders", h, &v);
        second_values.extend(v);
    }
    let second = s.sluice(&["read", "orders", "--group", "billing", "--json"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("from offset 5"), "{err}");
    let second = records(&json_lines(&String::from_utf8(second.stdout).unwrap()));
    assert_eq!(values(&second), sorted(second_values.clone()));
    let mut every: Vec<(u64, u64)> = first.iter().chain(&second).map(|r| (r.0, r.1)).collect();
    every.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..4).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
    assert_eq!(every, expected, "every record exactly once");

    // --limit prints and commits only that many; the next reader starts right after them.
    let mut third_values = Vec::new();
    for (p, h) in hash.iter().enumerate() {
        let v = batch("third", p, 3);
        s.put("orders", h, &v);
        third_values.extend(v);
    }
    let limited = s.ok(&["read", "orders", "--group", "billing", "--limit", "2"]);
    assert_eq!(limited.lines().count(), 2, "{limited}");
    let rest = s.ok(&["read", "orders", "--group", "billing"]);
    let mut both: Vec<String> = limited
        .lines()
        .chain(rest.lines())
        .map(String::from)
        .collect();
    both.sort();
    assert_eq!(both, sorted(third_values));

    // group list: one JSON line per group and stream, in the documented shape.
    let listed = json_lines(&s.ok(&["group", "list", "--json"]));
    assert_eq!(
        listed,
        vec![json!({"group": "billing", "stream": "orders", "members": 0, "checkpoints": 4})]
    );
    assert_eq!(
        keys(&listed[0]),
        ["group", "stream", "members", "checkpoints"]
    );
    let human = s.ok(&["group", "list"]);
    let rows: Vec<Vec<&str>> = human
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["group", "stream", "members", "checkpoints"],
            vec!["billing", "orders", "0", "4"]
        ],
        "{human}"
    );

    // group describe --json: the wire struct GroupInfo field for field.
    let d = s.describe("billing", "orders");
    assert_eq!(
        keys(&d),
        ["group", "stream", "initial", "members", "partitions"]
    );
    assert_eq!(d["group"], "billing");
    assert_eq!(d["stream"], "orders");
    assert_eq!(d["initial"], "earliest");
    assert_eq!(d["members"], json!([]), "every reader left");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(
            keys(p),
            [
                "partition",
                "open",
                "state",
                "owner",
                "epoch",
                "checkpoint",
                "start_offset",
                "end_offset",
                "lag_records",
                "lag_ms"
            ]
        );
        assert_eq!(p["partition"], i);
        assert_eq!(p["open"], true);
        assert_eq!(p["state"], "unassigned");
        assert_eq!(p["owner"], Value::Null);
        assert_eq!(p["checkpoint"], 13);
        assert_eq!(p["start_offset"], 0);
        assert_eq!(p["end_offset"], 13);
        assert_eq!(p["lag_records"], 0);
        assert_eq!(p["lag_ms"], 0);
    }

    // A record nobody read yet shows as lag.
    s.put("orders", &hash[2], &["late".to_owned()]);
    let d = s.describe("billing", "orders");
    assert_eq!(d["partitions"][2]["lag_records"], 1);
    assert_eq!(d["partitions"][1]["lag_records"], 0);

    // group describe: a headline, the members (none), and a partitions table.
    let human = s.ok(&["group", "describe", "billing", "--stream", "orders"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(
        lines[0],
        "group billing on stream orders: 0 live members, initial position earliest"
    );
    assert!(lines.contains(&"no live members"), "{human}");
    let table: Vec<Vec<&str>> = lines
        .iter()
        .skip_while(|l| !l.starts_with("partition"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table.len(), 5, "{human}");
    assert_eq!(
        table[0],
        [
            "partition",
            "writes",
            "state",
            "owner",
            "epoch",
            "checkpoint",
            "start",
            "end",
            "lag",
            "lag",
            "time"
        ]
    );
    // partition, writes, state, owner, (epoch,) checkpoint, start, end, lag, lag time.
    let row = &table[3];
    assert_eq!(row[..4], ["2", "open", "unassigned", "-"], "{human}");
    assert_eq!(row[5..], ["13", "0", "14", "1", "0s"], "{human}");
}

#[test]
fn members_share_the_partitions_print_each_record_once_and_leave_on_ctrl_c() {
    let s = Serve::start();
    s.ok(&["stream", "create", "events", "--partitions", "4"]);
    let hash = s.hash_starts("events");
    let mut early = Vec::new();
    for (p, h) in hash.iter().enumerate() {
        let v = batch("early", p, 2);
        s.put("events", h, &v);
        early.extend(v);
    }
    let follow = |name: &str| {
        Member::start(
            &s.addr,
            &[
                "read",
                "events",
                "--group",
                "live",
                "--follow",
                "--member-name",
                name,
                "--session-timeout",
                "1500ms",
            ],
        )
    };

    // Alone, the first member leases all four partitions and prints what is there.
    let a = follow("member-a");
    a.wait_leases(4);
    let got = collect_records(&[&a], early.len());
    assert_eq!(sorted(got[0].clone()), sorted(early.clone()));
    let d = s.describe("live", "events");
    let members = d["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{d}");
    assert_eq!(members[0]["name"], "member-a");
    assert_eq!(members[0]["session_timeout_ms"], 1500);
    assert_eq!(members[0]["partitions"], json!([0, 1, 2, 3]));
    let a_id = members[0]["member_id"].clone();
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["state"], "leased");
        assert_eq!(p["owner"], a_id);
    }
    let listed = json_lines(&s.ok(&["group", "list", "--json"]));
    assert_eq!(listed[0]["members"], 1);

    // A second member joins: two partitions are handed over to it, after the first member
    // committed what it printed, so nothing is printed twice.
    let b = follow("member-b");
    b.wait_leases(2);
    let d = s.describe("live", "events");
    let owners: BTreeMap<String, usize> =
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, p| {
                *m.entry(p["owner"].to_string()).or_default() += 1;
                m
            });
    assert_eq!(owners.values().copied().collect::<Vec<_>>(), [2, 2], "{d}");
    let human = s.ok(&["group", "describe", "live", "--stream", "events"]);
    assert!(
        human.starts_with(
            "group live on stream events: 2 live members, initial position earliest\n"
        ),
        "{human}"
    );
    assert!(
        human.contains("member-a") && human.contains("member-b"),
        "{human}"
    );

    let mut late = Vec::new();
    for (p, h) in hash.iter().enumerate() {
        let v = batch("late", p, 3);
        s.put("events", h, &v);
        late.extend(v);
    }
    let got = collect_records(&[&a, &b], late.len());
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both members read: {got:?}"
    );

    // Ctrl-C: each member commits, leaves at once (well before its session timeout) and exits 0.
    let mut a_rest = a.interrupt();
    let d = s.describe("live", "events");
    assert_eq!(d["members"].as_array().unwrap().len(), 1, "{d}");
    let b_rest = b.interrupt();
    let d = s.describe("live", "events");
    assert_eq!(d["members"], json!([]), "{d}");
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["checkpoint"], 5, "{d}");
    }
    a_rest.extend(b_rest);
    let printed: Vec<String> = got.into_iter().flatten().chain(a_rest).collect();
    assert_eq!(sorted(printed), sorted(late), "each new record once");
}

#[test]
fn mistakes_are_one_line_on_stderr_and_exit_2() {
    let s = Serve::start();
    assert_eq!(s.ok(&["group", "list"]), "", "no groups, nothing printed");
    assert_eq!(s.ok(&["group", "list", "--json"]), "");
    s.ok(&["stream", "create", "orders"]);
    for (args, needle) in [
        (
            vec!["group", "describe", "nope", "--stream", "orders"],
            "no consumer group nope on stream orders",
        ),
        (
            vec!["group", "describe", "nope", "--stream", "missing"],
            "missing",
        ),
        (vec!["group", "describe", "nope"], "--stream"),
        (
            vec!["read", "orders", "--group", "g", "--partition", "0"],
            "cannot be used with",
        ),
        (
            vec!["read", "orders", "--group", "g", "--from", "5"],
            "--from \"5\" cannot be used with --group",
        ),
        (
            vec!["read", "orders", "--partition", "0", "--member-name", "x"],
            "cannot be used with",
        ),
        (
            vec![
                "read",
                "orders",
                "--group",
                "g",
                "--session-timeout",
                "soon",
            ],
            "--session-timeout",
        ),
        (
            vec!["read", "orders", "--group", "g", "--session-timeout", "1ms"],
            "session timeout",
        ),
        (vec!["read", "orders", "--group", "../g"], "invalid name"),
        (vec!["read", "missing", "--group", "g"], "missing"),
    ] {
        let out = s.sluice(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("sluice: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // None of these joined anything.
    assert_eq!(s.ok(&["group", "list"]), "");
}

#[test]
fn a_closed_pipe_ends_a_group_read_quietly() {
    let s = Serve::start();
    s.ok(&["stream", "create", "p"]);
    let lines: Vec<String> = (0..20_000).map(|i| format!("line-{i}")).collect();
    let hash = s.hash_starts("p");
    s.put("p", &hash[0], &lines);
    // Like `sluice read p --group g | head -1`.
    let mut reader = Command::new(BIN)
        .args(["--server", &s.addr, "read", "p", "--group", "g"])
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.lines()
            .all(|l| l.starts_with("sluice: leased partition")),
        "{err}"
    );
    // It left on the way out. Whether its first batch was committed depends on when `head`
    // closed the pipe, so the group may be listed with its checkpoint or not at all.
    for g in json_lines(&s.ok(&["group", "list", "--json"])) {
        assert_eq!(g["members"], 0, "{g}");
    }
}

#[test]
fn a_member_that_cannot_leave_says_so() {
    let s = Serve::start();
    s.ok(&["stream", "create", "gone"]);
    let mut m = Member::start(&s.addr, &["read", "gone", "--group", "g", "--follow"]);
    m.wait_leases(1);
    drop(s);
    Command::new("kill")
        .args(["-INT", &m.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = m.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2));
    let err: Vec<String> = m.stderr.iter().collect();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].starts_with("sluice: could not leave group g on gone"),
        "{err:?}"
    );
}
