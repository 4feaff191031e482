//! The broker's behaviour: stream catalog operations and their errors, put validation and
//! routing, explicit hash keys, resharding with lineage and per-key order, retention, consumer
//! checkpoints, the directory lock and name rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::routing::parse_hash_key;
use sluice_broker::{
    Broker, BrokerOptions, Error, HashRange, PartitionState, PutRecord, StreamConfig,
};
use sluice_log::ReadLimits;

fn open(dir: &std::path::Path) -> Broker {
    Broker::open(dir, BrokerOptions::default()).unwrap()
}

fn read_all(b: &Broker, stream: &str, partition: u32) -> Vec<sluice_log::StoredRecord> {
    let start = b
        .describe_stream(stream)
        .unwrap()
        .partitions
        .iter()
        .find(|p| p.id == partition)
        .unwrap()
        .start_offset;
    let mut out = Vec::new();
    let mut next = start;
    loop {
        let got = b
            .read(stream, partition, next, ReadLimits::default())
            .unwrap();
        let Some(last) = got.last() else { break };
        next = last.offset + 1;
        out.extend(got);
    }
    out
}

#[test]
fn create_list_describe_delete() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let d = b
        .create_stream(
            "orders",
            StreamConfig {
                partitions: 3,
                retention: Duration::from_secs(3600),
                ..StreamConfig::default()
            },
        )
        .unwrap();
    assert_eq!(d.retention_ms, 3_600_000);
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(d.partitions[0].range.start, 0);
    assert_eq!(d.partitions[2].range.end, u128::MAX);
    assert!(
        d.partitions
            .iter()
            .all(|p| p.state == PartitionState::Open && p.parents.is_empty())
    );
    b.create_stream("audit", StreamConfig::default()).unwrap();
    assert_eq!(b.list_streams(), vec!["audit", "orders"]);
    assert!(matches!(
        b.create_stream("orders", StreamConfig::default()),
        Err(Error::StreamExists(n)) if n == "orders"
    ));
    b.delete_stream("audit").unwrap();
    assert_eq!(b.list_streams(), vec!["orders"]);
    for r in [
        b.delete_stream("audit").map(|_| ()),
        b.describe_stream("audit").map(|_| ()),
        b.put("audit", &[PutRecord::new("k", "v")]).map(|_| ()),
        b.read("audit", 0, 0, ReadLimits::default()).map(|_| ()),
        b.split("audit", 0, None).map(|_| ()),
        b.set_retention("audit", Duration::from_secs(1)),
    ] {
        assert!(matches!(r, Err(Error::StreamNotFound(n)) if n == "audit"));
    }
    assert!(matches!(
        b.read("orders", 9, 0, ReadLimits::default()),
        Err(Error::PartitionNotFound { partition: 9, .. })
    ));
    for bad in [
        StreamConfig {
            partitions: 0,
            ..StreamConfig::default()
        },
        StreamConfig {
            partitions: 5000,
            ..StreamConfig::default()
        },
        StreamConfig {
            retention: Duration::ZERO,
            ..StreamConfig::default()
        },
        StreamConfig {
            record_bytes_max: 0,
            ..StreamConfig::default()
        },
    ] {
        assert!(matches!(
            b.create_stream("x", bad),
            Err(Error::InvalidConfig(_))
        ));
    }
    // Everything survives a restart, and the deleted stream's files are gone.
    b.close().unwrap();
    let b = open(dir.path());
    assert_eq!(b.list_streams(), vec!["orders"]);
    let dirs: Vec<_> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .collect();
    assert_eq!(dirs.len(), 1);
}

#[test]
fn names_cannot_escape_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc",
        "naïve",
        "a b",
        &"n".repeat(129),
    ] {
        assert!(
            matches!(
                b.create_stream(bad, StreamConfig::default()),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    b.create_stream("s", StreamConfig::default()).unwrap();
    assert!(matches!(
        b.commit_checkpoint("../g", "s", 0, 0),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        b.fetch_checkpoint("", "s", 0),
        Err(Error::InvalidName { .. })
    ));
    // Nothing was created outside the data directory.
    let parent: Vec<_> = std::fs::read_dir(dir.path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() == "x" || e.file_name() == "g")
        .collect();
    assert!(parent.is_empty());
}

#[test]
fn puts_are_validated_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(
        dir.path(),
        BrokerOptions {
            put_records_max: 10,
            put_bytes_max: 1000,
            ..BrokerOptions::default()
        },
    )
    .unwrap();
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 2,
            record_bytes_max: 300,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let good = PutRecord::new("k", "v");
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Vec<PutRecord>, Check)> = vec![
        (vec![], |e| matches!(e, Error::EmptyPut)),
        (vec![good.clone(); 11], |e| {
            matches!(e, Error::TooManyRecords { count: 11, max: 10 })
        }),
        (vec![good.clone(), PutRecord::new("", "v")], |e| {
            matches!(e, Error::InvalidPartitionKey { index: 1, len: 0 })
        }),
        (vec![PutRecord::new(vec![b'k'; 257], "v")], |e| {
            matches!(e, Error::InvalidPartitionKey { index: 0, len: 257 })
        }),
        (
            vec![good.clone(), PutRecord::new("k", vec![0u8; 300])],
            |e| {
                matches!(
                    e,
                    Error::RecordTooLarge {
                        index: 1,
                        bytes: 301,
                        max: 300
                    }
                )
            },
        ),
        (vec![PutRecord::new("k", vec![0u8; 250]); 4], |e| {
            matches!(
                e,
                Error::PutTooLarge {
                    bytes: 1004,
                    max: 1000
                }
            )
        }),
    ];
    for (records, check) in cases {
        let err = b.put("s", &records).unwrap_err();
        assert!(check(&err), "unexpected error {err:?}");
    }
    let d = b.describe_stream("s").unwrap();
    assert!(
        d.partitions.iter().all(|p| p.end_offset == 0),
        "a rejected put wrote records"
    );
    // A key of exactly 256 bytes and a record of exactly the limit are fine.
    b.put("s", &[PutRecord::new(vec![b'k'; 256], vec![0u8; 44])])
        .unwrap();
    assert!(matches!(
        parse_hash_key("01"),
        Err(Error::InvalidHashKey(_))
    ));
}

#[test]
fn mixed_keys_are_split_by_partition_and_acked_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 4,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let records: Vec<PutRecord> = (0..200)
        .map(|i| PutRecord::new(format!("key-{}", i % 13), format!("value-{i}")))
        .collect();
    let acks = b.put("s", &records).unwrap();
    assert_eq!(acks.len(), 200);
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (i, ack) in acks.iter().enumerate() {
        let got = b
            .read(
                "s",
                ack.partition,
                ack.offset,
                ReadLimits {
                    records_max: 1,
                    bytes_max: 1 << 20,
                },
            )
            .unwrap();
        assert_eq!(
            got[0].value, records[i].value,
            "record {i} is where its ack says"
        );
        assert_eq!(got[0].key, records[i].partition_key);
        per_partition
            .entry(ack.partition)
            .or_default()
            .push(ack.offset);
    }
    assert!(
        per_partition.len() > 1,
        "13 keys over 4 partitions use several"
    );
    for offsets in per_partition.values() {
        // Input order within a partition is offset order, densely.
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
    }
    // Same key, same partition.
    let mut by_key: BTreeMap<&[u8], u32> = BTreeMap::new();
    for (r, a) in records.iter().zip(&acks) {
        assert_eq!(
            *by_key
                .entry(r.partition_key.as_ref())
                .or_insert(a.partition),
            a.partition
        );
    }
}

#[test]
fn explicit_hash_keys_override_the_partition_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 4,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let ranges: Vec<HashRange> = b
        .describe_stream("s")
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.range)
        .collect();
    for (i, r) in ranges.iter().enumerate() {
        for key in [r.start, r.end] {
            let rec = PutRecord {
                explicit_hash_key: Some(parse_hash_key(&key.to_string()).unwrap()),
                ..PutRecord::new("same-key", "v")
            };
            assert_eq!(b.put("s", &[rec]).unwrap()[0].partition, i as u32);
        }
    }
}

#[test]
fn splits_and_merges_follow_kinesis_rules_and_keep_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 2,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut put_round = |b: &Broker| {
        let records: Vec<PutRecord> = keys
            .iter()
            .map(|k| {
                let n = seq.entry(k.clone()).or_insert(0);
                *n += 1;
                PutRecord::new(k.clone(), n.to_string())
            })
            .collect();
        b.put("s", &records).unwrap();
    };
    put_round(&b);
    let [c1, c2] = b.split("s", 0, None).unwrap();
    assert_eq!([c1, c2], [2, 3]);
    put_round(&b);
    let d = b.describe_stream("s").unwrap();
    let p0 = d.partitions.iter().find(|p| p.id == 0).unwrap();
    assert_eq!(p0.state, PartitionState::Closed);
    assert!(p0.end_offset > 0);
    let (lo, hi) = (&d.partitions[2], &d.partitions[3]);
    assert_eq!(lo.parents, vec![0]);
    assert_eq!(hi.parents, vec![0]);
    assert_eq!(lo.range.start, 0);
    assert_eq!(hi.range.start, 1u128 << 126);
    assert_eq!(lo.range.end + 1, hi.range.start);
    assert_eq!(hi.range.end, p0.range.end);
    // Kinesis's rules.
    assert!(matches!(
        b.split("s", 0, None),
        Err(Error::PartitionClosed { partition: 0, .. })
    ));
    assert!(matches!(
        b.split("s", 2, Some(0)),
        Err(Error::InvalidSplitKey { .. })
    ));
    assert!(matches!(
        b.split("s", 2, Some(u128::MAX)),
        Err(Error::InvalidSplitKey { .. })
    ));
    assert!(matches!(
        b.merge("s", 2, 1),
        Err(Error::NotAdjacent { a: 2, b: 1 })
    ));
    assert!(matches!(b.merge("s", 3, 3), Err(Error::NotAdjacent { .. })));
    assert!(matches!(
        b.merge("s", 0, 2),
        Err(Error::PartitionClosed { partition: 0, .. })
    ));
    // Merge the upper split child with partition 1: adjacent.
    let m = b.merge("s", 3, 1).unwrap();
    assert_eq!(m, 4);
    put_round(&b);
    let d = b.describe_stream("s").unwrap();
    let merged = d.partitions.iter().find(|p| p.id == 4).unwrap();
    assert_eq!(merged.parents, vec![3, 1]);
    assert_eq!(
        merged.range,
        HashRange {
            start: 1u128 << 126,
            end: u128::MAX
        }
    );
    let open_ids: Vec<u32> = d
        .partitions
        .iter()
        .filter(|p| p.state == PartitionState::Open)
        .map(|p| p.id)
        .collect();
    assert_eq!(open_ids, vec![2, 4]);
    // A closed partition is never written again, but reads to its end.
    let end_1 = d.partitions.iter().find(|p| p.id == 1).unwrap().end_offset;
    assert_eq!(read_all(&b, "s", 1).len() as u64, end_1);

    // Per-key order: read every partition, parents before children (lineage order), and each
    // key's sequence numbers come out 1, 2, 3.
    let order = [0u32, 1, 2, 3, 4];
    let mut seen: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for p in order {
        for r in read_all(&b, "s", p) {
            seen.entry(r.key.to_vec())
                .or_default()
                .push(std::str::from_utf8(&r.value).unwrap().parse().unwrap());
        }
    }
    assert_eq!(seen.len(), 20);
    for (k, s) in &seen {
        assert_eq!(s, &vec![1, 2, 3], "key {:?}", String::from_utf8_lossy(k));
    }
    // Lineage and states survive a restart.
    b.close().unwrap();
    let b = open(dir.path());
    assert_eq!(b.describe_stream("s").unwrap(), d);
}

#[test]
fn concurrent_puts_during_reshards_never_write_to_a_closed_partition() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(open(dir.path()));
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 1,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    let recs = [PutRecord::new(
                        format!("k{t}-{}", i % 5),
                        format!("{t}:{}:{i}", i % 5),
                    )];
                    b.put("s", &recs).unwrap();
                }
            })
        })
        .collect();
    // Split repeatedly while the writers run.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        let d = b.describe_stream("s").unwrap();
        let id = d
            .partitions
            .iter()
            .find(|p| p.state == PartitionState::Open)
            .unwrap()
            .id;
        b.split("s", id, None).unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    let d = b.describe_stream("s").unwrap();
    let mut total = 0;
    let mut by_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    // Partition ids grow with lineage depth, so id order reads parents before children.
    for p in &d.partitions {
        let records = read_all(&b, "s", p.id);
        assert_eq!(
            records.len() as u64,
            p.end_offset - p.start_offset,
            "partition {} holds exactly its range",
            p.id
        );
        total += records.len();
        for r in records {
            let i: u64 = std::str::from_utf8(&r.value)
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            by_key.entry(r.key.to_vec()).or_default().push(i);
        }
    }
    assert_eq!(total, 600);
    for (k, seq) in by_key {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "key {:?} out of order: {seq:?}",
            String::from_utf8_lossy(&k)
        );
    }
}

#[test]
fn retention_expires_data_and_removes_drained_closed_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BrokerOptions {
        log: sluice_log::LogOptions::default().segment_bytes_max(4096),
        ..BrokerOptions::default()
    };
    let b = Broker::open(dir.path(), opts.clone()).unwrap();
    b.create_stream(
        "s",
        StreamConfig {
            retention: Duration::from_secs(3600),
            ..StreamConfig::default()
        },
    )
    .unwrap();
    for i in 0..50 {
        b.put("s", &[PutRecord::new("k", vec![i as u8; 500])])
            .unwrap();
    }
    b.split("s", 0, None).unwrap();
    let now = sluice_log::Clock::now_ms(&sluice_log::SystemClock);
    // Nothing has expired yet.
    let r = b.enforce_retention(now).unwrap();
    assert_eq!((r.segments_deleted, r.partitions_removed), (0, 0));
    // Shorter retention takes effect at the next sweep.
    b.set_retention("s", Duration::from_secs(60)).unwrap();
    assert_eq!(b.describe_stream("s").unwrap().retention_ms, 60_000);
    let r = b.enforce_retention(now + 61_000).unwrap();
    assert!(r.segments_deleted > 0);
    assert_eq!(
        r.partitions_removed, 1,
        "the closed, fully expired parent is gone"
    );
    let d = b.describe_stream("s").unwrap();
    assert_eq!(
        d.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        d.partitions[0].parents,
        vec![0],
        "lineage still names the removed parent"
    );
    assert!(!dir.path().join("streams").join("s.0").join("0").exists());
    b.close().unwrap();
    let b = Broker::open(dir.path(), opts).unwrap();
    assert_eq!(b.describe_stream("s").unwrap(), d);
}

#[test]
fn checkpoints_are_durable_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 2,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    let acks = b
        .put("s", &[PutRecord::new("a", "1"), PutRecord::new("a", "2")])
        .unwrap();
    let p = acks[0].partition;
    assert_eq!(b.fetch_checkpoint("g", "s", p).unwrap(), None);
    b.commit_checkpoint("g", "s", p, 1).unwrap();
    b.commit_checkpoint("g", "s", p, 2).unwrap();
    b.commit_checkpoint("other", "s", p, 0).unwrap();
    assert!(matches!(
        b.commit_checkpoint("g", "s", p, 3),
        Err(Error::CheckpointBeyondEnd {
            offset: 3,
            end: 2,
            ..
        })
    ));
    assert!(matches!(
        b.commit_checkpoint("g", "s", 7, 0),
        Err(Error::PartitionNotFound { .. })
    ));
    assert!(matches!(
        b.commit_checkpoint("g", "nope", 0, 0),
        Err(Error::StreamNotFound(_))
    ));
    drop(b); // no clean close: checkpoints were durable when committed
    let b = open(dir.path());
    assert_eq!(b.fetch_checkpoint("g", "s", p).unwrap(), Some(2));
    assert_eq!(b.fetch_checkpoint("other", "s", p).unwrap(), Some(0));
    // A stream created again under the same name starts without checkpoints.
    b.delete_stream("s").unwrap();
    b.create_stream(
        "s",
        StreamConfig {
            partitions: 2,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    assert_eq!(b.fetch_checkpoint("g", "s", p).unwrap(), None);
}

#[test]
fn a_second_broker_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    match Broker::open(dir.path(), BrokerOptions::default()) {
        Err(e @ Error::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    b.close().unwrap();
    // Released on close.
    open(dir.path()).close().unwrap();
}

#[test]
fn a_corrupt_or_missing_catalog_is_an_error_not_an_empty_broker() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream("s", StreamConfig::default()).unwrap();
    b.close().unwrap();
    let path = dir.path().join("catalog");
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    match Broker::open(dir.path(), BrokerOptions::default()) {
        Err(Error::CorruptMetadata { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corrupt catalog error, got {other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Broker::open(dir.path(), BrokerOptions::default()),
        Err(Error::CorruptMetadata { .. })
    ));
    std::fs::write(&path, &good).unwrap();
    assert_eq!(open(dir.path()).list_streams(), vec!["s"]);
}

#[test]
fn a_submitted_put_splits_into_one_fsync_wait_per_partition_that_needs_one() {
    let records: Vec<PutRecord> = (0..200)
        .map(|i| PutRecord::new(format!("key-{i}"), format!("value-{i}")))
        .collect();
    let config = StreamConfig {
        partitions: 4,
        ..StreamConfig::default()
    };

    // fsync=always: every partition written waits for its own fsync.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_stream("s", config.clone()).unwrap();
    let before = b.io_stats();
    let submitted = b.submit_put("s", &records).unwrap();
    assert!(!submitted.is_acknowledged(), "nothing has been fsynced yet");
    let (parts, acks) = submitted.into_parts();
    let written: std::collections::BTreeSet<u32> = acks.iter().map(|a| a.partition).collect();
    assert_eq!(parts.len(), written.len(), "one wait per partition written");
    assert!(written.len() > 1, "200 keys spread over several partitions");
    // Not readable before the fsync: a read at the end sees nothing yet.
    for p in &written {
        assert!(read_all(&b, "s", *p).is_empty());
    }
    let handles: Vec<_> = parts
        .into_iter()
        .map(|part| std::thread::spawn(move || part.wait()))
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let after = b.io_stats();
    assert!(after.fsyncs - before.fsyncs >= written.len() as u64);
    let stored: usize = written.iter().map(|p| read_all(&b, "s", *p).len()).sum();
    assert_eq!(stored, 200);
    // 40 bytes of batch header per partition, 14 of record header per record, keys, values.
    let payload: u64 = records
        .iter()
        .map(|r| (14 + r.partition_key.len() + r.value.len()) as u64)
        .sum();
    assert_eq!(
        after.bytes_appended - before.bytes_appended,
        payload + 40 * written.len() as u64
    );

    // fsync=never: nothing to wait for, so nothing is handed to another thread.
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        log: sluice_log::LogOptions::default().fsync(sluice_log::FsyncPolicy::Never),
        ..BrokerOptions::default()
    };
    let b = Broker::open(dir.path(), options).unwrap();
    b.create_stream("s", config).unwrap();
    let submitted = b.submit_put("s", &records).unwrap();
    assert!(submitted.is_acknowledged());
    let (parts, acks) = submitted.into_parts();
    assert!(parts.is_empty());
    assert_eq!(acks.len(), 200);
}

/// Lets held syncs go when dropped, so that a failing test fails instead of hanging.
struct ReleaseOnDrop(sluice_log::io::sim::SimFs);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release_held();
    }
}

/// A broker under `fsync=never` on a simulated file system, with stream `s` of `partitions`.
fn never_broker_on_sim(partitions: u32) -> (sluice_log::io::sim::SimFs, Arc<Broker>) {
    let fs = sluice_log::io::sim::SimFs::new();
    let options = BrokerOptions {
        log: sluice_log::LogOptions::default().fsync(sluice_log::FsyncPolicy::Never),
        ..BrokerOptions::default()
    };
    let b = Broker::open_with_fs(Arc::new(fs.clone()), "/data", options).unwrap();
    b.create_stream(
        "s",
        StreamConfig {
            partitions,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    (fs, Arc::new(b))
}

/// Puts `value` to the partition whose range starts at hash 0, on a thread of its own, and
/// waits at most 30 s for the answer.
fn put_to_first_partition(b: &Arc<Broker>, value: &'static str) -> Vec<sluice_broker::PutAck> {
    let (tx, rx) = std::sync::mpsc::channel();
    let b = Arc::clone(b);
    std::thread::spawn(move || {
        let rec = PutRecord {
            explicit_hash_key: Some(0),
            ..PutRecord::new("k", value)
        };
        let _ = tx.send(b.put("s", &[rec]));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a put to a parent waited for the reshard's flush")
        .unwrap()
}

/// A split flushes its parent before it closes the parent's gate, so puts to the parent wait
/// only for the flush of what they write meanwhile, not for everything the parent held (under
/// `fsync=never`, up to a whole segment of dirty data); and the parent's recorded end is
/// durable once the split returns.
#[test]
fn puts_go_on_while_a_split_flushes_its_parent() {
    let (fs, b) = never_broker_on_sim(1);
    put_to_first_partition(&b, "before");

    fs.scope_faults(Some(std::path::Path::new("/data/streams")));
    fs.hold_syncs();
    let _release = ReleaseOnDrop(fs.clone());
    let splitter = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || b.split("s", 0, None))
    };
    assert!(
        fs.wait_for_held(1, Duration::from_secs(30)),
        "the split never flushed its parent"
    );
    // The split's flush is held; a put to the parent goes through meanwhile.
    assert_eq!(put_to_first_partition(&b, "during")[0].partition, 0);

    fs.release_held();
    let children = splitter.join().unwrap().unwrap();
    let values = |b: &Broker| -> Vec<Vec<u8>> {
        read_all(b, "s", 0)
            .into_iter()
            .map(|r| r.value.to_vec())
            .collect()
    };
    assert_eq!(values(&b), vec![b"before".to_vec(), b"during".to_vec()]);
    let d = b.describe_stream("s").unwrap();
    let parent = d.partitions.iter().find(|p| p.id == 0).unwrap();
    assert_eq!(
        (parent.state, parent.end_offset),
        (PartitionState::Closed, 2)
    );
    for child in children {
        assert!(read_all(&b, "s", child).is_empty());
    }
    // Everything up to the end the split recorded for the parent is durable.
    let crashed = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 1);
    let after = Broker::open_with_fs(Arc::new(crashed), "/data", BrokerOptions::default()).unwrap();
    assert_eq!(values(&after), vec![b"before".to_vec(), b"during".to_vec()]);
}

/// A merge flushes both parents before it closes either gate: were the second flushed after the
/// first's gate closed, puts to the first would wait for it.
#[test]
fn puts_go_on_while_a_merge_flushes_its_parents() {
    let (fs, b) = never_broker_on_sim(2);
    put_to_first_partition(&b, "before");
    let second = PutRecord {
        explicit_hash_key: Some(u128::MAX),
        ..PutRecord::new("k", "other")
    };
    assert_eq!(b.put("s", &[second]).unwrap()[0].partition, 1);

    // Only the second parent's flush is held.
    fs.scope_faults(Some(std::path::Path::new("/data/streams/s.0/1")));
    fs.hold_syncs();
    let _release = ReleaseOnDrop(fs.clone());
    let merger = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || b.merge("s", 0, 1))
    };
    assert!(
        fs.wait_for_held(1, Duration::from_secs(30)),
        "the merge never flushed its second parent"
    );
    assert_eq!(put_to_first_partition(&b, "during")[0].partition, 0);

    fs.release_held();
    let child = merger.join().unwrap().unwrap();
    let d = b.describe_stream("s").unwrap();
    let first = d.partitions.iter().find(|p| p.id == 0).unwrap();
    assert_eq!((first.state, first.end_offset), (PartitionState::Closed, 2));
    assert!(read_all(&b, "s", child).is_empty());
}
