//! Walks that reach each inode of a tree: measuring the space and inodes it uses.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::open;
use nix::sys::stat::Mode;

use super::walk::Stack;
use super::{DIR_NOFOLLOW, St, fstat, key, kind, open_dir, opt, other_mount, statx};

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
    let mut u = Usage::default();
    let mut add = |st: &St| {
        u.bytes = u.bytes.saturating_add(st.stx_blocks.saturating_mul(512));
        u.inodes += 1;
    };
    add(&rst);
    let (mut seen, mut s) = (HashSet::new(), Stack::default());
    s.push(root, rst, CString::default());
    while !s.0.is_empty() {
        let Some(n) = s.next_entry()? else {
            s.pop()?;
            continue;
        };
        let dir = s.fd()?;
        let Some(st) = opt(statx(dir, &n, 0))? else {
            continue;
        };
        if other_mount(&st, &rst) {
            continue;
        } else if kind(&st) != libc::S_IFDIR {
            if st.stx_nlink <= 1 || seen.insert(key(&st)) {
                add(&st);
            }
        } else if let Some(fd) = opt(open_dir(dir, &n))? {
            let st = fstat(fd.as_fd())?;
            if !other_mount(&st, &rst) {
                add(&st);
                s.push(fd, st, n);
            }
        }
    }
    Ok(u)
}
