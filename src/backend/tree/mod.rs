//! Copy, remove, measure and visit directory trees whose content hostile pods control.
//!
//! Everything below a tree root is untrusted: all work is relative to directory fds,
//! symlinks are never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`) and entries on another
//! mount (`st_dev` or mount id differs from the root's) are skipped, never entered. Walks
//! use an explicit stack holding at most [`MAX_OPEN`] directory fds; closed ancestors are
//! reopened through `..` and verified by (dev, ino), so a directory moved mid-walk aborts
//! the walk instead of redirecting it. Regular files are opened `O_PATH` first and reopened
//! for reading through `/proc/self/fd` only once proven regular, so a device node swapped in
//! is never opened. Caller-given parent paths are trusted; tree roots and names are not.

mod copy;
mod data;
mod inodes;
mod meta;
mod remove;
mod walk;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;

pub(crate) use copy::boot_id;
pub use copy::{CopyStats, copy_tree, copy_tree_prepared};
pub use data::{Reflink, copy_file_data, copy_file_data_from};
pub use inodes::{Usage, for_each_inode, usage};
pub use remove::remove_tree;

/// Directory fds kept open per walk stack; deeper ancestors are reopened via `..`.
const MAX_OPEN: usize = 32;
const DIR: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);
const DIR_NOFOLLOW: OFlag = DIR.union(OFlag::O_NOFOLLOW);

type St = libc::statx;

fn kind(s: &St) -> u32 {
    u32::from(s.stx_mode) & libc::S_IFMT
}
fn key(s: &St) -> (u32, u32, u64) {
    (s.stx_dev_major, s.stx_dev_minor, s.stx_ino)
}
/// True when `s` lives on another mount than `root`.
fn foreign(s: &St, root: &St) -> bool {
    let both_ids = s.stx_mask & root.stx_mask & libc::STATX_MNT_ID != 0;
    let dev = |s: &St| (s.stx_dev_major, s.stx_dev_minor);
    dev(s) != dev(root) || both_ids && s.stx_mnt_id != root.stx_mnt_id
}
/// True when `s` is on another mount than `root`; unlike [`foreign`], a nested btrfs
/// subvolume (another device number, the same mount) is not: its data is the volume's.
fn other_mount(s: &St, root: &St) -> bool {
    let both_ids = s.stx_mask & root.stx_mask & libc::STATX_MNT_ID != 0;
    if both_ids { s.stx_mnt_id != root.stx_mnt_id } else { foreign(s, root) }
}
fn times(s: &St) -> [TimeSpec; 2] {
    [s.stx_atime, s.stx_mtime].map(|t| TimeSpec::new(t.tv_sec as _, t.tv_nsec.into()))
}
fn is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}
/// Maps ENOENT (an entry that vanished concurrently) to `None`.
fn opt<T, E: Into<io::Error>>(r: Result<T, E>) -> io::Result<Option<T>> {
    match r.map_err(Into::into) {
        Err(e) if is(&e, &[libc::ENOENT]) => Ok(None),
        r => r.map(Some),
    }
}

/// `statx` of `name` relative to `dir`, never following a final symlink or automount.
fn statx(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<St> {
    // SAFETY: `libc::statx` is plain integer data, for which all-zero bytes are valid.
    let mut x: St = unsafe { std::mem::zeroed() };
    let flags = flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
    // SAFETY: `dir` is an open fd, `name` is NUL-terminated and `x` is a writable statx.
    match unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, mask, &raw mut x) } {
        0 => Ok(x),
        _ => Err(io::Error::last_os_error()),
    }
}
fn fstat(fd: BorrowedFd<'_>) -> io::Result<St> {
    statx(fd, c"", libc::AT_EMPTY_PATH)
}

/// Opens with `O_NOATIME` (source atimes stay put), retrying without it on EPERM.
fn noatime(fl: OFlag, f: impl Fn(OFlag) -> nix::Result<OwnedFd>) -> io::Result<OwnedFd> {
    match f(fl | OFlag::O_NOATIME) {
        Err(Errno::EPERM) => Ok(f(fl)?),
        r => Ok(r?),
    }
}
fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    noatime(DIR_NOFOLLOW, |fl| openat(dir, name, fl, Mode::empty()))
}
/// Opens `name` for reading once an `O_PATH` fd proved it regular; `None` if it vanished.
fn open_regular(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<(File, St)>> {
    let Some((path, st)) = open_path(dir, name)? else {
        return Ok(None);
    };
    if kind(&st) != libc::S_IFREG {
        return Err(io::Error::other(format!("{name:?} was replaced during the copy")));
    }
    Ok(Some((reopen(&path)?, st)))
}
/// An `O_PATH` descriptor of `name` (never followed, never opened for I/O, so a device
/// node or fifo is not touched) and what it is; `None` if it vanished.
fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<(OwnedFd, St)>> {
    let fl = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Some(path) = opt(openat(dir, name, fl, Mode::empty()))? else {
        return Ok(None);
    };
    let st = fstat(path.as_fd())?;
    Ok(Some((path, st)))
}
/// Opens for reading the very inode an [`open_path`] descriptor holds, whatever its name
/// now points to; only for inodes proven regular.
fn reopen(path: &OwnedFd) -> io::Result<File> {
    let proc = format!("/proc/self/fd/{}", path.as_raw_fd());
    let fl = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    Ok(File::from(noatime(fl, |fl| open(proc.as_str(), fl, Mode::empty()))?))
}
/// Validates a single path component.
fn component(s: &str) -> io::Result<CString> {
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\0']) {
        let msg = format!("{s:?} is not a single path component");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    Ok(CString::new(s)?)
}

#[cfg(test)]
mod tests;
