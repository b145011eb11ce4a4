//! Which filesystem a pool is: a marker file, `.berth-pool`, in the pool's directory.
//!
//! A pool's directory is often a mount point of its own disk. When that disk is not
//! mounted at boot, the directory is empty (or missing) on the root disk: creating the
//! pool there would put new volumes on the wrong disk, which the real disk then hides once
//! it is mounted, and the recorded volumes would be missing. So a pool directory without
//! the marker is only made a pool when nothing is recorded in that pool yet, or when it
//! holds the volumes of a pool from before the marker. Otherwise the pool is unavailable,
//! with an error that says why, until the right filesystem is there.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The marker's name in the pool directory.
pub const MARKER: &str = ".berth-pool";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    pool: String,
    created_unix_ms: u64,
}

/// What a pool directory is.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The marker names this pool.
    Marked,
    /// No marker: a new pool, or one from before markers holding its volumes.
    Unmarked,
    /// Not this pool's filesystem, for the reason given.
    Wrong(String),
}

/// Reads what `root` is for pool `name`, which has `recorded` volume and snapshot records.
/// Changes nothing.
#[must_use]
pub fn inspect(name: &str, root: &Path, recorded: usize) -> Found {
    let marker = root.join(MARKER);
    match fs::read(&marker) {
        Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
            Ok(m) if m.pool == name => Found::Marked,
            Ok(m) => Found::Wrong(format!(
                "{} names pool {:?}, not {name:?}: another pool's disk is mounted here, or two pools share it",
                marker.display(),
                m.pool
            )),
            Err(e) => Found::Wrong(format!("{} cannot be read: {e}", marker.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if recorded == 0 || holds_volumes(root) {
                Found::Unmarked
            } else {
                Found::Wrong(format!(
                    "{} has no {MARKER} and no volumes, but {recorded} volume(s) and snapshot(s) are recorded in \
                     pool {name:?}: its disk is probably not mounted. berth does not create the pool on whatever \
                     holds {} now; mount the pool's filesystem and restart berth",
                    root.display(),
                    root.display()
                ))
            }
        }
        Err(e) => Found::Wrong(format!("reading {}: {e}", marker.display())),
    }
}

/// Whether `root/volumes` or `root/snapshots` holds anything.
fn holds_volumes(root: &Path) -> bool {
    ["volumes", "snapshots"].iter().any(|d| fs::read_dir(root.join(d)).is_ok_and(|mut e| e.next().is_some()))
}

/// Checks `root` for pool `name` and marks it when it is unmarked; `Err` says why the
/// pool cannot be used. A missing directory is made only when `create` is set (the pool's
/// `createPath`): otherwise it is most likely the mount point of a disk not there yet.
pub fn claim(name: &str, root: &Path, recorded: usize, create: bool) -> Result<(), String> {
    match inspect(name, root, recorded) {
        Found::Marked => Ok(()),
        Found::Wrong(reason) => Err(reason),
        Found::Unmarked if !create && !root.exists() => Err(format!(
            "{} does not exist, and pool {name:?} does not set createPath: true. If it is the mount point of \
             the pool's disk, mount the disk there; otherwise make the directory (or set createPath), then \
             restart berth",
            root.display()
        )),
        Found::Unmarked => write(name, root).map_err(|e| match e.raw_os_error() {
            Some(libc::EROFS) => {
                format!("{} is on a read-only filesystem: a new pool cannot be made there", root.display())
            }
            _ => format!("marking {} as pool {name:?}: {e}", root.display()),
        }),
    }
}

/// Writes the marker durably (through `<marker>.tmp`, see [`crate::durable::write`]).
fn write(name: &str, root: &Path) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let marker = Marker { pool: name.to_string(), created_unix_ms: crate::state::now_ms() };
    crate::durable::write(&root.join(MARKER), &serde_json::to_vec(&marker).map_err(io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_marked_once_and_never_made_where_its_volumes_should_be() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("pool");
        assert_eq!(inspect("p", &root, 0), Found::Unmarked, "a new pool");
        claim("p", &root, 0, true).expect("made");
        assert_eq!(inspect("p", &root, 5), Found::Marked);
        assert!(matches!(inspect("q", &root, 0), Found::Wrong(r) if r.contains("names pool \"p\"")));

        // The disk is not mounted: an empty directory, or none, with records of the pool.
        let unmounted = dir.path().join("unmounted");
        let err = claim("p", &unmounted, 3, true).expect_err("records but no pool");
        assert!(err.contains("probably not mounted"), "{err}");
        assert!(!unmounted.exists(), "nothing is created");
        fs::create_dir(&unmounted).expect("mkdir");
        assert!(claim("p", &unmounted, 3, true).is_err(), "an empty mount point either");
        assert!(!unmounted.join(MARKER).exists());

        // A pool from before markers, holding its volumes, is marked.
        fs::create_dir_all(unmounted.join("volumes/abc")).expect("mkdir");
        claim("p", &unmounted, 3, true).expect("adopted");
        assert_eq!(inspect("p", &unmounted, 3), Found::Marked);
    }

    #[test]
    fn a_missing_pool_directory_is_made_only_when_the_pool_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("mnt/disk1");
        let err = claim("disk1", &root, 0, false).expect_err("a new pool whose directory is missing");
        assert!(err.contains("does not exist") && err.contains("createPath"), "{err}");
        assert!(!dir.path().join("mnt").exists(), "nothing is created, not even the parent");

        // An existing empty directory is a new pool whatever the setting.
        fs::create_dir_all(&root).expect("mkdir");
        claim("disk1", &root, 0, false).expect("an existing directory is marked");
        assert_eq!(inspect("disk1", &root, 0), Found::Marked);

        let made = dir.path().join("made/here");
        claim("p", &made, 0, true).expect("createPath makes it");
        assert_eq!(inspect("p", &made, 0), Found::Marked);
    }
}
