//! Consumer groups: many instances of one application sharing a stream.
//!
//! [`GroupConsumer`] joins a group on the server, heartbeats in the background, reads the
//! partitions whose leases it holds, and hands them over when the server rebalances. The raw
//! group calls are on [`Client`] for other languages' clients to copy.
//!
//! # Delivery contract: at least once
//!
//! Every record is delivered to some member at least once. A record is delivered twice only
//! when a lease moves while the records its holder read are not committed:
//!
//! - the holder stopped heartbeating (it crashed, hung, or lost its network) for longer than the
//!   session timeout, and the next holder resumes at the last commit;
//! - a commit failed (for instance with [`ErrorCode::NotLeaseHolder`] after the lease moved);
//! - the application did not commit a batch before asking for the next event, and the lease was
//!   then handed over (a member joined or left).
//!
//! Hand-overs between live members are cooperative: the server marks the lease *revoking*, and
//! the holder releases it at its next [`GroupConsumer::next`], after the commits the application
//! made. So an application that commits each batch before asking for the next event sees no
//! duplicates when members join, leave cleanly, or partitions are split and merged. Within a
//! partition records arrive in offset order; after a split or merge a child is leased only once
//! its parents are consumed to their end, so each key's records arrive in the order they were
//! written.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_protocol::ErrorCode;
use sluice_protocol::message::{
    CommitLease, GroupInfo, GroupSummary, Heartbeat, InitialPosition, JoinGroup, Joined, LeaseInfo,
    MemberRef, ReadFrom, ReadRequest, WireRecord,
};
use sluice_protocol::{Request, Response};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::{Client, unexpected};
use crate::error::ClientError;

impl Client {
    /// Joins consumer group `join.group` on `join.stream` as a new member.
    pub async fn join_group(&self, join: JoinGroup) -> Result<Joined, ClientError> {
        match self.call(Request::JoinGroup(join)).await? {
            Response::JoinGroup(joined) => Ok(joined),
            _ => Err(unexpected()),
        }
    }

    /// Sends a member's heartbeat, giving back `released` leases as `(partition, epoch)`, and
    /// returns the leases the member holds now.
    pub async fn heartbeat(
        &self,
        member: &MemberRef,
        released: Vec<(u32, u64)>,
    ) -> Result<Vec<LeaseInfo>, ClientError> {
        let request = Request::Heartbeat(Heartbeat {
            member: member.clone(),
            released,
        });
        match self.call(request).await? {
            Response::Heartbeat(leases) => Ok(leases),
            _ => Err(unexpected()),
        }
    }

    /// Commits `offset` (the next offset to process) in a partition under the member's lease
    /// at `epoch`. Fails with [`ErrorCode::NotLeaseHolder`] once the lease has moved on.
    pub async fn commit_lease(
        &self,
        member: &MemberRef,
        partition: u32,
        epoch: u64,
        offset: u64,
    ) -> Result<(), ClientError> {
        let request = Request::CommitLease(CommitLease {
            member: member.clone(),
            partition,
            epoch,
            offset,
        });
        match self.call(request).await? {
            Response::CommitLease => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Leaves a group; the member's leases go to the others at once.
    pub async fn leave_group(&self, member: &MemberRef) -> Result<(), ClientError> {
        match self.call(Request::LeaveGroup(member.clone())).await? {
            Response::LeaveGroup => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// A group's members, leases, checkpoints and lag on a stream.
    pub async fn describe_group(
        &self,
        group: &str,
        stream: &str,
    ) -> Result<GroupInfo, ClientError> {
        let request = Request::DescribeGroup {
            group: group.into(),
            stream: stream.into(),
        };
        match self.call(request).await? {
            Response::DescribeGroup(info) => Ok(info),
            _ => Err(unexpected()),
        }
    }

    /// Every consumer group with live members or checkpoints.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        match self.call(Request::ListGroups).await? {
            Response::ListGroups(groups) => Ok(groups),
            _ => Err(unexpected()),
        }
    }
}

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Group name.
    pub group: String,
    /// Stream to consume.
    pub stream: String,
    /// A label shown by `sluice group describe` (a host name, a process id). Default: empty.
    pub member_name: String,
    /// A member silent for this long loses its leases. Heartbeats go every third of it.
    /// Default: 10 s.
    pub session_timeout: Duration,
    /// Where partitions without a checkpoint start, if this member is the first to join.
    /// Default: earliest.
    pub initial: InitialPosition,
    /// Most records per batch. Default: 1000.
    pub max_records: u32,
    /// Most key and value bytes per batch (at least one record is returned). Default: 4 MiB.
    pub max_bytes: u32,
    /// How long a read waits for new records when every leased partition is caught up.
    /// Default: 500 ms.
    pub max_wait: Duration,
}

impl GroupConfig {
    /// Default settings for `group` on `stream`.
    pub fn new(group: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            stream: stream.into(),
            member_name: String::new(),
            session_timeout: Duration::from_secs(10),
            initial: InitialPosition::Earliest,
            max_records: 1000,
            max_bytes: 4 << 20,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// Records of one leased partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBatch {
    /// Partition id.
    pub partition: u32,
    /// Epoch of the lease they were read under.
    pub epoch: u64,
    /// The records.
    pub records: Vec<WireRecord>,
    /// The offset after the last record: what [`GroupConsumer::commit`] stores.
    pub next_offset: u64,
}

/// What [`GroupConsumer::next`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// The member now holds this partition's lease and will read it from `start_offset`.
    Assigned {
        /// Partition id.
        partition: u32,
        /// The lease's epoch.
        epoch: u64,
        /// Where reading starts (the group's checkpoint, or the initial position).
        start_offset: u64,
    },
    /// The member no longer holds this partition's lease: it was handed to another member,
    /// lost, or the partition was consumed to its end after a reshard. Records of it delivered
    /// since the last commit will be delivered again to the next holder.
    Revoked {
        /// Partition id.
        partition: u32,
    },
    /// Records to process.
    Records(GroupBatch),
}

#[derive(Debug, Default)]
struct Beat {
    /// The member id now: a member the server forgot (it was silent too long, or the server
    /// restarted) joins again under a new id.
    member_id: String,
    /// Leases from the latest heartbeat, not yet looked at by the consumer.
    leases: Option<Vec<LeaseInfo>>,
    /// Leases to give back in the next heartbeat.
    release: Vec<(u32, u64)>,
    /// Why the heartbeats stopped.
    failed: Option<ClientError>,
    /// The client's connection generation when the last heartbeat succeeded. Records read on
    /// a later connection may come from a restarted server that no longer knows this member,
    /// so they wait for a heartbeat on that connection first.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    epoch: u64,
    position: u64,
    /// The partition's end as the last read saw it.
    end_seen: u64,
}

/// A member of a consumer group. See the [module documentation](self) for the delivery
/// contract.
///
/// ```no_run
/// # async fn run() -> Result<(), sluice_client::ClientError> {
/// use sluice_client::{Client, GroupConfig, GroupConsumer, GroupEvent};
/// let client = Client::connect("127.0.0.1:7070").await?;
/// let mut member = GroupConsumer::join(client, GroupConfig::new("billing", "orders")).await?;
/// loop {
///     if let GroupEvent::Records(batch) = member.next().await? {
///         for r in &batch.records {
///             println!("{}: {}", r.offset, String::from_utf8_lossy(&r.value));
///         }
///         member.commit(&batch).await?;
///     }
/// }
/// # }
/// ```
///
/// Dropping a member without [`GroupConsumer::leave`] stops its heartbeats, as a crash would:
/// its partitions move to the others once the session timeout has passed.
///
/// A member the server no longer knows (it missed heartbeats past its session timeout, or the
/// server restarted) joins again by itself under a new id, as a Kafka consumer does: its old
/// leases come back as [`GroupEvent::Revoked`], and commits made under them fail with
/// [`ErrorCode::NotLeaseHolder`] or [`ErrorCode::UnknownMember`].
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    beat: Arc<Mutex<Beat>>,
    /// Wakes the heartbeat task early (a release to send).
    beat_now: Arc<Notify>,
    /// Wakes the consumer when a heartbeat brought leases.
    changed: Arc<Notify>,
    heartbeats: JoinHandle<()>,
    owned: BTreeMap<u32, Owned>,
    /// Leases given back, as `(partition, epoch)`, until the server stops listing them: one
    /// seen again in a heartbeat answered before the release arrived is not taken up again.
    released: std::collections::BTreeSet<(u32, u64)>,
    events: VecDeque<GroupEvent>,
    /// The partition read last, for round-robin.
    cursor: Option<u32>,
}

fn beat_state(beat: &Mutex<Beat>) -> std::sync::MutexGuard<'_, Beat> {
    beat.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GroupConsumer {
    /// Joins the group and starts heartbeating. Leases arrive as [`GroupEvent::Assigned`] from
    /// [`GroupConsumer::next`].
    pub async fn join(client: Client, config: GroupConfig) -> Result<Self, ClientError> {
        let join = JoinGroup {
            group: config.group.clone(),
            stream: config.stream.clone(),
            member_name: config.member_name.clone(),
            session_timeout_ms: u32::try_from(config.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            initial: config.initial,
        };
        let generation = client.connection_generation();
        let joined = client.join_group(join.clone()).await?;
        let beat = Arc::new(Mutex::new(Beat {
            member_id: joined.member_id,
            generation,
            ..Beat::default()
        }));
        let beat_now = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let heartbeats = tokio::spawn(heartbeat_loop(
            client.clone(),
            join,
            Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1))),
            Arc::clone(&beat),
            Arc::clone(&beat_now),
            Arc::clone(&changed),
        ));
        // The first heartbeat brings the leases at once.
        beat_now.notify_one();
        Ok(Self {
            client,
            config,
            beat,
            beat_now,
            changed,
            heartbeats,
            owned: BTreeMap::new(),
            released: std::collections::BTreeSet::new(),
            events: VecDeque::new(),
            cursor: None,
        })
    }

    /// The id the server gave this member (a new one after it joined again).
    pub fn member_id(&self) -> String {
        beat_state(&self.beat).member_id.clone()
    }

    /// Whether the last successful heartbeat went over the client's current connection.
    fn heartbeat_is_current(&self) -> bool {
        beat_state(&self.beat).generation == self.client.connection_generation()
    }

    fn member(&self) -> MemberRef {
        MemberRef {
            group: self.config.group.clone(),
            stream: self.config.stream.clone(),
            member_id: self.member_id(),
        }
    }

    /// Partitions this member reads now.
    pub fn partitions(&self) -> Vec<u32> {
        self.owned.keys().copied().collect()
    }

    /// The next event: a lease gained or lost, or a batch of records. Waits while there is
    /// nothing to report. Commit each batch before calling this again and a hand-over to
    /// another member delivers nothing twice.
    ///
    /// Failures that can pass (a lost connection, a server restarting) are retried here rather
    /// than returned, as a Kafka consumer's `poll` does; an error means the member cannot go on
    /// (the stream was deleted, a record is corrupt).
    pub async fn next(&mut self) -> Result<GroupEvent, ClientError> {
        loop {
            self.apply_heartbeat()?;
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if self.owned.is_empty() || !self.heartbeat_is_current() {
                self.beat_now.notify_one();
                self.changed.notified().await;
                continue;
            }
            // One pass over the leased partitions without waiting, then a long poll on the
            // next one, cut short when a heartbeat changes the leases.
            let order = self.round_robin();
            let changed = Arc::clone(&self.changed);
            for (i, p) in order.iter().enumerate() {
                let last = i + 1 == order.len();
                let wait = if last {
                    self.config.max_wait
                } else {
                    Duration::ZERO
                };
                let read = self.read(*p, wait);
                let result = if last {
                    tokio::select! {
                        r = read => r,
                        () = changed.notified() => Ok(None),
                    }
                } else {
                    read.await
                };
                match result {
                    Ok(Some(batch)) if !self.heartbeat_is_current() => {
                        // Read from a server the member has not heartbeated to since it
                        // reconnected: drop the batch (its position did not move) and read it
                        // again once a heartbeat says the lease is still ours.
                        if let Some(o) = self.owned.get_mut(&batch.partition) {
                            o.position = batch.records.first().map_or(o.position, |r| r.offset);
                        }
                        break;
                    }
                    Ok(Some(batch)) => return Ok(GroupEvent::Records(batch)),
                    Ok(None) => {}
                    // The server is restarting or the network hiccuped: the client reconnects
                    // on the next call, and the heartbeats tell whether the leases survived.
                    Err(e) if is_transient(&e) => {
                        tokio::time::sleep(TRANSIENT_PAUSE).await;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Commits a batch: the group will resume after its last record.
    pub async fn commit(&mut self, batch: &GroupBatch) -> Result<(), ClientError> {
        self.commit_offset(batch.partition, batch.epoch, batch.next_offset)
            .await
    }

    /// Commits `offset` (the next offset to process) in a partition, under the lease at
    /// `epoch`. Fails with [`ErrorCode::NotLeaseHolder`] if the lease moved on: the records
    /// will be processed again by the next holder.
    pub async fn commit_offset(
        &mut self,
        partition: u32,
        epoch: u64,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.client
            .commit_lease(&self.member(), partition, epoch, offset)
            .await?;
        // Caught up: if the partition was closed by a reshard, this commit made its children
        // ready, and a heartbeat now lets the group pick them up without waiting a beat.
        if self
            .owned
            .get(&partition)
            .is_some_and(|o| o.epoch == epoch && offset >= o.end_seen)
        {
            self.beat_now.notify_one();
        }
        Ok(())
    }

    /// Leaves the group: its leases go to the other members at once. Commit first.
    pub async fn leave(self) -> Result<(), ClientError> {
        self.heartbeats.abort();
        self.client.leave_group(&self.member()).await
    }

    /// Reads one leased partition at its position; `None` if there was nothing new.
    async fn read(
        &mut self,
        partition: u32,
        wait: Duration,
    ) -> Result<Option<GroupBatch>, ClientError> {
        let Some(owned) = self.owned.get(&partition).copied() else {
            return Ok(None);
        };
        let request = |from| ReadRequest {
            stream: self.config.stream.clone(),
            partition,
            from,
            max_records: self.config.max_records,
            max_bytes: self.config.max_bytes,
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let response = match self
            .client
            .read(request(ReadFrom::Offset(owned.position)))
            .await
        {
            // Retention deleted the records at the position before the group got to them:
            // resume at the oldest record held, as Kafka's `auto.offset.reset=earliest` does.
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                self.client.read(request(ReadFrom::Earliest)).await?
            }
            other => other?,
        };
        self.cursor = Some(partition);
        let Some(o) = self.owned.get_mut(&partition) else {
            return Ok(None);
        };
        o.end_seen = response.end_offset;
        if response.records.is_empty() {
            return Ok(None);
        }
        o.position = response.next_offset;
        Ok(Some(GroupBatch {
            partition,
            epoch: o.epoch,
            records: response.records,
            next_offset: response.next_offset,
        }))
    }

    /// Leased partitions, starting after the one read last.
    fn round_robin(&self) -> Vec<u32> {
        let ids: Vec<u32> = self.owned.keys().copied().collect();
        let start = self
            .cursor
            .map_or(0, |c| ids.iter().position(|&p| p > c).unwrap_or(0));
        ids[start..].iter().chain(&ids[..start]).copied().collect()
    }

    /// Turns the latest heartbeat's leases into events: releases what the server asked back,
    /// drops what is gone, and starts reading what is new.
    fn apply_heartbeat(&mut self) -> Result<(), ClientError> {
        let (leases, failed) = {
            let mut b = beat_state(&self.beat);
            (
                b.leases.take(),
                b.failed.as_ref().map(ClientError::duplicate),
            )
        };
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(leases) = leases else {
            return Ok(());
        };
        let mut release = Vec::new();
        let held: BTreeMap<u32, LeaseInfo> = leases.iter().map(|l| (l.partition, *l)).collect();
        let gone: Vec<u32> = self
            .owned
            .iter()
            .filter(|(p, o)| held.get(p).is_none_or(|l| l.revoking || l.epoch != o.epoch))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            self.owned.remove(&p);
            self.events.push_back(GroupEvent::Revoked { partition: p });
        }
        self.released
            .retain(|(p, e)| held.get(p).is_some_and(|l| l.epoch == *e));
        for l in leases {
            if self.released.contains(&(l.partition, l.epoch)) {
                continue;
            }
            if l.revoking {
                self.released.insert((l.partition, l.epoch));
                release.push((l.partition, l.epoch));
            } else if let std::collections::btree_map::Entry::Vacant(slot) =
                self.owned.entry(l.partition)
            {
                slot.insert(Owned {
                    epoch: l.epoch,
                    position: l.start_offset,
                    end_seen: l.start_offset,
                });
                self.events.push_back(GroupEvent::Assigned {
                    partition: l.partition,
                    epoch: l.epoch,
                    start_offset: l.start_offset,
                });
            }
        }
        if !release.is_empty() {
            beat_state(&self.beat).release.extend(release);
            self.beat_now.notify_one();
        }
        Ok(())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

async fn heartbeat_loop(
    client: Client,
    join: JoinGroup,
    interval: Duration,
    beat: Arc<Mutex<Beat>>,
    beat_now: Arc<Notify>,
    changed: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = beat_now.notified() => {}
        }
        let (member, released) = {
            let mut b = beat_state(&beat);
            let member = MemberRef {
                group: join.group.clone(),
                stream: join.stream.clone(),
                member_id: b.member_id.clone(),
            };
            (member, std::mem::take(&mut b.release))
        };
        let generation = client.connection_generation();
        match client.heartbeat(&member, released.clone()).await {
            Ok(leases) => {
                let mut b = beat_state(&beat);
                b.leases = Some(leases);
                // The generation the heartbeat certainly went over: if the client reconnected
                // during the call, the next heartbeat (at once) settles the new connection.
                b.generation = generation;
                drop(b);
                if client.connection_generation() != generation {
                    beat_now.notify_one();
                }
                changed.notify_one();
            }
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                // Forgotten by the server: every lease is gone with the old id. Join again and
                // beat at once for the new leases.
                match client.join_group(join.clone()).await {
                    Ok(joined) => {
                        let mut b = beat_state(&beat);
                        b.member_id = joined.member_id;
                        b.leases = Some(Vec::new());
                        drop(b);
                        changed.notify_one();
                        beat_now.notify_one();
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => {
                        beat_state(&beat).failed = Some(e);
                        changed.notify_one();
                        return;
                    }
                }
            }
            // A lost connection or a timeout: the client reconnects on the next call. Releases
            // not sent go out with the next heartbeat.
            Err(e) if is_transient(&e) => beat_state(&beat).release.extend(released),
            // The stream was deleted, or the server refuses the group: nothing to wait for.
            Err(e) => {
                beat_state(&beat).failed = Some(e);
                changed.notify_one();
                return;
            }
        }
    }
}

/// How long `next` pauses after a read failed for a reason that may pass.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(100);

/// Errors a later attempt can get past: the connection, the server being busy or unable to
/// write its checkpoint store for now. A full group is not one of them: the member would wait
/// silently for a place that may never come, so it hears about it instead.
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Timeout | ClientError::ConnectionClosed => true,
        ClientError::Server { kind, .. } => {
            matches!(kind, Some(ErrorCode::Busy | ErrorCode::StorageUnavailable))
        }
        _ => false,
    }
}
