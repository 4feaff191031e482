//! Consumer groups: the coordinator's state machine.
//!
//! A group is a named set of members sharing one stream. The coordinator leases each partition
//! that is ready to be consumed to exactly one live member, evenly, and hands leases over
//! without losing track of progress:
//!
//! - A lease carries an epoch that grows every time the partition changes hands. Commits name
//!   the epoch they were made under, and a commit under an old epoch is refused, so a member that
//!   lost its lease (a zombie) cannot move the group's checkpoint.
//! - Moving a lease from a live member is cooperative: the lease is marked *revoking*, the holder
//!   commits what it processed and releases it, and only then does the new owner get it (starting
//!   at that checkpoint). A holder that does not release within its session timeout loses the
//!   lease anyway. A member that stops heartbeating loses every lease at once.
//! - Parent before child: a partition made by a split or merge is not leased until each of its
//!   parents is *finished* (closed and consumed to its end), as the Kinesis Client Library does,
//!   so each key's records are processed in order across reshards.
//!
//! Time is passed in (`now_ms`, from any monotonic clock), so the state machine is deterministic
//! and tests can drive it without sleeping. The wiring to the catalog and the checkpoint store is
//! in `broker.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};

/// Shortest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest session timeout a member may ask for (Kafka's `group.max.session.timeout.ms`).
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);
/// Most live members in one group.
pub const GROUP_MEMBERS_MAX: usize = 1024;
/// Most live members across all groups: each costs memory until it leaves or times out.
pub const MEMBERS_MAX: usize = 16_384;
/// Longest member name, bytes.
pub const MEMBER_NAME_BYTES_MAX: usize = 256;

/// Where a group starts in a partition it has no checkpoint for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still held.
    #[default]
    Earliest,
    /// The partition's end when the lease is granted.
    Latest,
}

/// A partition lease as its holder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Partition id.
    pub partition: u32,
    /// Grows each time the partition changes hands; commits must name it.
    pub epoch: u64,
    /// Where the holder starts reading: the checkpoint when the lease was granted (or the
    /// initial position without one), never below the partition's first held offset.
    pub start_offset: u64,
    /// The coordinator wants the partition back: commit, then release it.
    pub revoking: bool,
}

/// A live member as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// The label it joined with.
    pub name: String,
    /// Its session timeout, ms.
    pub session_timeout_ms: u64,
    /// Time since its last heartbeat or commit, ms.
    pub last_seen_ms_ago: u64,
    /// Partitions it holds leases on.
    pub partitions: Vec<u32>,
}

/// Where a partition stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPartitionState {
    /// Leased to a member.
    Leased,
    /// Leased, and being handed to another member.
    Revoking,
    /// Ready to be consumed, but no live member holds it.
    Unassigned,
    /// A parent is not consumed to its end yet.
    Waiting,
    /// Closed and consumed to its end.
    Finished,
}

impl GroupPartitionState {
    /// The lowercase name used in the CLI and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leased => "leased",
            Self::Revoking => "revoking",
            Self::Unassigned => "unassigned",
            Self::Waiting => "waiting",
            Self::Finished => "finished",
        }
    }
}

/// One partition of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartition {
    /// Partition id.
    pub partition: u32,
    /// True while it takes writes.
    pub open: bool,
    /// Where it stands.
    pub state: GroupPartitionState,
    /// Member holding its lease.
    pub owner: Option<String>,
    /// Epoch of its lease (0 if not leased since the group last had members).
    pub epoch: u64,
    /// The group's committed offset.
    pub checkpoint: Option<u64>,
    /// First offset held.
    pub start_offset: u64,
    /// Next offset to be written (where a closed partition ended).
    pub end_offset: u64,
    /// Records from the group's position to the end.
    pub lag_records: u64,
    /// Milliseconds between the next record to process and the newest one; 0 when caught up.
    pub lag_ms: u64,
}

/// A group on a stream as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// Where partitions without a checkpoint start.
    pub initial: InitialPosition,
    /// Live members, by id.
    pub members: Vec<MemberDescription>,
    /// Every partition of the stream, by id.
    pub partitions: Vec<GroupPartition>,
}

/// A group in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Group name.
    pub group: String,
    /// Stream name.
    pub stream: String,
    /// Live members.
    pub members: usize,
    /// Partitions with a committed checkpoint.
    pub checkpoints: usize,
}

/// What the coordinator needs to know about one partition of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionView {
    pub id: u32,
    pub open: bool,
    pub parents: Vec<u32>,
    pub start_offset: u64,
    pub end_offset: u64,
    pub checkpoint: Option<u64>,
    /// A partition retention removed from the catalog that the group has a checkpoint for:
    /// kept in the view only so that its children know the group read it (see `positions`).
    /// It is finished, and never leased or described.
    pub retired: bool,
}

#[derive(Debug)]
struct Member {
    name: String,
    session_timeout_ms: u64,
    last_seen_ms: u64,
}

impl Member {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) > self.session_timeout_ms
    }
}

#[derive(Debug)]
struct LeaseState {
    member: String,
    epoch: u64,
    start_offset: u64,
    /// When the coordinator asked for the lease back.
    revoking_since: Option<u64>,
}

/// One group on one stream.
#[derive(Debug)]
pub(crate) struct Group {
    /// The stream incarnation the leases refer to; a stream deleted and created again under
    /// the same name starts with no leases.
    stream_uid: u64,
    initial: InitialPosition,
    members: BTreeMap<String, Member>,
    leases: BTreeMap<u32, LeaseState>,
    /// The last epoch given for each partition. Kept while the group is in memory so epochs
    /// never repeat; member ids are unique for the broker's lifetime, so a zombie from before a
    /// restart is refused as an unknown member.
    epochs: BTreeMap<u32, u64>,
    /// Where a partition without a checkpoint was first leased from. From then on that is the
    /// group's position there: otherwise, under `latest`, a lease moving before its first
    /// commit would skip records, and a parent closed before its first commit would count as
    /// consumed to its end. The caller stores every anchor the view shows without a checkpoint
    /// as the group's checkpoint (`anchors_to_store`), retrying until it is written, so it
    /// outlives the group's time in memory.
    anchors: BTreeMap<u32, u64>,
    /// Set, under this group's lock, when the group is taken out of the map: whoever locks it
    /// afterwards must look it up again instead of working on a group nobody else sees.
    pub(crate) removed: bool,
}

/// The group's position in every partition of the view: its checkpoint, else its anchor, else
/// the initial position; never below the oldest record held (a checkpoint below what retention
/// kept resumes there). Under `latest`, a partition whose parent the group has read (or would
/// read, through its own parents) starts at its oldest record, not its end, as the KCL starts
/// children at the trim horizon: its records came after the parent's, and the group follows
/// the keys across the reshard. A parent removed by retention counts as read if the group has
/// a checkpoint for it (the view carries it as `retired`), and as not read otherwise.
fn positions(
    initial: InitialPosition,
    anchors: &BTreeMap<u32, u64>,
    view: &[PartitionView],
) -> BTreeMap<u32, u64> {
    // Children always have larger ids than their parents, so one pass in id order sees every
    // parent before its children.
    let mut ordered: Vec<&PartitionView> = view.iter().collect();
    ordered.sort_by_key(|p| p.id);
    let mut followed: BTreeMap<u32, bool> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in ordered {
        let from_parent = p
            .parents
            .iter()
            .any(|q| followed.get(q).copied().unwrap_or(false));
        let known = p.checkpoint.or_else(|| anchors.get(&p.id).copied());
        followed.insert(
            p.id,
            initial == InitialPosition::Earliest || known.is_some() || from_parent,
        );
        let pos = known.unwrap_or(match initial {
            InitialPosition::Latest if !from_parent => p.end_offset,
            _ => p.start_offset,
        });
        out.insert(p.id, pos.max(p.start_offset));
    }
    out
}

/// Eligibility of every partition of the view: finished ones, and ones ready to be leased.
struct Eligibility {
    positions: BTreeMap<u32, u64>,
    finished: BTreeMap<u32, bool>,
    ready: Vec<u32>,
}

impl Eligibility {
    fn of(initial: InitialPosition, anchors: &BTreeMap<u32, u64>, view: &[PartitionView]) -> Self {
        let positions = positions(initial, anchors, view);
        let finished: BTreeMap<u32, bool> = view
            .iter()
            .map(|p| {
                let pos = positions.get(&p.id).copied().unwrap_or(p.start_offset);
                (p.id, !p.open && pos >= p.end_offset)
            })
            .collect();
        // A parent missing from the view was removed by retention after all its records
        // expired: there is nothing left to consume in it.
        let is_finished = |id: &u32| finished.get(id).copied().unwrap_or(true);
        let ready = view
            .iter()
            .filter(|p| !p.retired && !is_finished(&p.id) && p.parents.iter().all(is_finished))
            .map(|p| p.id)
            .collect();
        Self {
            positions,
            finished,
            ready,
        }
    }

    fn position(&self, p: &PartitionView) -> u64 {
        self.positions.get(&p.id).copied().unwrap_or(p.start_offset)
    }

    fn state(&self, p: &PartitionView) -> Option<GroupPartitionState> {
        if self.finished.get(&p.id).copied().unwrap_or(true) {
            Some(GroupPartitionState::Finished)
        } else if !self.ready.contains(&p.id) {
            Some(GroupPartitionState::Waiting)
        } else {
            None
        }
    }
}

impl Group {
    pub(crate) fn new(stream_uid: u64, initial: InitialPosition) -> Self {
        Self {
            stream_uid,
            initial,
            members: BTreeMap::new(),
            leases: BTreeMap::new(),
            epochs: BTreeMap::new(),
            anchors: BTreeMap::new(),
            removed: false,
        }
    }

    /// Anchors of partitions the view shows without a checkpoint, as `(partition, offset)`,
    /// for the caller to store as checkpoints. A failed store is retried on the next call.
    pub(crate) fn anchors_to_store(&self, view: &[PartitionView]) -> Vec<(u32, u64)> {
        view.iter()
            .filter(|p| p.checkpoint.is_none())
            .filter_map(|p| self.anchors.get(&p.id).map(|a| (p.id, *a)))
            .collect()
    }

    /// Live members: those that have not been silent past their session timeout.
    pub(crate) fn live_members(&self, now_ms: u64) -> usize {
        self.members.values().filter(|m| !m.expired(now_ms)).count()
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Adopts a new incarnation of the stream: leases on the old one mean nothing now.
    pub(crate) fn check_stream(&mut self, stream_uid: u64) {
        if self.stream_uid != stream_uid {
            self.stream_uid = stream_uid;
            self.leases.clear();
            self.anchors.clear();
        }
    }

    pub(crate) fn add_member(
        &mut self,
        id: String,
        name: String,
        session_timeout_ms: u64,
        now_ms: u64,
    ) {
        if self.members.is_empty() {
            // Epochs survive an empty spell; only the leases go.
            self.leases.clear();
        }
        self.members.insert(
            id,
            Member {
                name,
                session_timeout_ms,
                last_seen_ms: now_ms,
            },
        );
    }

    pub(crate) fn set_initial(&mut self, initial: InitialPosition) {
        self.initial = initial;
    }

    /// Checks that `member` is live and marks it seen. An expired member is removed here, so
    /// its leases are free for the next rebalance.
    pub(crate) fn touch(&mut self, member: &str, now_ms: u64) -> Result<()> {
        match self.members.get_mut(member) {
            Some(m) if !m.expired(now_ms) => {
                m.last_seen_ms = m.last_seen_ms.max(now_ms);
                Ok(())
            }
            Some(_) => {
                self.remove_member(member);
                Err(Error::UnknownMember(member.to_owned()))
            }
            None => Err(Error::UnknownMember(member.to_owned())),
        }
    }

    /// Removes a member and drops its leases at once (a clean leave or an expiry).
    pub(crate) fn remove_member(&mut self, member: &str) -> bool {
        self.leases.retain(|_, l| l.member != member);
        self.members.remove(member).is_some()
    }

    /// Gives back leases the member was asked to release. A release of a lease the member
    /// does not hold at that epoch is ignored: it is already gone.
    pub(crate) fn release(&mut self, member: &str, released: &[(u32, u64)]) {
        for &(partition, epoch) in released {
            if self
                .leases
                .get(&partition)
                .is_some_and(|l| l.member == member && l.epoch == epoch)
            {
                self.leases.remove(&partition);
            }
        }
    }

    /// Checks that `member` holds `partition`'s lease at `epoch` (revoking or not).
    pub(crate) fn check_lease(&self, member: &str, partition: u32, epoch: u64) -> Result<()> {
        match self.leases.get(&partition) {
            Some(l) if l.member == member && l.epoch == epoch => Ok(()),
            held => Err(Error::NotLeaseHolder {
                partition,
                epoch,
                current: held.map(|l| l.epoch),
            }),
        }
    }

    /// The member's leases, by partition.
    pub(crate) fn leases_of(&self, member: &str) -> Vec<Lease> {
        self.leases
            .iter()
            .filter(|(_, l)| l.member == member)
            .map(|(&partition, l)| Lease {
                partition,
                epoch: l.epoch,
                start_offset: l.start_offset,
                revoking: l.revoking_since.is_some(),
            })
            .collect()
    }

    /// Brings the leases up to date with the members, the clock and the stream: expires members,
    /// takes back leases whose release is overdue, drops leases of partitions no longer ready,
    /// and spreads the ready partitions evenly, keeping leases where they are when it can.
    /// Returns the ids of members that expired.
    pub(crate) fn rebalance(&mut self, view: &[PartitionView], now_ms: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.expired(now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_member(id);
        }
        let members = &self.members;
        self.leases
            .retain(|_, l| match (l.revoking_since, members.get(&l.member)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(since), Some(m)) => now_ms.saturating_sub(since) <= m.session_timeout_ms,
            });

        let eligibility = Eligibility::of(self.initial, &self.anchors, view);
        let ready = &eligibility.ready;
        self.leases.retain(|p, _| ready.contains(p));
        if self.members.is_empty() {
            return expired;
        }

        // Even shares: every member gets `base` partitions, and `extra` of them one more. The
        // extra ones go to the members already holding the most, so fewer leases move.
        let n = ready.len();
        let m = self.members.len();
        let (base, extra) = (n / m, n % m);
        let mut held: BTreeMap<&str, Vec<u32>> = self
            .members
            .keys()
            .map(|id| (id.as_str(), Vec::new()))
            .collect();
        for (&p, l) in &self.leases {
            if l.revoking_since.is_none()
                && let Some(v) = held.get_mut(l.member.as_str())
            {
                v.push(p);
            }
        }
        let mut order: Vec<&str> = held.keys().copied().collect();
        order.sort_by_key(|id| (Reverse(held[id].len()), *id));
        let quota: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, base + usize::from(i < extra)))
            .collect();

        let mut desired: BTreeMap<u32, &str> = BTreeMap::new();
        let mut count: BTreeMap<&str, usize> = quota.keys().map(|id| (*id, 0)).collect();
        // Keep what members hold, up to their share (a lease being revoked is not held: once
        // asked back it goes back, so a holder never sees a revocation withdrawn after it
        // stopped reading and a stale start offset handed to it again)...
        for (id, parts) in &held {
            for &p in parts {
                if count[id] < quota[id] {
                    desired.insert(p, id);
                    *count.entry(id).or_default() += 1;
                }
            }
        }
        // ...and give the rest to whoever has the most room.
        for &p in ready {
            if desired.contains_key(&p) {
                continue;
            }
            if let Some((&id, _)) = count
                .iter()
                .filter(|(id, c)| **c < quota[*id])
                .min_by_key(|(id, c)| (**c, **id))
            {
                desired.insert(p, id);
                *count.entry(id).or_default() += 1;
            }
        }

        let desired: Vec<(u32, String)> = desired
            .into_iter()
            .map(|(p, id)| (p, id.to_owned()))
            .collect();
        let views: BTreeMap<u32, &PartitionView> = view.iter().map(|p| (p.id, p)).collect();
        for (p, want) in desired {
            match self.leases.get_mut(&p) {
                Some(l) if l.member == want || l.revoking_since.is_some() => {}
                Some(l) => l.revoking_since = Some(now_ms),
                None => {
                    let epoch = self.epochs.get(&p).map_or(1, |e| e + 1);
                    self.epochs.insert(p, epoch);
                    let start_offset = views.get(&p).map_or(0, |v| eligibility.position(v));
                    // Under `earliest` the position without a checkpoint is the oldest record
                    // held, which can only move forward with retention: nothing to pin.
                    if self.initial == InitialPosition::Latest
                        && views.get(&p).is_some_and(|v| v.checkpoint.is_none())
                    {
                        self.anchors.entry(p).or_insert(start_offset);
                    }
                    self.leases.insert(
                        p,
                        LeaseState {
                            member: want,
                            epoch,
                            start_offset,
                            revoking_since: None,
                        },
                    );
                }
            }
        }
        expired
    }

    /// The group's members and partitions; `lag_ms` is filled in by the caller, which can read
    /// record timestamps.
    pub(crate) fn describe(
        &self,
        group: &str,
        stream: &str,
        view: &[PartitionView],
        now_ms: u64,
    ) -> GroupDescription {
        let eligibility = Eligibility::of(self.initial, &self.anchors, view);
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                name: m.name.clone(),
                session_timeout_ms: m.session_timeout_ms,
                last_seen_ms_ago: now_ms.saturating_sub(m.last_seen_ms),
                partitions: self
                    .leases
                    .iter()
                    .filter(|(_, l)| &l.member == id)
                    .map(|(p, _)| *p)
                    .collect(),
            })
            .collect();
        let partitions = view
            .iter()
            .filter(|p| !p.retired)
            .map(|p| {
                let lease = self.leases.get(&p.id);
                let state = eligibility.state(p).unwrap_or(match lease {
                    Some(l) if l.revoking_since.is_some() => GroupPartitionState::Revoking,
                    Some(_) => GroupPartitionState::Leased,
                    None => GroupPartitionState::Unassigned,
                });
                let pos = eligibility.position(p).min(p.end_offset);
                GroupPartition {
                    partition: p.id,
                    open: p.open,
                    state,
                    owner: lease.map(|l| l.member.clone()),
                    epoch: self.epochs.get(&p.id).copied().unwrap_or(0),
                    checkpoint: p.checkpoint,
                    start_offset: p.start_offset,
                    end_offset: p.end_offset,
                    lag_records: p.end_offset - pos,
                    lag_ms: 0,
                }
            })
            .collect();
        GroupDescription {
            group: group.to_owned(),
            stream: stream.to_owned(),
            initial: self.initial,
            members,
            partitions,
        }
    }
}

/// Groups in memory by (group name, stream name), each locked on its own.
type GroupMap = HashMap<(String, String), Arc<Mutex<Group>>>;

/// Every group in memory, by (group, stream). A group stays in memory while it has members.
#[derive(Debug)]
pub(crate) struct Groups {
    map: Mutex<GroupMap>,
    /// Random per broker instance, so member ids never repeat across restarts.
    instance: u32,
    next_member: AtomicU64,
}

pub(crate) fn lock_group(g: &Mutex<Group>) -> MutexGuard<'_, Group> {
    // A group's state is changed in small steps that leave it consistent; a panic in one
    // request must not stop the group.
    g.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Groups {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        Self {
            map: Mutex::new(HashMap::new()),
            instance: h.finish() as u32,
            next_member: AtomicU64::new(1),
        }
    }
}

impl Groups {
    fn map(&self) -> MutexGuard<'_, GroupMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new member id: unique for this broker instance, and unlike any earlier instance's.
    pub(crate) fn new_member_id(&self) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", self.instance)
    }

    /// The group, if it is in memory.
    pub(crate) fn get(&self, group: &str, stream: &str) -> Option<Arc<Mutex<Group>>> {
        self.map()
            .get(&(group.to_owned(), stream.to_owned()))
            .cloned()
    }

    /// The group, created empty if it is not in memory. The caller bounds how many exist: a join
    /// checks the server's member limit first, and other callers remove an empty group when
    /// done. No group is locked here, so a group busy with a commit's fsync never holds up the
    /// map every other request goes through.
    pub(crate) fn get_or_create(
        &self,
        group: &str,
        stream: &str,
        stream_uid: u64,
        initial: InitialPosition,
    ) -> Arc<Mutex<Group>> {
        let mut map = self.map();
        Arc::clone(
            map.entry((group.to_owned(), stream.to_owned()))
                .or_insert_with(|| Arc::new(Mutex::new(Group::new(stream_uid, initial)))),
        )
    }

    /// Live members over every group; members silent past their timeout do not count, even
    /// before a request to their group removes them.
    pub(crate) fn total_members(&self, now_ms: u64) -> usize {
        let groups: Vec<Arc<Mutex<Group>>> = self.map().values().cloned().collect();
        groups
            .iter()
            .map(|g| lock_group(g).live_members(now_ms))
            .sum()
    }

    /// Forgets the group if it has no members (its checkpoints stay on disk).
    pub(crate) fn remove_if_empty(&self, group: &str, stream: &str) {
        let key = (group.to_owned(), stream.to_owned());
        let Some(entry) = self.map().get(&key).cloned() else {
            return;
        };
        // The group is locked before the map (never the map while waiting for a group), and
        // marked removed under its lock, so a request that found it just before can tell.
        let mut g = lock_group(&entry);
        if g.removed || g.member_count() > 0 {
            return;
        }
        let mut map = self.map();
        if map.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            map.remove(&key);
            g.removed = true;
        }
    }

    /// Every (group, stream) in memory.
    pub(crate) fn keys(&self) -> Vec<(String, String)> {
        let mut keys: Vec<_> = self.map().keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(id: u32) -> PartitionView {
        PartitionView {
            id,
            open: true,
            parents: vec![],
            start_offset: 0,
            end_offset: 100,
            checkpoint: None,
            retired: false,
        }
    }

    fn count(g: &Group, member: &str) -> usize {
        g.leases_of(member).iter().filter(|l| !l.revoking).count()
    }

    #[test]
    fn six_partitions_spread_two_each_over_three_members() {
        let view: Vec<_> = (0..6).map(open).collect();
        let mut g = Group::new(1, InitialPosition::Earliest);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            g.add_member((*id).into(), String::new(), 1000, i as u64);
            g.rebalance(&view, i as u64);
        }
        // a and b were asked to give some back; they release what is revoking.
        for id in ["a", "b"] {
            let give: Vec<_> = g
                .leases_of(id)
                .iter()
                .filter(|l| l.revoking)
                .map(|l| (l.partition, l.epoch))
                .collect();
            g.release(id, &give);
            g.rebalance(&view, 10);
        }
        for id in ["a", "b", "c"] {
            assert_eq!(count(&g, id), 2, "{id}: {:?}", g.leases_of(id));
        }
        // Every partition has exactly one holder.
        let mut all: Vec<u32> = ["a", "b", "c"]
            .iter()
            .flat_map(|id| g.leases_of(id))
            .map(|l| l.partition)
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn a_silent_member_loses_its_leases_after_the_session_timeout() {
        let view: Vec<_> = (0..4).map(open).collect();
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.add_member("b".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        assert_eq!(count(&g, "a"), 2);
        let b_before = g.leases_of("b");
        g.touch("a", 900).unwrap();
        assert!(g.rebalance(&view, 1000).is_empty(), "b is not late yet");
        g.touch("a", 1500).unwrap();
        assert_eq!(g.rebalance(&view, 1500), vec!["b".to_string()]);
        let a = g.leases_of("a");
        assert_eq!(a.len(), 4);
        // The moved leases have new epochs, so b's commits under the old ones are refused.
        for old in b_before {
            let new = a.iter().find(|l| l.partition == old.partition).unwrap();
            assert!(new.epoch > old.epoch);
            assert!(matches!(
                g.check_lease("a", old.partition, old.epoch),
                Err(Error::NotLeaseHolder { .. })
            ));
            assert!(matches!(g.touch("b", 1500), Err(Error::UnknownMember(_))));
        }
    }

    #[test]
    fn a_lease_moves_from_a_live_member_only_once_released_or_overdue() {
        let view: Vec<_> = (0..2).map(open).collect();
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        g.add_member("b".into(), String::new(), 1000, 10);
        g.rebalance(&view, 10);
        let revoking: Vec<_> = g
            .leases_of("a")
            .into_iter()
            .filter(|l| l.revoking)
            .collect();
        assert_eq!(revoking.len(), 1);
        assert!(g.leases_of("b").is_empty(), "b waits for a to let go");
        // The holder may still commit under a revoking lease.
        g.check_lease("a", revoking[0].partition, revoking[0].epoch)
            .unwrap();
        // Overdue: a keeps heartbeating but never releases.
        g.touch("a", 900).unwrap();
        g.touch("b", 900).unwrap();
        g.rebalance(&view, 900);
        assert!(g.leases_of("b").is_empty());
        g.touch("a", 1011).unwrap();
        g.touch("b", 1011).unwrap();
        g.rebalance(&view, 1011);
        assert_eq!(g.leases_of("b").len(), 1);
        assert_eq!(g.leases_of("a").len(), 1);
    }

    #[test]
    fn children_wait_until_their_parents_are_consumed_to_the_end() {
        let parent = PartitionView {
            open: false,
            end_offset: 50,
            ..open(0)
        };
        let kids = [
            PartitionView {
                parents: vec![0],
                ..open(1)
            },
            PartitionView {
                parents: vec![0],
                ..open(2)
            },
        ];
        let mut view = vec![parent, kids[0].clone(), kids[1].clone()];
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.add_member("b".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        let leased: Vec<u32> = ["a", "b"]
            .iter()
            .flat_map(|id| g.leases_of(id))
            .map(|l| l.partition)
            .collect();
        assert_eq!(leased, vec![0], "only the parent is ready");
        view[0].checkpoint = Some(49);
        g.rebalance(&view, 1);
        assert_eq!(["a", "b"].iter().flat_map(|id| g.leases_of(id)).count(), 1);
        view[0].checkpoint = Some(50);
        g.rebalance(&view, 2);
        let mut leased: Vec<u32> = ["a", "b"]
            .iter()
            .flat_map(|id| g.leases_of(id))
            .map(|l| l.partition)
            .collect();
        leased.sort_unstable();
        assert_eq!(
            leased,
            vec![1, 2],
            "the finished parent is dropped, both children leased"
        );
        let d = g.describe("g", "s", &view, 2);
        assert_eq!(d.partitions[0].state, GroupPartitionState::Finished);
        assert_eq!(d.partitions[1].state, GroupPartitionState::Leased);
    }

    #[test]
    fn a_parent_removed_by_retention_does_not_block_its_children() {
        let view = vec![PartitionView {
            parents: vec![7],
            ..open(8)
        }];
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        assert_eq!(g.leases_of("a").len(), 1);
    }

    #[test]
    fn under_latest_a_child_follows_a_parent_retention_removed_only_if_the_group_read_it() {
        let child = PartitionView {
            parents: vec![7],
            start_offset: 5,
            end_offset: 90,
            ..open(8)
        };
        // Never read by this group: a new `latest` group starts the child at its end.
        let mut g = Group::new(1, InitialPosition::Latest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(std::slice::from_ref(&child), 0);
        assert_eq!(g.leases_of("a")[0].start_offset, 90);
        // Read by this group before retention removed it: the child is read from its start.
        let retired = PartitionView {
            open: false,
            start_offset: 40,
            end_offset: 40,
            checkpoint: Some(40),
            retired: true,
            ..open(7)
        };
        let mut g = Group::new(1, InitialPosition::Latest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&[retired.clone(), child.clone()], 0);
        let leases = g.leases_of("a");
        assert_eq!(leases.len(), 1, "the retired parent is never leased");
        assert_eq!((leases[0].partition, leases[0].start_offset), (8, 5));
        let d = g.describe("g", "s", &[retired, child], 0);
        assert_eq!(d.partitions.len(), 1, "nor described");
    }

    #[test]
    fn latest_starts_at_the_end_and_skips_closed_partitions() {
        let view = vec![
            PartitionView {
                open: false,
                end_offset: 40,
                ..open(0)
            },
            PartitionView {
                parents: vec![0],
                end_offset: 70,
                ..open(1)
            },
        ];
        let mut g = Group::new(1, InitialPosition::Latest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        let leases = g.leases_of("a");
        assert_eq!(leases.len(), 1);
        assert_eq!((leases[0].partition, leases[0].start_offset), (1, 70));
    }

    #[test]
    fn a_checkpoint_below_the_retained_start_resumes_at_the_start() {
        let view = vec![PartitionView {
            start_offset: 30,
            checkpoint: Some(10),
            ..open(0)
        }];
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        assert_eq!(g.leases_of("a")[0].start_offset, 30);
    }

    #[test]
    fn a_revocation_is_not_withdrawn_once_made() {
        let view: Vec<_> = (0..2).map(open).collect();
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        g.add_member("b".into(), String::new(), 1000, 1);
        g.rebalance(&view, 1);
        let asked: Vec<_> = g
            .leases_of("a")
            .into_iter()
            .filter(|l| l.revoking)
            .collect();
        assert_eq!(asked.len(), 1);
        // b leaves before a released: a may have stopped reading already, so the lease stays
        // asked back rather than silently becoming a's again at its old start offset.
        g.remove_member("b");
        g.rebalance(&view, 2);
        let still = g.leases_of("a");
        assert!(
            still
                .iter()
                .any(|l| l.partition == asked[0].partition && l.revoking)
        );
        g.release("a", &[(asked[0].partition, asked[0].epoch)]);
        g.rebalance(&view, 3);
        let back = g.leases_of("a");
        let again = back
            .iter()
            .find(|l| l.partition == asked[0].partition)
            .unwrap();
        assert!(!again.revoking);
        assert!(again.epoch > asked[0].epoch, "given back as a new lease");
    }

    #[test]
    fn silent_members_do_not_count_as_live_before_anyone_removes_them() {
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 100, 0);
        g.add_member("b".into(), String::new(), 1000, 0);
        assert_eq!(g.live_members(50), 2);
        assert_eq!(g.live_members(500), 1);
        assert_eq!(
            g.member_count(),
            2,
            "still listed until a request sweeps them"
        );
    }

    #[test]
    fn leaving_hands_leases_over_at_once_with_new_epochs() {
        let view: Vec<_> = (0..4).map(open).collect();
        let mut g = Group::new(1, InitialPosition::Earliest);
        g.add_member("a".into(), String::new(), 1000, 0);
        g.add_member("b".into(), String::new(), 1000, 0);
        g.rebalance(&view, 0);
        let a = g.leases_of("a");
        assert!(g.remove_member("a"));
        g.rebalance(&view, 1);
        let b = g.leases_of("b");
        assert_eq!(b.len(), 4);
        for old in a {
            assert!(
                b.iter()
                    .any(|l| l.partition == old.partition && l.epoch == old.epoch + 1)
            );
        }
    }

    /// A random history of joins, leaves, heartbeats with releases, silent spells and parents
    /// being finished. After every step: leases sit only on ready partitions and live members,
    /// and a partition's epoch never goes back. Once everyone has released what was asked back,
    /// every ready partition is leased and shares differ by at most one.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Join,
            Leave(usize),
            Beat(usize),
            Silence(u64),
            Finish(u32),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                2 => Just(Op::Join),
                1 => (0usize..8).prop_map(Op::Leave),
                4 => (0usize..8).prop_map(Op::Beat),
                1 => (0u64..1500).prop_map(Op::Silence),
                1 => (0u32..3).prop_map(Op::Finish),
            ]
        }

        /// Partitions 0-2 closed (0 split into 3 and 4, 1 and 2 merged into 5), 6-8 open.
        fn view() -> Vec<PartitionView> {
            let closed = |id| PartitionView {
                open: false,
                ..open(id)
            };
            let child = |id, parents: Vec<u32>| PartitionView {
                parents,
                ..open(id)
            };
            vec![
                closed(0),
                closed(1),
                closed(2),
                child(3, vec![0]),
                child(4, vec![0]),
                child(5, vec![1, 2]),
                open(6),
                open(7),
                open(8),
            ]
        }

        fn check(g: &Group, view: &[PartitionView], epochs: &mut BTreeMap<u32, (String, u64)>) {
            let ready = Eligibility::of(g.initial, &g.anchors, view).ready;
            for (p, l) in &g.leases {
                assert!(ready.contains(p), "lease on {p}, which is not ready");
                assert!(g.members.contains_key(&l.member), "lease of a gone member");
                match epochs.get(p) {
                    Some((m, e)) if *m == l.member => assert!(l.epoch >= *e),
                    Some((_, e)) => assert!(l.epoch > *e, "epoch of {p} did not grow on hand-over"),
                    None => {}
                }
                epochs.insert(*p, (l.member.clone(), l.epoch));
            }
        }

        proptest! {
            #[test]
            fn leases_stay_sound_through_any_history(ops in proptest::collection::vec(op(), 1..60)) {
                let mut view = view();
                let mut g = Group::new(1, InitialPosition::Earliest);
                let mut now = 0;
                let mut next_id = 0;
                let mut epochs = BTreeMap::new();
                for op in ops {
                    now += 10;
                    let ids: Vec<String> = g.members.keys().cloned().collect();
                    match op {
                        Op::Join => {
                            g.add_member(format!("m{next_id}"), String::new(), 1000, now);
                            next_id += 1;
                        }
                        Op::Leave(i) if !ids.is_empty() => {
                            g.remove_member(&ids[i % ids.len()]);
                        }
                        Op::Beat(i) if !ids.is_empty() => {
                            let id = &ids[i % ids.len()];
                            if g.touch(id, now).is_ok() {
                                let give: Vec<_> = g
                                    .leases_of(id)
                                    .iter()
                                    .filter(|l| l.revoking)
                                    .map(|l| (l.partition, l.epoch))
                                    .collect();
                                g.release(id, &give);
                            }
                        }
                        Op::Silence(ms) => now += ms,
                        Op::Finish(p) => {
                            let v = &mut view[p as usize];
                            v.checkpoint = Some(v.end_offset);
                        }
                        _ => {}
                    }
                    g.rebalance(&view, now);
                    check(&g, &view, &mut epochs);
                }
                // Settle: everyone beats and releases until nothing is revoking.
                for _ in 0..4 {
                    now += 1;
                    let ids: Vec<String> = g.members.keys().cloned().collect();
                    for id in &ids {
                        // A member whose session ran out at the last step of the history (silent
                        // for exactly its timeout, then one more millisecond here) is gone; the
                        // rebalance drops it, and the others settle.
                        if g.touch(id, now).is_err() {
                            g.rebalance(&view, now);
                            check(&g, &view, &mut epochs);
                            continue;
                        }
                        let give: Vec<_> = g
                            .leases_of(id)
                            .iter()
                            .filter(|l| l.revoking)
                            .map(|l| (l.partition, l.epoch))
                            .collect();
                        g.release(id, &give);
                        g.rebalance(&view, now);
                        check(&g, &view, &mut epochs);
                    }
                }
                let ready = Eligibility::of(g.initial, &g.anchors, &view).ready;
                if g.members.is_empty() {
                    prop_assert!(g.leases.is_empty());
                } else {
                    prop_assert_eq!(g.leases.len(), ready.len(), "every ready partition leased");
                    prop_assert!(g.leases.values().all(|l| l.revoking_since.is_none()));
                    let counts: Vec<usize> =
                        g.members.keys().map(|id| g.leases_of(id).len()).collect();
                    let (lo, hi) = (counts.iter().min(), counts.iter().max());
                    prop_assert!(hi.unwrap() - lo.unwrap() <= 1, "shares {:?}", counts);
                }
            }
        }
    }
}
