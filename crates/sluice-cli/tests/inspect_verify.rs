//! `sluice inspect` and `sluice verify` on a real data directory written by the broker and
//! closed, run as the built binary: a clean directory verifies clean, one flipped byte in a
//! sealed segment is found at its file and batch, inspect lists a segment's batches and an
//! index's entries, and a missing file or directory is a one-line error with exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sluice_broker::{Broker, BrokerOptions, PutRecord, StreamConfig};
use sluice_log::{FsyncPolicy, LogOptions};

fn sluice(args: &[&str], path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg(path)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run sluice")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .expect("utf-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout_lines(out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A stopped server's data directory: two partitions of small segments, indexed every 256 bytes.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        log: LogOptions::default()
            .segment_bytes_max(2048)
            .index_interval_bytes(256)
            .fsync(FsyncPolicy::Never),
        ..BrokerOptions::default()
    };
    let broker = Broker::open(dir.path(), options).unwrap();
    let config = StreamConfig {
        partitions: 2,
        ..StreamConfig::default()
    };
    broker.create_stream("events", config).unwrap();
    for i in 0..60 {
        let records: Vec<PutRecord> = (0..4)
            .map(|j| PutRecord::new(format!("key-{i}-{j}"), vec![b'v'; 100]))
            .collect();
        broker.put("events", &records).unwrap();
    }
    broker.close().unwrap();
    dir
}

/// Every partition directory and its segment files, in name order.
fn partitions(data: &Path) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut pending = vec![data.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                logs.push(path);
            }
        }
        if !logs.is_empty() {
            logs.sort();
            out.push((dir, logs));
        }
    }
    out.sort();
    out
}

/// The first sealed segment of the first partition (every partition has several segments).
fn sealed_segment(data: &Path) -> PathBuf {
    let parts = partitions(data);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (_, logs) = &parts[0];
    assert!(logs.len() >= 3, "{logs:?}");
    logs[0].clone()
}

fn segment_count(data: &Path) -> usize {
    partitions(data).iter().map(|(_, logs)| logs.len()).sum()
}

#[test]
fn a_clean_directory_verifies_clean() {
    let data = data_dir();
    let segments = segment_count(data.path());

    let out = sluice(&["verify"], data.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout_lines(&out),
        vec![format!(
            "verified {segments} segments in 2 partitions: clean"
        )]
    );

    let out = sluice(&["verify", "--json"], data.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        json_lines(&out),
        vec![serde_json::json!({"segments": segments, "partitions": 2, "problems": 0})]
    );
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_found_at_its_batch() {
    let data = data_dir();
    let segment = sealed_segment(data.path());
    let segments = segment_count(data.path());

    // Find the second batch with inspect, then flip a byte in its records.
    let batches = json_lines(&sluice(&["inspect", "--json"], &segment));
    let position = batches[2]["position"].as_u64().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[position as usize + 60] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let out = sluice(&["verify"], data.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let prefix = format!("{}: byte {position}: checksum mismatch", segment.display());
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    assert_eq!(
        lines[1],
        format!("verified {segments} segments in 2 partitions: 1 problem")
    );

    let out = sluice(&["verify", "--json"], data.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["path"], segment.display().to_string());
    assert_eq!(lines[0]["position"], position);
    assert_eq!(lines[0]["kind"], "checksum_mismatch");
    assert_eq!(lines[0]["repairable"], false);
    assert!(lines[0]["message"].as_str().unwrap().contains("checksum"));
    assert_eq!(
        lines[1],
        serde_json::json!({"segments": segments, "partitions": 2, "problems": 1})
    );

    // Inspect lists the batch before the damage, then the problem, and exits 1.
    let out = sluice(&["inspect", "--json"], &segment);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["position"], 16);
    assert_eq!(lines[2]["problem"]["position"], position);
    assert_eq!(lines[2]["problem"]["kind"], "checksum_mismatch");
    let out = sluice(&["inspect"], &segment);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout_lines(&out).last().unwrap().starts_with(&prefix));
}

#[test]
fn inspect_lists_a_segments_batches() {
    let data = data_dir();
    let segment = sealed_segment(data.path());
    let len = std::fs::metadata(&segment).unwrap().len();

    let out = sluice(&["inspect", "--json"], &segment);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "file": segment.display().to_string(),
            "kind": "segment",
            "base_offset": 0,
            "bytes": len,
        })
    );
    let batches = &lines[1..];
    assert!(batches.len() >= 2, "{lines:?}");
    let (mut position, mut offset) = (16, 0);
    for b in batches {
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "position",
            "base_offset",
            "records",
            "first_timestamp_ms",
            "max_timestamp_ms",
            "bytes",
        ] {
            assert!(keys.contains(&key), "{key} missing from {b}");
        }
        assert_eq!(b["position"], position);
        assert_eq!(b["base_offset"], offset);
        assert!(b["first_timestamp_ms"].as_u64() <= b["max_timestamp_ms"].as_u64());
        position += b["bytes"].as_u64().unwrap();
        offset += b["records"].as_u64().unwrap();
    }
    assert_eq!(position, len);

    // Plain output: a header line, then one line per batch.
    let out = sluice(&["inspect"], &segment);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let plain = stdout_lines(&out);
    assert_eq!(plain.len(), 1 + batches.len(), "{plain:?}");
    assert!(plain[0].contains("segment"), "{plain:?}");
    assert!(plain[0].ends_with("intact"), "{plain:?}");
    assert!(plain[1].starts_with("byte 16: "), "{plain:?}");
}

#[test]
fn inspect_lists_an_indexs_entries() {
    let data = data_dir();
    let segment = sealed_segment(data.path());
    let positions: Vec<Value> = json_lines(&sluice(&["inspect", "--json"], &segment))[1..]
        .iter()
        .map(|b| b["position"].clone())
        .collect();

    let index = segment.with_extension("index");
    let out = sluice(&["inspect", "--json"], &index);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "offset_index");
    assert_eq!(lines[0]["base_offset"], 0);
    let entries = &lines[1..];
    assert!(!entries.is_empty());
    for e in entries {
        assert!(positions.contains(&e["position"]), "{e} not at a batch");
        assert_eq!(e["offset"], e["relative_offset"]);
    }
    // A sealed index names the segment's last batch.
    assert_eq!(
        entries.last().unwrap()["position"],
        *positions.last().unwrap()
    );

    let out = sluice(&["inspect", "--json"], &segment.with_extension("timeindex"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "time_index");
    assert!(lines.len() >= 2);
    assert!(lines[1]["timestamp_ms"].as_u64().unwrap() > 0);

    let out = sluice(&["inspect"], &index);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_lines(&out).len(), 1 + entries.len());
}

#[test]
fn a_missing_file_or_directory_is_a_one_line_error() {
    let data = data_dir();
    let missing = data.path().join("00000000000000000000.log");
    for (args, path) in [
        (&["inspect"][..], &missing),
        (&["inspect", "--json"][..], &missing),
        (&["verify"][..], &data.path().join("nowhere")),
    ] {
        let out = sluice(args, path);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        assert!(stderr.starts_with("sluice: "), "{stderr:?}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr:?}");
    }
}
