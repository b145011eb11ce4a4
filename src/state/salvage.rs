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

use super::{Change, JOURNAL, LOCK_WAIT, Maps, checkpoint, journal, lock_state, now_ms, unique_u64};

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

    let mut maps = Maps::from_checkpoint(base);
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
