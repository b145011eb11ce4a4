//! Btrfs subvolumes, snapshots and qgroups through the kernel's ioctl interface.
//! Every function takes a directory descriptor the caller opened with
//! `O_DIRECTORY | O_NOFOLLOW`; no path is resolved here.
//!
//! This file holds the subvolume calls (create, snapshot, delete, read-only flag, sync).
//! `qgroup` holds the quota groups that bound a volume's size, `uapi` the kernel's
//! structures and request numbers (mirrored from `linux/btrfs.h`), and `search` the tree
//! search through which `qgroup` reads the quota tree and the subvolume back references.

mod qgroup;
mod search;
mod uapi;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub use qgroup::{QgroupUsage, qgroup_adopt, qgroup_limit, qgroup_remove, qgroup_usage, quota_enable, quota_enabled};
pub use uapi::BTRFS_SUPER_MAGIC;
use uapi::{
    BTRFS_FIRST_FREE_OBJECTID, BTRFS_INO_LOOKUP_PATH_MAX, BTRFS_IOC_INO_LOOKUP, BTRFS_IOC_SNAP_CREATE_V2,
    BTRFS_IOC_SNAP_DESTROY, BTRFS_IOC_SUBVOL_CREATE, BTRFS_IOC_SUBVOL_GETFLAGS, BTRFS_IOC_SUBVOL_SETFLAGS,
    BTRFS_IOC_SYNC, BTRFS_SUBVOL_NAME_MAX, BTRFS_SUBVOL_RDONLY, InoLookupArgs, VolArgsV2, fill_name, vol_args,
};

use crate::mount::ioctl::ioctl;

/// Returns the subvolume id of `fd`, which must be a subvolume root: a plain
/// directory would otherwise silently stand for its enclosing subvolume.
fn own_subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    if !is_subvolume(fd)? {
        let msg = "descriptor is not the root of a btrfs subvolume";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    subvolume_id(fd)
}

/// Reports whether the filesystem holding `fd` is btrfs (by `fstatfs` magic).
pub fn is_btrfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    // Compare the low 32 bits: f_type is signed on some targets.
    Ok(st.filesystem_type().0 as i64 as u32 == BTRFS_SUPER_MAGIC as u32)
}

/// Reports whether `fd` is the root directory of a btrfs subvolume (btrfs and inode 256).
pub fn is_subvolume(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !is_btrfs(fd)? {
        return Ok(false);
    }
    let st = nix::sys::stat::fstat(fd)?;
    let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
    Ok(is_dir && st.st_ino as u64 == BTRFS_FIRST_FREE_OBJECTID)
}

/// Returns the id of the subvolume that contains `fd` (its own id when `fd` is a subvolume root).
pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args =
        InoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; BTRFS_INO_LOOKUP_PATH_MAX] };
    // SAFETY: `args` is a live `btrfs_ioctl_ino_lookup_args` (size asserted)
    // and BTRFS_IOC_INO_LOOKUP reads and writes exactly that structure.
    unsafe { ioctl(fd, BTRFS_IOC_INO_LOOKUP, &raw mut args) }?;
    Ok(args.treeid)
}

/// Creates an empty subvolume called `name` inside the directory `parent`.
pub fn subvolume_create(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut args = vol_args(name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args` (size asserted) with a
    // NUL-terminated name; BTRFS_IOC_SUBVOL_CREATE only reads it.
    unsafe { ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, &raw mut args) }.map(drop)
}

/// Snapshots the subvolume `source` as `name` inside `dest_parent`, read-only if asked.
pub fn snapshot_create(
    source: BorrowedFd<'_>,
    dest_parent: BorrowedFd<'_>,
    name: &str,
    readonly: bool,
) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args_v2` (size asserted) whose
    // qgroup-inherit pointer is null; `source` stays open for the call.
    unsafe { ioctl(dest_parent, BTRFS_IOC_SNAP_CREATE_V2, &raw mut args) }.map(drop)
}

/// Deletes the subvolume or snapshot `name` inside `parent` (read-only ones too, given CAP_SYS_ADMIN).
pub fn subvolume_delete(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut args = vol_args(name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args` (size asserted) with a
    // NUL-terminated name; BTRFS_IOC_SNAP_DESTROY only reads it.
    unsafe { ioctl(parent, BTRFS_IOC_SNAP_DESTROY, &raw mut args) }.map(drop)
}

/// Sets or clears the read-only flag of the subvolume whose root is `fd`.
pub fn set_readonly(fd: BorrowedFd<'_>, readonly: bool) -> io::Result<()> {
    let mut flags: u64 = 0;
    // SAFETY: BTRFS_IOC_SUBVOL_GETFLAGS writes one u64 into `flags`.
    unsafe { ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, &raw mut flags) }?;
    let mut wanted = flags & !BTRFS_SUBVOL_RDONLY;
    if readonly {
        wanted |= BTRFS_SUBVOL_RDONLY;
    }
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: BTRFS_IOC_SUBVOL_SETFLAGS reads one u64 from `wanted`.
    unsafe { ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, &raw mut wanted) }.map(drop)
}

/// Sets the `compression` property of the file or directory `fd` (what `btrfs property
/// set ... compression` writes): the `btrfs.compression` extended attribute, which new
/// files and directories below a directory inherit. `none` turns compression off even
/// where the filesystem is mounted with `compress`.
pub fn set_compression(fd: BorrowedFd<'_>, algorithm: &str) -> io::Result<()> {
    // SAFETY: the name is a NUL-terminated literal; `algorithm` is live for the call and
    // its length is passed; fsetxattr only reads both.
    let rc = unsafe {
        libc::fsetxattr(fd.as_raw_fd(), c"btrfs.compression".as_ptr(), algorithm.as_ptr().cast(), algorithm.len(), 0)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Flushes delalloc and commits the current transaction of the filesystem of `fd`.
pub fn sync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: BTRFS_IOC_SYNC is an _IO request with no argument.
    unsafe { ioctl(fd, BTRFS_IOC_SYNC, std::ptr::null_mut::<libc::c_void>()) }.map(drop)
}
