//! The consumer-group coordinator's wiring: the state machine of `group.rs` fed with the
//! catalog, the logs and the checkpoint store. Each request locks its group for its whole
//! length, commit included, so leases and checkpoints change together, and takes its view of
//! the catalog only once it holds that lock: views are then applied in the order they were
//! taken, and a request that started before a split cannot undo the leases a later one granted
//! after it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Broker, CHECKPOINTS_DIR, Stream, duration_ms};
use crate::error::{Error, IoContext, Result};
use crate::group::{
    GROUP_MEMBERS_MAX, Group, GroupDescription, GroupSummary, InitialPosition, Lease,
    MEMBER_NAME_BYTES_MAX, MEMBERS_MAX, PartitionView, SESSION_TIMEOUT_MAX, SESSION_TIMEOUT_MIN,
    lock_group,
};
use crate::name;
use sluice_log::ReadLimits;
use tracing::warn;

impl Broker {
    /// Milliseconds on the coordinator's monotonic clock.
    pub(super) fn now_ms(&self) -> u64 {
        duration_ms(self.started.elapsed())
    }

    /// Joins consumer group `group` on `stream` as a new member and returns its id. The member
    /// must heartbeat ([`Broker::heartbeat`]) more often than `session_timeout`, or it loses its
    /// leases. `initial` says where partitions without a checkpoint start; the member that joins
    /// an empty group sets it for the group.
    pub fn join_group(
        &self,
        group: &str,
        stream: &str,
        member_name: &str,
        session_timeout: Duration,
        initial: InitialPosition,
    ) -> Result<String> {
        name::validate(group)?;
        if member_name.len() > MEMBER_NAME_BYTES_MAX || member_name.chars().any(char::is_control) {
            return Err(Error::InvalidConfig(format!(
                "member name must be at most {MEMBER_NAME_BYTES_MAX} bytes without control characters"
            )));
        }
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&session_timeout) {
            return Err(Error::InvalidConfig(format!(
                "session timeout must be from {:?} to {:?}",
                SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX
            )));
        }
        let uid = self.snapshot().stream(stream)?.meta.uid;
        let now = self.now_ms();
        // Counted before the group is locked: counting locks every group.
        if self.groups.total_members(now) >= MEMBERS_MAX {
            return Err(Error::TooManyMembers { max: MEMBERS_MAX });
        }
        let result = self.lock_or_create(group, stream, uid, initial, |g| {
            let snap = self.snapshot();
            let s = snap.stream(stream)?;
            g.check_stream(s.meta.uid);
            self.rebalance(group, s, g)?;
            if g.member_count() >= GROUP_MEMBERS_MAX {
                return Err(Error::TooManyMembers {
                    max: GROUP_MEMBERS_MAX,
                });
            }
            if g.member_count() == 0 {
                g.set_initial(initial);
            }
            let id = self.groups.new_member_id();
            g.add_member(
                id.clone(),
                member_name.to_owned(),
                duration_ms(session_timeout),
                self.now_ms(),
            );
            // A join that fails (say, the anchor of a new lease cannot be stored) leaves no
            // member behind holding leases nobody will read.
            if let Err(e) = self.rebalance(group, s, g) {
                g.remove_member(&id);
                return Err(e);
            }
            Ok(id)
        });
        if result.is_err() {
            self.groups.remove_if_empty(group, stream);
        }
        result
    }

    /// Runs `f` on the group's entry, made if need be, locked. An entry taken out of the map
    /// between the lookup and the lock is looked up again.
    pub(super) fn lock_or_create<T>(
        &self,
        group: &str,
        stream: &str,
        uid: u64,
        initial: InitialPosition,
        f: impl FnOnce(&mut Group) -> Result<T>,
    ) -> Result<T> {
        loop {
            let g = self.groups.get_or_create(group, stream, uid, initial);
            let mut g = lock_group(&g);
            if !g.removed {
                return f(&mut g);
            }
        }
    }

    /// A member's heartbeat: keeps it alive, takes back the leases it `released` (as
    /// `(partition, epoch)`), and returns the leases it holds now. A lease marked `revoking`
    /// should be committed and released.
    pub fn heartbeat(
        &self,
        group: &str,
        stream: &str,
        member_id: &str,
        released: &[(u32, u64)],
    ) -> Result<Vec<Lease>> {
        self.with_member(group, stream, member_id, |broker, g, s| {
            g.release(member_id, released);
            broker.rebalance(group, s, g)?;
            Ok(g.leases_of(member_id))
        })
    }

    /// Commits `offset` as the group's position in `partition`, under the member's lease at
    /// `epoch`. Refused with [`Error::NotLeaseHolder`] if the lease moved on (the member was too
    /// slow, or timed out): a zombie cannot rewind the group. Committing a closed partition at
    /// its end makes its children ready to be leased.
    pub fn commit_lease(
        &self,
        group: &str,
        stream: &str,
        member_id: &str,
        partition: u32,
        epoch: u64,
        offset: u64,
    ) -> Result<()> {
        self.with_member(group, stream, member_id, |broker, g, s| {
            g.check_lease(member_id, partition, epoch)?;
            broker.write_checkpoint(group, s, partition, offset)?;
            broker.rebalance(group, s, g)?;
            Ok(())
        })
    }

    /// Leaves the group: every lease of the member goes to the others at once. Commit first;
    /// records read after the last commit will be delivered again to the next holder.
    pub fn leave_group(&self, group: &str, stream: &str, member_id: &str) -> Result<()> {
        self.with_member(group, stream, member_id, |broker, g, s| {
            g.remove_member(member_id);
            broker.rebalance(group, s, g)?;
            Ok(())
        })?;
        self.groups.remove_if_empty(group, stream);
        Ok(())
    }

    /// Runs `f` on a live member's group, locked.
    fn with_member<T>(
        &self,
        group: &str,
        stream: &str,
        member_id: &str,
        f: impl FnOnce(&Self, &mut Group, &Stream) -> Result<T>,
    ) -> Result<T> {
        name::validate(group)?;
        self.snapshot().stream(stream)?;
        let Some(g) = self.groups.get(group, stream) else {
            return Err(Error::UnknownMember(member_id.to_owned()));
        };
        let result = {
            let mut g = lock_group(&g);
            let snap = self.snapshot();
            if g.removed {
                return Err(Error::UnknownMember(member_id.to_owned()));
            }
            match snap.stream(stream) {
                Ok(s) => {
                    g.check_stream(s.meta.uid);
                    match g.touch(member_id, self.now_ms()) {
                        Ok(()) => f(self, &mut g, s),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        if matches!(result, Err(Error::UnknownMember(_))) {
            self.groups.remove_if_empty(group, stream);
        }
        result
    }

    /// A group's members, leases, checkpoints and lag on a stream. A group with neither live
    /// members nor checkpoints on the stream is [`Error::GroupNotFound`].
    pub fn describe_group(&self, group: &str, stream: &str) -> Result<GroupDescription> {
        name::validate(group)?;
        self.snapshot().stream(stream)?;
        // One view of the catalog, taken under the group's lock, serves the description and the
        // lag read afterwards; the lock itself is let go before the logs are read, so a slow
        // read never holds up the members' heartbeats.
        let (snap, in_memory) = loop {
            let entry = self.groups.get(group, stream);
            let mut locked = entry.as_ref().map(|g| lock_group(g));
            if locked.as_ref().is_some_and(|g| g.removed) {
                // Taken out of the map just now: a join may already have made a new entry.
                continue;
            }
            let snap = self.snapshot();
            let s = snap.stream(stream)?;
            let in_memory = match locked.as_deref_mut() {
                Some(g) => {
                    g.check_stream(s.meta.uid);
                    let view = self.rebalance(group, s, g)?;
                    (g.member_count() > 0).then(|| g.describe(group, stream, &view, self.now_ms()))
                }
                None => None,
            };
            break (snap, in_memory);
        };
        let s = snap.stream(stream)?;
        let mut d = match in_memory {
            Some(d) => d,
            None => {
                self.groups.remove_if_empty(group, stream);
                let view = self.group_view(group, s)?;
                if !view.iter().any(|p| p.checkpoint.is_some() && !p.retired) {
                    return Err(Error::GroupNotFound {
                        group: group.to_owned(),
                        stream: stream.to_owned(),
                    });
                }
                // Only checkpoints: describe it as a group nobody has joined since the start.
                Group::new(s.meta.uid, InitialPosition::Earliest).describe(
                    group,
                    stream,
                    &view,
                    self.now_ms(),
                )
            }
        };
        for p in &mut d.partitions {
            if p.lag_records == 0 {
                continue;
            }
            let part = s.partition(p.partition)?;
            let next = p.end_offset - p.lag_records;
            let one = ReadLimits {
                records_max: 1,
                ..ReadLimits::default()
            };
            // Retention may have removed the next record since the view was taken: the oldest
            // record held is then the next one the group will get.
            let first = part.log.read_from(next.max(part.log.start_offset()), one)?;
            let newest = part.log.read_from(p.end_offset - 1, one)?;
            if let (Some(a), Some(b)) = (first.first(), newest.first()) {
                p.lag_ms = b.timestamp_ms.saturating_sub(a.timestamp_ms);
            }
        }
        Ok(d)
    }

    /// Every consumer group with live members or checkpoints, by group and stream.
    pub fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let snap = self.snapshot();
        let names: BTreeMap<u64, &str> = snap
            .streams
            .iter()
            .map(|(name, s)| (s.meta.uid, name.as_str()))
            .collect();
        let mut out: BTreeMap<(String, String), GroupSummary> = BTreeMap::new();
        let now = self.now_ms();
        for (group, stream) in self.groups.keys() {
            let Some(g) = self.groups.get(&group, &stream) else {
                continue;
            };
            let members = {
                let mut g = lock_group(&g);
                if g.removed {
                    continue;
                }
                let snap = self.snapshot();
                match snap.streams.get(&stream) {
                    Some(s) => {
                        g.check_stream(s.meta.uid);
                        // One group whose anchors cannot be stored now does not hide the rest.
                        if let Err(e) = self.rebalance(&group, s, &mut g) {
                            warn!(group = %group, stream = %stream, error = %e, "could not bring a group up to date for the listing");
                        }
                    }
                    // The stream is gone; so is the group.
                    None => {
                        let ids = g.describe(&group, &stream, &[], now).members;
                        for m in ids {
                            g.remove_member(&m.member_id);
                        }
                    }
                }
                g.member_count()
            };
            if members == 0 {
                self.groups.remove_if_empty(&group, &stream);
                continue;
            }
            out.insert(
                (group.clone(), stream.clone()),
                GroupSummary {
                    group,
                    stream,
                    members,
                    checkpoints: 0,
                },
            );
        }
        let dir = self.dir.join(CHECKPOINTS_DIR);
        for group in self.fs.list_dir(&dir).at(&dir)? {
            // Temporary files of an interrupted write are not groups.
            if name::validate(&group).is_err() {
                continue;
            }
            let Some(checkpoints) = self.group_checkpoints(&group)? else {
                continue;
            };
            for (uid, _) in checkpoints.keys() {
                let Some(stream) = names.get(uid) else {
                    continue;
                };
                out.entry((group.clone(), (*stream).to_owned()))
                    .or_insert_with(|| GroupSummary {
                        group: group.clone(),
                        stream: (*stream).to_owned(),
                        members: 0,
                        checkpoints: 0,
                    })
                    .checkpoints += 1;
            }
        }
        Ok(out.into_values().collect())
    }

    /// Rebalances a locked group against the stream `s` (taken after the lock) and stores the
    /// positions it anchored as checkpoints. Returns the view it used.
    fn rebalance(&self, group: &str, s: &Stream, g: &mut Group) -> Result<Vec<PartitionView>> {
        let view = self.group_view(group, s)?;
        g.rebalance(&view, self.now_ms());
        let anchors = g.anchors_to_store(&view);
        if anchors.is_empty() {
            return Ok(view);
        }
        for (partition, offset) in anchors {
            self.write_checkpoint(group, s, partition, offset)?;
        }
        self.group_view(group, s)
    }

    /// What the coordinator needs to know about each partition of `s`, with the group's
    /// checkpoints.
    fn group_view(&self, group: &str, s: &Stream) -> Result<Vec<PartitionView>> {
        let checkpoints = self.group_checkpoints(group)?.unwrap_or_default();
        let mut view = Vec::with_capacity(s.meta.partitions.len());
        for (&id, meta) in &s.meta.partitions {
            let p = s.partition(id)?;
            view.push(PartitionView {
                id,
                open: meta.closed_end.is_none(),
                parents: meta.parents.clone(),
                start_offset: p.log.start_offset(),
                // Only what is acknowledged (durable under `always`): a position anchored past it
                // could point beyond what a crash leaves, and records written after recovery
                // would then be skipped.
                end_offset: match meta.closed_end {
                    Some(end) => end,
                    None => p.log.readable_end(),
                },
                checkpoint: checkpoints.get(&(s.meta.uid, id)).copied(),
                retired: false,
            });
        }
        // Partitions retention removed whose parents the group read: their children must know
        // the group followed them (under `latest` they start at their first record).
        for (&(uid, id), &offset) in &checkpoints {
            if uid == s.meta.uid && !s.meta.partitions.contains_key(&id) {
                view.push(PartitionView {
                    id,
                    open: false,
                    parents: Vec::new(),
                    start_offset: offset,
                    end_offset: offset,
                    checkpoint: Some(offset),
                    retired: true,
                });
            }
        }
        Ok(view)
    }
}
