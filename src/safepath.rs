//! Paths built from requests: validated as strings first, then resolved beneath a root with
//! openat2(2) so `..`, symlinks and magic links can never lead outside it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a path from a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{field} is required")]
    Empty { field: &'static str },
    #[error("{field} {value:?} must be an absolute path")]
    NotAbsolute { field: &'static str, value: String },
    #[error("{field} {value:?} must not be the root directory")]
    Root { field: &'static str, value: String },
    #[error("{field} {value:?} must be a relative path")]
    NotRelative { field: &'static str, value: String },
    #[error("{field} {value:?} has an empty, '.' or '..' component")]
    BadComponent { field: &'static str, value: String },
    #[error("{field} {value:?} contains a NUL, newline, backslash or other control character")]
    BadCharacter { field: &'static str, value: String },
    #[error("{field} is {len} bytes; at most {max} are allowed")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error(
        "{field} {value:?} is a top-level directory or inside a system tree ({SYSTEM_TREES}); berth mounts only below such places"
    )]
    System { field: &'static str, value: String },
}

const SYSTEM_TREES: &str = "/proc, /sys, /dev, /etc, /usr, /boot, /bin, /sbin, /lib, /lib32, /lib64";

/// Checks a path where berth will mount, unmount and create or remove the last component
/// (staging and target paths): an absolute path at least two levels deep and outside the
/// system trees, so no request can make berth mount over or remove `/etc`, `/mnt` or a
/// device node.
pub fn mount_target(field: &'static str, value: &str) -> Result<PathBuf, PathError> {
    let path = absolute(field, value)?;
    let mut parts = path.components().skip(1);
    let first = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    let deep = parts.next().is_some();
    let system =
        ["proc", "sys", "dev", "etc", "usr", "boot", "bin", "sbin", "lib", "lib32", "lib64"].contains(&first.as_str());
    if !deep || system {
        return Err(PathError::System { field, value: value.to_string() });
    }
    Ok(path)
}

const PATH_MAX: usize = 4096;

fn check_chars(field: &'static str, value: &str) -> Result<(), PathError> {
    if value.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadCharacter { field, value: value.escape_debug().to_string() });
    }
    if value.len() > PATH_MAX {
        return Err(PathError::TooLong { field, len: value.len(), max: PATH_MAX });
    }
    Ok(())
}

/// Checks one path component: non-empty, not `.` or `..`, no `/`, no control characters.
pub fn component<'a>(field: &'static str, value: &'a str) -> Result<&'a str, PathError> {
    check_chars(field, value)?;
    if value.is_empty() || value == "." || value == ".." || value.contains('/') || value.len() > 255 {
        return Err(PathError::BadComponent { field, value: value.to_string() });
    }
    Ok(value)
}

/// Checks a relative path of one or more safe components (`a/b/c`).
pub fn relative(field: &'static str, value: &str) -> Result<PathBuf, PathError> {
    check_chars(field, value)?;
    if value.is_empty() {
        return Err(PathError::Empty { field });
    }
    if value.starts_with('/') {
        return Err(PathError::NotRelative { field, value: value.to_string() });
    }
    let mut out = PathBuf::new();
    for part in value.split('/') {
        component(field, part).map_err(|_| PathError::BadComponent { field, value: value.to_string() })?;
        out.push(part);
    }
    Ok(out)
}

/// Checks an absolute path a CO hands in (staging or target path): absolute, normalised (no
/// `.`, `..` or empty components), not `/` itself, no control characters.
pub fn absolute(field: &'static str, value: &str) -> Result<PathBuf, PathError> {
    if value.is_empty() {
        return Err(PathError::Empty { field });
    }
    check_chars(field, value)?;
    if !value.starts_with('/') {
        return Err(PathError::NotAbsolute { field, value: value.to_string() });
    }
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(PathError::Root { field, value: value.to_string() });
    }
    if trimmed[1..].split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(PathError::BadComponent { field, value: value.to_string() });
    }
    let path = PathBuf::from(trimmed);
    debug_assert!(path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
    Ok(path)
}

/// Resolves symlinks in the parent directories of an absolute path the CO handed in, but
/// not in its final component (which berth refuses to mount through). The mount table
/// records resolved paths, so a kubelet root reached through a symlink (`/var/lib/kubelet`
/// moved to a data disk) must be resolved to match it. A parent that does not exist is
/// left as written; the operation reports it.
#[must_use]
pub fn resolve_parent(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => match std::fs::canonicalize(parent) {
            Ok(real) => real.join(name),
            Err(_) => path.to_path_buf(),
        },
        _ => path.to_path_buf(),
    }
}

/// openat2(2) of `path` relative to `dir` (the working directory when `None`), as an
/// O_PATH fd with `flags` added, resolved as `resolve` says.
fn open_path(dir: Option<&File>, path: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(libc::O_PATH | libc::O_CLOEXEC | flags)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    how.resolve = resolve;
    let dir_fd = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: `dir_fd` is AT_FDCWD or an fd `dir` keeps open for the whole call, `target`
    // is a valid NUL-terminated string, and `how` is a fully initialised open_how whose
    // size we pass.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir_fd, target.as_ptr(), &raw const how, std::mem::size_of::<libc::open_how>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `rel` beneath `root` without following any symlink on the way and without
/// leaving `root`. The fd is O_PATH: usable as a mount source via `/proc/self/fd/N`.
pub fn open_dir_beneath(root: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let root_dir = File::open(root)?;
    open_path(
        Some(&root_dir),
        rel,
        libc::O_DIRECTORY,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV,
    )
}

/// Opens an absolute path as an O_PATH fd without following a symlink in any of its
/// components: ELOOP when one is there. Paths from requests have their links resolved
/// once, when the request arrives ([`resolve_parent`]); a link found later was put there
/// since, so the path mounted would not be the path checked.
pub fn open_unfollowed(path: &Path) -> io::Result<OwnedFd> {
    open_path(None, path, 0, libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS)
}

/// The `/proc/self/fd/N` path naming an open fd, for mount(2) sources.
#[must_use]
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_normalised_or_refused() {
        assert_eq!(absolute("t", "/a/b/"), Ok(PathBuf::from("/a/b")));
        let bad = ["", "a/b", "/", "//", "/a/../b", "/a/./b", "/a//b", "/a\0b", "/a\nb", "/a\\b"];
        for value in bad {
            assert!(absolute("t", value).is_err(), "{value:?}");
        }
        assert!(matches!(absolute("t", &format!("/{}", "a".repeat(5000))), Err(PathError::TooLong { .. })));
    }

    #[test]
    fn mount_targets_stay_out_of_system_trees() {
        assert!(mount_target("t", "/var/lib/kubelet/pods/x/mount").is_ok());
        assert!(mount_target("t", "/tmp/csi/target").is_ok());
        for bad in ["/mnt", "/etc/passwd", "/proc/1/root", "/dev/sda", "/sys/x", "/usr/lib", "/boot/x", "/lib64/x", "/"]
        {
            assert!(mount_target("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_and_components() {
        assert_eq!(relative("s", "data/app1"), Ok(PathBuf::from("data/app1")));
        for value in ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\\b", "a\u{0}b", "x\ny"] {
            assert!(relative("s", value).is_err(), "{value:?}");
        }
        for value in ["", ".", "..", "a/b", "a\0", "\n"] {
            assert!(component("c", value).is_err(), "{value:?}");
        }
        assert!(component("c", &"x".repeat(256)).is_err());
    }

    #[test]
    fn parents_are_resolved_but_not_the_last_component() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("disk/kubelet");
        std::fs::create_dir_all(&real).expect("mkdir");
        let link = dir.path().join("kubelet");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        std::os::unix::fs::symlink("/", real.join("evil")).expect("symlink");
        let canonical_real = std::fs::canonicalize(&real).expect("canonical");
        assert_eq!(resolve_parent(&link.join("target")), canonical_real.join("target"));
        assert_eq!(
            resolve_parent(&link.join("evil")),
            canonical_real.join("evil"),
            "the last component stays a symlink"
        );
        assert_eq!(resolve_parent(Path::new("/no/such/dir/x")), PathBuf::from("/no/such/dir/x"));
    }

    #[test]
    fn open_beneath_refuses_symlinks_and_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("a/evil")).expect("symlink");
        std::os::unix::fs::symlink("b", root.join("a/inner")).expect("symlink");
        assert!(open_dir_beneath(root, Path::new("a/b")).is_ok());
        for rel in ["a/evil", "a/inner", "../", "a/../../etc", "/etc"] {
            assert!(open_dir_beneath(root, Path::new(rel)).is_err(), "{rel}");
        }
    }
}
