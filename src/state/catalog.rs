//! The catalog: every record in one file, so a start reads one file instead of one per
//! record (reading 10,000 small files took longer than the whole start may).
//!
//! The record files stay the truth and the catalog is a cache of them, checked shard by
//! shard. For each shard directory it holds the directory's modification time when it was
//! captured and the records the shard held then. Every change berth makes to a shard (a
//! rename into it, an unlink) moves the directory's mtime, so at start a shard whose mtime
//! still equals the captured one comes from the catalog and any other from its files.
//!
//! Timestamps are coarse (a clock tick, or a whole second on some filesystems), so a change
//! in the same tick as a capture could leave the mtime equal. A capture therefore leaves out
//! every shard modified less than [`SETTLE`] before it, the rule git applies to "racily
//! clean" index entries; those shards are read from their files at the next start. The file
//! is written temp → fsync → rename, and one that cannot be parsed costs a full read, never
//! a record.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{SnapshotRecord, Store, VolumeRecord, file_name, shard_name};

/// How long a shard must go unmodified before a capture may vouch for its mtime.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Under a steady stream of changes, the catalog is still refreshed this often.
const MAX_AGE: Duration = Duration::from_secs(300);
/// A capture that had to leave unsettled shards out is retried after this long.
const RETRY_INCOMPLETE: Duration = Duration::from_secs(10);
const FILE_NAME: &str = "catalog";
const VERSION: u32 = 1;

/// A directory's modification time, to the nanosecond the filesystem keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    secs: u64,
    nanos: u32,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Option<Stamp> {
        let since = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Stamp { secs: since.as_secs(), nanos: since.subsec_nanos() })
    }

    fn before(self, cutoff: SystemTime) -> bool {
        cutoff.duration_since(UNIX_EPOCH).is_ok_and(|c| Duration::new(self.secs, self.nanos) < c)
    }
}

/// One shard directory as captured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shard<T> {
    pub modified: Stamp,
    pub records: Vec<T>,
}

/// The catalog file. Shards are keyed by directory name within `volumes/` and `snapshots/`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Catalog<V, S> {
    version: u32,
    pub volumes: BTreeMap<String, Shard<V>>,
    pub snapshots: BTreeMap<String, Shard<S>>,
}

/// Reads the catalog under the state root; `None` when there is none or it is unusable.
pub fn read(root: &Path) -> Option<Catalog<VolumeRecord, SnapshotRecord>> {
    let path = root.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the record catalog; reading every record file");
            return None;
        }
    };
    match serde_json::from_slice::<Catalog<VolumeRecord, SnapshotRecord>>(&bytes) {
        Ok(catalog) if catalog.version == VERSION => Some(catalog),
        Ok(catalog) => {
            tracing::info!(version = catalog.version, "record catalog of another version; reading every record file");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "record catalog is damaged; reading every record file");
            None
        }
    }
}

/// When the catalog last matched the records, and what it cannot vouch for.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<Tracked>,
    /// Held through a whole capture, so two never interleave their files.
    writer: Mutex<()>,
}

#[derive(Debug)]
struct Tracked {
    /// Counts record changes since the start.
    generation: u64,
    /// The generation the catalog on disk matches, if any.
    captured: Option<u64>,
    /// The last capture left unsettled shards out.
    incomplete: bool,
    last_change: Instant,
    /// The last capture, or the start.
    last_capture: Instant,
    /// Shards ("volumes/ab") a catalog must never stand in for: they hold an unreadable
    /// record, or a write to them failed midway.
    tainted: BTreeSet<String>,
}

impl Tracker {
    /// `current` says whether the catalog on disk already holds everything that was loaded.
    pub fn new(current: bool, tainted: BTreeSet<String>) -> Tracker {
        let tracked = Tracked {
            generation: 0,
            captured: current.then_some(0),
            incomplete: false,
            last_change: Instant::now(),
            last_capture: Instant::now(),
            tainted,
        };
        Tracker { state: Mutex::new(tracked), writer: Mutex::new(()) }
    }

    fn state(&self) -> MutexGuard<'_, Tracked> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a change to shard `name` of `kind`; a failed write may have changed the disk
    /// in a way the maps do not show, so its shard is never cataloged again.
    pub fn changed(&self, kind: &str, name: &str, succeeded: bool) {
        let mut state = self.state();
        state.generation += 1;
        state.last_change = Instant::now();
        if !succeeded {
            state.tainted.insert(format!("{kind}/{name}"));
        }
    }

    /// Whether the catalog should be rewritten now (cheap: one uncontended lock).
    pub fn due(&self) -> bool {
        let state = self.state();
        let quiet = state.last_change.elapsed() >= SETTLE;
        let aged = state.last_capture.elapsed() >= MAX_AGE;
        let retry = state.last_capture.elapsed() >= RETRY_INCOMPLETE;
        if state.captured != Some(state.generation) { quiet || aged } else { state.incomplete && quiet && retry }
    }
}

impl Store {
    /// Whether [`Store::refresh_catalog`] would write, without touching the disk.
    pub fn catalog_due(&self) -> bool {
        self.catalog.due()
    }

    /// Writes the catalog if the records changed since the last one and have been quiet
    /// for [`SETTLE`] (or the last one is old). Returns whether it wrote.
    pub fn refresh_catalog(&self) -> io::Result<bool> {
        if !self.catalog.due() {
            return Ok(false);
        }
        self.write_catalog()?;
        Ok(true)
    }

    /// Captures every settled, untainted shard into the catalog file.
    pub fn write_catalog(&self) -> io::Result<()> {
        let _writer = self.catalog.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = self.root.join(format!(".{FILE_NAME}.tmp"));
        let (file, generation, incomplete) = {
            let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let (generation, tainted) = {
                let state = self.catalog.state();
                (state.generation, state.tainted.clone())
            };
            let cutoff = SystemTime::now().checked_sub(SETTLE).unwrap_or(UNIX_EPOCH);
            let (volume_shards, volumes_left) = settled(&self.volumes_dir, "volumes", cutoff, &tainted)?;
            let (snapshot_shards, snapshots_left) = settled(&self.snapshots_dir, "snapshots", cutoff, &tainted)?;
            let maps = self.maps();
            let catalog = Catalog {
                version: VERSION,
                volumes: group(&maps.volumes, volume_shards),
                snapshots: group(&maps.snapshots, snapshot_shards),
            };
            let mut out = BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
            serde_json::to_writer(&mut out, &catalog).map_err(io::Error::other)?;
            out.flush()?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            (file, generation, volumes_left || snapshots_left)
        };
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.root.join(FILE_NAME))?;
        File::open(&self.root)?.sync_all()?;
        let mut state = self.catalog.state();
        state.captured = Some(generation);
        state.incomplete = incomplete;
        state.last_capture = Instant::now();
        Ok(())
    }
}

/// The shards of `dir` a capture may vouch for, by name with their mtimes, and whether
/// any was left out for being modified too recently.
fn settled(
    dir: &Path,
    kind: &str,
    cutoff: SystemTime,
    tainted: &BTreeSet<String>,
) -> io::Result<(BTreeMap<String, Stamp>, bool)> {
    let mut shards = BTreeMap::new();
    let mut left_out = false;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if tainted.contains(&format!("{kind}/{name}")) {
            continue;
        }
        match Stamp::of(&entry.metadata()?) {
            Some(stamp) if stamp.before(cutoff) => {
                shards.insert(name, stamp);
            }
            _ => left_out = true,
        }
    }
    Ok((shards, left_out))
}

/// The records of each captured shard, borrowed from the maps.
fn group<T>(records: &BTreeMap<String, T>, shards: BTreeMap<String, Stamp>) -> BTreeMap<String, Shard<&T>> {
    let mut grouped: BTreeMap<String, Shard<&T>> =
        shards.into_iter().map(|(name, modified)| (name, Shard { modified, records: Vec::new() })).collect();
    for (id, record) in records {
        if let Some(shard) = grouped.get_mut(shard_name(&file_name(id))) {
            shard.records.push(record);
        }
    }
    grouped
}
