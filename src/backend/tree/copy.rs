//! Copying a whole tree into a private directory renamed into place when complete,
//! resuming what a process interrupted in the same boot left.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag, open, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, mkdirat, mknodat};
use nix::unistd::{linkat, symlinkat, syncfs};

use super::data::{Reflink, copy_data};
use super::meta::{meta_at, meta_fd};
use super::remove::remove_at;
use super::walk::{Entries, Stack};
use super::{DIR, DIR_NOFOLLOW, St, component, foreign, fstat, is, key, kind, open_dir, open_regular, opt, statx};

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
        let kept = if self.resume { self.kept(ddir, name, &st)? } else { Kept::Absent };
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
    copy_tree_prepared(src, dst_parent, dst_name, reflink, &|_| Ok(()), progress)
}

/// [`copy_tree`], with `prepare` called on the copy's root directory before anything is
/// copied into it, and again on a resumed copy's (so it must be idempotent): an encrypted
/// copy gets its policy there, while the directory is still empty.
pub fn copy_tree_prepared(
    src: &Path,
    dst_parent: &Path,
    dst_name: &str,
    reflink: Reflink,
    prepare: &dyn Fn(BorrowedFd<'_>) -> io::Result<()>,
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
    if resume {
        tracing::info!(copy = dst_name, "resuming the partial copy an interrupted process left");
    } else {
        remove_at(dp, &partial)?;
        mkdirat(dp, partial.as_c_str(), Mode::S_IRWXU)?;
        let fl = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dp, boot_file.as_c_str(), fl, Mode::S_IRUSR | Mode::S_IWUSR)?;
        io::Write::write_all(&mut File::from(fd), boot.as_bytes())?;
    }
    let result = (|| {
        let dst = open_dir(dp, &partial)?;
        prepare(dst.as_fd())?;
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
