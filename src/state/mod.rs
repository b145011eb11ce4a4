//! Crash-safe records of volumes and snapshots.
//!
//! The records live in memory; lookups by ID or name never touch the disk. On disk they
//! are a [`checkpoint`] (every record in one file) plus the [`journal`] of every change
//! since it. A change is durable when its journal frame is written: one write of a block
//! the file already owns, instead of syncing a file and a directory. When the journal
//! fills, or in the background once it is half full, a new checkpoint takes in everything
//! and the journal starts over.
//!
//! Records carry a [`Phase`]: berth writes `Creating` (its intent) before any side effect
//! and `Ready` after, so a retried CreateVolume finds its own half-done work and finishes
//! it.
//!
//! This file holds the [`Store`] and its record API (put, remove, look up, page). The rest
//! of the store is split by what it does: `open` takes the state's lock and loads the
//! records (refusing a damaged or cut checkpoint or journal), `commit` makes changes
//! durable (group commit into the journal, and the checkpoints that empty it), and
//! `salvage` is the way back from damaged records. Below them: `records` (the record
//! types), `table` (the records in memory and the changes to them), `checkpoint` and
//! `journal` (the two files on disk), `legacy` (record files to import).

mod checkpoint;
mod commit;
mod journal;
mod legacy;
mod open;
mod records;
mod salvage;
mod table;
#[cfg(test)]
mod testutil;

pub use open::read_records;
pub use records::{
    AccessKind, ContentSource, DeviceIdentity, Enforced, GroupRef, Layer, Phase, SnapshotCopy, SnapshotMethod,
    SnapshotRecord, VolumeRecord, now_ms,
};
pub use salvage::{Salvaged, salvage};
use table::{Change, Maps};

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use commit::Queue;

/// The record store. Writers must hold the per-object lock of what they write.
/// Opened in `open.rs`; its changes reach the disk through `commit.rs`.
#[derive(Debug)]
pub struct Store {
    /// Held for the store's life (see `open::lock_state`).
    _lock: nix::fcntl::Flock<fs::File>,
    root: PathBuf,
    maps: Mutex<Maps>,
    /// Held from a batch's frames to its map update, and through a checkpoint, so a
    /// checkpoint holds exactly the changes whose frames it retires. Taken before `maps`.
    journal: Mutex<journal::Journal>,
    queue: Mutex<Queue>,
    /// Signalled when a batch is written.
    written: Condvar,
}

/// A record file that could not be read; reported at start, never deleted.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub reason: String,
}

const JOURNAL: &str = "journal";

/// Syncs `file`, written at `tmp`, and renames it over `dest`, then syncs the directory:
/// a crash leaves the old file or the new one, whole.
fn replace_durably(file: fs::File, tmp: &Path, dest: &Path) -> io::Result<()> {
    crate::durable::replace(file, tmp, dest, Some(["state.replace.before-rename", "state.replace.after-rename"]))
}

/// A random number unlike `previous`: a checkpoint's epoch, a journal writer's tag.
fn unique_u64(previous: u64) -> u64 {
    let drawn = uuid::Uuid::new_v4().as_u64_pair().0;
    if drawn == previous { drawn.wrapping_add(1) } else { drawn }
}

/// The record API, and the locks it goes through.
impl Store {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn journal(&self) -> MutexGuard<'_, journal::Journal> {
        self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Durably writes a volume record, then makes it visible. The store keeps a copy of
    /// its own: records it holds never change.
    pub fn put_volume(&self, record: &VolumeRecord) -> io::Result<()> {
        self.commit(Change::PutVolume(Arc::new(record.clone())))
    }

    /// Durably removes a volume record.
    pub fn remove_volume(&self, id: &str) -> io::Result<()> {
        if !self.maps().volumes.by_id.contains_key(id) && !self.journal().broken {
            return Ok(());
        }
        self.commit(Change::RemoveVolume(id.to_string()))
    }

    /// The volume record with this ID, shared with the store: a lookup copies nothing.
    /// To change it, copy it (`(*record).clone()`), change the copy and put it.
    pub fn volume(&self, id: &str) -> Option<Arc<VolumeRecord>> {
        self.maps().volumes.get(id)
    }

    pub fn volume_by_name(&self, name: &str) -> Option<Arc<VolumeRecord>> {
        self.maps().volumes.by_name(name)
    }

    /// Up to `limit` volumes with IDs after `after`, in ID order, and whether more follow.
    pub fn volumes_page(&self, after: Option<&str>, limit: usize) -> (Vec<Arc<VolumeRecord>>, bool) {
        self.maps().volumes.page(after, limit, |_| true)
    }

    /// Every volume matching `pred` (for capacity and node lookups), shared with the store,
    /// in ID order (the metrics scrape matches its usage cache to them in that order).
    pub fn volumes_where(&self, pred: impl Fn(&VolumeRecord) -> bool) -> Vec<Arc<VolumeRecord>> {
        self.maps().volumes.by_id.values().filter(|v| pred(v)).cloned().collect()
    }

    /// Whether any volume record satisfies `pred`; clones nothing.
    pub fn any_volume(&self, pred: impl Fn(&VolumeRecord) -> bool) -> bool {
        self.maps().volumes.by_id.values().any(|v| pred(v))
    }

    /// How many volume records and how many snapshot records name each pool (pools
    /// without records are left out); the tables keep the counts, so no record is read.
    pub fn counts_by_pool(&self) -> (HashMap<String, u64>, HashMap<String, u64>) {
        let maps = self.maps();
        (maps.volumes.per_pool.clone(), maps.snapshots.per_pool.clone())
    }

    /// How many volume and snapshot records name `pool`.
    pub fn count_in_pool(&self, pool: &str) -> usize {
        let maps = self.maps();
        let count = |per_pool: &HashMap<String, u64>| per_pool.get(pool).copied().unwrap_or(0);
        usize::try_from(count(&maps.volumes.per_pool) + count(&maps.snapshots.per_pool)).unwrap_or(usize::MAX)
    }

    /// The storage key of every volume and snapshot (to find data no record accounts for).
    pub fn storage_keys(&self) -> std::collections::HashSet<String> {
        let maps = self.maps();
        let volumes = maps.volumes.by_id.values().map(|v| v.key.clone());
        volumes.chain(maps.snapshots.by_id.values().map(|s| s.key.clone())).collect()
    }

    pub fn volume_count(&self) -> usize {
        self.maps().volumes.by_id.len()
    }

    /// Durably writes a snapshot record, then makes it visible (a copy the store keeps).
    pub fn put_snapshot(&self, record: &SnapshotRecord) -> io::Result<()> {
        self.commit(Change::PutSnapshot(Arc::new(record.clone())))
    }

    /// Durably removes a snapshot record.
    pub fn remove_snapshot(&self, id: &str) -> io::Result<()> {
        if !self.maps().snapshots.by_id.contains_key(id) && !self.journal().broken {
            return Ok(());
        }
        self.commit(Change::RemoveSnapshot(id.to_string()))
    }

    /// The snapshot record with this ID, shared with the store (see [`Store::volume`]).
    pub fn snapshot(&self, id: &str) -> Option<Arc<SnapshotRecord>> {
        self.maps().snapshots.get(id)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<Arc<SnapshotRecord>> {
        self.maps().snapshots.by_name(name)
    }

    /// Up to `limit` snapshots matching `pred` with IDs after `after`, and whether more follow.
    pub fn snapshots_page(
        &self,
        after: Option<&str>,
        limit: usize,
        pred: impl Fn(&SnapshotRecord) -> bool,
    ) -> (Vec<Arc<SnapshotRecord>>, bool) {
        self.maps().snapshots.page(after, limit, pred)
    }

    pub fn snapshot_count(&self) -> usize {
        self.maps().snapshots.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::volume;
    use super::*;

    #[test]
    fn records_survive_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, bad) = Store::open(dir.path()).expect("open");
        assert!(bad.is_empty());
        let mut v = volume("vol:p:1", "pvc-1");
        store.put_volume(&v).expect("put");
        v.phase = Phase::Ready;
        store.put_volume(&v).expect("update");
        store.put_volume(&volume("vol:p:2", "pvc-2")).expect("put");
        store.remove_volume("vol:p:2").expect("remove");
        store.remove_volume("vol:p:2").expect("removing twice is fine");
        drop(store);

        let (reopened, bad) = Store::open(dir.path()).expect("reopen");
        assert!(bad.is_empty());
        assert_eq!(reopened.volume("vol:p:1").as_deref(), Some(&v));
        assert_eq!(reopened.volume_by_name("pvc-1").map(|v| v.id.clone()), Some("vol:p:1".into()));
        assert!(reopened.volume_by_name("pvc-2").is_none());
    }

    #[test]
    fn lookups_share_the_stored_record_and_a_put_replaces_it_for_later_lookups_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "pvc-1")).expect("put");
        let before = store.volume("vol:p:1").expect("record");
        let by_name = store.volume_by_name("pvc-1").expect("record");
        assert!(Arc::ptr_eq(&before, &by_name), "two lookups, one record");
        assert!(Arc::ptr_eq(&before, &store.volumes_page(None, 10).0[0]));
        assert!(Arc::ptr_eq(&before, &store.volumes_where(|_| true)[0]));

        store.put_volume(&VolumeRecord { phase: Phase::Ready, ..(*before).clone() }).expect("put");
        assert_eq!(before.phase, Phase::Creating, "what a caller holds does not change under it");
        let after = store.volume("vol:p:1").expect("record");
        assert_eq!(after.phase, Phase::Ready);
        assert!(!Arc::ptr_eq(&before, &after));
    }

    #[test]
    fn pages_walk_every_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        for i in 0..7 {
            store.put_volume(&volume(&format!("vol:p:{i}"), &format!("n{i}"))).expect("put");
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (items, more) = store.volumes_page(after.as_deref(), 3);
            after = items.last().map(|v| v.id.clone());
            seen.extend(items.into_iter().map(|v| v.id.clone()));
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn counts_and_lookups_by_predicate_agree_with_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        for (i, pool) in ["a", "a", "b"].iter().enumerate() {
            store
                .put_volume(&VolumeRecord {
                    pool: (*pool).into(),
                    ..volume(&format!("vol:{pool}:{i}"), &format!("n{i}"))
                })
                .expect("put");
        }
        store.put_snapshot(&super::testutil::snapshot("snap:p:1", "s1")).expect("put");
        let (volumes, snapshots) = store.counts_by_pool();
        assert_eq!((volumes.get("a"), volumes.get("b"), volumes.get("p")), (Some(&2), Some(&1), None));
        assert_eq!(snapshots.get("p"), Some(&1));
        assert!(store.any_volume(|v| v.pool == "b"));
        assert!(!store.any_volume(|v| v.pool == "c"));

        // The counts follow removals and records that change, and survive a restart (from
        // the checkpoint and from the journal both).
        store.remove_volume("vol:b:2").expect("remove");
        store.put_volume(&VolumeRecord { pool: "c".into(), ..volume("vol:a:0", "n0") }).expect("put");
        assert_eq!(store.count_in_pool("a"), 1);
        store.checkpoint().expect("checkpoint");
        store.put_volume(&volume("vol:p:9", "n9")).expect("put");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        let (volumes, snapshots) = store.counts_by_pool();
        let expected: HashMap<String, u64> = [("a".into(), 1), ("c".into(), 1), ("p".into(), 1)].into();
        assert_eq!(volumes, expected, "no entry for b, which has no volume left");
        assert_eq!(snapshots.get("p"), Some(&1));
        assert_eq!((store.count_in_pool("p"), store.count_in_pool("b")), (2, 0));
    }
}
