//! Removing a tree without following symlinks or entering mounts.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::open;
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::walk::Stack;
use super::{DIR, component, foreign, fstat, open_dir, opt};

/// Removes `parent/name` and everything beneath it without following symlinks; a missing
/// entry (or `parent`) is Ok. Mounts inside the tree are not entered; they make the call
/// fail with `ResourceBusy` after everything else is gone. If `parent/name` is itself a
/// mount point nothing is removed.
pub fn remove_tree(parent: &Path, name: &str) -> io::Result<()> {
    let name = component(name)?;
    match opt(open(parent, DIR, Mode::empty()))? {
        Some(p) => remove_at(p.as_fd(), &name),
        None => Ok(()),
    }
}

pub(super) fn remove_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let busy = |what: String| io::Error::new(io::ErrorKind::ResourceBusy, what);
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(root) = opt(open_dir(parent, name))? else {
        return Ok(());
    };
    let rst = fstat(root.as_fd())?;
    if foreign(&rst, &fstat(parent)?) {
        return Err(busy(format!("{name:?} is a mount point")));
    }
    let mut s = Stack::default();
    s.push(root, rst, name.to_owned());
    let mut mounts = 0u64;
    while !s.0.is_empty() {
        let Some(n) = s.next_entry()? else {
            let (_, lv) = s.pop()?;
            let dir = if s.0.is_empty() { parent } else { s.fd()? };
            match unlinkat(dir, lv.name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::ENOTEMPTY | Errno::EBUSY) if mounts > 0 => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        };
        let dir = s.fd()?;
        match unlinkat(dir, n.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EBUSY) => mounts += 1, // a file mount point
            Err(Errno::EISDIR) => {
                let Some(fd) = opt(open_dir(dir, &n))? else {
                    continue;
                };
                let st = fstat(fd.as_fd())?;
                if foreign(&st, &rst) {
                    mounts += 1;
                } else {
                    s.push(fd, st, n);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    match mounts {
        0 => Ok(()),
        n => Err(busy(format!("{n} mount point(s) left inside {name:?}"))),
    }
}
