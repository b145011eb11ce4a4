//! The node's target and staging paths: made without following links out of the
//! kubelet's directory, removed when a call that made them fails, torn down at unpublish.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Engine, Error, Result};
use crate::backend::{self, RAW_DEVICE_FILE};
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::ops;

pub(super) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Backend(backend::Error::Io { op, path: path.to_path_buf(), source })
}

impl Engine {
    /// The mount table, read and parsed once for the checks of one call: the paths a node
    /// call checks are its own, which the volume's lock keeps other calls from mounting
    /// on, so the read holds until the call itself mounts or unmounts something (and
    /// reads again if a check must see that).
    pub(super) fn mount_table(&self, path: &Path) -> Result<Vec<MountEntry>> {
        ops::table(self.sys.as_ref()).map_err(io_err("read mount table", path))
    }
}

/// Makes sure `path` is a directory berth may mount on: creates it when missing (its parent
/// must exist), refuses symlinks and non-directories, and refuses a directory that holds
/// files but is not a mount point in `table`, so a request can never hide existing data
/// (`/etc`, a home directory) under a volume.
pub(super) fn prepare_dir(field: &'static str, path: &Path, table: &[MountEntry]) -> Result<CreatedDir> {
    let existing = CreatedDir { path: None, dir: true };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::BadPath {
            field,
            path: path.to_path_buf(),
            problem: "is a symlink; berth does not mount through symlinks",
        }),
        Ok(m) if m.is_dir() => {
            if !mountinfo::at(table, path).is_empty() {
                return Ok(existing);
            }
            // A raw block volume's device file left by a reboot is berth's own; anything
            // else means the directory holds someone's data.
            let mut entries = fs::read_dir(path)
                .map_err(io_err("list", path))?
                .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != RAW_DEVICE_FILE));
            if entries.next().is_some() {
                return Err(Error::BadPath {
                    field,
                    path: path.to_path_buf(),
                    problem: "is a non-empty directory that is not a mount point; berth mounts only on empty directories",
                });
            }
            Ok(existing)
        }
        Ok(_) => Err(Error::BadPath { field, path: path.to_path_buf(), problem: "exists and is not a directory" }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
            Ok(()) => Ok(CreatedDir { path: Some(path.to_path_buf()), dir: true }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NoParent { field, path: path.to_path_buf() }),
            Err(e) => Err(io_err("create directory", path)(e)),
        },
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Makes sure `path` is a file berth may bind a raw device onto: creates it when missing
/// (its parent must exist), refuses symlinks and directories.
pub(super) fn prepare_file(field: &'static str, path: &Path) -> Result<CreatedDir> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::BadPath {
            field,
            path: path.to_path_buf(),
            problem: "is a symlink; berth does not mount through symlinks",
        }),
        Ok(m) if m.is_dir() => Err(Error::BadPath {
            field,
            path: path.to_path_buf(),
            problem: "is a directory; a raw block volume is published onto a file",
        }),
        Ok(_) => Ok(CreatedDir { path: None, dir: false }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(_) => Ok(CreatedDir { path: Some(path.to_path_buf()), dir: false }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(Error::NoParent { field, path: path.to_path_buf() })
                }
                Err(e) => Err(io_err("create file", path)(e)),
            }
        }
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// A directory (or file) berth created for a mount; removed again if the call fails
/// before mounting, so a failed call leaves the CO's paths exactly as they were.
#[must_use]
pub(super) struct CreatedDir {
    path: Option<PathBuf>,
    dir: bool,
}

impl CreatedDir {
    /// The mount succeeded: the directory stays.
    pub(super) fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = if self.dir { fs::remove_dir(&path) } else { fs::remove_file(&path) }
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a directory created for a failed call");
        }
    }
}

/// Unmounts whatever is at `path` and removes what berth created there. Absent is success.
/// Mount-ness comes from the mount table first: a stat of a dead hard NFS mount would hang.
pub(super) fn tear_down(engine: &Engine, field: &'static str, path: &Path) -> Result<()> {
    if ops::is_mount_point(engine.sys.as_ref(), path).map_err(io_err("read mount table", path))? {
        match ops::probe(path).map_err(io_err("inspect", path))? {
            ops::Probe::Stale => {
                tracing::warn!(path = %path.display(), "the mount is stale (server or daemon gone); detaching it");
                ops::detach_all(engine.sys.as_ref(), path).map_err(io_err("detach stale mount", path))?;
            }
            _ => ops::unmount_all(engine.sys.as_ref(), path).map_err(io_err("unmount", path))?,
        }
    }
    // Nothing is mounted here any more: what remains is the directory (or file) itself.
    let meta = match ops::probe(path).map_err(io_err("inspect", path))? {
        ops::Probe::Present(m) => m,
        ops::Probe::Missing => return Ok(()),
        ops::Probe::Stale => {
            ops::detach_all(engine.sys.as_ref(), path).map_err(io_err("detach stale mount", path))?;
            return remove_path(path, true);
        }
    };
    if meta.file_type().is_symlink() {
        return Err(Error::BadPath {
            field,
            path: path.to_path_buf(),
            problem: "is a symlink; berth does not unmount through symlinks",
        });
    }
    remove_path(path, meta.is_dir())
}

pub(super) fn remove_path(path: &Path, dir: bool) -> Result<()> {
    let result = if dir { fs::remove_dir(path) } else { fs::remove_file(path) };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Data written into the bare directory while nothing was mounted: keep it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(path = %path.display(), "left a non-empty directory in place after unmounting");
            Ok(())
        }
        Err(e) => Err(io_err("remove", path)(e)),
    }
}
