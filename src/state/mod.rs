//! Crash-safe records of volumes and snapshots.
//!
//! Each record is one JSON file, written as temp file → fsync → rename → fsync directory,
//! so a crash leaves either the old or the new record, never a torn one. Records carry a
//! [`Phase`]: berth writes `Creating` (its intent) before any side effect and `Ready` after,
//! so a retried CreateVolume finds its own half-done work and finishes it. The maps are
//! held in memory; lookups by ID or name never touch the disk. A start reads the records
//! from the [`catalog`], a compacted copy of them in one file, and only the shard
//! directories that changed since it was written from their files.

mod catalog;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where an object is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Intent recorded; storage may be partly created.
    Creating,
    Ready,
    /// Deletion started; storage may be partly removed.
    Deleting,
}

/// How a volume's size is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforced {
    BtrfsQgroup,
    ProjectQuota,
    /// A block volume cannot outgrow its device.
    DeviceSize,
    None,
}

impl Enforced {
    /// The name reported in volume contexts and ControllerGetVolume.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforced::BtrfsQgroup => "btrfs-qgroup",
            Enforced::ProjectQuota => "project-quota",
            Enforced::DeviceSize => "device-size",
            Enforced::None => "none",
        }
    }
}

/// What a volume was created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// Whether a volume is a directory tree or a raw device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    Mount,
    Block,
}

/// A volume berth created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    /// The CO's name for it (CreateVolume name, or the kubelet's ID for ephemeral volumes).
    pub name: String,
    pub pool: String,
    /// Names its storage inside the pool: 32 hex digits.
    pub key: String,
    /// The node whose disk holds it.
    pub node: String,
    pub capacity: u64,
    pub phase: Phase,
    pub access: AccessKind,
    pub enforced: Enforced,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
    /// Nodes it is ControllerPublished to, with the readonly flag of each.
    #[serde(default)]
    pub published: BTreeMap<String, bool>,
    #[serde(default)]
    pub ephemeral: bool,
    /// Filesystem of a block or device volume in Filesystem mode (ext4, xfs, btrfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// The device of a device-pool volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// StorageClass parameters berth acted on (never secrets).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    pub created_unix_ms: u64,
}

/// How a snapshot's data was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMethod {
    BtrfsSnapshot,
    Reflink,
    Copy,
}

/// A snapshot berth created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub key: String,
    pub node: String,
    pub source_volume: String,
    pub phase: Phase,
    pub size: u64,
    pub method: Option<SnapshotMethod>,
    pub created_unix_ms: u64,
}

#[derive(Debug, Default)]
struct Maps {
    volumes: BTreeMap<String, VolumeRecord>,
    volume_names: HashMap<String, String>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    snapshot_names: HashMap<String, String>,
}

/// The record store. Writers must hold the per-object lock of what they write.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    volumes_dir: PathBuf,
    snapshots_dir: PathBuf,
    maps: Mutex<Maps>,
    /// Record writers share it from their file write to their map update; a catalog
    /// capture takes it alone, so the maps it copies match the directories it stats.
    gate: RwLock<()>,
    catalog: catalog::Tracker,
}

/// A record file that could not be read; reported at start, never deleted.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub reason: String,
}

/// Milliseconds since the epoch, for record timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn file_name(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{}.json", hex::encode(&digest[..16]))
}

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    crate::failpoint::hit("state.write.before-rename")?;
    fs::rename(&tmp, dir.join(name))?;
    crate::failpoint::hit("state.write.after-rename")?;
    File::open(dir)?.sync_all()
}

fn remove_durably(dir: &Path, name: &str) -> io::Result<()> {
    crate::failpoint::hit("state.remove")?;
    match fs::remove_file(dir.join(name)) {
        Ok(()) => File::open(dir)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The shard directory of a record file: the first two hex digits of its name, so no
/// directory holds more than a few dozen records at 10,000 (creating a file in a directory
/// of 10,000 entries cost ext4 four times as much as in a small one).
fn shard(dir: &Path, name: &str) -> PathBuf {
    dir.join(shard_name(name))
}

fn shard_name(name: &str) -> &str {
    name.get(..2).unwrap_or("00")
}

/// Makes sure a record's shard directory exists, durably: a new directory's entry is
/// synced in its parent before any record is renamed into it.
fn shard_for_write(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let shard = shard(dir, name);
    match fs::create_dir(&shard) {
        Ok(()) => File::open(dir)?.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(shard)
}

/// Loads one record directory: each shard the catalog holds unchanged from the catalog,
/// every other shard from its files. Shards holding unreadable records are `tainted`, so
/// no catalog ever stands in for them and they are reported at every start; `reread`
/// says whether anything did not come from the catalog.
fn load_dir<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    kind: &str,
    mut cached: BTreeMap<String, catalog::Shard<T>>,
    loaded: &mut Loaded,
) -> io::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            let modified = catalog::Stamp::of(&entry.metadata()?);
            match cached.remove(&name) {
                Some(shard) if modified == Some(shard.modified) => {
                    out.extend(shard.records);
                    loaded.from_catalog += 1;
                    continue;
                }
                _ => loaded.reread = true,
            }
            loaded.from_files += 1;
            for inner in fs::read_dir(entry.path())? {
                paths.push((inner?.path(), format!("{kind}/{name}")));
            }
        } else if name.ends_with(".json") {
            // A record written before sharding (or by hand) moves into its shard, so the
            // next write of it cannot leave a stale copy behind.
            let shard = shard_for_write(dir, &name)?;
            fs::rename(entry.path(), shard.join(&name))?;
            File::open(&shard)?.sync_all()?;
            loaded.reread = true;
            paths.push((shard.join(&name), format!("{kind}/{}", shard_name(&name))));
        } else {
            paths.push((entry.path(), String::new()));
        }
    }
    // A shard the catalog holds but the disk does not: the catalog is out of date.
    loaded.reread |= !cached.is_empty();
    for (path, shard) in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A write interrupted before its rename: the previous record (if any) stands.
            fs::remove_file(&path)?;
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(record) => out.push(record),
            Err(reason) => {
                loaded.tainted.insert(shard);
                loaded.bad.push(Unreadable { path, reason });
            }
        }
    }
    Ok(out)
}

/// What a start learned besides the records themselves.
#[derive(Default)]
struct Loaded {
    bad: Vec<Unreadable>,
    tainted: BTreeSet<String>,
    reread: bool,
    /// Shard directories taken from the catalog, and read from their files.
    from_catalog: usize,
    from_files: usize,
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir/state`, loading every record.
    pub fn open(state_dir: &Path) -> io::Result<(Store, Vec<Unreadable>)> {
        let root = state_dir.join("state");
        let volumes_dir = root.join("volumes");
        let snapshots_dir = root.join("snapshots");
        for dir in [&volumes_dir, &snapshots_dir] {
            fs::create_dir_all(dir)?;
        }
        let started = std::time::Instant::now();
        let cached = catalog::read(&root);
        let (volumes, snapshots) = cached.map_or_else(Default::default, |c| (c.volumes, c.snapshots));
        let mut loaded = Loaded::default();
        let mut maps = Maps::default();
        for v in load_dir::<VolumeRecord>(&volumes_dir, "volumes", volumes, &mut loaded)? {
            maps.volume_names.insert(v.name.clone(), v.id.clone());
            maps.volumes.insert(v.id.clone(), v);
        }
        for s in load_dir::<SnapshotRecord>(&snapshots_dir, "snapshots", snapshots, &mut loaded)? {
            maps.snapshot_names.insert(s.name.clone(), s.id.clone());
            maps.snapshots.insert(s.id.clone(), s);
        }
        tracing::debug!(
            volumes = maps.volumes.len(),
            snapshots = maps.snapshots.len(),
            shards.from_catalog = loaded.from_catalog,
            shards.from_files = loaded.from_files,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "records loaded"
        );
        let catalog = catalog::Tracker::new(!loaded.reread, loaded.tainted);
        let store = Store { root, volumes_dir, snapshots_dir, maps: Mutex::new(maps), gate: RwLock::new(()), catalog };
        Ok((store, loaded.bad))
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Durably writes a volume record, then makes it visible.
    pub fn put_volume(&self, record: &VolumeRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let name = file_name(&record.id);
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let written = shard_for_write(&self.volumes_dir, &name).and_then(|dir| write_atomic(&dir, &name, &bytes));
        self.catalog.changed("volumes", shard_name(&name), written.is_ok());
        written?;
        let mut maps = self.maps();
        maps.volume_names.insert(record.name.clone(), record.id.clone());
        maps.volumes.insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Durably removes a volume record.
    pub fn remove_volume(&self, id: &str) -> io::Result<()> {
        let name = file_name(id);
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let removed = remove_durably(&shard(&self.volumes_dir, &name), &name);
        self.catalog.changed("volumes", shard_name(&name), removed.is_ok());
        removed?;
        let mut maps = self.maps();
        if let Some(v) = maps.volumes.remove(id) {
            maps.volume_names.remove(&v.name);
        }
        Ok(())
    }

    pub fn volume(&self, id: &str) -> Option<VolumeRecord> {
        self.maps().volumes.get(id).cloned()
    }

    pub fn volume_by_name(&self, name: &str) -> Option<VolumeRecord> {
        let maps = self.maps();
        maps.volume_names.get(name).and_then(|id| maps.volumes.get(id)).cloned()
    }

    /// Up to `limit` volumes with IDs after `after`, in ID order, and whether more follow.
    pub fn volumes_page(&self, after: Option<&str>, limit: usize) -> (Vec<VolumeRecord>, bool) {
        let maps = self.maps();
        page(&maps.volumes, after, limit)
    }

    /// Every volume matching `pred` (for capacity and node lookups).
    pub fn volumes_where(&self, pred: impl Fn(&VolumeRecord) -> bool) -> Vec<VolumeRecord> {
        self.maps().volumes.values().filter(|v| pred(v)).cloned().collect()
    }

    /// The storage key of every volume and snapshot (to find data no record accounts for).
    pub fn storage_keys(&self) -> std::collections::HashSet<String> {
        let maps = self.maps();
        maps.volumes.values().map(|v| v.key.clone()).chain(maps.snapshots.values().map(|s| s.key.clone())).collect()
    }

    pub fn volume_count(&self) -> usize {
        self.maps().volumes.len()
    }

    /// Durably writes a snapshot record, then makes it visible.
    pub fn put_snapshot(&self, record: &SnapshotRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let name = file_name(&record.id);
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let written = shard_for_write(&self.snapshots_dir, &name).and_then(|dir| write_atomic(&dir, &name, &bytes));
        self.catalog.changed("snapshots", shard_name(&name), written.is_ok());
        written?;
        let mut maps = self.maps();
        maps.snapshot_names.insert(record.name.clone(), record.id.clone());
        maps.snapshots.insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Durably removes a snapshot record.
    pub fn remove_snapshot(&self, id: &str) -> io::Result<()> {
        let name = file_name(id);
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let removed = remove_durably(&shard(&self.snapshots_dir, &name), &name);
        self.catalog.changed("snapshots", shard_name(&name), removed.is_ok());
        removed?;
        let mut maps = self.maps();
        if let Some(s) = maps.snapshots.remove(id) {
            maps.snapshot_names.remove(&s.name);
        }
        Ok(())
    }

    pub fn snapshot(&self, id: &str) -> Option<SnapshotRecord> {
        self.maps().snapshots.get(id).cloned()
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<SnapshotRecord> {
        let maps = self.maps();
        maps.snapshot_names.get(name).and_then(|id| maps.snapshots.get(id)).cloned()
    }

    /// Up to `limit` snapshots matching `pred` with IDs after `after`, and whether more follow.
    pub fn snapshots_page(
        &self,
        after: Option<&str>,
        limit: usize,
        pred: impl Fn(&SnapshotRecord) -> bool,
    ) -> (Vec<SnapshotRecord>, bool) {
        let maps = self.maps();
        let start = after.map_or(std::ops::Bound::Unbounded, |a| std::ops::Bound::Excluded(a.to_string()));
        let mut matching =
            maps.snapshots.range((start, std::ops::Bound::Unbounded)).map(|(_, s)| s).filter(|s| pred(s));
        let items: Vec<_> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (items, more)
    }

    pub fn snapshot_count(&self) -> usize {
        self.maps().snapshots.len()
    }
}

fn page<T: Clone>(map: &BTreeMap<String, T>, after: Option<&str>, limit: usize) -> (Vec<T>, bool) {
    let start = after.map_or(std::ops::Bound::Unbounded, |a| std::ops::Bound::Excluded(a.to_string()));
    let mut iter = map.range((start, std::ops::Bound::Unbounded));
    let items: Vec<T> = iter.by_ref().take(limit).map(|(_, v)| v.clone()).collect();
    let more = iter.next().is_some();
    (items, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str, name: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: name.into(),
            pool: "p".into(),
            key: "0".repeat(32),
            node: "n".into(),
            capacity: 1 << 20,
            phase: Phase::Creating,
            access: AccessKind::Mount,
            enforced: Enforced::None,
            project_id: None,
            source: None,
            published: BTreeMap::new(),
            ephemeral: false,
            fs_type: None,
            device: None,
            parameters: BTreeMap::new(),
            created_unix_ms: 1,
        }
    }

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

        let (reopened, bad) = Store::open(dir.path()).expect("reopen");
        assert!(bad.is_empty());
        assert_eq!(reopened.volume("vol:p:1"), Some(v.clone()));
        assert_eq!(reopened.volume_by_name("pvc-1").map(|v| v.id), Some("vol:p:1".into()));
        assert!(reopened.volume_by_name("pvc-2").is_none());
    }

    #[test]
    fn torn_temp_files_are_discarded_and_corrupt_records_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        let vols = dir.path().join("state/volumes");
        fs::write(vols.join(".x.json.tmp"), b"{half").expect("write");
        fs::write(vols.join("bad.json"), b"not json").expect("write");
        let (store, bad) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].path.ends_with("bad.json"));
        assert!(!vols.join(".x.json.tmp").exists());
        assert!(vols.join("ba/bad.json").exists(), "unreadable records are kept for the operator (in their shard)");
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
            seen.extend(items.into_iter().map(|v| v.id));
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 7);
    }

    /// Moves every shard directory's mtime back past the settle time, as if the records
    /// had been written a while ago.
    fn settle_shards(state_dir: &Path) {
        let back = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for kind in ["volumes", "snapshots"] {
            for entry in fs::read_dir(state_dir.join("state").join(kind)).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    File::open(&path).and_then(|f| f.set_modified(back)).expect("set mtime");
                }
            }
        }
    }

    fn record_path(state_dir: &Path, id: &str) -> PathBuf {
        let name = file_name(id);
        state_dir.join("state/volumes").join(shard_name(&name)).join(name)
    }

    /// An ID whose record lives in another shard than `other`'s.
    fn id_beside(other: &str, stem: &str) -> String {
        let taken = shard_name(&file_name(other)).to_string();
        (0..)
            .map(|i| format!("vol:p:{stem}-{i}"))
            .find(|id| shard_name(&file_name(id)) != taken)
            .expect("some ID lands in another shard")
    }

    /// Overwrites a record in place: its shard directory's mtime stays, so a catalog that
    /// holds the shard is believed and the damage goes unseen; a reread reports it.
    fn damage_in_place(path: &Path) {
        let mut file = fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open record");
        file.write_all(b"{damaged").expect("write");
    }

    #[test]
    fn catalog_stands_in_for_settled_shards_and_later_changes_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let first = volume("vol:p:first", "first");
        store.put_volume(&first).expect("put");
        let changed_id = id_beside("vol:p:first", "changed");
        store.put_volume(&volume(&changed_id, "changed")).expect("put");
        let gone_id = id_beside("vol:p:first", "gone");
        store.put_volume(&volume(&gone_id, "gone")).expect("put");
        let snap = SnapshotRecord {
            id: "snap:p:1".into(),
            name: "s1".into(),
            pool: "p".into(),
            key: "1".repeat(32),
            node: "n".into(),
            source_volume: "vol:p:first".into(),
            phase: Phase::Ready,
            size: 1,
            method: None,
            created_unix_ms: 1,
        };
        store.put_snapshot(&snap).expect("put snapshot");
        settle_shards(dir.path());
        store.write_catalog().expect("catalog");
        assert!(dir.path().join("state/catalog").is_file());

        // After the capture: one record changes, one goes, one comes, all in other shards.
        let mut changed = volume(&changed_id, "changed");
        changed.phase = Phase::Ready;
        store.put_volume(&changed).expect("update");
        store.remove_volume(&gone_id).expect("remove");
        let new_id = id_beside("vol:p:first", "new");
        store.put_volume(&volume(&new_id, "new")).expect("put");
        drop(store);
        damage_in_place(&record_path(dir.path(), "vol:p:first"));

        let (reopened, bad) = Store::open(dir.path()).expect("reopen");
        assert!(bad.is_empty(), "the first record's shard came from the catalog: {bad:?}");
        assert_eq!(reopened.volume("vol:p:first"), Some(first));
        assert_eq!(reopened.volume(&changed_id).map(|v| v.phase), Some(Phase::Ready));
        assert!(reopened.volume(&gone_id).is_none());
        assert!(reopened.volume_by_name("new").is_some());
        assert_eq!(reopened.snapshot("snap:p:1"), Some(snap));
        assert_eq!((reopened.volume_count(), reopened.snapshot_count()), (3, 1));
    }

    #[test]
    fn shards_modified_just_before_a_capture_are_read_from_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        store.write_catalog().expect("catalog");
        drop(store);
        damage_in_place(&record_path(dir.path(), "vol:p:1"));
        let (reopened, bad) = Store::open(dir.path()).expect("reopen");
        assert_eq!(bad.len(), 1, "the unsettled shard was read from its files");
        assert_eq!(reopened.volume_count(), 0);
    }

    #[test]
    fn a_damaged_catalog_costs_a_full_read_and_nothing_else() {
        for damage in [
            &b""[..],
            b"{\"version\":1,\"volu",
            b"not json at all",
            b"{\"version\":99,\"volumes\":{},\"snapshots\":{}}",
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (store, _) = Store::open(dir.path()).expect("open");
            for i in 0..5 {
                store.put_volume(&volume(&format!("vol:p:{i}"), &format!("n{i}"))).expect("put");
            }
            settle_shards(dir.path());
            store.write_catalog().expect("catalog");
            drop(store);
            fs::write(dir.path().join("state/catalog"), damage).expect("damage");
            let (reopened, bad) = Store::open(dir.path()).expect("reopen");
            assert!(bad.is_empty());
            assert_eq!(reopened.volume_count(), 5);
        }
    }

    #[test]
    fn unreadable_records_are_reported_at_every_start_despite_the_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        drop(store);
        damage_in_place(&record_path(dir.path(), "vol:p:1"));
        for start in 0..2 {
            let (store, bad) = Store::open(dir.path()).expect("reopen");
            assert_eq!(bad.len(), 1, "start {start}");
            settle_shards(dir.path());
            store.write_catalog().expect("catalog");
        }
    }

    #[test]
    fn a_catalog_is_due_only_after_changes_have_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        assert!(!store.refresh_catalog().expect("refresh"), "nothing changed since the start");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        assert!(!store.refresh_catalog().expect("refresh"), "the change is too recent");
        assert!(!dir.path().join("state/catalog").exists());
        std::thread::sleep(catalog::SETTLE + std::time::Duration::from_millis(100));
        assert!(store.refresh_catalog().expect("refresh"), "quiet long enough");
        assert!(dir.path().join("state/catalog").is_file());
        assert!(!store.refresh_catalog().expect("refresh"), "nothing new since");
    }
}
