//! The filesystem calls copies and restores share: entries reached relative to directory
//! descriptors and never through a symlink, extended attributes, and data ranges.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use nix::unistd::{Whence, lseek};

pub(super) const DIR_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// `lstat` of `name` in `dir`.
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<FileStat> {
    Ok(fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

/// Opens directory `name` in `dir`, refusing a symlink.
pub(super) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    Ok(openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Opens regular file `name` in `dir` for reading, refusing a symlink, and checks that
/// what was opened is the inode `expect` described (a swap during the walk is an error,
/// and O_NONBLOCK keeps a fifo swapped in from blocking the open).
pub(super) fn open_file_at(dir: BorrowedFd<'_>, name: &CStr, expect: &FileStat) -> io::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty())?;
    let st = fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_ino != expect.st_ino || st.st_dev != expect.st_dev {
        return Err(io::Error::other(format!("{name:?} was replaced during the copy")));
    }
    Ok(File::from(fd))
}

/// The names in directory `dir`, sorted, `.` and `..` left out.
pub(super) fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(entry?.file_name());
    }
    out.sort();
    Ok(out)
}

pub(super) fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}

/// Where extended attributes are read or written: an open file or directory, or an entry
/// that is not opened (symlink, device, fifo, socket), reached as
/// `/proc/self/fd/<dir>/<name>` with the calls that do not follow a final symlink.
pub(super) enum Xattrs<'a> {
    Fd(BorrowedFd<'a>),
    At(CString),
}

impl Xattrs<'_> {
    pub(super) fn at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Xattrs<'static>> {
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        Ok(Xattrs::At(cstring(&p)?))
    }

    /// The attribute list (`name` None) or one value, sized with a first call.
    fn get(&self, name: Option<&CStr>) -> io::Result<Vec<u8>> {
        let call = |buf: *mut u8, len: usize| match (self, name) {
            // SAFETY: `buf` is null with `len` 0 or points to `len` writable bytes, the fd
            // is open for the call, and the strings are NUL-terminated (all four arms).
            (Xattrs::Fd(fd), None) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
            // SAFETY: as above.
            (Xattrs::At(p), None) => unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) },
            // SAFETY: as above.
            (Xattrs::Fd(fd), Some(n)) => unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), buf.cast(), len) },
            // SAFETY: as above.
            (Xattrs::At(p), Some(n)) => unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.cast(), len) },
        };
        for _ in 0..8 {
            let size = usize::try_from(call(std::ptr::null_mut(), 0)).map_err(|_| io::Error::last_os_error())?;
            let mut buf = vec![0u8; size];
            match usize::try_from(call(buf.as_mut_ptr(), size)) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // ERANGE: the value grew between the two calls; ask again.
                Err(_) if Errno::last() == Errno::ERANGE => {}
                Err(_) => return Err(io::Error::last_os_error()),
            }
        }
        Err(io::Error::other("extended attributes kept changing while being read"))
    }

    /// Every attribute, sorted by name; none where the filesystem has no support.
    pub(super) fn read_all(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let list = match self.get(None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let value = match self.get(Some(&cstring(name)?)) {
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue, // removed meanwhile
                r => r?,
            };
            out.push((name.to_vec(), value));
        }
        out.sort();
        Ok(out)
    }

    pub(super) fn set(&self, name: &[u8], value: &[u8]) -> io::Result<()> {
        let name = cstring(name)?;
        let (n, v) = (name.as_ptr(), value.as_ptr().cast());
        let r = match self {
            // SAFETY: `value` is valid for `value.len()` bytes, the strings are
            // NUL-terminated and the fd is open for the call.
            Xattrs::Fd(fd) => unsafe { libc::fsetxattr(fd.as_raw_fd(), n, v, value.len(), 0) },
            // SAFETY: as above.
            Xattrs::At(p) => unsafe { libc::lsetxattr(p.as_ptr(), n, v, value.len(), 0) },
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// The data ranges of `file` (`size` bytes) as `(offset, length)`, found with SEEK_DATA
/// and SEEK_HOLE; the whole file where the filesystem cannot tell.
pub(super) fn data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_fd();
    let seek = |off: u64, whence: Whence| -> io::Result<Option<u64>> {
        match lseek(fd, off as libc::off_t, whence) {
            Ok(p) => Ok(Some(p as u64)),
            Err(Errno::ENXIO) => Ok(None),
            Err(Errno::EINVAL) if matches!(whence, Whence::SeekData) => Ok(Some(off)),
            Err(Errno::EINVAL) => Ok(Some(size)),
            Err(e) => Err(e.into()),
        }
    };
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(start) = seek(off, Whence::SeekData)?.filter(|&d| d < size) else { break };
        let end = seek(start, Whence::SeekHole)?.unwrap_or(size).clamp(start + 1, size);
        out.push((start, end - start));
        off = end;
    }
    Ok(out)
}

/// The name's bytes, for paths in manifests.
pub(super) fn bytes(name: &OsString) -> &[u8] {
    name.as_bytes()
}
