//! Power loss on the simulated file system at every step of the broker's metadata changes:
//! after a crash at any point the broker opens with either the old or the new catalog (never a
//! broken one and never silently empty), every operation that returned before the crash is
//! there, acknowledged puts and committed checkpoints survive, and no orphaned files remain.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::{Broker, BrokerOptions, PartitionState, PutRecord, StreamConfig};
use sluice_log::ReadLimits;
use sluice_log::io::FileSystem;
use sluice_log::io::sim::{CrashMode, SimFs};

const DATA: &str = "/data";

fn open(fs: &SimFs) -> Broker {
    Broker::open_with_fs(Arc::new(fs.clone()), DATA, BrokerOptions::default()).unwrap()
}

#[derive(Debug, Default)]
struct Done {
    created_b: bool,
    put_b: Option<(u32, u64)>,
    split_a: bool,
    retention_a: bool,
    checkpoint: bool,
    deleted_c: bool,
}

/// Runs the workload until the simulated crash (or to the end); records what returned Ok.
fn workload(b: &Broker) -> Done {
    let mut done = Done::default();
    let run = |done: &mut Done| -> Result<(), sluice_broker::Error> {
        b.create_stream(
            "b",
            StreamConfig {
                partitions: 3,
                ..StreamConfig::default()
            },
        )?;
        done.created_b = true;
        let ack = b.put("b", &[PutRecord::new("key", "acked")])?;
        done.put_b = Some((ack[0].partition, ack[0].offset));
        b.split("a", 0, None)?;
        done.split_a = true;
        b.set_retention("a", Duration::from_secs(7200))?;
        done.retention_a = true;
        b.commit_checkpoint("g", "a", 0, 1)?;
        done.checkpoint = true;
        b.delete_stream("c")?;
        done.deleted_c = true;
        Ok(())
    };
    let _ = run(&mut done);
    done
}

fn check(img: &SimFs, done: &Done, step: u64) {
    let b = Broker::open_with_fs(Arc::new(img.clone()), DATA, BrokerOptions::default())
        .unwrap_or_else(|e| panic!("crash at op {step}: the broker does not open: {e}"));
    let streams = b.list_streams();
    assert!(
        streams.contains(&"a".to_string()),
        "op {step}: stream a lost"
    );
    // Old or new, never half: b has all three partitions or does not exist.
    if streams.contains(&"b".to_string()) {
        let d = b.describe_stream("b").unwrap();
        assert_eq!(d.partitions.len(), 3, "op {step}");
        b.put("b", &[PutRecord::new("k", "v")]).unwrap();
    } else {
        assert!(!done.created_b, "op {step}: a created stream vanished");
    }
    if let Some((p, o)) = done.put_b {
        let got = b.read("b", p, o, ReadLimits::default()).unwrap();
        assert_eq!(
            got[0].value.as_ref(),
            b"acked",
            "op {step}: an acknowledged put was lost"
        );
    }
    let a = b.describe_stream("a").unwrap();
    let split = a.partitions[0].state == PartitionState::Closed;
    if done.split_a {
        assert!(split, "op {step}: a returned split was lost");
    }
    if split {
        assert_eq!(a.partitions.len(), 3, "op {step}");
        assert_eq!(
            a.partitions[0].end_offset, 2,
            "op {step}: the parent's end moved"
        );
    } else {
        assert_eq!(
            a.partitions.len(),
            1,
            "op {step}: children without a closed parent"
        );
    }
    // Records of stream a are all there whatever happened.
    let got = b.read("a", 0, 0, ReadLimits::default()).unwrap();
    assert_eq!(got.len(), 2, "op {step}");
    if done.retention_a {
        assert_eq!(a.retention_ms, 7_200_000, "op {step}");
    }
    let cp = b.fetch_checkpoint("g", "a", 0).unwrap();
    if done.checkpoint {
        assert_eq!(cp, Some(1), "op {step}: a committed checkpoint was lost");
    }
    assert!(cp.is_none() || cp == Some(1));
    if done.deleted_c {
        assert!(!streams.contains(&"c".to_string()), "op {step}");
    }
    // Only directories of listed streams remain.
    let dirs = img.list_subdirs(&Path::new(DATA).join("streams")).unwrap();
    assert_eq!(
        dirs.len(),
        streams.len(),
        "op {step}: orphaned stream directories {dirs:?}"
    );
    b.close().unwrap();
}

#[test]
fn metadata_changes_survive_a_crash_at_every_step() {
    // The number of file-system operations the whole workload takes without a crash.
    let total = {
        let fs = SimFs::new();
        let b = open(&fs);
        setup(&b);
        let before = fs.mutating_ops();
        let done = workload(&b);
        assert!(
            done.deleted_c,
            "the workload runs to its end without a crash"
        );
        fs.mutating_ops() - before
    };
    assert!(total > 30);
    for step in 0..=total {
        for (mode, seed) in [
            (CrashMode::DropUnsynced, 0),
            (CrashMode::RandomPrefixThenGarbage, step),
        ] {
            let fs = SimFs::new();
            let b = open(&fs);
            setup(&b);
            fs.crash_after_ops(step);
            let done = workload(&b);
            drop(b);
            check(&fs.crash_image(mode, seed), &done, step);
        }
    }
}

fn setup(b: &Broker) {
    b.create_stream("a", StreamConfig::default()).unwrap();
    b.create_stream(
        "c",
        StreamConfig {
            partitions: 2,
            ..StreamConfig::default()
        },
    )
    .unwrap();
    b.put("a", &[PutRecord::new("x", "1"), PutRecord::new("y", "2")])
        .unwrap();
}
