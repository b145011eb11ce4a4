//! The records in memory: a table per kind, by ID in ID order (for pages) and by name, and
//! the changes the journal replays into them.
//!
//! A record in a table is immutable and shared (`Arc`): a lookup hands out another
//! reference, never a copy, and a change puts a new record in its place. Whoever holds
//! the old one keeps reading it as it was.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::records::{SnapshotRecord, VolumeRecord};

/// What a [`Table`] needs of a record: its ID, the CO's name for it and its pool.
pub(super) trait Keyed {
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn pool(&self) -> &str;
}

impl Keyed for VolumeRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn pool(&self) -> &str {
        &self.pool
    }
}

impl Keyed for SnapshotRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn pool(&self) -> &str {
        &self.pool
    }
}

/// Records by ID, in ID order (for pages), IDs by name, and how many records name each
/// pool (kept as records come and go, so a count reads no record).
#[derive(Debug)]
pub(super) struct Table<T> {
    pub(super) by_id: BTreeMap<String, Arc<T>>,
    pub(super) names: HashMap<String, String>,
    pub(super) per_pool: HashMap<String, u64>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { by_id: BTreeMap::new(), names: HashMap::new(), per_pool: HashMap::new() }
    }
}

/// Counts one more record in `pool`.
fn count_in(per_pool: &mut HashMap<String, u64>, pool: &str) {
    match per_pool.get_mut(pool) {
        Some(n) => *n += 1,
        None => {
            per_pool.insert(pool.to_string(), 1);
        }
    }
}

/// Counts one record fewer in `pool`; a pool without records has no entry.
fn count_out(per_pool: &mut HashMap<String, u64>, pool: &str) {
    if let Some(n) = per_pool.get_mut(pool) {
        *n -= 1;
        if *n == 0 {
            per_pool.remove(pool);
        }
    }
}

impl<T: Keyed> Table<T> {
    /// A table of `records` built in one pass. A checkpoint lists them in ID order, which
    /// the B-tree takes without a search per record; as with `put`, the last record of an
    /// ID or a name wins.
    pub(super) fn from_records(records: Vec<T>) -> Self {
        let by_id: BTreeMap<String, Arc<T>> = records.into_iter().map(|r| (r.id().to_string(), Arc::new(r))).collect();
        let names = by_id.values().map(|r| (r.name().to_string(), r.id().to_string())).collect();
        let mut per_pool = HashMap::new();
        for r in by_id.values() {
            count_in(&mut per_pool, r.pool());
        }
        Table { by_id, names, per_pool }
    }

    pub(super) fn put(&mut self, record: Arc<T>) {
        count_in(&mut self.per_pool, record.pool());
        if let Some(old) = self.by_id.get(record.id()) {
            count_out(&mut self.per_pool, old.pool());
            if old.name() != record.name() {
                self.names.remove(old.name());
            }
        }
        self.names.insert(record.name().to_string(), record.id().to_string());
        self.by_id.insert(record.id().to_string(), record);
    }

    pub(super) fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.names.remove(old.name());
            count_out(&mut self.per_pool, old.pool());
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<T>> {
        self.by_id.get(id).cloned()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<Arc<T>> {
        self.names.get(name).and_then(|id| self.get(id))
    }

    /// Up to `limit` records matching `pred` with IDs after `after`, in ID order, and
    /// whether more follow.
    pub(super) fn page(&self, after: Option<&str>, limit: usize, pred: impl Fn(&T) -> bool) -> (Vec<Arc<T>>, bool) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self.by_id.range::<str, _>((start, Bound::Unbounded)).map(|(_, r)| r).filter(|r| pred(r));
        let items: Vec<Arc<T>> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (items, more)
    }
}

#[derive(Debug, Default)]
pub(super) struct Maps {
    pub(super) volumes: Table<VolumeRecord>,
    pub(super) snapshots: Table<SnapshotRecord>,
}

/// One change to the records, as a journal frame holds it. A put holds the record the
/// table will share once the frame is written (an `Arc` serializes as the record itself).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    PutVolume(Arc<VolumeRecord>),
    RemoveVolume(String),
    PutSnapshot(Arc<SnapshotRecord>),
    RemoveSnapshot(String),
}

impl Change {
    /// One line saying what the change did, for a salvage's report.
    pub(super) fn describe(&self) -> String {
        match self {
            Change::PutVolume(v) => format!("volume {} ({}) is {:?}", v.id, v.name, v.phase),
            Change::RemoveVolume(id) => format!("volume {id} is deleted"),
            Change::PutSnapshot(s) => format!("snapshot {} ({}) is {:?}", s.id, s.name, s.phase),
            Change::RemoveSnapshot(id) => format!("snapshot {id} is deleted"),
        }
    }
}

impl Maps {
    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::PutVolume(v) => self.volumes.put(v),
            Change::RemoveVolume(id) => self.volumes.remove(&id),
            Change::PutSnapshot(s) => self.snapshots.put(s),
            Change::RemoveSnapshot(id) => self.snapshots.remove(&id),
        }
    }

    /// The tables of these records (a checkpoint's).
    pub(super) fn from_records(volumes: Vec<VolumeRecord>, snapshots: Vec<SnapshotRecord>) -> Maps {
        Maps { volumes: Table::from_records(volumes), snapshots: Table::from_records(snapshots) }
    }

    /// Applies to `base` (a checkpoint's records) the changes journaled since, in order.
    pub(super) fn load(base: Maps, frames: &[Vec<u8>], journal: &Path) -> io::Result<Maps> {
        let mut maps = base;
        for (i, frame) in frames.iter().enumerate() {
            let change = serde_json::from_slice(frame).map_err(|e| {
                let at = journal.display();
                io::Error::new(io::ErrorKind::InvalidData, format!("frame {i} of {at} is whole but unreadable: {e}"))
            })?;
            maps.apply(change);
        }
        Ok(maps)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::volume;
    use super::*;

    /// The counts a pass over every record gives.
    fn recount(table: &Table<VolumeRecord>) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for r in table.by_id.values() {
            count_in(&mut counts, &r.pool);
        }
        counts
    }

    #[test]
    fn per_pool_counts_match_a_recount_after_every_put_remove_and_replace() {
        let pools = ["a", "b", "c"];
        let mut table = Table::from_records(vec![
            VolumeRecord { pool: "a".into(), ..volume("vol-0", "n0") },
            VolumeRecord { pool: "b".into(), ..volume("vol-1", "n1") },
        ]);
        assert_eq!(table.per_pool, recount(&table));
        // A fixed pseudo-random walk over 12 IDs: new records, records that move to another
        // pool or get another name, removals of present and absent IDs.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = format!("vol-{}", x % 12);
            let pool = pools[usize::try_from((x >> 8) % 3).expect("small")];
            if (x >> 16).is_multiple_of(3) {
                table.remove(&id);
            } else {
                let name = format!("n{}-{}", x % 12, (x >> 20) % 2);
                table.put(Arc::new(VolumeRecord { pool: pool.into(), ..volume(&id, &name) }));
            }
            assert_eq!(table.per_pool, recount(&table), "after step {step} ({id} in {pool})");
            assert!(table.per_pool.values().all(|&n| n > 0), "a pool without records has no entry");
        }
        // Emptied, nothing is left to count.
        let ids: Vec<String> = table.by_id.keys().cloned().collect();
        for id in &ids {
            table.remove(id);
        }
        assert!(table.per_pool.is_empty());
    }

    #[test]
    fn replaying_a_journal_counts_as_the_live_table_did() {
        let mut live = Maps::from_records(Vec::new(), Vec::new());
        let changes = vec![
            Change::PutVolume(Arc::new(VolumeRecord { pool: "a".into(), ..volume("vol-1", "n1") })),
            Change::PutVolume(Arc::new(VolumeRecord { pool: "a".into(), ..volume("vol-2", "n2") })),
            Change::PutVolume(Arc::new(VolumeRecord { pool: "b".into(), ..volume("vol-1", "n1") })),
            Change::RemoveVolume("vol-2".into()),
            Change::RemoveVolume("vol-9".into()),
        ];
        let frames: Vec<Vec<u8>> = changes.iter().map(|c| serde_json::to_vec(c).expect("json")).collect();
        for c in changes {
            live.apply(c);
        }
        let replayed =
            Maps::load(Maps::from_records(Vec::new(), Vec::new()), &frames, Path::new("journal")).expect("load");
        let expected: HashMap<String, u64> = [("b".into(), 1)].into();
        assert_eq!(live.volumes.per_pool, expected);
        assert_eq!(replayed.volumes.per_pool, expected);
    }
}
