//! Walks that reach each inode of a tree once: measuring the space and inodes it uses,
//! and applying an operation to every directory and regular file.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::open;
use nix::sys::stat::Mode;

use super::walk::{Inode, visit};
use super::{DIR_NOFOLLOW, foreign, fstat, key, kind, open_path, other_mount, reopen};

/// Space used by a tree, as reported by [`usage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks * 512`).
    pub bytes: u64,
    /// Inodes, hard links counted once.
    pub inodes: u64,
}

/// Allocated bytes and inode count of the tree at `dir` (not followed if a symlink), hard
/// links counted once; mount points inside the tree are neither entered nor counted.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let root = open(dir, DIR_NOFOLLOW, Mode::empty())?;
    let rst = fstat(root.as_fd())?;
    let (mut u, mut seen) = (Usage::default(), HashSet::new());
    visit(root, rst, other_mount, &mut |inode| {
        let st = match inode {
            Inode::Dir(_, st) => st,
            Inode::Other(_, _, st) if st.stx_nlink > 1 && !seen.insert(key(st)) => return Ok(()),
            Inode::Other(_, _, st) => st,
        };
        u.bytes = u.bytes.saturating_add(st.stx_blocks.saturating_mul(512));
        u.inodes += 1;
        Ok(())
    })?;
    Ok(u)
}

/// Calls `op` with a descriptor of `root` and of every directory and regular file beneath
/// it, each once, opened for reading (for example to give a copied tree a project ID).
/// Symlinks are never followed, other entries (symlinks, fifos, devices, sockets) are
/// skipped unopened, and nothing on another mount is reached. A file is opened only once an
/// `O_PATH` descriptor proved it regular; one replaced or removed meanwhile is skipped.
pub fn for_each_inode(root: &Path, op: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>) -> io::Result<()> {
    let top = open(root, DIR_NOFOLLOW, Mode::empty())?;
    let rst = fstat(top.as_fd())?;
    visit(top, rst, foreign, &mut |inode| match inode {
        Inode::Dir(fd, _) => op(fd),
        Inode::Other(dir, name, st) if kind(st) == libc::S_IFREG => match open_path(dir, name)? {
            Some((path, st)) if kind(&st) == libc::S_IFREG => op(reopen(&path)?.as_fd()),
            _ => Ok(()),
        },
        Inode::Other(..) => Ok(()),
    })
}
