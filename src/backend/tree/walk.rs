//! The explicit stack every walk uses: directory names streamed with getdents64, at
//! most [`MAX_OPEN`] directory descriptors held, closed ancestors reopened through `..`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::unistd::{Whence, lseek};

use super::{MAX_OPEN, St, fstat, key, kind, open_dir, opt, statx};

/// Bytes of directory entries read per getdents64 call; at most [`MAX_OPEN`] levels hold
/// a buffer, so a walk's memory does not grow with directory sizes.
const ENTRY_BUFFER: usize = 16 << 10;

/// A directory's names, read a batch at a time from its descriptor. The position is the
/// kernel's offset cookie of the last name handed out, so a level whose descriptor was
/// closed (see [`Stack::push`]) and reopened through `..` resumes where it stopped.
#[derive(Default)]
pub(super) struct Entries {
    buf: Vec<u8>,
    at: usize,
    len: usize,
    /// Where to seek before the next read: after the last name handed out.
    resume: i64,
    done: bool,
}

impl Entries {
    /// The next name other than `.` and `..`, reading `dir` when the buffer is used up.
    pub(super) fn next(&mut self, dir: BorrowedFd<'_>) -> io::Result<Option<CString>> {
        loop {
            if self.at < self.len {
                let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad getdents64 record");
                // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
                let record = self.buf.get(self.at..self.len).ok_or_else(bad)?;
                let off = i64::from_ne_bytes(record.get(8..16).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
                let reclen =
                    usize::from(u16::from_ne_bytes(record.get(16..18).ok_or_else(bad)?.try_into().map_err(|_| bad())?));
                let name = record.get(19..reclen).ok_or_else(bad)?;
                let name = CStr::from_bytes_until_nul(name).map_err(|_| bad())?;
                self.at += reclen;
                self.resume = off;
                if name.to_bytes() != b"." && name.to_bytes() != b".." {
                    return Ok(Some(name.to_owned()));
                }
                continue;
            }
            if self.done {
                return Ok(None);
            }
            if self.buf.is_empty() {
                self.buf = vec![0; ENTRY_BUFFER];
            }
            lseek(dir, self.resume, Whence::SeekSet)?;
            // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`, which is
            // live and exclusively borrowed for the call; `dir` is an open descriptor.
            let n =
                unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), self.buf.as_mut_ptr(), self.buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            (self.at, self.len) = (0, n as usize);
            self.done = n == 0;
        }
    }

    /// Frees the buffer of a level whose descriptor is closed; names not yet handed out
    /// are read again from [`Entries::resume`] when the level is reopened.
    fn suspend(&mut self) {
        self.buf = Vec::new();
        (self.at, self.len) = (0, 0);
    }
}
pub(super) struct Level {
    pub(super) fd: Option<OwnedFd>,
    pub(super) st: St,
    pub(super) name: CString,
    entries: Entries,
}

/// Stack of directories being walked; only the top [`MAX_OPEN`] levels hold an fd.
#[derive(Default)]
pub(super) struct Stack(pub(super) Vec<Level>);

impl Stack {
    pub(super) fn push(&mut self, fd: OwnedFd, st: St, name: CString) {
        if let Some(old) = self.0.len().checked_sub(MAX_OPEN) {
            self.0[old].fd = None;
            self.0[old].entries.suspend();
        }
        self.0.push(Level { fd: Some(fd), st, name, entries: Entries::default() });
    }
    pub(super) fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        let fd = self.0.last().and_then(|l| l.fd.as_ref());
        fd.map(|f| f.as_fd()).ok_or_else(|| io::Error::other("walk level not open"))
    }
    /// The top level's next name; `None` when it has no more (or the stack is empty).
    pub(super) fn next_entry(&mut self) -> io::Result<Option<CString>> {
        match self.0.last_mut() {
            Some(Level { fd: Some(fd), entries, .. }) => entries.next(fd.as_fd()),
            Some(_) => Err(io::Error::other("walk level not open")),
            None => Ok(None),
        }
    }
    /// Pops the top level (always open); reopens the new top through `..` if it was closed.
    pub(super) fn pop(&mut self) -> io::Result<(OwnedFd, Level)> {
        let mut lv = self.0.pop().ok_or_else(|| io::Error::other("walk stack empty"))?;
        let fd = lv.fd.take().ok_or_else(|| io::Error::other("walk level not open"))?;
        if let Some(parent) = self.0.last_mut()
            && parent.fd.is_none()
        {
            let up = open_dir(fd.as_fd(), c"..")?;
            if key(&fstat(up.as_fd())?) != key(&parent.st) {
                return Err(io::Error::other("directory moved during the walk"));
            }
            parent.fd = Some(up);
        }
        Ok((fd, lv))
    }
}

/// What [`visit`] reaches.
pub(super) enum Inode<'a> {
    /// A directory, open, with what its descriptor is; the walk enters it next.
    Dir(BorrowedFd<'a>, &'a St),
    /// Anything else, as its directory and name, never opened by the walk.
    Other(BorrowedFd<'a>, &'a CStr, &'a St),
}

/// Calls `f` for the directory `root` (whose statx is `rst`) and for every entry beneath
/// it, depth first, with at most [`MAX_OPEN`] directories open. Symlinks are never
/// followed; what `outside(entry, root)` says is on another mount is neither visited nor
/// entered; an entry that vanishes during the walk is skipped. Entries are told apart by
/// statx, never by the `d_type` of the listing, which some filesystems leave unknown.
pub(super) fn visit(
    root: OwnedFd,
    rst: St,
    outside: fn(&St, &St) -> bool,
    f: &mut dyn FnMut(Inode<'_>) -> io::Result<()>,
) -> io::Result<()> {
    f(Inode::Dir(root.as_fd(), &rst))?;
    let mut s = Stack::default();
    s.push(root, rst, CString::default());
    while !s.0.is_empty() {
        let Some(name) = s.next_entry()? else {
            s.pop()?;
            continue;
        };
        let dir = s.fd()?;
        let Some(st) = opt(statx(dir, &name, 0))? else {
            continue;
        };
        if outside(&st, &rst) {
            continue;
        }
        if kind(&st) != libc::S_IFDIR {
            f(Inode::Other(dir, &name, &st))?;
            continue;
        }
        let Some(fd) = opt(open_dir(dir, &name))? else {
            continue;
        };
        let st = fstat(fd.as_fd())?; // what will actually be entered
        if !outside(&st, &rst) {
            f(Inode::Dir(fd.as_fd(), &st))?;
            s.push(fd, st, name);
        }
    }
    Ok(())
}
