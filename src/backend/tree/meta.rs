//! Copying what is not data: owner, mode, extended attributes and times.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::AtFlags;
use nix::sys::stat::{FchmodatFlags::FollowSymlink, UtimensatFlags::NoFollowSymlink};
use nix::sys::stat::{Mode, fchmod, fchmodat, futimens, utimensat};
use nix::unistd::{Gid, Uid, fchown, fchownat};

use super::{St, is, kind, times};

/// Where xattrs live: an open fd, or for entries that must not be opened
/// `/proc/self/fd/<dirfd>/<name>` used with the non-following `l*` calls.
pub(super) enum Xt<'a> {
    Fd(BorrowedFd<'a>),
    At(CString),
}

impl Xt<'_> {
    fn at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Xt<'static>> {
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        Ok(Xt::At(CString::new(p)?))
    }
    /// Lists (`name` None) or reads one xattr, sizing the buffer with a probe call.
    pub(super) fn read(&self, name: Option<&CStr>) -> io::Result<Vec<u8>> {
        let call = |buf: *mut u8, len: usize| match (self, name) {
            // SAFETY: `buf` is null with `len` 0 or valid for `len` bytes, the fd is open
            // and the strings are NUL-terminated (same for the three calls below).
            (Xt::Fd(fd), None) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
            // SAFETY: see above.
            (Xt::At(p), None) => unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) },
            // SAFETY: see above.
            (Xt::Fd(fd), Some(n)) => unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), buf.cast(), len) },
            // SAFETY: see above.
            (Xt::At(p), Some(n)) => unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.cast(), len) },
        };
        for _ in 0..8 {
            let Ok(size) = usize::try_from(call(std::ptr::null_mut(), 0)) else {
                break;
            };
            let mut buf = vec![0u8; size];
            if let Ok(n) = usize::try_from(call(buf.as_mut_ptr(), size)) {
                buf.truncate(n);
                return Ok(buf);
            }
            let e = io::Error::last_os_error();
            if !is(&e, &[libc::ERANGE]) {
                return Err(e); // ERANGE: the value grew between the two calls
            }
        }
        Err(io::Error::last_os_error())
    }
    pub(super) fn set(&self, name: &CStr, v: &[u8]) -> io::Result<()> {
        let (n, val) = (name.as_ptr(), v.as_ptr().cast());
        let r = match self {
            // SAFETY: `v` is valid for `v.len()` bytes, strings are NUL-terminated, fd is open.
            Xt::Fd(fd) => unsafe { libc::fsetxattr(fd.as_raw_fd(), n, val, v.len(), 0) },
            // SAFETY: as above.
            Xt::At(p) => unsafe { libc::lsetxattr(p.as_ptr(), n, val, v.len(), 0) },
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// Copies all xattrs; those the destination rejects with ENOTSUP/EPERM are skipped.
fn copy_xattrs(src: &Xt<'_>, dst: &Xt<'_>) -> io::Result<()> {
    let list = match src.read(None) {
        Err(e) if is(&e, &[libc::ENOTSUP]) => return Ok(()),
        r => r?,
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name)?;
        let value = match src.read(Some(&name)) {
            Err(e) if is(&e, &[libc::ENODATA, libc::ENOTSUP]) => continue,
            r => r?,
        };
        match dst.set(&name, &value) {
            Err(e) if is(&e, &[libc::ENOTSUP, libc::EPERM]) => {}
            r => r?,
        }
    }
    Ok(())
}

fn ids(st: &St) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(st.stx_uid)), Some(Gid::from_raw(st.stx_gid)))
}
fn perm(st: &St) -> Mode {
    Mode::from_bits_truncate(u32::from(st.stx_mode) & 0o7777)
}
/// Owner, then mode (chown clears setuid), then xattrs, then times.
pub(super) fn meta_fd(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, st: &St) -> io::Result<()> {
    let (uid, gid) = ids(st);
    fchown(dst, uid, gid)?;
    fchmod(dst, perm(st))?;
    copy_xattrs(&Xt::Fd(src), &Xt::Fd(dst))?;
    let [a, m] = times(st);
    Ok(futimens(dst, &a, &m)?)
}
/// [`meta_fd`] for entries that are never opened (symlinks, fifos, devices, sockets).
pub(super) fn meta_at(sdir: BorrowedFd<'_>, ddir: BorrowedFd<'_>, name: &CStr, st: &St) -> io::Result<()> {
    let (uid, gid) = ids(st);
    fchownat(ddir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if kind(st) != libc::S_IFLNK {
        fchmodat(ddir, name, perm(st), FollowSymlink)?; // private tree, just created
    }
    copy_xattrs(&Xt::at(sdir, name)?, &Xt::at(ddir, name)?)?;
    let [a, m] = times(st);
    Ok(utimensat(ddir, name, &a, &m, NoFollowSymlink)?)
}
