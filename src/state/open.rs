//! Opening the store: taking the state's lock (one berth per state directory), then
//! loading every record from the checkpoint, the journal's changes since it, and any
//! record files to import. A start refuses records it cannot trust: a missing or damaged
//! checkpoint, or a journal cut shorter than the checkpoint says it was. [`read_records`]
//! reads them the same way without changing anything, for `berth doctor`.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use super::{Change, JOURNAL, Maps, SnapshotRecord, Store, Unreadable, VolumeRecord, checkpoint, journal, legacy};

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
        let maps = Maps::load(base.into_maps(), &frames, &journal)?;
        // The tables hold the only reference to each record: unwrapping copies nothing.
        let volumes = maps.volumes.by_id.into_values().map(Arc::unwrap_or_clone).collect();
        return Ok((volumes, maps.snapshots.by_id.into_values().map(Arc::unwrap_or_clone).collect()));
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, "the records kept changing while being read; try again"))
}

/// How long a start waits for another process to release the state (a pod being
/// replaced stops within seconds).
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes `state/lock` exclusively, waiting up to `wait` for a berth that still holds it:
/// two processes appending to one journal would overwrite each other's changes. The
/// holder's pid is written into the file, for the error a second process reports.
pub(super) fn lock_state(root: &Path, wait: std::time::Duration) -> io::Result<nix::fcntl::Flock<fs::File>> {
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
        let base = base.map_or_else(Maps::default, checkpoint::Checkpoint::into_maps);
        let mut maps = Maps::load(base, &replayed.frames, &journal_path)?;
        let found = legacy::find(&root)?;
        let imported = found.imported.len();
        found.volumes.into_iter().for_each(|v| maps.apply(Change::PutVolume(Arc::new(v))));
        found.snapshots.into_iter().for_each(|s| maps.apply(Change::PutSnapshot(Arc::new(s))));
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
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Json, epoch_on_disk, six_volumes, snapshot, volume};
    use super::*;
    use crate::state::Phase;

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
        assert_eq!(store.volume("vol:p:1").as_deref(), Some(&v));
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
            assert_eq!(store.volume(id).map(|v| v.name.clone()), Some(format!("pvc-{id}")));
            assert_eq!(store.volume_by_name(&format!("pvc-{id}")).map(|v| v.id.clone()).as_ref(), Some(id));
        }
        assert!(store.volume_by_name("pvc-vol:p:03").is_none());
        assert_eq!(store.snapshot_by_name("s-a").map(|s| s.id.clone()), Some("snap:p:a".into()));
        let (page, more) = store.volumes_page(None, 100);
        let listed: Vec<String> = page.into_iter().map(|v| v.id.clone()).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert!(!more);
        assert_eq!(listed, sorted, "pages come in ID order");
    }

    #[test]
    fn record_files_are_imported_once_and_unreadable_ones_kept_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state");
        let (vols, snaps) = (root.join("volumes"), root.join("snapshots"));
        fs::create_dir_all(vols.join("ab")).expect("mkdir");
        fs::create_dir_all(&snaps).expect("mkdir");
        let json = |v: &dyn Json| v.json();
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
}
