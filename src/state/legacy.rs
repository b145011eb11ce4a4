//! Record files: one JSON file per record under `volumes/` and `snapshots/`, flat or in
//! two-letter shard directories, as berth kept them before the journal. A start imports
//! every such file into a checkpoint and then removes it, so an upgrade keeps its records
//! and an operator can still add or fix a record by hand (see docs/operations.md).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{SnapshotRecord, Unreadable, VolumeRecord};

pub const VOLUMES: &str = "volumes";
pub const SNAPSHOTS: &str = "snapshots";
/// The record cache of the version before the journal; nothing reads it any more.
const OLD_CATALOG: &str = "catalog";

/// What a start found to import.
#[derive(Default)]
pub struct Found {
    pub volumes: Vec<VolumeRecord>,
    pub snapshots: Vec<SnapshotRecord>,
    /// Files whose records were read, to remove once a checkpoint holds them.
    pub imported: Vec<PathBuf>,
    /// Files that cannot be read: reported at every start and left in place.
    pub bad: Vec<Unreadable>,
}

/// Reads every record file under `root`; interrupted temp files are removed.
pub fn find(root: &Path) -> io::Result<Found> {
    let mut found = Found::default();
    let vol_files = files(&root.join(VOLUMES))?;
    found.volumes = parse(root, vol_files, &mut found)?;
    let snap_files = files(&root.join(SNAPSHOTS))?;
    found.snapshots = parse(root, snap_files, &mut found)?;
    if root.join(OLD_CATALOG).exists() {
        found.imported.push(root.join(OLD_CATALOG));
    }
    Ok(found)
}

/// Every file in `dir` and in its subdirectories, one level down.
fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            for inner in fs::read_dir(entry.path())? {
                out.push(inner?.path());
            }
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a record file at `path` can only have been written by berth's user: it and
/// each directory up to the state root belong to that user, and no one else
/// can write to them. Anything else may be a pod's doing and is never imported.
fn trusted(path: &Path, root: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    for (i, at) in path.ancestors().take_while(|at| at.starts_with(root)).enumerate() {
        let meta = fs::symlink_metadata(at).map_err(|e| e.to_string())?;
        let what = if i == 0 { "the file" } else { "its directory" };
        if meta.file_type().is_symlink() {
            return Err(format!("{what} {} is a symbolic link: not imported", at.display()));
        }
        if meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{what} {} belongs to uid {} with mode {:o}, so someone other than berth may have written it: \
                 not imported",
                at.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(root: &Path, paths: Vec<PathBuf>, found: &mut Found) -> io::Result<Vec<T>> {
    let mut records = Vec::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A write interrupted before its rename: the previous record (if any) stands.
            fs::remove_file(&path)?;
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        match trusted(&path, root)
            .and_then(|()| fs::read(&path).map_err(|e| e.to_string()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(record) => {
                records.push(record);
                found.imported.push(path);
            }
            Err(reason) => found.bad.push(Unreadable { path, reason }),
        }
    }
    Ok(records)
}

/// Removes the imported files, and the directories they leave empty, durably: a removal
/// lost to a crash would import a stale record over later changes.
pub fn remove(root: &Path, imported: &[PathBuf]) -> io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in imported {
        crate::failpoint::hit("state.import.remove")?;
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut at = path.parent();
        while let Some(dir) = at.filter(|d| *d != root && d.starts_with(root)) {
            dirs.insert(dir.to_path_buf());
            at = dir.parent();
        }
    }
    // Children sort after their parents, so in reverse each is tried before its parent.
    // One that is not empty (an unreadable record stays) stays too, synced.
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
    for dir in dirs.iter().filter(|d| d.exists()) {
        File::open(dir)?.sync_all()?;
    }
    File::open(root)?.sync_all()
}
