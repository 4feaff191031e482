//! Consumer groups against the real server over loopback: leases spread evenly and move off a
//! member that dies, with duplicates only after its failure point; a zombie's commits are
//! refused; a split while the group consumes keeps each key's order; checkpoints survive a
//! restart and the group resumes where it committed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{
    Client, CreateStream, ErrorCode, GroupConfig, GroupConsumer, GroupEvent, InitialPosition,
    JoinGroup, MemberRef, PutRecord,
};
use sluice_server::{Server, ServerConfig};
use tokio::time::Instant;

/// Longest any test waits for a condition.
const PATIENCE: Duration = Duration::from_secs(30);

fn config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }
}

async fn start(dir: &Path) -> Server {
    Server::start(dir, config()).await.unwrap()
}

fn stream(name: &str, partitions: u32) -> CreateStream {
    CreateStream {
        name: name.into(),
        partitions,
        retention_ms: 3_600_000,
        partition_bytes_max: None,
        record_bytes_max: None,
    }
}

/// Puts `count` records with keys `k0`..`k{keys-1}`, values `key:seq` where `seq` counts that
/// key's records from `first_seq[key]`; returns (partition, offset) of each.
async fn put_keyed(
    client: &Client,
    stream: &str,
    keys: usize,
    count: usize,
    seqs: &mut BTreeMap<String, u64>,
) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let records: Vec<PutRecord> = chunk
            .iter()
            .map(|i| {
                let key = format!("k{}", i % keys);
                let seq = seqs.entry(key.clone()).or_default();
                let value = format!("{key}:{seq}");
                *seq += 1;
                PutRecord {
                    partition_key: Bytes::from(key),
                    explicit_hash_key: None,
                    value: Bytes::from(value),
                }
            })
            .collect();
        let acks = client.put(stream, records).await.unwrap();
        out.extend(acks.iter().map(|a| (a.partition, a.offset)));
    }
    out
}

/// What the members of a test did, in the order they did it.
#[derive(Default)]
struct Journal {
    /// (member, partition, offset, value) of every record delivered, in processing order.
    processed: Vec<(usize, u32, u64, String)>,
    /// Partitions each member holds now.
    holds: BTreeMap<usize, BTreeSet<u32>>,
    /// The last offset each member committed per partition.
    committed: BTreeMap<(usize, u32), u64>,
}

/// Runs one member: records every batch in the journal, then commits it, until `crash` is set;
/// then it processes one more batch and stops without committing it or leaving, as a process
/// killed between processing and committing would.
fn spawn_member(
    addr: SocketAddr,
    id: usize,
    config: GroupConfig,
    journal: Arc<Mutex<Journal>>,
    crash: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = Client::connect(addr).await.unwrap();
        let mut member = GroupConsumer::join(client, config).await.unwrap();
        loop {
            match member.next().await {
                Ok(GroupEvent::Assigned { partition, .. }) => {
                    journal
                        .lock()
                        .unwrap()
                        .holds
                        .entry(id)
                        .or_default()
                        .insert(partition);
                }
                Ok(GroupEvent::Revoked { partition }) => {
                    journal
                        .lock()
                        .unwrap()
                        .holds
                        .entry(id)
                        .or_default()
                        .remove(&partition);
                }
                Ok(GroupEvent::Records(batch)) => {
                    {
                        let mut j = journal.lock().unwrap();
                        for r in &batch.records {
                            let value = String::from_utf8(r.value.to_vec()).unwrap();
                            j.processed.push((id, batch.partition, r.offset, value));
                        }
                    }
                    if crash.load(Ordering::SeqCst) {
                        journal.lock().unwrap().holds.remove(&id);
                        return;
                    }
                    member.commit(&batch).await.unwrap();
                    journal
                        .lock()
                        .unwrap()
                        .committed
                        .insert((id, batch.partition), batch.next_offset);
                }
                Err(e) => panic!("member {id}: {e}"),
            }
        }
    })
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holds(journal: &Mutex<Journal>, id: usize) -> BTreeSet<u32> {
    journal
        .lock()
        .unwrap()
        .holds
        .get(&id)
        .cloned()
        .unwrap_or_default()
}

fn covered(journal: &Mutex<Journal>, acks: &[(u32, u64)]) -> bool {
    let j = journal.lock().unwrap();
    let seen: BTreeSet<(u32, u64)> = j.processed.iter().map(|(_, p, o, _)| (*p, *o)).collect();
    acks.iter().all(|a| seen.contains(a))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_a_dead_members_leases_move() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    let client = Client::connect(addr).await.unwrap();
    client.create_stream(stream("events", 6)).await.unwrap();

    let session = Duration::from_secs(2);
    let mut config = GroupConfig::new("workers", "events");
    config.session_timeout = session;
    config.max_records = 20;
    config.max_wait = Duration::from_millis(100);
    let journal = Arc::new(Mutex::new(Journal::default()));
    let crashes: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let tasks: Vec<_> = (0..3)
        .map(|id| {
            spawn_member(
                addr,
                id,
                config.clone(),
                Arc::clone(&journal),
                Arc::clone(&crashes[id]),
            )
        })
        .collect();

    wait_for("two leases each", || {
        (0..3).all(|id| holds(&journal, id).len() == 2)
    })
    .await;
    let info = client.describe_group("workers", "events").await.unwrap();
    assert_eq!(info.members.len(), 3);
    assert!(
        info.members.iter().all(|m| m.partitions.len() == 2),
        "{info:?}"
    );

    let mut seqs = BTreeMap::new();
    let mut acks = put_keyed(&client, "events", 60, 600, &mut seqs).await;
    wait_for("the first records", || covered(&journal, &acks)).await;
    let before_failure = journal.lock().unwrap().processed.len();
    assert_eq!(
        before_failure, 600,
        "no duplicates while every member is alive"
    );

    // Member 2 dies after processing its next batch, before committing it.
    let dead = 2;
    let dead_partitions = holds(&journal, dead);
    crashes[dead].store(true, Ordering::SeqCst);
    let died = Instant::now();
    acks.extend(put_keyed(&client, "events", 60, 600, &mut seqs).await);
    wait_for("every record, after the failure", || {
        covered(&journal, &acks)
    })
    .await;
    wait_for("the dead member's partitions to move", || {
        let (a, b) = (holds(&journal, 0), holds(&journal, 1));
        a.len() == 3
            && b.len() == 3
            && dead_partitions
                .iter()
                .all(|p| a.contains(p) || b.contains(p))
    })
    .await;
    // The survivors heartbeat every third of the session timeout and the first beat after the
    // timeout takes the leases back: well within two session timeouts on any machine.
    let moved_after = died.elapsed();
    assert!(
        moved_after < session * 2 + Duration::from_secs(3),
        "moved after {moved_after:?}"
    );

    // Duplicates: only records of the dead member's partitions at or past its last commit there.
    {
        let j = journal.lock().unwrap();
        let mut times: BTreeMap<(u32, u64), usize> = BTreeMap::new();
        for (_, p, o, _) in &j.processed {
            *times.entry((*p, *o)).or_default() += 1;
        }
        let duplicates: Vec<(u32, u64)> = times
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| *k)
            .collect();
        println!(
            "dead member's partitions {dead_partitions:?} moved after {moved_after:?}; {} records \
             delivered twice, all at or past its last commits {:?}",
            duplicates.len(),
            j.committed
                .iter()
                .filter(|((m, _), _)| *m == dead)
                .collect::<Vec<_>>()
        );
        for (p, o) in &duplicates {
            assert!(
                dead_partitions.contains(p),
                "duplicate {p}/{o} outside the dead member's partitions"
            );
            let checkpoint = j.committed.get(&(dead, *p)).copied().unwrap_or(0);
            assert!(
                *o >= checkpoint,
                "duplicate {p}/{o} below the failure point {checkpoint}"
            );
            assert!(times[&(*p, *o)] == 2, "{p}/{o} processed more than twice");
        }
    }
    for t in tasks {
        t.abort();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_cannot_commit_after_its_lease_moved() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    client.create_stream(stream("orders", 2)).await.unwrap();
    let mut seqs = BTreeMap::new();
    put_keyed(&client, "orders", 10, 100, &mut seqs).await;
    let join = |name: &str, timeout_ms: u32| JoinGroup {
        group: "billing".into(),
        stream: "orders".into(),
        member_name: name.into(),
        session_timeout_ms: timeout_ms,
        initial: InitialPosition::Earliest,
    };
    let member = |id: String| MemberRef {
        group: "billing".into(),
        stream: "orders".into(),
        member_id: id,
    };

    // A live member whose lease was handed over: its commit under the old epoch is refused.
    let a = member(
        client
            .join_group(join("a", 60_000))
            .await
            .unwrap()
            .member_id,
    );
    let a_leases = client.heartbeat(&a, vec![]).await.unwrap();
    assert_eq!(a_leases.len(), 2);
    client
        .commit_lease(&a, 0, a_leases[0].epoch, 5)
        .await
        .unwrap();
    let b = member(
        client
            .join_group(join("b", 60_000))
            .await
            .unwrap()
            .member_id,
    );
    let revoking: Vec<_> = client
        .heartbeat(&a, vec![])
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.revoking)
        .collect();
    assert_eq!(revoking.len(), 1, "one of a's two leases is asked back");
    let moved = revoking[0];
    client
        .heartbeat(&a, vec![(moved.partition, moved.epoch)])
        .await
        .unwrap();
    let b_leases = client.heartbeat(&b, vec![]).await.unwrap();
    assert_eq!(b_leases.len(), 1);
    assert_eq!(b_leases[0].partition, moved.partition);
    assert!(b_leases[0].epoch > moved.epoch);
    let before = client
        .fetch_checkpoint("billing", "orders", moved.partition)
        .await
        .unwrap();
    let err = client
        .commit_lease(&a, moved.partition, moved.epoch, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotLeaseHolder), "{err}");
    // A plain checkpoint commit cannot move a position while the group has members.
    let err = client
        .commit_checkpoint("billing", "orders", moved.partition, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupActive), "{err}");
    assert_eq!(
        client
            .fetch_checkpoint("billing", "orders", moved.partition)
            .await
            .unwrap(),
        before
    );
    client
        .commit_lease(&b, moved.partition, b_leases[0].epoch, 7)
        .await
        .unwrap();

    // A member silent past its session timeout is gone: its commits are refused too.
    let z = member(client.join_group(join("z", 200)).await.unwrap().member_id);
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.heartbeat(&a, vec![]).await.unwrap();
    for p in 0..2 {
        let err = client.commit_lease(&z, p, 1, 0).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownMember), "{err}");
    }
    let err = client.heartbeat(&z, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownMember), "{err}");
    assert_eq!(
        client
            .fetch_checkpoint("billing", "orders", moved.partition)
            .await
            .unwrap(),
        Some(7)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_while_the_group_consumes_keeps_each_keys_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    let client = Client::connect(addr).await.unwrap();
    client.create_stream(stream("clicks", 2)).await.unwrap();

    let mut config = GroupConfig::new("analytics", "clicks");
    config.session_timeout = Duration::from_secs(5);
    config.max_records = 15;
    config.max_wait = Duration::from_millis(100);
    let journal = Arc::new(Mutex::new(Journal::default()));
    let never = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2)
        .map(|id| {
            spawn_member(
                addr,
                id,
                config.clone(),
                Arc::clone(&journal),
                Arc::clone(&never),
            )
        })
        .collect();

    let mut seqs = BTreeMap::new();
    let mut acks = put_keyed(&client, "clicks", 40, 400, &mut seqs).await;
    // Split while the members are still working through the first records, then merge two of
    // the children back, writing between each step.
    client.split("clicks", 0, None).await.unwrap();
    acks.extend(put_keyed(&client, "clicks", 40, 400, &mut seqs).await);
    let [lo2, hi2] = client.split("clicks", 1, None).await.unwrap();
    acks.extend(put_keyed(&client, "clicks", 40, 400, &mut seqs).await);
    let merged = client.merge("clicks", lo2, hi2).await.unwrap();
    acks.extend(put_keyed(&client, "clicks", 40, 400, &mut seqs).await);
    wait_for("every record", || covered(&journal, &acks)).await;

    {
        let j = journal.lock().unwrap();
        assert_eq!(j.processed.len(), acks.len(), "no record delivered twice");
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        for (_, p, o, value) in &j.processed {
            let (key, seq) = value.split_once(':').unwrap();
            let seq: u64 = seq.parse().unwrap();
            let expected = next.entry(key.to_owned()).or_default();
            assert_eq!(
                seq, *expected,
                "key {key}: got {seq} at {p}/{o}, expected {expected}"
            );
            *expected += 1;
        }
        assert_eq!(next, seqs);
    }
    // The closed parents are finished, the merged child is leased.
    let group = client.describe_group("analytics", "clicks").await.unwrap();
    for p in &group.partitions {
        if p.open {
            assert_eq!(p.state, "leased", "{p:?}");
        } else {
            assert_eq!(p.state, "finished", "{p:?}");
        }
        assert_eq!(p.lag_records, 0, "{p:?}");
    }
    assert!(
        group
            .partitions
            .iter()
            .any(|p| p.partition == merged && p.open)
    );
    for t in tasks {
        t.abort();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_survive_a_restart_and_the_group_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    client.create_stream(stream("ledger", 3)).await.unwrap();
    let mut seqs = BTreeMap::new();
    let mut acks = put_keyed(&client, "ledger", 12, 300, &mut seqs).await;

    let lagging = client
        .describe_group("ledger-sync", "ledger")
        .await
        .unwrap_err();
    assert_eq!(lagging.code(), Some(ErrorCode::GroupNotFound), "{lagging}");

    // Process about half, committing every batch, then stop without leaving.
    let mut config = GroupConfig::new("ledger-sync", "ledger");
    config.max_records = 25;
    config.max_wait = Duration::from_millis(50);
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    {
        let mut member = GroupConsumer::join(client.clone(), config.clone())
            .await
            .unwrap();
        while seen.len() < 150 {
            if let GroupEvent::Records(batch) = member.next().await.unwrap() {
                seen.extend(batch.records.iter().map(|r| (batch.partition, r.offset)));
                member.commit(&batch).await.unwrap();
            }
        }
        let info = client
            .describe_group("ledger-sync", "ledger")
            .await
            .unwrap();
        let lag: u64 = info.partitions.iter().map(|p| p.lag_records).sum();
        assert_eq!(lag as usize, 300 - seen.len(), "{info:?}");
        member.leave().await.unwrap();
    }
    drop(client);
    server.shutdown().await.unwrap();

    let server = start(dir.path()).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let info = client
        .describe_group("ledger-sync", "ledger")
        .await
        .unwrap();
    assert!(info.members.is_empty());
    let committed: u64 = info
        .partitions
        .iter()
        .map(|p| p.checkpoint.unwrap_or(0) - p.start_offset)
        .sum();
    assert_eq!(committed as usize, seen.len(), "{info:?}");
    let listed = client.list_groups().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|g| g.group == "ledger-sync" && g.stream == "ledger" && g.checkpoints == 3),
        "{listed:?}"
    );
    acks.extend(put_keyed(&client, "ledger", 12, 60, &mut seqs).await);

    let mut member = GroupConsumer::join(client.clone(), config).await.unwrap();
    let mut again: BTreeSet<(u32, u64)> = BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() + again.len() < acks.len() {
        assert!(Instant::now() < deadline, "resumed member stalled");
        if let GroupEvent::Records(batch) = member.next().await.unwrap() {
            for r in &batch.records {
                assert!(
                    !seen.contains(&(batch.partition, r.offset)),
                    "redelivered {r:?}"
                );
                assert!(again.insert((batch.partition, r.offset)));
            }
            member.commit(&batch).await.unwrap();
        }
    }
    let all: BTreeSet<(u32, u64)> = acks.iter().copied().collect();
    assert_eq!(seen.union(&again).copied().collect::<BTreeSet<_>>(), all);
    let info = client
        .describe_group("ledger-sync", "ledger")
        .await
        .unwrap();
    assert!(
        info.partitions
            .iter()
            .all(|p| p.lag_records == 0 && p.lag_ms == 0),
        "{info:?}"
    );
    member.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_again_by_itself_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    let client = Client::connect(addr).await.unwrap();
    client.create_stream(stream("jobs", 2)).await.unwrap();
    let mut seqs = BTreeMap::new();
    let mut acks = put_keyed(&client, "jobs", 8, 100, &mut seqs).await;

    let mut config = GroupConfig::new("runners", "jobs");
    config.session_timeout = Duration::from_secs(1);
    config.max_wait = Duration::from_millis(50);
    let mut member = GroupConsumer::join(Client::connect(addr).await.unwrap(), config)
        .await
        .unwrap();
    let first_id = member.member_id();
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    let consume = async |member: &mut GroupConsumer, want: usize, seen: &mut BTreeSet<_>| {
        let deadline = Instant::now() + PATIENCE;
        while seen.len() < want {
            assert!(
                Instant::now() < deadline,
                "member stalled at {}",
                seen.len()
            );
            let next = tokio::time::timeout(PATIENCE, member.next()).await;
            if let GroupEvent::Records(batch) = next.unwrap().unwrap() {
                for r in &batch.records {
                    assert!(
                        seen.insert((batch.partition, r.offset)),
                        "redelivered {r:?}"
                    );
                }
                member.commit(&batch).await.unwrap();
            }
        }
    };
    consume(&mut member, 100, &mut seen).await;

    // Same address, same data directory: the member's connection breaks, its reads and
    // heartbeats are retried, and the new server does not know its id.
    drop(client);
    server.shutdown().await.unwrap();
    let server = Server::start(
        dir.path(),
        ServerConfig {
            listen: addr,
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let client = Client::connect(addr).await.unwrap();
    acks.extend(put_keyed(&client, "jobs", 8, 50, &mut seqs).await);
    consume(&mut member, acks.len(), &mut seen).await;
    assert_ne!(member.member_id(), first_id, "joined again under a new id");
    let info = client.describe_group("runners", "jobs").await.unwrap();
    assert_eq!(info.members.len(), 1, "{info:?}");
    assert_eq!(info.members[0].member_id, member.member_id());
    member.leave().await.unwrap();
    server.shutdown().await.unwrap();
}
