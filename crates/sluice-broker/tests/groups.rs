//! The consumer-group coordinator through the broker's API: lag in records and in the stream's
//! own time, plain checkpoint commits refused while members are live, `latest` anchored at the
//! first grant (so a parent's tail is read before its children), listing and describing from
//! checkpoints alone, a stream deleted and created again, and the limits on what a member may
//! ask for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_broker::{
    Broker, BrokerOptions, Error, GroupPartitionState, InitialPosition, PutRecord, StreamConfig,
};
use sluice_log::{Clock, LogOptions};

/// A clock the test sets, so record timestamps (and so `lag_ms`) are exact.
#[derive(Debug, Default)]
struct SetClock(AtomicU64);

impl Clock for SetClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn open_with_clock(dir: &std::path::Path, clock: Arc<SetClock>) -> Broker {
    let options = BrokerOptions {
        log: LogOptions::default().clock(clock),
        ..BrokerOptions::default()
    };
    Broker::open(dir, options).unwrap()
}

fn one_partition(b: &Broker, name: &str) {
    b.create_stream(
        name,
        StreamConfig {
            partitions: 1,
            ..StreamConfig::default()
        },
    )
    .unwrap();
}

const SESSION: Duration = Duration::from_secs(60);

#[test]
fn lag_is_counted_in_records_and_in_the_streams_own_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(SetClock::default());
    let b = open_with_clock(dir.path(), Arc::clone(&clock));
    one_partition(&b, "s");
    for t in [1_000, 2_000, 5_000, 9_000] {
        clock.0.store(t, Ordering::SeqCst);
        b.put("s", &[PutRecord::new("k", "v")]).unwrap();
    }
    let m = b
        .join_group("g", "s", "m", SESSION, InitialPosition::Earliest)
        .unwrap();
    let lease = b.heartbeat("g", "s", &m, &[]).unwrap()[0];
    assert_eq!((lease.partition, lease.start_offset), (0, 0));
    let lag = |b: &Broker| {
        let p = &b.describe_group("g", "s").unwrap().partitions[0];
        (p.lag_records, p.lag_ms, p.checkpoint)
    };
    assert_eq!(lag(&b), (4, 8_000, None));
    b.commit_lease("g", "s", &m, 0, lease.epoch, 2).unwrap();
    assert_eq!(lag(&b), (2, 4_000, Some(2)));
    b.commit_lease("g", "s", &m, 0, lease.epoch, 4).unwrap();
    assert_eq!(lag(&b), (0, 0, Some(4)));
    let d = b.describe_group("g", "s").unwrap();
    assert_eq!(d.partitions[0].state, GroupPartitionState::Leased);
    assert_eq!(d.partitions[0].owner.as_deref(), Some(m.as_str()));
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].partitions, vec![0]);
}

#[test]
fn a_plain_checkpoint_commit_waits_for_the_group_to_be_inactive() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    one_partition(&b, "s");
    b.put("s", &[PutRecord::new("k", "v"), PutRecord::new("k", "w")])
        .unwrap();
    b.commit_checkpoint("g", "s", 0, 1).unwrap();
    let m = b
        .join_group("g", "s", "m", SESSION, InitialPosition::Earliest)
        .unwrap();
    let lease = b.heartbeat("g", "s", &m, &[]).unwrap()[0];
    assert_eq!(lease.start_offset, 1, "the lease starts at the checkpoint");
    assert!(matches!(
        b.commit_checkpoint("g", "s", 0, 0),
        Err(Error::GroupActive { .. })
    ));
    // Another group is not affected.
    b.commit_checkpoint("other", "s", 0, 0).unwrap();
    b.leave_group("g", "s", &m).unwrap();
    b.commit_checkpoint("g", "s", 0, 0).unwrap();
    assert_eq!(b.fetch_checkpoint("g", "s", 0).unwrap(), Some(0));
}

#[test]
fn groups_are_listed_and_described_from_checkpoints_alone_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        one_partition(&b, "a");
        one_partition(&b, "b");
        b.put("a", &[PutRecord::new("k", "v")]).unwrap();
        let m = b
            .join_group("g", "a", "m", SESSION, InitialPosition::Earliest)
            .unwrap();
        let lease = b.heartbeat("g", "a", &m, &[]).unwrap()[0];
        b.commit_lease("g", "a", &m, 0, lease.epoch, 1).unwrap();
        b.join_group("live", "b", "x", SESSION, InitialPosition::Earliest)
            .unwrap();
        let listed: Vec<_> = b
            .list_groups()
            .unwrap()
            .into_iter()
            .map(|g| (g.group, g.stream, g.members, g.checkpoints))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("g".into(), "a".into(), 1, 1),
                ("live".into(), "b".into(), 1, 0)
            ]
        );
        b.close().unwrap();
    }
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    let listed: Vec<_> = b
        .list_groups()
        .unwrap()
        .into_iter()
        .map(|g| (g.group, g.stream, g.members, g.checkpoints))
        .collect();
    assert_eq!(listed, vec![("g".into(), "a".into(), 0, 1)]);
    let d = b.describe_group("g", "a").unwrap();
    assert!(d.members.is_empty());
    assert_eq!(d.partitions[0].checkpoint, Some(1));
    assert_eq!(d.partitions[0].state, GroupPartitionState::Unassigned);
    assert!(matches!(
        b.describe_group("live", "b"),
        Err(Error::GroupNotFound { .. })
    ));
    // A zombie from before the restart is unknown to the new broker.
    assert!(matches!(
        b.heartbeat("g", "a", "00000000-1", &[]),
        Err(Error::UnknownMember(_))
    ));
}

#[test]
fn a_stream_deleted_and_created_again_starts_the_group_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    one_partition(&b, "s");
    b.put("s", &[PutRecord::new("k", "v")]).unwrap();
    let m = b
        .join_group("g", "s", "m", SESSION, InitialPosition::Earliest)
        .unwrap();
    let old = b.heartbeat("g", "s", &m, &[]).unwrap()[0];
    b.commit_lease("g", "s", &m, 0, old.epoch, 1).unwrap();
    b.delete_stream("s").unwrap();
    assert!(matches!(
        b.heartbeat("g", "s", &m, &[]),
        Err(Error::StreamNotFound(_))
    ));
    one_partition(&b, "s");
    let new = b.heartbeat("g", "s", &m, &[]).unwrap()[0];
    assert_eq!(
        new.start_offset, 0,
        "the old stream's checkpoint does not apply"
    );
    assert!(new.epoch > old.epoch);
    assert!(matches!(
        b.commit_lease("g", "s", &m, 0, old.epoch, 0),
        Err(Error::NotLeaseHolder { .. })
    ));
}

#[test]
fn members_ask_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    one_partition(&b, "s");
    let join = |group: &str, name: &str, timeout: Duration| {
        b.join_group(group, "s", name, timeout, InitialPosition::Earliest)
    };
    assert!(matches!(
        join("g", "m", Duration::from_millis(10)),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        join("g", "m", Duration::from_secs(3600)),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        join("g", &"x".repeat(257), SESSION),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        join("g", "bad\nname", SESSION),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        join("../escape", "m", SESSION),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        b.join_group("g", "missing", "m", SESSION, InitialPosition::Earliest),
        Err(Error::StreamNotFound(_))
    ));
    for _ in 0..sluice_broker::group::GROUP_MEMBERS_MAX {
        join("full", "m", SESSION).unwrap();
    }
    assert!(matches!(
        join("full", "m", SESSION),
        Err(Error::TooManyMembers { max: 1024 })
    ));
    // Other groups are not affected by a full one.
    join("g", "m", SESSION).unwrap();
    assert!(matches!(
        b.leave_group("full", "s", "not-a-member"),
        Err(Error::UnknownMember(_))
    ));
}

#[test]
fn latest_is_anchored_at_the_first_grant_so_a_parents_tail_comes_before_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    one_partition(&b, "s");
    let old: Vec<PutRecord> = (0..10)
        .map(|i| PutRecord::new(format!("k{i}"), "old"))
        .collect();
    b.put("s", &old).unwrap();
    let m = b
        .join_group("g", "s", "m", SESSION, InitialPosition::Latest)
        .unwrap();
    let lease = b.heartbeat("g", "s", &m, &[]).unwrap()[0];
    assert_eq!(
        lease.start_offset, 10,
        "latest: only what comes after the grant"
    );
    assert_eq!(
        b.fetch_checkpoint("g", "s", 0).unwrap(),
        Some(10),
        "the anchor is stored as the group's position"
    );
    let new: Vec<PutRecord> = (0..50)
        .map(|i| PutRecord::new(format!("k{i}"), "new"))
        .collect();
    b.put("s", &new).unwrap();
    b.split("s", 0, None).unwrap();
    // The parent is closed at 60 but the group is at 10: its children wait.
    let leases = b.heartbeat("g", "s", &m, &[]).unwrap();
    assert_eq!(
        leases.iter().map(|l| l.partition).collect::<Vec<_>>(),
        vec![0]
    );
    let d = b.describe_group("g", "s").unwrap();
    assert_eq!(d.partitions[0].state, GroupPartitionState::Leased);
    assert_eq!(d.partitions[0].lag_records, 50);
    assert!(
        d.partitions[1..]
            .iter()
            .all(|p| p.state == GroupPartitionState::Waiting)
    );
    // Another member taking over before the first commit resumes at the anchor too.
    b.leave_group("g", "s", &m).unwrap();
    let m2 = b
        .join_group("g", "s", "m2", SESSION, InitialPosition::Latest)
        .unwrap();
    let lease = b.heartbeat("g", "s", &m2, &[]).unwrap()[0];
    assert_eq!((lease.partition, lease.start_offset), (0, 10));
    // Records keep arriving in the children meanwhile: the group must read them from the
    // children's start, not from their ends, once the parent is done.
    let more: Vec<PutRecord> = (0..30)
        .map(|i| PutRecord::new(format!("k{i}"), "child"))
        .collect();
    b.put("s", &more).unwrap();
    b.commit_lease("g", "s", &m2, 0, lease.epoch, 60).unwrap();
    let mut children: Vec<(u32, u64)> = b
        .heartbeat("g", "s", &m2, &[])
        .unwrap()
        .iter()
        .map(|l| (l.partition, l.start_offset))
        .collect();
    children.sort_unstable();
    assert_eq!(
        children,
        vec![(1, 0), (2, 0)],
        "children once the parent is read to its end, from their first record"
    );
}

#[test]
fn a_join_that_cannot_store_its_position_leaves_no_member_behind() {
    use sluice_log::io::sim::SimFs;
    let fs = SimFs::new();
    let b = Broker::open_with_fs(Arc::new(fs.clone()), "/data", BrokerOptions::default()).unwrap();
    one_partition(&b, "s");
    b.put("s", &[PutRecord::new("k", "v")]).unwrap();
    fs.fail_writes(std::io::ErrorKind::StorageFull, false);
    assert!(
        b.join_group("g", "s", "m", SESSION, InitialPosition::Latest)
            .is_err(),
        "the anchor of the first lease cannot be written"
    );
    fs.clear_write_error();
    assert!(matches!(
        b.describe_group("g", "s"),
        Err(Error::GroupNotFound { .. })
    ));
    let m = b
        .join_group("g", "s", "m", SESSION, InitialPosition::Latest)
        .unwrap();
    let d = b.describe_group("g", "s").unwrap();
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id, m);
    assert_eq!(
        d.partitions[0].checkpoint,
        Some(1),
        "the anchor was stored this time"
    );
}
