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

/// Power loss at random points of a random workload of puts, segment rolls, splits, merges,
/// retention passes, retention changes and checkpoint commits: the broker always reopens, every
/// acknowledged put is where its acknowledgement said, byte for byte, and every reshard that
/// returned is in the catalog.
#[test]
fn random_workloads_survive_power_loss_at_random_points() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use sluice_log::LogOptions;

    let options = || BrokerOptions {
        log: LogOptions::default().segment_bytes_max(1024),
        ..BrokerOptions::default()
    };
    let trials = 1000u64;
    let mut acked_total = 0usize;
    for seed in 0..trials {
        let mut rng = SmallRng::seed_from_u64(seed);
        let fs = SimFs::new();
        let b = Broker::open_with_fs(Arc::new(fs.clone()), DATA, options()).unwrap();
        b.create_stream(
            "s",
            StreamConfig {
                partitions: 2,
                ..StreamConfig::default()
            },
        )
        .unwrap();
        fs.crash_after_ops(rng.gen_range(0..600));
        let mut acked: Vec<(u32, u64, Vec<u8>)> = Vec::new();
        // Ids only grow, so the newest child of a reshard that returned is still in the catalog
        // (a partition is only removed once closed by a later reshard, whose children are newer).
        let mut newest_child: Option<u32> = None;
        for step in 0..200u32 {
            let r: Result<(), sluice_broker::Error> = (|| {
                match rng.gen_range(0..20) {
                    0 => {
                        let d = b.describe_stream("s")?;
                        let open: Vec<u32> = d
                            .partitions
                            .iter()
                            .filter(|p| p.state == PartitionState::Open)
                            .map(|p| p.id)
                            .collect();
                        let [_, hi] = b.split("s", open[rng.gen_range(0..open.len())], None)?;
                        newest_child = Some(hi);
                    }
                    1 => {
                        let d = b.describe_stream("s")?;
                        let mut open: Vec<_> = d
                            .partitions
                            .iter()
                            .filter(|p| p.state == PartitionState::Open)
                            .collect();
                        open.sort_by_key(|p| p.range.start);
                        if open.len() > 1 {
                            let i = rng.gen_range(0..open.len() - 1);
                            newest_child = Some(b.merge("s", open[i].id, open[i + 1].id)?);
                        }
                    }
                    2 => {
                        b.enforce_retention(sluice_log::Clock::now_ms(&sluice_log::SystemClock))?;
                    }
                    3 => b.set_retention("s", Duration::from_secs(rng.gen_range(3600..7200)))?,
                    4 => {
                        let d = b.describe_stream("s")?;
                        let p = &d.partitions[rng.gen_range(0..d.partitions.len())];
                        b.commit_checkpoint("g", "s", p.id, p.end_offset)?;
                    }
                    _ => {
                        let n = rng.gen_range(1..5);
                        let records: Vec<PutRecord> = (0..n)
                            .map(|i| {
                                PutRecord::new(
                                    format!("k{}", rng.gen_range(0..20)),
                                    format!(
                                        "{seed}:{step}:{i}:{}",
                                        "x".repeat(rng.gen_range(0..200))
                                    ),
                                )
                            })
                            .collect();
                        let acks = b.put("s", &records)?;
                        for (rec, a) in records.iter().zip(acks) {
                            acked.push((a.partition, a.offset, rec.value.to_vec()));
                        }
                    }
                }
                Ok(())
            })();
            if r.is_err() {
                break;
            }
        }
        drop(b);
        let mode = [
            CrashMode::DropUnsynced,
            CrashMode::RandomPrefix,
            CrashMode::RandomPrefixThenGarbage,
        ][(seed % 3) as usize];
        let img = fs.crash_image(mode, seed);
        let b = Broker::open_with_fs(Arc::new(img), DATA, options())
            .unwrap_or_else(|e| panic!("seed {seed}: the broker does not reopen: {e}"));
        let d = b.describe_stream("s").unwrap();
        let newest = d.partitions.iter().map(|p| p.id).max();
        assert!(
            newest >= newest_child,
            "seed {seed}: a reshard that returned was lost"
        );
        for (p, o, v) in &acked {
            let got = b
                .read(
                    "s",
                    *p,
                    *o,
                    ReadLimits {
                        records_max: 1,
                        bytes_max: 1 << 20,
                    },
                )
                .unwrap_or_else(|e| panic!("seed {seed}: reading acknowledged {p}/{o}: {e}"));
            assert_eq!(
                got.first().map(|r| r.value.as_ref()),
                Some(v.as_slice()),
                "seed {seed}: acknowledged {p}/{o}"
            );
        }
        acked_total += acked.len();
        b.close().unwrap();
    }
    assert!(
        acked_total > trials as usize * 10,
        "crash points must fall inside the workloads"
    );
}
