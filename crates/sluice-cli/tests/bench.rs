//! `sluice bench produce` and `sluice bench consume` driven as a user would: with the embedded
//! server (its temporary directory gone afterwards), with `--baseline`, with a time bound, and
//! against a running `sluice serve`; the JSON report's figures checked against what was written
//! and read; and the usage mistakes refused with a clear message.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

mod common;

use common::{BIN, spawn_serve};

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .env_remove("SLUICE_SERVER")
        .env("SLUICE_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The JSON object on the last line of a successful run.
fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON: {last:?}: {e}"))
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn produce_with_the_embedded_server_counts_every_record_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_str().unwrap();
    // 2,900 records in puts of 250: the last put holds the 150 left over.
    let out = bench(&[
        "bench",
        "produce",
        "--records",
        "2900",
        "--batch",
        "250",
        "--record-bytes",
        "100",
        "--producers",
        "2",
        "--in-flight",
        "2",
        "--partitions",
        "3",
        "--dir",
        dir,
        "--json",
    ]);
    let v = report(&out);
    assert_eq!(u64_of(&v, "records"), 2900);
    assert_eq!(u64_of(&v, "bytes"), 2900 * 100);
    assert_eq!(u64_of(&v, "requests"), 12);
    assert_eq!(v["fsync"], "always");
    assert_eq!(v["server"], "embedded");
    // By default the producers frame their own batches (`PutBatches`).
    assert_eq!(v["framing"], "client");
    for key in [
        "records_per_sec",
        "mib_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ] {
        assert!(f64_of(&v, key) > 0.0, "{key} in {v}");
    }
    assert!(f64_of(&v, "p50_ms") <= f64_of(&v, "p99_ms"));
    assert!(f64_of(&v, "p99_ms") <= f64_of(&v, "max_ms"));
    // On disk: 14 bytes of header per record, and 40 per batch, one batch per partition a put
    // touched (12 puts over 3 partitions: between 12 and 36 batches).
    let disk = u64_of(&v, "disk_bytes");
    let records_on_disk = 2900 * (100 + 14);
    assert!(
        (records_on_disk + 12 * 40..=records_on_disk + 36 * 40).contains(&disk),
        "{disk}"
    );
    // fsync=always: every put waited for at least one fsync, shared or not.
    assert!(u64_of(&v, "fsyncs") >= 1);
    assert!(u64_of(&v, "peak_rss_bytes") > 0);
    assert!(v["ratio_to_baseline"].is_null());
    assert!(v["ratio_to_ceiling"].is_null());
    assert!(v["ceiling_before_mib_per_sec"].is_null());
    assert!(v["ceiling_after_mib_per_sec"].is_null());
    assert_eq!(entries(scratch.path()), 0, "the temporary data is deleted");
    // The human report comes first.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("produce: 2900 records of 100 bytes"),
        "{text}"
    );
    assert!(text.contains("ack latency: p50"), "{text}");
}

#[test]
fn produce_with_a_baseline() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_str().unwrap();
    let out = bench(&[
        "bench",
        "produce",
        "--records",
        "2000",
        "--batch",
        "100",
        "--keys",
        "10-distinct",
        "--framing",
        "server",
        "--fsync",
        "never",
        "--baseline",
        "--dir",
        dir,
        "--json",
    ]);
    let v = report(&out);
    assert_eq!(u64_of(&v, "records"), 2000);
    assert_eq!(v["fsync"], "never");
    assert_eq!(v["keys"], "10-distinct");
    assert_eq!(v["framing"], "server");
    // Each producer pipelines as the client's `Producer` does by default.
    assert_eq!(u64_of(&v, "in_flight"), 4);
    assert_eq!(u64_of(&v, "fsyncs"), 0);
    for key in [
        "baseline_dd_before_mib_per_sec",
        "baseline_dd_after_mib_per_sec",
        "baseline_sync_each_before_mib_per_sec",
        "baseline_sync_each_after_mib_per_sec",
        "baseline_mib_per_sec",
        "ratio_to_baseline",
        "ceiling_mib_per_sec",
        "ratio_to_ceiling",
    ] {
        assert!(f64_of(&v, key) > 0.0, "{key} in {v}");
    }
    let expected = f64_of(&v, "disk_mib_per_sec") / f64_of(&v, "baseline_mib_per_sec");
    assert!((f64_of(&v, "ratio_to_baseline") - expected).abs() < 1e-9);
    let expected = f64_of(&v, "mib_per_sec") / f64_of(&v, "ceiling_mib_per_sec");
    assert!((f64_of(&v, "ratio_to_ceiling") - expected).abs() < 1e-9);
    // The ceiling is the better of its two runs, both reported.
    let (before, after) = (
        f64_of(&v, "ceiling_before_mib_per_sec"),
        f64_of(&v, "ceiling_after_mib_per_sec"),
    );
    assert!(before > 0.0 && after > 0.0, "{v}");
    assert_eq!(f64_of(&v, "ceiling_mib_per_sec"), before.max(after));
    assert_eq!(entries(scratch.path()), 0, "baseline files are deleted too");
}

#[test]
fn a_time_bound_stops_the_run_by_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let out = bench(&[
        "bench",
        "produce",
        "--duration",
        "300ms",
        "--batch",
        "50",
        "--record-bytes",
        "16",
        "--keys",
        "fixed",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--json",
    ]);
    let v = report(&out);
    assert!(u64_of(&v, "records") > 0);
    assert_eq!(u64_of(&v, "records") % 50, 0, "whole puts only");
    assert!(f64_of(&v, "elapsed_s") >= 0.3, "{v}");
    // Every key the same: one partition, so one batch per put.
    let disk = u64_of(&v, "disk_bytes");
    assert_eq!(
        disk,
        u64_of(&v, "records") * (16 + 14) + u64_of(&v, "requests") * 40
    );
}

#[test]
fn consume_fills_a_fresh_stream_and_reads_all_of_it() {
    let scratch = tempfile::tempdir().unwrap();
    let out = bench(&[
        "bench",
        "consume",
        "--records",
        "5000",
        "--record-bytes",
        "64",
        "--partitions",
        "4",
        "--consumers",
        "3",
        "--max-records",
        "700",
        "--fsync",
        "never",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--json",
    ]);
    let v = report(&out);
    assert_eq!(u64_of(&v, "records"), 5000);
    assert_eq!(u64_of(&v, "bytes"), 5000 * 64);
    assert_eq!(u64_of(&v, "partitions"), 4);
    assert_eq!(u64_of(&v, "consumers"), 3);
    // At most 700 records a read: at least 5000 / 700 reads.
    assert!(u64_of(&v, "requests") >= 8);
    assert!(f64_of(&v, "mib_per_sec") > 0.0);
    assert_eq!(entries(scratch.path()), 0);
}

/// A `sluice serve` child, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn against_a_running_server_the_stream_is_kept_only_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--json", "--data"])
        .arg(data.path())
        .env("SLUICE_LOG", "warn")
        .stderr(Stdio::null());
    let (child, addr) = spawn_serve(cmd);
    let _serve = Serve(child);
    let streams = || -> Vec<String> {
        let out = Command::new(BIN)
            .args(["--server", &addr, "stream", "list"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };

    let v = report(&bench(&[
        "--server",
        &addr,
        "bench",
        "produce",
        "--records",
        "1000",
        "--json",
    ]));
    assert_eq!(v["server"].as_str(), Some(addr.as_str()));
    assert!(v["fsync"].is_null(), "the server's own policy applies");
    assert!(v["disk_bytes"].is_null(), "not known for a remote server");
    assert!(streams().is_empty(), "the stream is deleted afterwards");

    let v = report(&bench(&[
        "--server",
        &addr,
        "bench",
        "produce",
        "--records",
        "1200",
        "--batch",
        "500",
        "--keep",
        "--json",
    ]));
    assert_eq!(u64_of(&v, "records"), 1200);
    let kept = streams();
    assert_eq!(kept.len(), 1);
    let v = report(&bench(&[
        "--server",
        &addr,
        "bench",
        "consume",
        "--stream",
        &kept[0],
        "--consumers",
        "2",
        "--json",
    ]));
    assert_eq!(u64_of(&v, "records"), 1200);
    assert_eq!(u64_of(&v, "bytes"), 1200 * 1024);
    assert_eq!(streams(), kept, "an existing stream is read, never deleted");
}

#[test]
fn usage_mistakes_are_refused_with_a_clear_message() {
    for (args, says) in [
        (
            &[
                "--server",
                "127.0.0.1:1",
                "bench",
                "produce",
                "--fsync",
                "never",
            ][..],
            "--fsync and --dir set up the embedded server",
        ),
        (
            &["--server", "127.0.0.1:1", "bench", "produce", "--baseline"][..],
            "--baseline measures the disk",
        ),
        (
            &["bench", "produce", "--record-bytes", "8"][..],
            "--record-bytes must be at least 16",
        ),
        (&["bench", "produce", "--keys", "some"][..], "N-distinct"),
        (
            &["bench", "produce", "--framing", "both"][..],
            "is not client or server",
        ),
        (&["bench", "produce", "--batch", "0"][..], "--batch must be"),
        (
            &["bench", "produce", "--duration", "soon"][..],
            "is not a duration",
        ),
        (
            &["bench", "produce", "--fsync", "sometimes"][..],
            "fsync must be always, never or interval",
        ),
        (
            &["bench", "consume", "--stream", "s", "--records", "5"][..],
            "cannot be used with",
        ),
        (
            &[
                "--server",
                "127.0.0.1:1",
                "bench",
                "consume",
                "--stream",
                "s",
            ][..],
            "cannot reach the Sluice server at 127.0.0.1:1",
        ),
    ] {
        let out = bench(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // A server whose put limit a run exceeds names the limit, and nothing is left behind.
    let scratch = tempfile::tempdir().unwrap();
    let out = bench(&[
        "bench",
        "produce",
        "--records",
        "1000",
        "--batch",
        "501",
        "--dir",
        scratch.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("501") && err.contains("500"), "{err}");
    assert_eq!(entries(scratch.path()), 0);
}
