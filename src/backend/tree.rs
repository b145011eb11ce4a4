//! Copy, remove and measure directory trees whose content hostile pods control.
//!
//! Everything below a tree root is untrusted: all work is relative to directory fds,
//! symlinks are never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`) and entries on another
//! mount (`st_dev` or mount id differs from the root's) are skipped, never entered. Walks
//! use an explicit stack holding at most [`MAX_OPEN`] directory fds; closed ancestors are
//! reopened through `..` and verified by (dev, ino), so a directory moved mid-walk aborts
//! the walk instead of redirecting it. Regular files are opened `O_PATH` first and reopened
//! for reading through `/proc/self/fd` only once proven regular, so a device node swapped in
//! is never opened. Caller-given parent paths are trusted; tree roots and names are not.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat, readlinkat, renameat};
use nix::sys::stat::{FchmodatFlags::FollowSymlink, UtimensatFlags::NoFollowSymlink};
use nix::sys::stat::{Mode, SFlag, fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, Whence, fchown, fchownat, linkat, lseek, symlinkat};
use nix::unistd::{syncfs, unlinkat};

/// Directory fds kept open per walk stack; deeper ancestors are reopened via `..`.
const MAX_OPEN: usize = 32;
const DIR: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);
const DIR_NOFOLLOW: OFlag = DIR.union(OFlag::O_NOFOLLOW);

/// Whether [`copy_tree`] / [`copy_file_data`] may share extents with the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reflink {
    /// Try `FICLONE` per regular file, fall back to a sparse copy when unsupported.
    Auto,
    /// Always copy the data.
    Never,
}

/// What [`copy_tree`] copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Logical data bytes written or cloned (holes and extra hard links not counted).
    pub bytes: u64,
    /// Regular files, fifos, sockets and device nodes created (hard links included).
    pub files: u64,
    /// Directories created, the root included.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Regular files cloned with `FICLONE`.
    pub reflinked: u64,
    /// Mount points inside the source that were skipped (not copied at all).
    pub skipped_mounts: u64,
}

/// Space used by a tree, as reported by [`usage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks * 512`).
    pub bytes: u64,
    /// Inodes, hard links counted once.
    pub inodes: u64,
}

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
    [s.stx_atime, s.stx_mtime].map(|t| TimeSpec::new(t.tv_sec as _, t.tv_nsec as _))
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
    match unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, mask, &mut x) } {
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
    let fl = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Some(path) = opt(openat(dir, name, fl, Mode::empty()))? else {
        return Ok(None);
    };
    let st = fstat(path.as_fd())?;
    if kind(&st) != libc::S_IFREG {
        return Err(io::Error::other(format!("{name:?} was replaced during the copy")));
    }
    let proc = format!("/proc/self/fd/{}", path.as_raw_fd());
    let fl = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    Ok(Some((File::from(noatime(fl, |fl| open(proc.as_str(), fl, Mode::empty()))?), st)))
}
/// Bytes of directory entries read per getdents64 call; at most [`MAX_OPEN`] levels hold
/// a buffer, so a walk's memory does not grow with directory sizes.
const ENTRY_BUFFER: usize = 16 << 10;

/// A directory's names, read a batch at a time from its descriptor. The position is the
/// kernel's offset cookie of the last name handed out, so a level whose descriptor was
/// closed (see [`Stack::push`]) and reopened through `..` resumes where it stopped.
#[derive(Default)]
struct Entries {
    buf: Vec<u8>,
    at: usize,
    len: usize,
    /// Where to seek before the next read: after the last name handed out.
    resume: i64,
    done: bool,
}

impl Entries {
    /// The next name other than `.` and `..`, reading `dir` when the buffer is used up.
    fn next(&mut self, dir: BorrowedFd<'_>) -> io::Result<Option<CString>> {
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

/// Validates a single path component.
fn component(s: &str) -> io::Result<CString> {
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\0']) {
        let msg = format!("{s:?} is not a single path component");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    Ok(CString::new(s)?)
}

struct Level {
    fd: Option<OwnedFd>,
    st: St,
    name: CString,
    entries: Entries,
}

/// Stack of directories being walked; only the top [`MAX_OPEN`] levels hold an fd.
#[derive(Default)]
struct Stack(Vec<Level>);

impl Stack {
    fn push(&mut self, fd: OwnedFd, st: St, name: CString) {
        if let Some(old) = self.0.len().checked_sub(MAX_OPEN) {
            self.0[old].fd = None;
            self.0[old].entries.suspend();
        }
        self.0.push(Level { fd: Some(fd), st, name, entries: Entries::default() });
    }
    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        let fd = self.0.last().and_then(|l| l.fd.as_ref());
        fd.map(|f| f.as_fd()).ok_or_else(|| io::Error::other("walk level not open"))
    }
    /// The top level's next name; `None` when it has no more (or the stack is empty).
    fn next_entry(&mut self) -> io::Result<Option<CString>> {
        match self.0.last_mut() {
            Some(Level { fd: Some(fd), entries, .. }) => entries.next(fd.as_fd()),
            Some(_) => Err(io::Error::other("walk level not open")),
            None => Ok(None),
        }
    }
    /// Pops the top level (always open); reopens the new top through `..` if it was closed.
    fn pop(&mut self) -> io::Result<(OwnedFd, Level)> {
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

/// Where xattrs live: an open fd, or for entries that must not be opened
/// `/proc/self/fd/<dirfd>/<name>` used with the non-following `l*` calls.
enum Xt<'a> {
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
    fn read(&self, name: Option<&CStr>) -> io::Result<Vec<u8>> {
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
    fn set(&self, name: &CStr, v: &[u8]) -> io::Result<()> {
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
fn meta_fd(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, st: &St) -> io::Result<()> {
    let (uid, gid) = ids(st);
    fchown(dst, uid, gid)?;
    fchmod(dst, perm(st))?;
    copy_xattrs(&Xt::Fd(src), &Xt::Fd(dst))?;
    let [a, m] = times(st);
    Ok(futimens(dst, &a, &m)?)
}
/// [`meta_fd`] for entries that are never opened (symlinks, fifos, devices, sockets).
fn meta_at(sdir: BorrowedFd<'_>, ddir: BorrowedFd<'_>, name: &CStr, st: &St) -> io::Result<()> {
    let (uid, gid) = ids(st);
    fchownat(ddir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if kind(st) != libc::S_IFLNK {
        fchmodat(ddir, name, perm(st), FollowSymlink)?; // private tree, just created
    }
    copy_xattrs(&Xt::at(sdir, name)?, &Xt::at(ddir, name)?)?;
    let [a, m] = times(st);
    Ok(utimensat(ddir, name, &a, &m, NoFollowSymlink)?)
}

/// Copies one regular file's data sparsely (SEEK_DATA/SEEK_HOLE, ftruncate to size),
/// trying `FICLONE` first when `reflink` is [`Reflink::Auto`]; returns (bytes, cloned).
/// `dst` must be open for writing and should be empty; `src`'s file offset may move.
pub fn copy_file_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, reflink: Reflink) -> io::Result<(u64, bool)> {
    copy_data(src, dst, reflink, &mut |_| {})
}

fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    reflink: Reflink,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, bool)> {
    copy_data_from(src, dst, reflink, 0, progress)
}

/// [`copy_file_data`] continuing at byte `from` (`dst` already holds the source's data
/// before it: a copy an interrupted process made in this boot), reporting the bytes
/// copied so far, `from` included, to `progress`.
pub fn copy_file_data_from(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    reflink: Reflink,
    from: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, bool)> {
    copy_data_from(src, dst, reflink, from, progress)
}

fn copy_data_from(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    reflink: Reflink,
    from: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, bool)> {
    let size = fstat(src)?.stx_size;
    if reflink == Reflink::Auto && size > 0 && from == 0 {
        // SAFETY: FICLONE takes the source fd as its int argument; both fds are open.
        if unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0 {
            progress(size);
            return Ok((size, true));
        }
        let e = io::Error::last_os_error();
        if !is(&e, &[libc::EOPNOTSUPP, libc::EXDEV, libc::EINVAL, libc::ENOTTY]) {
            return Err(e);
        }
    }
    let seek = |off: u64, w: Whence| match lseek(src, off as libc::off_t, w) {
        Ok(p) => Ok(Some(p as u64)),
        Err(Errno::ENXIO) => Ok(None), // no data at or after `off`
        Err(Errno::EINVAL) if matches!(w, Whence::SeekData) => Ok(Some(off)), // unsupported
        Err(Errno::EINVAL) => Ok(Some(size)),
        Err(e) => Err(io::Error::from(e)),
    };
    let (sf, df) = (File::from(src.try_clone_to_owned()?), File::from(dst.try_clone_to_owned()?));
    let mut buf = vec![0u8; size.clamp(1, 1 << 20) as usize];
    let (mut off, mut done) = (from.min(size), from.min(size));
    'data: while off < size {
        let Some(data) = seek(off, Whence::SeekData)?.filter(|&d| d < size) else {
            break;
        };
        off = seek(data, Whence::SeekHole)?.unwrap_or(size).clamp(data + 1, size);
        let mut pos = data;
        while pos < off {
            let want = (off - pos).min(buf.len() as u64) as usize;
            let n = match sf.read_at(&mut buf[..want], pos) {
                Ok(0) => break 'data, // the file shrank under us
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            df.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            done += n as u64;
            progress(done);
        }
    }
    df.set_len(size)?;
    Ok((done, false))
}

struct Copier<'a> {
    reflink: Reflink,
    /// Continuing the partial copy a crashed process left (see [`copy_tree`]): entries
    /// already there are checked, kept when complete, replaced otherwise.
    resume: bool,
    stats: CopyStats,
    root: St,
    dst_root: (OwnedFd, St),
    links: HashMap<(u32, u32, u64), Vec<u8>>,
    progress: &'a mut dyn FnMut(u64),
}

impl Copier<'_> {
    fn run(&mut self, src: OwnedFd, dst: OwnedFd) -> io::Result<()> {
        let (mut s, mut d) = (Stack::default(), Stack::default());
        s.push(src, self.root, CString::default());
        d.push(dst, self.dst_root.1, CString::default());
        self.stats.dirs = 1;
        while !s.0.is_empty() {
            let Some(name) = s.next_entry()? else {
                let ((sfd, lv), (dfd, _)) = (s.pop()?, d.pop()?);
                if self.resume {
                    prune(sfd.as_fd(), dfd.as_fd())?;
                }
                meta_fd(sfd.as_fd(), dfd.as_fd(), &lv.st)?; // after the directory's content
                continue;
            };
            if let Some((sfd, sst, dfd, dst)) = self.entry(s.fd()?, d.fd()?, &name, &d)? {
                s.push(sfd, sst, name.clone());
                d.push(dfd, dst, name);
            }
        }
        Ok(())
    }

    /// Copies one entry; returns source and destination of a directory to descend into.
    fn entry(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        d: &Stack,
    ) -> io::Result<Option<(OwnedFd, St, OwnedFd, St)>> {
        let Some(mut st) = opt(statx(sdir, name, 0))? else {
            return Err(vanished(name));
        };
        if foreign(&st, &self.root) {
            self.stats.skipped_mounts += 1;
            return Ok(None);
        }
        let k = kind(&st);
        let kept = match self.resume {
            true => self.kept(ddir, name, &st)?,
            false => Kept::Absent,
        };
        if kept == Kept::Whole {
            if st.stx_nlink > 1 {
                self.links.insert(key(&st), rel_path(d, name));
            }
            return Ok(None);
        }
        if k == libc::S_IFDIR {
            let Some(sfd) = opt(open_dir(sdir, name))? else {
                return Err(vanished(name));
            };
            let st = fstat(sfd.as_fd())?; // what will actually be read
            if foreign(&st, &self.root) {
                self.stats.skipped_mounts += 1;
                return Ok(None);
            }
            if key(&st) == key(&self.dst_root.1) {
                return Ok(None); // the destination lies inside the source
            }
            if kept != Kept::Directory {
                mkdirat(ddir, name, Mode::S_IRWXU)?;
            }
            let dfd = open_dir(ddir, name)?;
            let dst = fstat(dfd.as_fd())?;
            self.stats.dirs += 1;
            return Ok(Some((sfd, st, dfd, dst)));
        }
        let count = |s: &mut CopyStats| match k {
            libc::S_IFLNK => s.symlinks += 1,
            _ => s.files += 1,
        };
        if st.stx_nlink > 1
            && let Some(first) = self.links.get(&key(&st))
        {
            link_rel(self.dst_root.0.as_fd(), first, ddir, name)?;
            count(&mut self.stats);
            return Ok(None);
        }
        match k {
            libc::S_IFREG => {
                let Some((sf, fst)) = open_regular(sdir, name)? else {
                    return Err(vanished(name));
                };
                st = fst;
                let fl = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
                let df = openat(ddir, name, fl | OFlag::O_CLOEXEC, Mode::S_IRUSR | Mode::S_IWUSR)?;
                let (base, p) = (self.stats.bytes, &mut self.progress);
                let mut progress = |b: u64| p(base.saturating_add(b));
                let (n, cloned) = copy_data(sf.as_fd(), df.as_fd(), self.reflink, &mut progress)?;
                meta_fd(sf.as_fd(), df.as_fd(), &st)?;
                self.stats.bytes = base.saturating_add(n);
                self.stats.reflinked += u64::from(cloned);
            }
            libc::S_IFLNK => {
                let Some(target) = opt(readlinkat(sdir, name))? else {
                    return Err(vanished(name));
                };
                symlinkat(target.as_os_str(), ddir, name)?;
                meta_at(sdir, ddir, name, &st)?;
            }
            libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFSOCK => {
                let (kind, rdev) = (SFlag::from_bits_truncate(k), st.stx_rdev_major);
                let dev = libc::makedev(rdev, st.stx_rdev_minor);
                mknodat(ddir, name, kind, Mode::S_IRUSR | Mode::S_IWUSR, dev)?;
                meta_at(sdir, ddir, name, &st)?;
            }
            _ => {
                return Err(io::Error::other(format!("unknown file type {k:o} at {name:?}")));
            }
        }
        count(&mut self.stats);
        if k == libc::S_IFREG {
            (self.progress)(self.stats.bytes);
        }
        if st.stx_nlink > 1 {
            self.links.insert(key(&st), rel_path(d, name));
        }
        Ok(None)
    }

    /// On resume: what of the source entry `name` (`st`) the partial copy already holds.
    /// A regular file counts as whole when its size and modification time are the
    /// source's: the time is set last, after the data and the other metadata, and the
    /// data is in the page cache of the same boot. Anything else is removed, to be copied
    /// again; a directory is kept and entered.
    fn kept(&mut self, ddir: BorrowedFd<'_>, name: &CStr, st: &St) -> io::Result<Kept> {
        let Some(have) = opt(statx(ddir, name, 0))? else {
            return Ok(Kept::Absent);
        };
        let k = kind(st);
        if k == libc::S_IFDIR && kind(&have) == libc::S_IFDIR {
            return Ok(Kept::Directory);
        }
        let same_time = have.stx_mtime.tv_sec == st.stx_mtime.tv_sec && have.stx_mtime.tv_nsec == st.stx_mtime.tv_nsec;
        if k == libc::S_IFREG && kind(&have) == libc::S_IFREG && have.stx_size == st.stx_size && same_time {
            // A hard link to a file this attempt copied again must be made again too.
            if st.stx_nlink <= 1 || !self.links.contains_key(&key(st)) {
                self.stats.files += 1;
                self.stats.bytes = self.stats.bytes.saturating_add(st.stx_size);
                return Ok(Kept::Whole);
            }
        }
        remove_at(ddir, name)?;
        Ok(Kept::Absent)
    }
}

/// What a resumed copy found of an entry (see [`Copier::kept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Absent,
    Directory,
    Whole,
}

/// The path of `name` inside the destination tree whose open levels are `d`.
fn rel_path(d: &Stack, name: &CStr) -> Vec<u8> {
    let mut rel = Vec::new();
    for l in d.0.iter().skip(1) {
        rel.extend_from_slice(l.name.as_bytes());
        rel.push(b'/');
    }
    rel.extend_from_slice(name.to_bytes());
    rel
}

/// On resume: removes what the partial directory `ddir` holds that its source `sdir` no
/// longer does (the source changed between the attempts).
fn prune(sdir: BorrowedFd<'_>, ddir: BorrowedFd<'_>) -> io::Result<()> {
    let mut entries = Entries::default();
    while let Some(name) = entries.next(ddir)? {
        if opt(statx(sdir, &name, 0))?.is_none() {
            remove_at(ddir, &name)?;
        }
    }
    Ok(())
}

/// The boot this process runs in: a partial copy made in the same boot had all its data
/// in the page cache when its process died, so what its metadata says was written was.
pub(crate) fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string())
}

/// An entry listed in the source was gone when the copy reached it: the source changed
/// under the copy, which would be missing part of it.
fn vanished(name: &CStr) -> io::Error {
    io::Error::other(format!("{name:?} vanished from the source during the copy; the incomplete copy is removed"))
}

/// Hard-links `root/rel` (inside the private destination tree) as `ddir/name`.
fn link_rel(root: BorrowedFd<'_>, rel: &[u8], ddir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let (dirs, last) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) if rel.len() >= 4000 => (&rel[..i], &rel[i + 1..]), // beyond PATH_MAX: walk
        _ => (&[][..], rel),
    };
    let mut cur: Option<OwnedFd> = None;
    for part in dirs.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        let at = cur.as_ref().map_or(root, |f| f.as_fd());
        cur = Some(open_dir(at, &CString::new(part)?)?);
    }
    let at = cur.as_ref().map_or(root, |f| f.as_fd());
    Ok(linkat(at, CString::new(last)?.as_c_str(), ddir, name, AtFlags::empty())?)
}

/// Copies the tree at `src` (a directory, not a symlink) to `dst_parent/dst_name`, which
/// must not exist. The copy is built as `dst_parent/.<dst_name>.partial`, synced, and
/// renamed into place only when complete; a failed one is removed. A partial copy left by
/// a process that died in this same boot (recorded in `.<dst_name>.partial.boot`) is
/// resumed: its whole files are kept, the rest copied again. One from an earlier boot is
/// removed and the copy starts over, since its data may not have reached the disk. Mount points inside `src` are skipped and counted. An entry that vanishes
/// from `src` during the copy fails it: the copy would lack part of its source.
/// `progress` receives the data bytes copied so far. Concurrent copies to one `dst_name`
/// are not supported.
pub fn copy_tree(
    src: &Path,
    dst_parent: &Path,
    dst_name: &str,
    reflink: Reflink,
    progress: &mut dyn FnMut(u64),
) -> io::Result<CopyStats> {
    let final_name = component(dst_name)?;
    let partial = CString::new(format!(".{dst_name}.partial"))?;
    let src_fd = open(src, DIR_NOFOLLOW, Mode::empty())?;
    let root = fstat(src_fd.as_fd())?;
    let dp = open(dst_parent, DIR, Mode::empty())?;
    let dp = dp.as_fd();
    let absent = || match opt(statx(dp, &final_name, 0))? {
        None => Ok(()),
        Some(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{dst_name} exists"))),
    };
    absent()?;
    let boot_file = CString::new(format!(".{dst_name}.partial.boot"))?;
    let boot = boot_id()?;
    let recorded =
        opt(openat(dp, boot_file.as_c_str(), OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()))?
            .map(|fd| {
                let mut text = String::new();
                io::Read::read_to_string(&mut File::from(fd), &mut text).map(|_| text)
            })
            .transpose()?;
    let resume = recorded.as_deref() == Some(boot.as_str())
        && opt(statx(dp, &partial, 0))?.is_some_and(|st| kind(&st) == libc::S_IFDIR);
    if !resume {
        remove_at(dp, &partial)?;
        mkdirat(dp, partial.as_c_str(), Mode::S_IRWXU)?;
        let fl = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dp, boot_file.as_c_str(), fl, Mode::S_IRUSR | Mode::S_IWUSR)?;
        io::Write::write_all(&mut File::from(fd), boot.as_bytes())?;
    } else {
        tracing::info!(copy = dst_name, "resuming the partial copy an interrupted process left");
    }
    let result = (|| {
        let dst = open_dir(dp, &partial)?;
        let dst_root = (dst.try_clone()?, fstat(dst.as_fd())?);
        let stats = CopyStats::default();
        let mut c = Copier { reflink, resume, stats, root, dst_root, links: HashMap::new(), progress };
        c.run(src_fd, dst)?;
        syncfs(c.dst_root.0.as_fd())?;
        let (fd, old, new) = (dp.as_raw_fd(), partial.as_ptr(), final_name.as_ptr());
        // SAFETY: `fd` is an open directory and both names are NUL-terminated.
        if unsafe { libc::renameat2(fd, old, fd, new, libc::RENAME_NOREPLACE) } != 0 {
            let e = io::Error::last_os_error();
            if !is(&e, &[libc::EINVAL, libc::ENOSYS]) {
                return Err(e);
            }
            absent()?; // no RENAME_NOREPLACE on this filesystem
            renameat(dp, partial.as_c_str(), dp, final_name.as_c_str())?;
        }
        Ok(c.stats)
    })();
    if result.is_err() {
        let _ = remove_at(dp, &partial);
    }
    let _ = remove_at(dp, &boot_file);
    result
}

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

fn remove_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
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
            Ok(()) | Err(Errno::ENOENT) => continue,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, FileTimes, Permissions};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::{Duration, UNIX_EPOCH};

    fn is_root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            println!("SKIPPED: {test}: not root");
        }
        root
    }
    fn xt(p: &Path) -> Xt<'static> {
        Xt::At(CString::new(p.as_os_str().as_bytes()).unwrap())
    }
    fn copy(src: &Path, parent: &Path, name: &str, reflink: Reflink) -> CopyStats {
        copy_tree(src, parent, name, reflink, &mut |_| {}).expect("copy_tree")
    }
    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, Permissions::from_mode(mode)).unwrap();
    }

    /// Unmounts on drop, so a failing test never leaves a mount behind.
    struct Mount(PathBuf);
    impl Mount {
        fn new(opts: &[&str], src: &Path, target: &Path) -> Result<Mount, String> {
            match Command::new("mount").args(opts).arg(src).arg(target).output() {
                Ok(o) if o.status.success() => Ok(Mount(target.to_path_buf())),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
    impl Drop for Mount {
        fn drop(&mut self) {
            if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }

    #[test]
    fn an_entry_that_vanishes_under_the_copy_fails_it_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        for i in 0..50 {
            fs::write(src.join(format!("f{i:02}")), [1u8; 100]).unwrap();
        }
        // The first file copied removes every other, as a concurrent delete would.
        let src2 = src.clone();
        let err = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |_| {
            for e in fs::read_dir(&src2).unwrap() {
                let _ = fs::remove_file(e.unwrap().path());
            }
        })
        .expect_err("a copy missing part of its source");
        assert!(err.to_string().contains("vanished from the source"), "{err}");
        assert!(!t.path().join("dst").exists() && !t.path().join(".dst.partial").exists());
    }

    #[test]
    fn copy_preserves_tree() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::write(src.join("a/b/c/deep.txt"), "deep").unwrap();
        let f = File::create(src.join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(&[7u8; 4096], 1 << 29).unwrap();
        symlink("/etc/passwd", src.join("passwd")).unwrap();
        symlink("../../outside", src.join("a/b/out")).unwrap();
        fs::write(src.join("h1"), "linked").unwrap();
        fs::hard_link(src.join("h1"), src.join("a/h2")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        fs::write(src.join("x"), "x").unwrap();
        xt(&src.join("x")).set(c"user.berth", b"1").unwrap();
        fs::write(src.join("suid"), "s").unwrap();
        chmod(&src.join("suid"), 0o4755);
        fs::create_dir(src.join("sticky")).unwrap();
        fs::write(src.join("sticky/old"), "old").unwrap();
        chmod(&src.join("sticky"), 0o1777);
        let (secs, nanos) = (978_307_200 + 4321, 123_456_789); // 2001-01-01T01:12:01.123456789Z
        let t2001 = UNIX_EPOCH + Duration::new(secs as u64, nanos as u32);
        for p in ["sticky/old", "sticky"] {
            let times = FileTimes::new().set_accessed(t2001).set_modified(t2001);
            File::open(src.join(p)).unwrap().set_times(times).unwrap();
        }
        fs::create_dir_all(t.path().join(".dst.partial/junk")).unwrap(); // a crashed attempt

        let mut last = 0;
        let st = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |b| last = b).unwrap();
        assert_eq!((st.dirs, st.symlinks, st.reflinked, st.skipped_mounts), (5, 2, 0, 0));
        assert_eq!((st.files, st.bytes, last), (8, 4 + 4096 + 6 + 1 + 1 + 3, st.bytes));
        assert!(!t.path().join(".dst.partial").exists());
        assert_eq!(fs::read(dst.join("a/b/c/deep.txt")).unwrap(), b"deep");
        let sparse = fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 1 << 30);
        assert!(sparse.blocks() * 512 <= 64 << 10, "sparse copy uses {}", sparse.blocks() * 512);
        let mut buf = [0u8; 4096];
        File::open(dst.join("sparse")).unwrap().read_exact_at(&mut buf, 1 << 29).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        assert_eq!(fs::read_link(dst.join("passwd")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(fs::read_link(dst.join("a/b/out")).unwrap(), Path::new("../../outside"));
        let h1 = fs::metadata(dst.join("h1")).unwrap();
        assert_eq!((h1.ino(), h1.nlink()), (fs::metadata(dst.join("a/h2")).unwrap().ino(), 2));
        let fifo = fs::symlink_metadata(dst.join("fifo")).unwrap().mode();
        assert_eq!(fifo & 0o17777, libc::S_IFIFO | 0o640);
        assert_eq!(xt(&dst.join("x")).read(Some(c"user.berth")).unwrap(), b"1");
        assert_eq!(fs::metadata(dst.join("suid")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(fs::metadata(dst.join("sticky")).unwrap().mode() & 0o7777, 0o1777);
        for p in ["sticky/old", "sticky"] {
            let m = fs::metadata(dst.join(p)).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec(), m.atime(), m.atime_nsec()), (secs, nanos, secs, nanos));
        }

        let kind = |r: io::Result<CopyStats>| r.unwrap_err().kind();
        let again = copy_tree(&src, t.path(), "dst", Reflink::Auto, &mut |_| {});
        assert_eq!(kind(again), io::ErrorKind::AlreadyExists);
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let r = copy_tree(&src, t.path(), bad, Reflink::Auto, &mut |_| {});
            assert_eq!(kind(r), io::ErrorKind::InvalidInput);
            assert_eq!(remove_tree(t.path(), bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        remove_tree(t.path(), "dst").unwrap();
        assert!(!dst.exists() && src.join("sparse").exists() && Path::new("/etc/passwd").exists());
        assert_eq!(copy(&src, &src, "self", Reflink::Never).dirs, 5); // copy into itself
        assert!(src.join("self/sticky").exists() && !src.join("self/self").exists());
    }

    #[test]
    fn copy_preserves_owner_and_devices() {
        if !is_root("copy_preserves_owner_and_devices") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "f").unwrap();
        symlink("/etc/shadow", src.join("l")).unwrap();
        let null = libc::makedev(1, 3);
        nix::sys::stat::mknod(&src.join("null"), SFlag::S_IFCHR, Mode::empty(), null).unwrap();
        for p in ["f", "l", "null", ""] {
            lchown(src.join(p), Some(1234), Some(5678)).unwrap();
        }
        chmod(&src.join("f"), 0o4755);
        chmod(&src.join("null"), 0o620);
        let st = copy(&src, t.path(), "dst", Reflink::Never);
        assert_eq!((st.files, st.symlinks, st.dirs), (2, 1, 1));
        let dst = t.path().join("dst");
        let want = [("f", libc::S_IFREG | 0o4755), ("l", libc::S_IFLNK | 0o777), ("null", libc::S_IFCHR | 0o620)];
        for (p, mode) in want {
            let m = fs::symlink_metadata(dst.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode()), (1234, 5678, mode), "{p}");
        }
        assert_eq!(fs::symlink_metadata(dst.join("null")).unwrap().rdev(), null);
        assert_eq!(fs::metadata(&dst).unwrap().uid(), 1234);
    }

    #[test]
    fn big_directories_are_streamed_and_resumed_after_their_descriptor_was_closed() {
        // The root holds 3,000 files (several getdents batches) around a chain of
        // directories deeper than MAX_OPEN, so the root's descriptor is closed mid-walk
        // and every walk must resume the root's listing where it stopped.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        for i in 0..1500 {
            fs::write(root.join(format!("a-file-with-a-longish-name-{i:05}")), b"x").unwrap();
        }
        let chain: PathBuf = (0..MAX_OPEN + 8).map(|i| format!("d{i}")).collect();
        fs::create_dir_all(root.join(&chain)).unwrap();
        fs::write(root.join(&chain).join("deepest"), b"y").unwrap();
        for i in 1500..3000 {
            fs::write(root.join(format!("a-file-with-a-longish-name-{i:05}")), b"x").unwrap();
        }
        let inodes = 1 + 3000 + (MAX_OPEN as u64 + 8) + 1;
        assert_eq!(usage(&root).unwrap().inodes, inodes);
        copy(&root, t.path(), "copy", Reflink::Never);
        assert_eq!(usage(&t.path().join("copy")).unwrap().inodes, inodes);
        assert_eq!(fs::read(t.path().join("copy").join(&chain).join("deepest")).unwrap(), b"y");
        assert_eq!(fs::read_dir(t.path().join("copy")).unwrap().count(), 3001);
        remove_tree(t.path(), "copy").unwrap();
        assert!(!t.path().join("copy").exists());
    }

    #[test]
    fn a_partial_copy_of_this_boot_is_resumed_and_one_of_an_earlier_boot_is_not() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        for name in ["done", "half", "sub/done", "missing"] {
            fs::write(src.join(name), name.repeat(1000)).unwrap();
        }
        // What a process killed mid-copy leaves: finished files (size and time of the
        // source, written last), one half-written, a file the source no longer has.
        let partial = t.path().join(".dst.partial");
        fs::create_dir_all(partial.join("sub")).unwrap();
        let leave = |name: &str, content: &str, finished: bool| {
            fs::write(partial.join(name), content).unwrap();
            if finished {
                let mtime = fs::metadata(src.join(name)).unwrap().modified().unwrap();
                let f = fs::File::options().write(true).open(partial.join(name)).unwrap();
                f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
            }
        };
        // Same size and time as the source, different bytes: kept only if not copied again.
        leave("done", &"K".repeat(4000), true);
        leave("sub/done", &"K".repeat(8000), true);
        leave("half", "half", false);
        leave("gone", "stale", false);
        fs::write(t.path().join(".dst.partial.boot"), boot_id().unwrap()).unwrap();
        let stats = copy(&src, t.path(), "dst", Reflink::Never);
        let dst = t.path().join("dst");
        assert_eq!(fs::read_to_string(dst.join("done")).unwrap(), "K".repeat(4000), "kept, not copied again");
        assert_eq!(fs::read_to_string(dst.join("sub/done")).unwrap(), "K".repeat(8000));
        assert_eq!(fs::read_to_string(dst.join("half")).unwrap(), "half".repeat(1000), "copied again");
        assert_eq!(fs::read_to_string(dst.join("missing")).unwrap(), "missing".repeat(1000));
        assert!(!dst.join("gone").exists(), "what the source lacks is removed");
        assert_eq!(stats.files, 4);
        assert!(!t.path().join(".dst.partial.boot").exists() && !partial.exists());

        // Left in an earlier boot: its data may never have reached the disk. Start over.
        fs::create_dir_all(&partial).unwrap();
        leave("done", &"K".repeat(4000), true);
        fs::write(t.path().join(".dst.partial.boot"), "an-earlier-boot").unwrap();
        copy(&src, t.path(), "again", Reflink::Never);
        copy(&src, t.path(), "dst2", Reflink::Never);
        assert!(partial.exists(), "another copy's partial directory is left alone");
        fs::rename(&partial, t.path().join(".dst3.partial")).unwrap();
        fs::rename(t.path().join(".dst.partial.boot"), t.path().join(".dst3.partial.boot")).unwrap();
        copy(&src, t.path(), "dst3", Reflink::Never);
        assert_eq!(fs::read_to_string(t.path().join("dst3/done")).unwrap(), "done".repeat(1000), "copied again");
    }

    #[test]
    fn walk_detects_directory_moved_out_of_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join((0..40).map(|i| format!("l{i}")).collect::<PathBuf>())).unwrap();
        fs::create_dir(t.path().join("elsewhere")).unwrap();
        let mut s = Stack::default();
        let fd = open(&root, DIR, Mode::empty()).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        s.push(fd, st, CString::default());
        for i in 0..40 {
            let fd = open_dir(s.fd().unwrap(), &CString::new(format!("l{i}")).unwrap()).unwrap();
            let st = fstat(fd.as_fd()).unwrap();
            s.push(fd, st, CString::default());
        }
        assert!(s.0[2].fd.is_none() && s.0[40].fd.is_some());
        fs::rename(root.join("l0/l1/l2"), t.path().join("elsewhere/l2")).unwrap();
        let e = (0..40).find_map(|_| s.pop().err()).expect("the move must be detected");
        assert!(e.to_string().contains("moved"), "{e}");
    }

    #[test]
    fn remove_tree_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (vol, sentinel) = (t.path().join("vol"), t.path().join("sentinel"));
        fs::create_dir_all(sentinel.join("inner")).unwrap();
        fs::write(sentinel.join("keep.txt"), "keep").unwrap();
        fs::create_dir_all(vol.join("a/b/deeper")).unwrap();
        fs::write(vol.join("a/b/deeper/f"), "f").unwrap();
        fs::write(vol.join("a/g"), "g").unwrap();
        fs::remove_dir_all(vol.join("a/b")).unwrap();
        symlink(&sentinel, vol.join("a/b")).unwrap(); // the subdirectory swapped for a symlink
        symlink("../sentinel", vol.join("rel")).unwrap();
        symlink(&sentinel, t.path().join("lnk")).unwrap();
        remove_tree(t.path(), "vol").unwrap();
        remove_tree(t.path(), "lnk").unwrap();
        assert!(!vol.exists() && fs::symlink_metadata(t.path().join("lnk")).is_err());
        assert!(sentinel.join("keep.txt").exists() && sentinel.join("inner").is_dir());
        remove_tree(t.path(), "vol").unwrap();
        remove_tree(&t.path().join("missing"), "x").unwrap();
    }

    #[test]
    fn usage_counts_links_once_and_skips_mounts() {
        let t = tempfile::tempdir().unwrap();
        let (tree, outside) = (t.path().join("u"), t.path().join("outside"));
        fs::create_dir_all(tree.join("mnt")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::write(tree.join("f"), vec![1u8; 64 << 10]).unwrap();
        fs::hard_link(tree.join("f"), tree.join("h")).unwrap();
        let blocks = |p: &Path| fs::symlink_metadata(p).unwrap().blocks() * 512;
        let (u0, mnt) = (usage(&tree).unwrap(), blocks(&tree.join("mnt")));
        assert_eq!(u0, Usage { bytes: blocks(&tree) + blocks(&tree.join("f")) + mnt, inodes: 3 });
        if !is_root("usage_counts_links_once_and_skips_mounts (bind mount part)") {
            return;
        }
        let m = Mount::new(&["--bind"], &outside, &tree.join("mnt")).expect("bind mount");
        assert!(tree.join("mnt/big").exists());
        assert_eq!(usage(&tree).unwrap(), Usage { bytes: u0.bytes - mnt, inodes: 2 });
        let st = copy(&tree, t.path(), "copy", Reflink::Auto);
        assert_eq!((st.skipped_mounts, st.files, st.bytes), (1, 2, 64 << 10));
        assert!(!t.path().join("copy/mnt").exists());
        let busy = |name| remove_tree(t.path(), name).unwrap_err().kind();
        assert_eq!(busy("u"), io::ErrorKind::ResourceBusy);
        assert!(outside.join("big").exists() && !tree.join("f").exists());
        let m2 = Mount::new(&["--bind"], &outside, &t.path().join("copy")).expect("bind mount");
        assert_eq!(busy("copy"), io::ErrorKind::ResourceBusy); // a mount point itself
        drop((m, m2));
        remove_tree(t.path(), "u").unwrap();
        remove_tree(t.path(), "copy").unwrap();
        assert!(!tree.exists() && outside.join("big").exists());
    }

    #[test]
    fn deep_chain_copies_and_removes() {
        const DEPTH: u64 = 10_000;
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("deep")).unwrap();
        let mut cur = open(&t.path().join("deep"), DIR, Mode::empty()).unwrap();
        for _ in 0..DEPTH {
            mkdirat(&cur, c"d", Mode::S_IRWXU).unwrap();
            cur = open_dir(cur.as_fd(), c"d").unwrap();
        }
        let fl = OFlag::O_CREAT | OFlag::O_WRONLY;
        File::from(openat(&cur, c"leaf", fl, Mode::S_IRUSR).unwrap()).write_all_at(b"leaf", 0).unwrap();
        linkat(&cur, c"leaf", &cur, c"leaf2", AtFlags::empty()).unwrap(); // linked via a >4 KiB path
        let st = copy(&t.path().join("deep"), t.path(), "deep2", Reflink::Never);
        assert_eq!((st.dirs, st.files, st.bytes), (DEPTH + 1, 2, 4));
        assert_eq!(usage(&t.path().join("deep2")).unwrap().inodes, DEPTH + 2);
        let mut cur = open(&t.path().join("deep2"), DIR, Mode::empty()).unwrap();
        for _ in 0..DEPTH {
            cur = open_dir(cur.as_fd(), c"d").unwrap();
        }
        let (l1, l2) = (statx(cur.as_fd(), c"leaf", 0).unwrap(), statx(cur.as_fd(), c"leaf2", 0).unwrap());
        assert_eq!((l1.stx_size, l1.stx_nlink, l1.stx_ino), (4, 2, l2.stx_ino));
        remove_tree(t.path(), "deep").unwrap();
        remove_tree(t.path(), "deep2").unwrap();
        assert!(fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn reflink_on_xfs() {
        if !is_root("reflink_on_xfs") {
            return;
        }
        let img = tempfile::Builder::new().suffix(".xfs.img").tempfile_in("/tmp").unwrap();
        img.as_file().set_len(512 << 20).unwrap();
        let args = ["-q", "-f", "-m", "reflink=1"];
        match Command::new("mkfs.xfs").args(args).arg(img.path()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return println!("SKIPPED: reflink_on_xfs: mkfs.xfs: {}", String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => return println!("SKIPPED: reflink_on_xfs: mkfs.xfs unavailable: {e}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let _m = match Mount::new(&["-o", "loop"], img.path(), dir.path()) {
            Ok(m) => m,
            Err(e) => return println!("SKIPPED: reflink_on_xfs: loop mount failed: {e}"),
        };
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        fs::write(src.join("big"), &data).unwrap();
        fs::write(src.join("sub/small"), "small").unwrap();
        let st = copy(&src, dir.path(), "clone", Reflink::Auto);
        assert_eq!((st.reflinked, st.files, st.bytes), (2, 2, (1 << 20) + 5));
        let st = copy(&src, dir.path(), "full", Reflink::Never);
        assert_eq!((st.reflinked, st.bytes), (0, (1 << 20) + 5));
        for name in ["clone", "full"] {
            assert_eq!(fs::read(dir.path().join(name).join("big")).unwrap(), data);
            assert_eq!(fs::read(dir.path().join(name).join("sub/small")).unwrap(), b"small");
        }
    }
}
