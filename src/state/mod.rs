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

mod checkpoint;
mod journal;
mod legacy;
mod records;
mod salvage;
mod table;

pub use records::{
    AccessKind, ContentSource, DeviceIdentity, Enforced, Layer, Phase, SnapshotMethod, SnapshotRecord, VolumeRecord,
    now_ms,
};
pub use salvage::{Salvaged, salvage};
use table::{Change, Maps};

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The record store. Writers must hold the per-object lock of what they write.
#[derive(Debug)]
pub struct Store {
    /// Held for the store's life (see [`lock_state`]).
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

/// Changes waiting for the journal, and the outcome of those written.
#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// A caller is writing a batch; the others wait for it.
    writing: bool,
    next_ticket: u64,
    done: HashMap<u64, Result<(), (io::ErrorKind, String)>>,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    payload: Vec<u8>,
    change: Change,
}

/// The writer's role while it writes a batch. Dropping it, however the write ends, gives
/// each change of the batch its result and lets the next writer go, so not even a panic
/// leaves later changes waiting for a writer that is gone.
struct Leading<'a> {
    store: &'a Store,
    tickets: Vec<u64>,
    result: Result<(), (io::ErrorKind, String)>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut queue = self.store.queue();
        queue.writing = false;
        for ticket in self.tickets.drain(..) {
            queue.done.insert(ticket, self.result.clone());
        }
        self.store.written.notify_all();
    }
}

impl Queue {
    /// The waiting changes, oldest first, as many as an empty journal holds.
    fn batch(&mut self) -> Vec<Pending> {
        let mut size = 0;
        let mut take = 0;
        for pending in &self.waiting {
            size += journal::frame_size(pending.payload.len());
            if take > 0 && size > journal::SIZE {
                break;
            }
            take += 1;
        }
        self.waiting.drain(..take).collect()
    }
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

/// The checkpoint under `root`, or `None` for a new store; an error when it is missing
/// but the journal holds changes to it.
fn read_base(root: &Path) -> io::Result<Option<checkpoint::Checkpoint>> {
    let base = checkpoint::read(root)?;
    if base.is_none() && journal::has_frames(&root.join(JOURNAL)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is missing but {} holds changes to it; restore it (berth does not start on part of its records)",
                root.join(checkpoint::FILE_NAME).display(),
                root.join(JOURNAL).display()
            ),
        ));
    }
    Ok(base)
}

/// Whether `e` says the disk (or the quota) is full.
fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Room kept on the state filesystem for a checkpoint when it fills up.
mod reserve {
    use std::fs;
    use std::path::Path;

    const NAME: &str = "reserve";
    /// Enough for a checkpoint of about 10,000 records.
    const SIZE: i64 = 4 << 20;

    /// Frees the reserve; whether there was one.
    pub fn release(root: &Path) -> bool {
        fs::remove_file(root.join(NAME)).is_ok()
    }

    /// Makes the reserve (real blocks, not a hole) if it is missing and the room is there.
    pub fn ensure(root: &Path) {
        let path = root.join(NAME);
        if path.exists() {
            return;
        }
        let made = fs::File::create(&path).and_then(|f| {
            nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, SIZE).map_err(std::io::Error::from)
        });
        if made.is_err() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Fails when the journal at `path` is missing or shorter than when `base` was written:
/// changes made since may be gone with the rest of the file.
fn check_journal_size(path: &Path, base: Option<&checkpoint::Checkpoint>) -> io::Result<()> {
    let Some(recorded) = base.and_then(|c| c.journal_size) else {
        return Ok(());
    };
    let cut = |now: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} {now}, but was {recorded} bytes when {} was written: changes since may be lost. berth does \
                 not start on part of its records: `berth doctor` explains the recovery (docs/operations.md, \
                 Damaged records)",
                path.display(),
                path.with_file_name(checkpoint::FILE_NAME).display()
            ),
        )
    };
    match fs::metadata(path) {
        Ok(meta) if meta.len() < recorded => Err(cut(format!("is {} bytes", meta.len()))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(cut("is missing".into())),
        Err(e) => Err(e),
    }
}

/// Every record as a start would load it from the checkpoint and the journal, read
/// without changing anything (for `berth doctor` and tests; record files waiting to be
/// imported are not included).
pub fn read_records(state_dir: &Path) -> io::Result<(Vec<VolumeRecord>, Vec<SnapshotRecord>)> {
    use std::os::unix::fs::MetadataExt;
    let root = state_dir.join("state");
    let journal = root.join(JOURNAL);
    // A running berth may checkpoint between the two reads; a checkpoint replaces
    // `records` by rename, so a changed inode means: read both again.
    let inode = || fs::metadata(root.join(checkpoint::FILE_NAME)).map(|m| m.ino()).ok();
    for _ in 0..10 {
        let before = inode();
        let Some(base) = read_base(&root)? else {
            return Ok(Default::default());
        };
        check_journal_size(&journal, Some(&base))?;
        let scan = journal::frames(&journal, base.epoch)?;
        if inode() != before {
            continue;
        }
        if let Some(damage) = &scan.damage {
            return Err(journal::damaged(&journal, damage));
        }
        let frames = scan.frames;
        let maps = Maps::load(Some(base), &frames, &journal)?;
        return Ok((maps.volumes.by_id.into_values().collect(), maps.snapshots.by_id.into_values().collect()));
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, "the records kept changing while being read; try again"))
}

/// How long a start waits for another process to release the state (a pod being
/// replaced stops within seconds).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes `state/lock` exclusively, waiting up to `wait` for a berth that still holds it:
/// two processes appending to one journal would overwrite each other's changes. The
/// holder's pid is written into the file, for the error a second process reports.
fn lock_state(root: &Path, wait: std::time::Duration) -> io::Result<nix::fcntl::Flock<fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let path = root.join("lock");
    let deadline = std::time::Instant::now() + wait;
    let mut logged = false;
    loop {
        let file = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                locked.set_len(0)?;
                locked.rewind()?;
                write!(locked, "{}", std::process::id())?;
                return Ok(locked);
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder)?;
                let holder = holder.trim();
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!(
                            "{} is held by another berth (pid {holder}): two processes must not share a state directory",
                            path.display()
                        ),
                    ));
                }
                if !logged {
                    tracing::info!(path = %path.display(), pid = holder, "waiting for another berth to release the state");
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir/state`, loading every record:
    /// the checkpoint, then the journal's changes, then any record files to import.
    pub fn open(state_dir: &Path) -> io::Result<(Store, Vec<Unreadable>)> {
        let root = state_dir.join("state");
        fs::create_dir_all(&root)?;
        let started = std::time::Instant::now();
        let lock = lock_state(&root, LOCK_WAIT)?;
        let journal_path = root.join(JOURNAL);
        let base = read_base(&root)?;
        let fresh = base.is_none();
        check_journal_size(&journal_path, base.as_ref())?;
        if !journal_path.exists() {
            journal::create(&journal_path)?;
        }
        let epoch = base.as_ref().map_or(0, |c| c.epoch);
        let replayed = journal::replay(&journal_path, epoch)?;
        let mut maps = Maps::load(base, &replayed.frames, &journal_path)?;
        let found = legacy::find(&root)?;
        let imported = found.imported.len();
        found.volumes.into_iter().for_each(|v| maps.apply(Change::PutVolume(Box::new(v))));
        found.snapshots.into_iter().for_each(|s| maps.apply(Change::PutSnapshot(s)));
        let store = Store {
            _lock: lock,
            root,
            maps: Mutex::new(maps),
            journal: Mutex::new(replayed.journal),
            queue: Mutex::default(),
            written: Condvar::new(),
        };
        if fresh || imported > 0 || !store.journal().current() {
            store.checkpoint()?;
            legacy::remove(&store.root, &found.imported)?;
        }
        let maps = store.maps();
        tracing::debug!(
            volumes = maps.volumes.by_id.len(),
            snapshots = maps.snapshots.by_id.len(),
            journal.frames = replayed.frames.len(),
            imported.files = imported,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "records loaded"
        );
        drop(maps);
        Ok((store, found.bad))
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn journal(&self) -> MutexGuard<'_, journal::Journal> {
        self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `change` durable in the journal, then visible. Changes that arrive while a
    /// write is under way wait and go together in the next one (group commit), so
    /// concurrent callers share the cost of a durable write instead of queueing for it.
    fn commit(&self, change: Change) -> io::Result<()> {
        let payload = serde_json::to_vec(&change).map_err(io::Error::other)?;
        let mut queue = self.queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back(Pending { ticket, payload, change });
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result.map_err(|(kind, message)| io::Error::new(kind, message));
            }
            if queue.writing {
                queue = self.written.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            queue.writing = true;
            let batch = queue.batch();
            drop(queue);
            let mut lead = Leading {
                store: self,
                tickets: batch.iter().map(|p| p.ticket).collect(),
                result: Err((io::ErrorKind::Other, "the journal write did not finish".into())),
            };
            lead.result = self.write_batch(batch).map_err(|e| (e.kind(), e.to_string()));
            drop(lead);
            queue = self.queue();
        }
    }

    /// Journals a batch of changes in one write (checkpointing first when they do not fit
    /// or a write failed), then applies them in order.
    fn write_batch(&self, batch: Vec<Pending>) -> io::Result<()> {
        let mut journal = self.journal();
        let size = batch.iter().map(|p| journal::frame_size(p.payload.len())).sum();
        if journal.broken || !journal.fits(size) {
            self.checkpoint_locked(&mut journal)?;
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|p| p.payload.as_slice()).collect();
        if let Err(e) = journal.append(&payloads) {
            // The frames may be on disk all the same (an error after the data landed).
            // The callers hear that their changes failed, so a checkpoint of the maps,
            // which lack them, retires those frames before anyone is told. If it fails
            // too, the journal stays broken and takes no change until one succeeds.
            let _ = self.checkpoint_locked(&mut journal);
            return Err(e);
        }
        let mut maps = self.maps();
        for p in batch {
            maps.apply(p.change);
        }
        Ok(())
    }

    /// Writes every record into a new checkpoint and empties the journal.
    pub fn checkpoint(&self) -> io::Result<()> {
        let mut journal = self.journal();
        self.checkpoint_locked(&mut journal)
    }

    fn checkpoint_locked(&self, journal: &mut journal::Journal) -> io::Result<()> {
        let epoch = unique_u64(journal.epoch());
        // Written under the map lock, synced without it: readers wait for the write only.
        // The journal lock, held throughout, keeps changes out of the maps meanwhile.
        let resize = !journal.current();
        // The size the file has now: a resize makes it larger, never smaller.
        let journal_size = journal.usage().1;
        let write = || {
            let maps = self.maps();
            checkpoint::write_tmp(&self.root, epoch, journal_size, &maps)
        };
        let written = match write() {
            // A full state disk: the reserve gives the room for this checkpoint, so changes,
            // deletes above all, go on and can free space.
            Err(e) if is_full(&e) && reserve::release(&self.root) => {
                tracing::error!(path = %self.root.display(), "the state filesystem is full: used berth's reserve for a checkpoint; free space there");
                write()
            }
            other => other,
        };
        let tmp = match written {
            Ok(tmp) => tmp,
            Err(e) => {
                // Nothing on disk changed but a temp file (a full disk, most often): the old
                // checkpoint and the journal still hold everything, and changes may go on
                // in the journal while it has room. The temp file goes, to give back space.
                checkpoint::remove_tmp(&self.root);
                return Err(e);
            }
        };
        let done = checkpoint::install(&self.root, tmp).and_then(|()| journal.restart(epoch, resize));
        if done.is_ok() {
            reserve::ensure(&self.root);
        }
        if done.is_err() {
            // The checkpoint on disk may be either one: append nothing until one is whole.
            journal.broken = true;
        }
        done
    }

    /// Whether the journal is half full (or a write failed), so a background checkpoint
    /// should empty it before a change has to. Never waits for a change in progress.
    pub fn checkpoint_due(&self) -> bool {
        let journal = match self.journal.try_lock() {
            Ok(journal) => journal,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let (used, size) = journal.usage();
        journal.broken || used * 2 >= size
    }

    /// Checkpoints if anything was journaled since the last checkpoint (at shutdown, so
    /// the next start reads one file). Returns whether it wrote.
    pub fn checkpoint_if_changed(&self) -> io::Result<bool> {
        let mut journal = self.journal();
        if journal.usage().0 == 0 && !journal.broken {
            return Ok(false);
        }
        self.checkpoint_locked(&mut journal)?;
        Ok(true)
    }

    /// Durably writes a volume record, then makes it visible.
    pub fn put_volume(&self, record: &VolumeRecord) -> io::Result<()> {
        self.commit(Change::PutVolume(Box::new(record.clone())))
    }

    /// Durably removes a volume record.
    pub fn remove_volume(&self, id: &str) -> io::Result<()> {
        if !self.maps().volumes.by_id.contains_key(id) && !self.journal().broken {
            return Ok(());
        }
        self.commit(Change::RemoveVolume(id.to_string()))
    }

    pub fn volume(&self, id: &str) -> Option<VolumeRecord> {
        self.maps().volumes.get(id)
    }

    pub fn volume_by_name(&self, name: &str) -> Option<VolumeRecord> {
        self.maps().volumes.by_name(name)
    }

    /// Up to `limit` volumes with IDs after `after`, in ID order, and whether more follow.
    pub fn volumes_page(&self, after: Option<&str>, limit: usize) -> (Vec<VolumeRecord>, bool) {
        self.maps().volumes.page(after, limit, |_| true)
    }

    /// Every volume matching `pred` (for capacity and node lookups).
    pub fn volumes_where(&self, pred: impl Fn(&VolumeRecord) -> bool) -> Vec<VolumeRecord> {
        self.maps().volumes.by_id.values().filter(|v| pred(v)).cloned().collect()
    }

    /// How many volume and snapshot records name `pool`.
    pub fn count_in_pool(&self, pool: &str) -> usize {
        let maps = self.maps();
        maps.volumes.by_id.values().filter(|v| v.pool == pool).count()
            + maps.snapshots.by_id.values().filter(|s| s.pool == pool).count()
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

    /// Durably writes a snapshot record, then makes it visible.
    pub fn put_snapshot(&self, record: &SnapshotRecord) -> io::Result<()> {
        self.commit(Change::PutSnapshot(record.clone()))
    }

    /// Durably removes a snapshot record.
    pub fn remove_snapshot(&self, id: &str) -> io::Result<()> {
        if !self.maps().snapshots.by_id.contains_key(id) && !self.journal().broken {
            return Ok(());
        }
        self.commit(Change::RemoveSnapshot(id.to_string()))
    }

    pub fn snapshot(&self, id: &str) -> Option<SnapshotRecord> {
        self.maps().snapshots.get(id)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<SnapshotRecord> {
        self.maps().snapshots.by_name(name)
    }

    /// Up to `limit` snapshots matching `pred` with IDs after `after`, and whether more follow.
    pub fn snapshots_page(
        &self,
        after: Option<&str>,
        limit: usize,
        pred: impl Fn(&SnapshotRecord) -> bool,
    ) -> (Vec<SnapshotRecord>, bool) {
        self.maps().snapshots.page(after, limit, pred)
    }

    pub fn snapshot_count(&self) -> usize {
        self.maps().snapshots.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(super) fn volume(id: &str, name: &str) -> VolumeRecord {
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
            device_identity: None,
            layers: Vec::new(),
            parameters: BTreeMap::new(),
            single_writer: None,
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
        drop(store);

        let (reopened, bad) = Store::open(dir.path()).expect("reopen");
        assert!(bad.is_empty());
        assert_eq!(reopened.volume("vol:p:1"), Some(v.clone()));
        assert_eq!(reopened.volume_by_name("pvc-1").map(|v| v.id), Some("vol:p:1".into()));
        assert!(reopened.volume_by_name("pvc-2").is_none());
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

    fn snapshot(id: &str, name: &str) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            name: name.into(),
            pool: "p".into(),
            key: "1".repeat(32),
            node: "n".into(),
            source_volume: "vol:p:1".into(),
            phase: Phase::Ready,
            size: 1,
            method: None,
            created_unix_ms: 1,
        }
    }

    fn epoch_on_disk(dir: &Path) -> u64 {
        checkpoint::read(&dir.join("state")).expect("read").expect("a checkpoint").epoch
    }

    #[test]
    fn changes_after_the_checkpoint_are_replayed_from_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let epoch = epoch_on_disk(dir.path());
        let mut v = volume("vol:p:1", "pvc-1");
        store.put_volume(&v).expect("put");
        v.phase = Phase::Ready;
        store.put_volume(&v).expect("update");
        store.put_volume(&volume("vol:p:2", "pvc-2")).expect("put");
        store.put_snapshot(&snapshot("snap:p:1", "s1")).expect("put");
        store.put_snapshot(&snapshot("snap:p:2", "s2")).expect("put");
        store.remove_snapshot("snap:p:2").expect("remove");
        // Dropped without a checkpoint, as a crash would leave it.
        drop(store);
        assert_eq!(epoch_on_disk(dir.path()), epoch, "no checkpoint was written");
        assert_eq!(read_records(dir.path()).expect("read").0.len(), 2);

        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume("vol:p:1"), Some(v));
        assert_eq!((store.volume_count(), store.snapshot_count()), (2, 1));
        assert!(store.snapshot_by_name("s2").is_none());
        assert!(store.checkpoint_if_changed().expect("checkpoint"), "the replayed frames are still in the journal");
        assert_ne!(epoch_on_disk(dir.path()), epoch);
        assert_eq!(store.journal().usage().0, 0, "a checkpoint empties the journal");
        assert!(!store.checkpoint_if_changed().expect("checkpoint"), "nothing changed since");
        store.remove_volume("vol:p:2").expect("remove");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!((store.volume_count(), store.snapshot_count()), (1, 1));
    }

    #[test]
    fn a_checkpoint_reloads_every_record_by_id_by_name_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        // IDs put out of order, so the checkpoint's own ordering is what the load sees.
        let ids: Vec<String> = (0..40).map(|i| format!("vol:p:{:02}", (i * 7) % 40)).collect();
        for id in &ids {
            store.put_volume(&volume(id, &format!("pvc-{id}"))).expect("put");
        }
        store.put_snapshot(&snapshot("snap:p:b", "s-b")).expect("put");
        store.put_snapshot(&snapshot("snap:p:a", "s-a")).expect("put");
        store.checkpoint().expect("checkpoint");
        // One change on top of the checkpoint, replayed from the journal.
        store.remove_volume("vol:p:03").expect("remove");
        drop(store);

        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!((store.volume_count(), store.snapshot_count()), (39, 2));
        for id in ids.iter().filter(|id| *id != "vol:p:03") {
            assert_eq!(store.volume(id).map(|v| v.name), Some(format!("pvc-{id}")));
            assert_eq!(store.volume_by_name(&format!("pvc-{id}")).map(|v| v.id).as_ref(), Some(id));
        }
        assert!(store.volume_by_name("pvc-vol:p:03").is_none());
        assert_eq!(store.snapshot_by_name("s-a").map(|s| s.id), Some("snap:p:a".into()));
        let (page, more) = store.volumes_page(None, 100);
        let listed: Vec<String> = page.into_iter().map(|v| v.id).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert!(!more);
        assert_eq!(listed, sorted, "pages come in ID order");
    }

    #[test]
    fn a_full_journal_is_checkpointed_by_the_change_that_does_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let frames = journal::SIZE as usize / journal::BLOCK;
        let mut due_seen = false;
        for i in 0..frames + 10 {
            store.put_volume(&volume(&format!("vol:p:{i}"), &format!("n{i}"))).expect("put");
            due_seen |= store.checkpoint_due();
        }
        assert!(due_seen, "a background checkpoint was due at half full");
        assert_eq!(store.journal().usage().0, 10 * journal::BLOCK as u64, "the change that did not fit went first");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), frames + 10);
    }

    #[test]
    fn concurrent_changes_share_writes_and_all_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let id = format!("vol:p:{t}-{i}");
                        store.put_volume(&volume(&id, &id)).expect("put");
                        if i % 2 == 0 {
                            store.remove_volume(&id).expect("remove");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(store.volume_count(), 16 * 20);
        assert!(store.queue().waiting.is_empty() && store.queue().done.is_empty(), "nothing left behind");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), 16 * 20);
        assert!(store.volume("vol:p:3-1").is_some() && store.volume("vol:p:3-2").is_none());
    }

    #[test]
    fn a_failed_write_makes_the_next_change_checkpoint_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        let epoch = epoch_on_disk(dir.path());
        store.journal().broken = true;
        assert!(store.checkpoint_due());
        store.put_volume(&volume("vol:p:2", "b")).expect("put");
        assert_ne!(epoch_on_disk(dir.path()), epoch);
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), 2);
    }

    #[test]
    fn a_checkpoint_that_cannot_be_written_leaves_the_journal_taking_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        assert!(dir.path().join("state/reserve").exists(), "room kept for a checkpoint on a full disk");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        // The temp file cannot be made: nothing on disk changes.
        fs::create_dir(dir.path().join("state/.records.tmp")).expect("block the temp file");
        assert!(store.checkpoint().is_err());
        assert!(!store.journal().broken, "the old checkpoint and the journal still hold everything");
        store.put_volume(&volume("vol:p:2", "b")).expect("changes go on in the journal");
        store.remove_volume("vol:p:1").expect("and deletes");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volumes_where(|_| true).len(), 1);
        assert!(store.volume("vol:p:2").is_some());
    }

    #[test]
    fn record_files_are_imported_once_and_unreadable_ones_kept_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state");
        let (vols, snaps) = (root.join("volumes"), root.join("snapshots"));
        fs::create_dir_all(vols.join("ab")).expect("mkdir");
        fs::create_dir_all(&snaps).expect("mkdir");
        let json = |v: &dyn erased::Json| v.json();
        fs::write(vols.join("flat.json"), json(&volume("vol:p:flat", "flat"))).expect("write");
        fs::write(vols.join("ab/sharded.json"), json(&volume("vol:p:sharded", "sharded"))).expect("write");
        fs::write(vols.join("ab/.x.json.tmp"), b"{half").expect("write");
        fs::write(snaps.join("s.json"), json(&snapshot("snap:p:1", "s1"))).expect("write");
        fs::write(root.join("catalog"), b"{}").expect("write");
        fs::write(vols.join("bad.json"), b"not json").expect("write");

        for start in 0..2 {
            let (store, bad) = Store::open(dir.path()).expect("open");
            assert_eq!((store.volume_count(), store.snapshot_count()), (2, 1), "start {start}");
            assert_eq!(bad.len(), 1, "reported at every start");
            assert!(bad[0].path.ends_with("volumes/bad.json"));
        }
        assert!(vols.join("bad.json").exists(), "unreadable records are kept for the operator");
        assert!(!vols.join("ab").exists() && !snaps.exists() && !root.join("catalog").exists());

        // A record dropped in by hand, and a hand-made fix of an existing one.
        fs::remove_file(vols.join("bad.json")).expect("rm");
        let mut fixed = volume("vol:p:flat", "flat");
        fixed.capacity = 7;
        fs::write(vols.join("fixed.json"), json(&fixed)).expect("write");
        let (store, bad) = Store::open(dir.path()).expect("open");
        assert!(bad.is_empty());
        assert_eq!(store.volume("vol:p:flat").map(|v| v.capacity), Some(7));
        assert!(!vols.exists());
        drop(store);

        // A record file anyone could have written is reported, never imported.
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&vols).expect("mkdir");
        fs::write(vols.join("planted.json"), json(&volume("vol:p:planted", "planted"))).expect("write");
        fs::set_permissions(vols.join("planted.json"), fs::Permissions::from_mode(0o666)).expect("chmod");
        let (store, bad) = Store::open(dir.path()).expect("open");
        assert!(store.volume("vol:p:planted").is_none());
        assert!(bad.len() == 1 && bad[0].reason.contains("not imported"), "{bad:?}");
        drop(store);
        fs::set_permissions(vols.join("planted.json"), fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&vols, fs::Permissions::from_mode(0o777)).expect("chmod");
        let (store, bad) = Store::open(dir.path()).expect("open");
        assert!(store.volume("vol:p:planted").is_none(), "its directory is writable by all");
        assert!(bad.len() == 1 && bad[0].reason.contains("its directory"), "{bad:?}");
        drop(store);
        fs::set_permissions(&vols, fs::Permissions::from_mode(0o755)).expect("chmod");
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&vols.join("planted.json"), Some(nix::unistd::Uid::from_raw(4321)), None)
                .expect("chown");
            let (store, bad) = Store::open(dir.path()).expect("open");
            assert!(store.volume("vol:p:planted").is_none(), "another user's file");
            assert!(bad.len() == 1 && bad[0].reason.contains("uid 4321"), "{bad:?}");
        }
    }

    mod erased {
        pub trait Json {
            fn json(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> Vec<u8> {
                serde_json::to_vec_pretty(self).expect("json")
            }
        }
    }

    #[test]
    fn a_second_process_on_the_same_state_waits_then_fails_naming_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let root = dir.path().join("state");
        let started = std::time::Instant::now();
        let err = lock_state(&root, std::time::Duration::from_millis(300)).expect_err("held");
        assert!(started.elapsed() >= std::time::Duration::from_millis(300), "it waited");
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        // Released with the store, and then taken at once.
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(store);
        });
        lock_state(&root, std::time::Duration::from_secs(5)).expect("taken once released");
        releasing.join().expect("thread");
    }

    #[test]
    fn a_lost_or_damaged_checkpoint_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        drop(store);
        let records = dir.path().join("state/records");
        let good = fs::read(&records).expect("read");
        for damage in
            [&b""[..], b"{\"version\":2,\"epo", b"{\"version\":9,\"epoch\":1,\"volumes\":[],\"snapshots\":[]}"]
        {
            fs::write(&records, damage).expect("damage");
            let err = Store::open(dir.path()).expect_err("damaged");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("records cannot be read"), "{err}");
        }
        fs::remove_file(&records).expect("rm");
        let err = Store::open(dir.path()).expect_err("lost");
        assert!(err.to_string().contains("is missing but"), "{err}");
        fs::write(&records, good).expect("restore");
        assert_eq!(Store::open(dir.path()).expect("restored").0.volume_count(), 1);
    }

    /// A store whose checkpoint holds vol-0 and whose journal holds vol-1 .. vol-5, one
    /// write each, and the journal's path.
    fn six_volumes(dir: &Path) -> PathBuf {
        let (store, _) = Store::open(dir).expect("open");
        store.put_volume(&volume("vol-0", "pvc-0")).expect("put");
        store.checkpoint().expect("checkpoint");
        for i in 1..6 {
            store.put_volume(&volume(&format!("vol-{i}"), &format!("pvc-{i}"))).expect("put");
        }
        drop(store);
        dir.join("state").join(JOURNAL)
    }

    #[test]
    fn a_cut_or_missing_journal_stops_the_start() {
        for cut in [0, journal::BLOCK as u64, journal::SIZE - 1] {
            let dir = tempfile::tempdir().expect("tempdir");
            let journal = six_volumes(dir.path());
            fs::OpenOptions::new().write(true).open(&journal).expect("open").set_len(cut).expect("cut");
            let err = Store::open(dir.path()).expect_err("a cut journal");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(&format!("is {cut} bytes, but was {} bytes", journal::SIZE)), "{err}");
            assert!(read_records(dir.path()).is_err(), "doctor reads them as a start would");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = six_volumes(dir.path());
        fs::remove_file(&journal).expect("rm");
        let err = Store::open(dir.path()).expect_err("a missing journal");
        assert!(err.to_string().contains("journal is missing, but was"), "{err}");
        assert!(!journal.exists(), "the refused start made no new journal");
    }

    #[test]
    fn a_flipped_bit_in_the_journal_stops_the_start_and_salvage_names_what_it_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = six_volumes(dir.path());
        // One bit of vol-2's frame, the second of five.
        let file = fs::OpenOptions::new().read(true).write(true).open(&journal).expect("open");
        use std::os::unix::fs::FileExt;
        let mut byte = [0u8; 1];
        let at = journal::BLOCK as u64 + 100;
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 0x04], at).expect("flip");
        let err = Store::open(dir.path()).expect_err("damage");
        assert!(err.to_string().contains("frame 1 (at byte 4096) is damaged, and 3 frame(s)"), "{err}");
        assert!(err.to_string().contains("berth doctor"), "{err}");

        let saved = salvage(dir.path(), false).expect("salvage");
        assert_eq!((saved.volumes, saved.snapshots), (5, 0));
        assert_eq!(saved.lost.len(), 1, "{:?}", saved.lost);
        assert!(saved.lost[0].starts_with("frame 1"), "{:?}", saved.lost);
        assert!(saved.kept_at.join("journal").exists() && saved.kept_at.join("records").exists());
        let (store, _) = Store::open(dir.path()).expect("starts after the salvage");
        let ids: Vec<String> = store.volumes_where(|_| true).into_iter().map(|v| v.id).collect();
        assert_eq!(ids, ["vol-0", "vol-1", "vol-3", "vol-4", "vol-5"]);
    }

    #[test]
    fn salvage_uses_a_damaged_checkpoint_only_when_told_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        six_volumes(dir.path());
        let records = dir.path().join("state/records");
        let text = fs::read_to_string(&records).expect("read").replacen("vol-0", "vol-9", 1);
        fs::write(&records, text).expect("a changed digit in a key");
        let err = Store::open(dir.path()).expect_err("damage");
        assert!(err.to_string().contains("do not match its checksum"), "{err}");
        let err = salvage(dir.path(), false).expect_err("not without being told");
        assert!(err.to_string().contains("--trust-checkpoint"), "{err}");
        let saved = salvage(dir.path(), true).expect("told to");
        assert_eq!(saved.volumes, 6);
        assert!(saved.lost.is_empty(), "{:?}", saved.lost);
        assert!(Store::open(dir.path()).expect("starts").0.volume("vol-9").is_some());
    }
}
