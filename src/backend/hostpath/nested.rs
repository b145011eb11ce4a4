//! Subvolumes pods make inside their btrfs volumes (BTRFS_IOC_SUBVOL_CREATE needs no
//! privilege): found, added to their volume's quota group so their data counts toward its
//! limit, refused for snapshots and clones (which would miss their data), and deleted
//! with the volume.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::backend::{Error, Result};
use crate::mount::Syscall;
use crate::state::VolumeRecord;

/// How often a btrfs pool with quotas looks for subvolumes pods made inside their volumes.
const ADOPT_PERIOD: Duration = Duration::from_secs(5);

/// The btrfs subvolumes inside the volume directory `dir` (a pod may make them:
/// BTRFS_IOC_SUBVOL_CREATE needs no privilege), deepest first. Symbolic links are not
/// followed; only directories are examined.
pub(super) fn nested_subvolumes(sys: &dyn Syscall, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let path = entry.path();
            // A subvolume's root directory is inode 256.
            if fs::symlink_metadata(&path)?.ino() == 256 && sys.btrfs_is_subvolume(&path).unwrap_or(false) {
                found.push(path.clone());
            }
            pending.push(path);
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// [`Error::NestedSubvolumes`] when `volume` (at `dir`) holds nested subvolumes: a btrfs
/// snapshot has only empty directories where they are, so a snapshot or clone would miss
/// their data.
pub(super) fn refuse_nested(sys: &dyn Syscall, volume: &VolumeRecord, dir: &Path) -> Result<()> {
    let nested = nested_subvolumes(sys, dir).map_err(Error::io("find nested subvolumes", dir))?;
    if nested.is_empty() {
        return Ok(());
    }
    let subvolumes = nested.iter().map(|p| p.strip_prefix(dir).unwrap_or(p).to_path_buf()).collect();
    Err(Error::NestedSubvolumes { volume: volume.id.clone(), subvolumes })
}

/// A thread that adds the subvolumes pods make inside their volumes to the volume's
/// quota group every [`ADOPT_PERIOD`]: making a subvolume needs no privilege, and a new
/// subvolume's qgroup belongs to no group, so until then its data escapes the volume's
/// limit. Usage reads and snapshots adopt at once too. Stops when dropped.
pub(super) struct NestedWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NestedWatch {
    pub(super) fn start(sys: Arc<dyn Syscall>, volumes: PathBuf, pool: String) -> std::io::Result<NestedWatch> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("berth-subvolumes".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(ADOPT_PERIOD) {
                let Ok(entries) = fs::read_dir(&volumes) else { continue };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        adopt_nested(sys.as_ref(), &pool, &entry.path());
                    }
                }
            }
        })?;
        Ok(NestedWatch { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for NestedWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Adds the subvolumes made inside the volume directory `dir` to its quota group.
/// Best effort: a volume being created or deleted meanwhile is simply skipped.
pub(super) fn adopt_nested(sys: &dyn Syscall, pool: &str, dir: &Path) {
    if !sys.btrfs_is_subvolume(dir).unwrap_or(false) {
        return;
    }
    match sys.btrfs_qgroup_adopt(dir) {
        Ok(ids) if !ids.is_empty() => tracing::info!(
            pool,
            volume_dir = %dir.display(),
            subvolumes = ?ids,
            "subvolumes made inside a volume now count toward its size limit"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(pool, volume_dir = %dir.display(), error = %e, "cannot adopt nested subvolumes"),
    }
}
