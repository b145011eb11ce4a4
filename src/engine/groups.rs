//! Group snapshots: CreateVolumeGroupSnapshot, GetVolumeGroupSnapshot and
//! DeleteVolumeGroupSnapshot.
//!
//! A group is consistent as of one instant: no member's snapshot holds a write that
//! another member's snapshot misses if that write was acknowledged before it. berth gets
//! there by holding every member still at once, then taking each member's ordinary
//! snapshot, then letting them go:
//! - a block or device volume whose filesystem is mounted on this node is frozen
//!   (FIFREEZE: everything acknowledged is on the device, new writes wait); its image is
//!   then reflinked or copied as for a single snapshot;
//! - a volume nothing mounts here is idle: nothing can write to it;
//! - anything else cannot be held still (a bound directory volume: its pool's filesystem
//!   can be frozen only as a whole, and then btrfs cannot snapshot nor anything reflink; a
//!   raw block device a pod writes to; an NFS export), and the group is refused with
//!   FAILED_PRECONDITION saying which member and why, before anything is recorded.
//!
//! The group has no record of its own: each member's snapshot record names it
//! ([`GroupRef`]). Every member's intent is recorded before the first freeze (each freeze
//! is recorded too, and a start thaws what a crash left frozen), and members turn Ready
//! only once every member is taken, so a group with a member still `Creating` is an
//! interrupted one. It is never finished piecemeal, which would break its instant: the
//! retry and the start after a crash roll all of its members back, and the retry takes
//! the group again.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Engine, Error, Result, failpoint};
use crate::backend::{Quiesce, Work};
use crate::ids::{self, Kind};
use crate::state::{self, GroupRef, Phase, SnapshotRecord, VolumeRecord};

/// A group snapshot as its members' records describe it.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub id: String,
    /// In source volume order as the request gave them (creation), or by snapshot ID.
    pub members: Vec<Arc<SnapshotRecord>>,
}

impl GroupSnapshot {
    /// When the group was taken: its members share the instant, and the records the time
    /// their intents were written.
    #[must_use]
    pub fn created_unix_ms(&self) -> u64 {
        self.members.iter().map(|m| m.created_unix_ms).min().unwrap_or(0)
    }

    /// True once every member is Ready.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.members.iter().all(|m| m.phase == Phase::Ready)
    }
}

impl Engine {
    /// Takes a group snapshot of `sources` (volumes of this node), or returns the one this
    /// name already made of them. `key` (from the request's secrets) reads members
    /// encrypted with fscrypt that are not staged here.
    pub fn create_group_snapshot(
        &self,
        name: &str,
        sources: &[String],
        key: Option<&crate::crypt::Key>,
    ) -> Result<GroupSnapshot> {
        let wanted = distinct_sources(sources)?;
        for source in sources {
            self.sync_for_id(Kind::Volume, source)?;
        }
        let mut lock_keys = vec![format!("group-name:{name}")];
        lock_keys.extend(wanted.iter().map(|s| (*s).to_string()));
        let _guard = self.lock(&lock_keys)?;

        let existing = self.group_members(|g| g.name == name);
        let mut group_id = None;
        if let Some(first) = existing.first() {
            let theirs: BTreeSet<&str> = existing.iter().map(|m| m.source_volume.as_str()).collect();
            let id = first.group.as_ref().map_or_else(String::new, |g| g.id.clone());
            if theirs != wanted {
                return Err(Error::NameTaken {
                    kind: "group snapshot",
                    name: name.to_string(),
                    holder: format!("{id} of volumes {}", theirs.into_iter().collect::<Vec<_>>().join(", ")),
                });
            }
            if existing.iter().all(|m| m.phase == Phase::Ready) {
                return Ok(GroupSnapshot { id, members: in_order(existing, sources) });
            }
            // Interrupted: what was taken is not one instant any more. Take it again.
            self.roll_back_group(&id, &existing)?;
            group_id = Some(id);
        }

        let volumes = self.group_volumes(sources)?;
        let pools = volumes.iter().map(|v| self.pool(&v.pool).cloned()).collect::<Result<Vec<_>>>()?;
        let mut freeze: Vec<std::path::PathBuf> = Vec::new();
        let mut cannot = Vec::new();
        // One read of the mount table answers for every member.
        let table = self.mount_table(std::path::Path::new("/"))?;
        for (volume, pool) in volumes.iter().zip(&pools) {
            pool.check_writable()?;
            match pool.quiesce(volume, &table)? {
                Quiesce::Idle => {}
                Quiesce::Freeze(mount_point) => freeze.push(mount_point),
                Quiesce::Cannot(why) => cannot.push(format!("volume {}: {why}", volume.id)),
            }
        }
        if !cannot.is_empty() {
            return Err(Error::CannotGroup { reasons: cannot.join("; ") });
        }
        // fscrypt members (directory pools) need their key in the kernel to be read.
        let mut held_keys = Vec::new();
        for (volume, pool) in volumes.iter().zip(&pools) {
            if let Some(id) = super::encryption::key_of(volume).filter(|_| pool.keyring().is_some()) {
                held_keys.push(self.hold_for(pool, volume, id, key, crate::crypt::KeyFrom::CreateSnapshot)?);
            }
        }

        let group = GroupRef {
            id: group_id.unwrap_or_else(|| ids::mint(Kind::Group, &volumes[0].pool).0),
            name: name.to_string(),
        };
        let created_unix_ms = state::now_ms();
        let mut records = Vec::with_capacity(volumes.len());
        for volume in &volumes {
            let (id, key) = ids::mint(Kind::Snapshot, &volume.pool);
            let record = SnapshotRecord {
                name: id.clone(),
                id,
                pool: volume.pool.clone(),
                key,
                node: self.node_id.clone(),
                source_volume: volume.id.clone(),
                phase: Phase::Creating,
                size: 0,
                method: None,
                encryption: volume.encryption.clone(),
                group: Some(group.clone()),
                copy: None,
                created_unix_ms,
            };
            if let Err(e) = self.begin_snapshot(&record) {
                self.undo_group(&group.id, &records);
                return Err(e);
            }
            records.push(record);
        }
        let started = std::time::Instant::now();
        let taken = failpoint("group.create.after-intent").and_then(|()| {
            let work = Work::held_still();
            self.freezes
                .all_frozen(self.sys.as_ref(), &freeze, || {
                    for ((volume, pool), record) in volumes.iter().zip(&pools).zip(records.iter_mut()) {
                        pool.create_snapshot(volume, record, &work)?;
                        crate::backend::failpoint("group.create.member-taken", std::path::Path::new(&volume.id))?;
                    }
                    Ok(())
                })
                .map_err(Error::from)
        });
        if let Err(e) = taken {
            self.undo_group(&group.id, &records);
            return Err(e);
        }
        failpoint("group.create.before-ready")?;
        let mut members = Vec::with_capacity(records.len());
        for mut record in records {
            record.phase = Phase::Ready;
            self.put_snapshot(&record)?;
            members.push(Arc::new(record));
        }
        tracing::info!(
            group.id = %group.id,
            members = members.len(),
            frozen = freeze.len(),
            held_ms = started.elapsed().as_secs_f64() * 1000.0,
            "group snapshot created"
        );
        // The keys stay in the kernel until every member is read.
        drop(held_keys);
        Ok(GroupSnapshot { id: group.id, members })
    }

    /// A whole group snapshot by ID; `snapshot_ids`, when given, must be its members.
    pub fn get_group_snapshot(&self, id: &str, snapshot_ids: &[String]) -> Result<GroupSnapshot> {
        self.sync_for_id(Kind::Group, id)?;
        let members = self.group_members(|g| g.id == id);
        if members.is_empty() || members.iter().any(|m| m.phase != Phase::Ready) {
            return Err(Error::NoGroup { id: id.to_string(), node: self.node_id.clone() });
        }
        self.check_listed(id, &members, snapshot_ids)?;
        Ok(GroupSnapshot { id: id.to_string(), members })
    }

    /// Deletes a group snapshot's members; an unknown group is already gone.
    /// `snapshot_ids`, when given, must name the members (those already deleted may be
    /// named too: a retry names what the first call saw).
    pub fn delete_group_snapshot(&self, id: &str, snapshot_ids: &[String]) -> Result<()> {
        self.sync_for_id(Kind::Group, id)?;
        let members = self.group_members(|g| g.id == id);
        self.check_listed(id, &members, snapshot_ids)?;
        let mut keys = vec![id.to_string()];
        for m in &members {
            keys.push(m.id.clone());
            keys.push(crate::locks::reading(&m.id));
        }
        let _guard = self.lock(&keys)?;
        for member in self.group_members(|g| g.id == id) {
            let pool = self.pool(&member.pool)?.clone();
            pool.check_writable()?;
            self.delete_snapshot_storage(pool.as_ref(), &mut Arc::unwrap_or_clone(member))?;
        }
        tracing::info!(group.id = %id, members = members.len(), "group snapshot deleted");
        Ok(())
    }

    /// Rolls back every group a crash interrupted (a member still `Creating`): none of it
    /// was answered as taken, and finishing it would break its instant. Called at start.
    pub(super) fn roll_back_interrupted_groups(&self) {
        let interrupted: BTreeSet<String> = self
            .store
            .snapshots_page(None, usize::MAX, |s| s.phase == Phase::Creating && s.group.is_some())
            .0
            .iter()
            .filter_map(|s| s.group.as_ref().map(|g| g.id.clone()))
            .collect();
        for id in interrupted {
            let members = self.group_members(|g| g.id == id);
            let mut keys = vec![id.clone()];
            keys.extend(members.iter().map(|m| m.id.clone()));
            let Some(_guard) = self.locks.try_lock(keys) else {
                tracing::warn!(group.id = %id, "an interrupted group snapshot is in use; the call holding it finishes it");
                continue;
            };
            match self.roll_back_group(&id, &members) {
                Ok(()) => tracing::info!(group.id = %id, "rolled back a group snapshot a crash interrupted"),
                Err(e) => {
                    tracing::error!(group.id = %id, error = %e, "cannot roll back an interrupted group snapshot; a retry will");
                }
            }
        }
    }

    /// INVALID_ARGUMENT unless `listed` (when not empty) names every member and no other
    /// snapshot; IDs of snapshots that no longer exist are allowed (a retry names what the
    /// first call saw).
    fn check_listed(&self, id: &str, members: &[Arc<SnapshotRecord>], listed: &[String]) -> Result<()> {
        if listed.is_empty() {
            return Ok(());
        }
        let unlisted: Vec<&str> =
            members.iter().map(|m| m.id.as_str()).filter(|m| !listed.iter().any(|l| l == m)).collect();
        let strangers: Vec<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|l| !members.iter().any(|m| m.id == *l))
            .filter(|l| ids::parse(Kind::Snapshot, l).is_none() || self.store.snapshot(l).is_some())
            .collect();
        let mut detail = Vec::new();
        if !unlisted.is_empty() {
            detail.push(format!("its member(s) {} are missing from snapshot_ids", unlisted.join(", ")));
        }
        if !strangers.is_empty() {
            detail.push(format!("{} are not members of it", strangers.join(", ")));
        }
        if detail.is_empty() {
            return Ok(());
        }
        Err(Error::GroupMismatch { id: id.to_string(), detail: detail.join("; ") })
    }

    /// The snapshot records of the groups `pred` picks, by snapshot ID.
    fn group_members(&self, pred: impl Fn(&GroupRef) -> bool) -> Vec<Arc<SnapshotRecord>> {
        self.store.snapshots_page(None, usize::MAX, |s| s.group.as_ref().is_some_and(&pred)).0
    }

    /// The source volumes, each of this node: NOT_FOUND when none is here, and
    /// FAILED_PRECONDITION when some are and others are not (a group is one node's).
    fn group_volumes(&self, sources: &[String]) -> Result<Vec<Arc<VolumeRecord>>> {
        let found: Vec<Option<Arc<VolumeRecord>>> = sources.iter().map(|s| self.ready_volume(s).ok()).collect();
        let missing: Vec<&str> =
            sources.iter().zip(&found).filter(|(_, v)| v.is_none()).map(|(s, _)| s.as_str()).collect();
        match missing.first() {
            None => Ok(found.into_iter().flatten().collect()),
            Some(first) if missing.len() == sources.len() => {
                Err(Error::NoVolume { id: (*first).to_string(), node: self.node_id.clone() })
            }
            Some(_) => Err(Error::CannotGroup {
                reasons: format!(
                    "volume(s) {} are not on node {}, where the others are; a group snapshot holds the volumes of one node",
                    missing.join(", "),
                    self.node_id
                ),
            }),
        }
    }

    /// Removes the storage and records of a group's members, Ready ones included.
    fn roll_back_group(&self, id: &str, members: &[Arc<SnapshotRecord>]) -> Result<()> {
        for member in members {
            let pool = self.pool(&member.pool)?.clone();
            self.roll_back_snapshot(pool.as_ref(), member)?;
        }
        tracing::info!(group.id = %id, members = members.len(), "interrupted group snapshot rolled back");
        Ok(())
    }

    /// [`Engine::roll_back_group`] after a failure: its own failure is logged (the records
    /// stay `Creating`, for the retry or the next start to roll back).
    fn undo_group(&self, id: &str, records: &[SnapshotRecord]) {
        let members: Vec<Arc<SnapshotRecord>> = records.iter().cloned().map(Arc::new).collect();
        if let Err(e) = self.roll_back_group(id, &members) {
            tracing::error!(group.id = %id, error = %e, "rolling back a failed group snapshot; a retry will finish it");
        }
    }
}

/// The most volumes one group holds: every member's filesystem stays frozen until the
/// last member is taken, so a group is kept to what one application spans.
pub const MAX_MEMBERS: usize = 64;

/// The requested source volumes as a set: INVALID_ARGUMENT when empty, repeated or more
/// than [`MAX_MEMBERS`].
fn distinct_sources(sources: &[String]) -> Result<BTreeSet<&str>> {
    if sources.is_empty() {
        return Err(Error::BadRequest("source_volume_ids is required".into()));
    }
    if sources.len() > MAX_MEMBERS {
        return Err(Error::BadRequest(format!(
            "source_volume_ids names {} volumes; a group snapshot holds at most {MAX_MEMBERS}",
            sources.len()
        )));
    }
    let mut set = BTreeSet::new();
    for s in sources {
        if !set.insert(s.as_str()) {
            return Err(Error::BadRequest(format!("source_volume_ids names volume {s} twice")));
        }
    }
    Ok(set)
}

/// `members` in the order of `sources` (each source has one member).
fn in_order(mut members: Vec<Arc<SnapshotRecord>>, sources: &[String]) -> Vec<Arc<SnapshotRecord>> {
    members.sort_by_key(|m| sources.iter().position(|s| *s == m.source_volume));
    members
}
