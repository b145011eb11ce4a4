//! Salvage: the way back to a running berth after its records were damaged, which a start
//! refuses (see [`super::journal`] and [`super::checkpoint`]).
//!
//! It keeps a copy of the damaged files, then writes a new checkpoint of every record that
//! can still be trusted: the checkpoint's, then each journal frame that checks, including
//! those after the damage. It names every change it could not take. Storage that a lost
//! change created is then reported at each start as storage no record names, never
//! deleted, so an operator can bring it back (docs/operations.md, Damaged records).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::open::{LOCK_WAIT, lock_state};
use super::{Change, JOURNAL, checkpoint, journal, now_ms, unique_u64};

/// What a salvage kept and lost.
#[derive(Debug)]
pub struct Salvaged {
    pub volumes: usize,
    pub snapshots: usize,
    /// One line for each change that could not be taken.
    pub lost: Vec<String>,
    /// Where the damaged files were copied to.
    pub kept_at: PathBuf,
}

/// Salvages the records under `state_dir/state`; berth must be stopped (it takes the
/// state's lock). A checkpoint that fails its checksum is used only with
/// `trust_checkpoint`, since a record in it may be wrong in ways no check can see.
pub fn salvage(state_dir: &Path, trust_checkpoint: bool) -> io::Result<Salvaged> {
    let root = state_dir.join("state");
    let _lock = lock_state(&root, LOCK_WAIT)?;
    let base = match checkpoint::read(&root) {
        Ok(Some(base)) => base,
        Ok(None) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing: restore it from a backup", root.join(checkpoint::FILE_NAME).display()),
            ));
        }
        Err(e) if trust_checkpoint => {
            tracing::warn!(error = %e, "using a checkpoint that fails its check, as asked");
            checkpoint::read_unchecked(&root)?
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}\nRestore it from a backup; or, to keep the records it still holds, run again with \
                     --trust-checkpoint and compare them with the storage afterwards"
                ),
            ));
        }
    };
    let journal_path = root.join(JOURNAL);
    let mut lost = Vec::new();
    let read = match journal::salvage(&journal_path, base.epoch) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            lost.push(format!("{} is missing: every change since the checkpoint", journal_path.display()));
            journal::Salvage::default()
        }
        Err(e) => return Err(e),
    };
    if base.journal_size.is_some_and(|size| fs::metadata(&journal_path).is_ok_and(|m| m.len() < size)) {
        lost.push(format!("{} was cut short: any change in its missing part", journal_path.display()));
    }

    let kept_at = root.join(format!("damaged-{}", now_ms()));
    fs::create_dir(&kept_at)?;
    for name in [checkpoint::FILE_NAME, JOURNAL] {
        match fs::copy(root.join(name), kept_at.join(name)) {
            Ok(_) => fs::File::open(kept_at.join(name))?.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fs::File::open(&kept_at)?.sync_all()?;

    let mut maps = base.into_maps();
    for payload in &read.frames {
        match serde_json::from_slice::<Change>(payload) {
            Ok(change) => maps.apply(change),
            Err(e) => lost.push(format!("a frame that checks but does not parse ({e})")),
        }
    }
    for (seq, payload) in read.lost {
        let what = payload.and_then(|p| serde_json::from_slice::<Change>(&p).ok());
        lost.push(match what {
            Some(change) => format!("frame {seq}, which seems to have said: {}", change.describe()),
            None => format!("frame {seq}, unreadable"),
        });
    }

    // The new checkpoint first, then the empty journal: a crash between leaves the new
    // checkpoint, whose epoch no old frame carries.
    let epoch = unique_u64(maps_epoch(&root));
    let tmp = checkpoint::write_tmp(&root, epoch, journal::SIZE, &maps)?;
    checkpoint::install(&root, tmp)?;
    journal::create(&journal_path)?;
    Ok(Salvaged { volumes: maps.volumes.by_id.len(), snapshots: maps.snapshots.by_id.len(), lost, kept_at })
}

/// The epoch of the checkpoint on disk, whatever its state, so the new one differs.
fn maps_epoch(root: &Path) -> u64 {
    checkpoint::read_unchecked(root).map_or(0, |c| c.epoch)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testutil::six_volumes;
    use super::*;
    use crate::state::Store;

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
        let ids: Vec<String> = store.volumes_where(|_| true).iter().map(|v| v.id.clone()).collect();
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
