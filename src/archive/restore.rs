//! Building a tree or an image from a manifest: under a temporary name beside the
//! destination, every chunk checked against its hash as it is written, renamed into place
//! only when whole. And the restore drill, [`verify`], which restores into a scratch
//! directory and reads everything back.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, makedev, mkdirat};
use nix::sys::stat::{mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat, syncfs};

use super::fsmeta::{DIR_FLAGS, Xattrs, cstring};
use super::manifest::{ChunkRef, Content, Data, Entry, Kind, Manifest, path_bytes};
use super::store::{Area, ChunkStore};
use super::{Error, Hash, check_name, io_err, unescape};

/// What a restore wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Data bytes written (holes not counted).
    pub bytes: u64,
    /// Chunks read and checked.
    pub chunks: u64,
    pub entries: u64,
    pub elapsed: Duration,
}

/// Reads and checks manifest `name`.
pub fn load(store: &dyn ChunkStore, name: &str) -> Result<Manifest, Error> {
    check_name("manifest", name)?;
    let bytes = store.read_file(Area::Manifests, name)?.ok_or_else(|| Error::ManifestMissing { name: name.into() })?;
    Manifest::decode(name, &bytes)
}

/// Restores manifest `name` at `dest`: a tree where `dest` is absent or an empty
/// directory, an image where `dest` is absent. On failure nothing is left at `dest`
/// (or the empty directory stays as it was).
pub fn restore(store: &dyn ChunkStore, name: &str, dest: &Path) -> Result<RestoreStats, Error> {
    let start = Instant::now();
    let manifest = load(store, name)?;
    let in_use = || Error::DestinationInUse { path: dest.display().to_string() };
    let empty_dir = match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Ok(m) if m.is_dir() && matches!(&manifest.content, Content::Tree { .. }) => {
            let mut list = fs::read_dir(dest).map_err(io_err("list", dest.display()))?;
            if list.next().is_some() {
                return Err(in_use());
            }
            true
        }
        Ok(_) => return Err(in_use()),
        Err(e) => return Err(io_err("stat", dest.display())(e)),
    };
    let (Some(parent), Some(file_name)) = (dest.parent(), dest.file_name()) else {
        return Err(in_use());
    };
    let mut tmp_name = OsStr::new(".").to_os_string();
    tmp_name.push(file_name);
    tmp_name.push(format!(".berth-restore-{}", uuid::Uuid::new_v4().simple()));
    let tmp = parent.join(tmp_name);
    let mut stats = RestoreStats::default();
    let built = match &manifest.content {
        Content::Tree { entries } => build_tree(store, name, entries, &tmp, &mut stats),
        Content::Image { data } => build_image(store, name, data, &tmp, &mut stats),
    };
    let placed = built.and_then(|()| {
        crate::failpoint::hit("archive.restore.before-rename").map_err(io_err("restore", dest.display()))?;
        if empty_dir {
            // A directory replaces an empty one in one rename.
            fs::rename(&tmp, dest).map_err(io_err("rename into place", dest.display()))
        } else {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &tmp,
                nix::fcntl::AT_FDCWD,
                dest,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(|e| io_err("rename into place", dest.display())(e.into()))
        }
    });
    if let Err(e) = placed {
        let _ = if tmp.is_dir() { fs::remove_dir_all(&tmp) } else { fs::remove_file(&tmp) };
        return Err(e);
    }
    File::open(parent).and_then(|d| d.sync_all()).map_err(io_err("sync directory", parent.display()))?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Restores manifest `name` into storage made for it, a new volume's: a tree into the
/// empty directory `dest` (its root metadata applied to `dest` itself), an image into the
/// file `dest` (data written at its ranges over the file's zeros, and the file kept at
/// least as long as the image). Nothing is renamed: the caller owns `dest` and removes it
/// whole when this fails. `manifest` is the copy as [`load`] read it.
pub fn fill(store: &dyn ChunkStore, manifest: &Manifest, dest: &Path) -> Result<RestoreStats, Error> {
    let start = Instant::now();
    let name = manifest.name.as_str();
    let mut stats = RestoreStats::default();
    match &manifest.content {
        Content::Tree { entries } => {
            let mut list = fs::read_dir(dest).map_err(io_err("list", dest.display()))?;
            if list.next().is_some() {
                return Err(Error::DestinationInUse { path: dest.display().to_string() });
            }
            fill_tree(store, name, entries, dest, &mut stats)?;
        }
        Content::Image { data } => {
            let shown = dest.display().to_string();
            let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let file = File::from(open(dest, flags, Mode::empty()).map_err(|e| io_err("open", &shown)(e.into()))?);
            let len = file.metadata().map_err(io_err("stat", &shown))?.len();
            write_data(store, name, data, &file, &shown, &mut stats)?;
            if len > data.size {
                file.set_len(len).map_err(io_err("set size of", &shown))?;
            }
            file.sync_all().map_err(io_err("sync", &shown))?;
            stats.entries = 1;
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Reads every chunk manifest `name` needs back from the store once, each checked
/// against its hash and length: what a copy does after it committed, before the copy
/// counts as made. The chunks checked and their bytes.
pub fn check_chunks(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    progress: Option<super::copy::Progress<'_>>,
) -> Result<(u64, u64), Error> {
    let mut seen = std::collections::HashSet::new();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    for data in manifest.data_streams() {
        read_chunks(
            store,
            &manifest.name,
            &data.chunks,
            |c| seen.insert(c.hash),
            |c, _| {
                chunks += 1;
                bytes += u64::from(c.len);
                if progress.is_some_and(|p| !p(bytes)) {
                    return Err(Error::Stopped { copy: manifest.name.clone() });
                }
                Ok(())
            },
        )?;
    }
    Ok((chunks, bytes))
}

/// Writes `data`'s chunks into `file` at its ranges, each checked, and sets its size.
fn write_data(
    store: &dyn ChunkStore,
    manifest: &str,
    data: &Data,
    file: &File,
    path: &str,
    stats: &mut RestoreStats,
) -> Result<(), Error> {
    let mut ranges = data.ranges.iter();
    let (mut off, mut left) = (0u64, 0u64);
    // Neighbouring chunks are written together, up to WRITE_BYTES at a time.
    let mut pending = Pending { file, at: 0, buf: Vec::with_capacity(WRITE_BYTES) };
    read_chunks(
        store,
        manifest,
        &data.chunks,
        |_| true,
        |c, bytes| {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                if left == 0 {
                    // Manifest::decode checked that the chunks fill the ranges exactly.
                    let Some(&[o, l]) = ranges.next() else { break };
                    (off, left) = (o, l);
                }
                let n = (rest.len() as u64).min(left) as usize;
                pending.write(off, &rest[..n]).map_err(io_err("write", path))?;
                (off, left, rest) = (off + n as u64, left - n as u64, &rest[n..]);
            }
            stats.bytes += u64::from(c.len);
            stats.chunks += 1;
            Ok(())
        },
    )?;
    pending.flush().map_err(io_err("write", path))?;
    file.set_len(data.size).map_err(io_err("set size of", path))
}

/// Bytes a restore gathers before it writes them.
const WRITE_BYTES: usize = 1 << 20;

/// Bytes to be written at `at`, gathered from neighbouring pieces.
struct Pending<'a> {
    file: &'a File,
    at: u64,
    buf: Vec<u8>,
}

impl Pending<'_> {
    fn write(&mut self, off: u64, bytes: &[u8]) -> std::io::Result<()> {
        if off != self.at + self.buf.len() as u64 || self.buf.len() + bytes.len() > WRITE_BYTES {
            self.flush()?;
            self.at = off;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.at)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Chunks read and checked ahead of the loop that uses them: enough for the store's
/// read-ahead to keep going while the last window is written.
const PIPELINE: usize = 1024;

/// Reads, in order, each of `chunks` that `want` picks, checked against its hash, and
/// hands it to `each`. A second thread reads (the store reads ahead where it can) and
/// checks while `each` runs, so reading from the store, hashing and writing overlap.
fn read_chunks(
    store: &dyn ChunkStore,
    manifest: &str,
    chunks: &[ChunkRef],
    mut want: impl FnMut(&ChunkRef) -> bool,
    mut each: impl FnMut(&ChunkRef, Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    let picked: Vec<ChunkRef> = chunks.iter().filter(|&c| want(c)).cloned().collect();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, Error>>(PIPELINE);
    let picked = &picked;
    std::thread::scope(|scope| {
        // Dropped when this closure returns, before the scope waits for the reader: a
        // reader blocked on a full channel then wakes to a failed send and stops.
        let rx = rx;
        scope.spawn(move || {
            let mut ahead = 0usize;
            for (i, c) in picked.iter().enumerate() {
                if ahead == 0 {
                    ahead = store.read_ahead(&picked[i..]).max(1);
                }
                ahead -= 1;
                let read = store.read_chunk(&c.hash, c.len as usize, manifest);
                let failed = read.is_err();
                // The loop below stopped (it failed): nothing more to read.
                if tx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        for c in picked {
            // The reader sends one result per chunk until its first error.
            let data = rx.recv().map_err(|_| Error::Stopped { copy: manifest.to_string() })??;
            each(c, data)?;
        }
        Ok(())
    })
}

fn build_image(
    store: &dyn ChunkStore,
    manifest: &str,
    data: &Data,
    tmp: &Path,
    stats: &mut RestoreStats,
) -> Result<(), Error> {
    let shown = tmp.display().to_string();
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file =
        File::from(open(tmp, flags, Mode::from_bits_truncate(0o600)).map_err(|e| io_err("create", &shown)(e.into()))?);
    let result = write_data(store, manifest, data, &file, &shown, stats)
        .and_then(|()| file.sync_all().map_err(io_err("sync", &shown)));
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    stats.entries = 1;
    result
}

/// Directories of the tree being built, opened by walking components from the root
/// with O_NOFOLLOW: a symlink the manifest created is never walked through.
struct Dirs {
    root: OwnedFd,
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl Dirs {
    fn open(&mut self, rel: &[u8]) -> std::io::Result<BorrowedFd<'_>> {
        if rel.is_empty() {
            return Ok(self.root.as_fd());
        }
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let mut fd = openat(self.root.as_fd(), c".", DIR_FLAGS, Mode::empty())?;
            for part in rel.split(|&b| b == b'/') {
                fd = openat(fd.as_fd(), cstring(part)?.as_c_str(), DIR_FLAGS, Mode::empty())?;
            }
            self.last = Some((rel.to_vec(), fd));
        }
        Ok(self.last.as_ref().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn times(e: &Entry) -> (TimeSpec, TimeSpec) {
    let mtime = TimeSpec::new(e.mtime, i64::from(e.mtime_nsec));
    (mtime, mtime)
}

fn ids(e: &Entry) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
}

fn set_xattrs(x: &Xattrs<'_>, e: &Entry) -> std::io::Result<()> {
    for (name, value) in &e.xattrs {
        // Manifest::decode checked both encodings.
        let (name, value) = (unescape(name).unwrap_or_default(), hex::decode(value).unwrap_or_default());
        x.set(&name, &value)?;
    }
    Ok(())
}

/// Owner, then mode (chown clears set-id bits), then xattrs, then times, on an open fd.
fn meta_fd(fd: BorrowedFd<'_>, e: &Entry) -> std::io::Result<()> {
    let (uid, gid) = ids(e);
    fchown(fd, uid, gid)?;
    fchmod(fd, Mode::from_bits_truncate(e.mode))?;
    set_xattrs(&Xattrs::Fd(fd), e)?;
    let (a, m) = times(e);
    Ok(futimens(fd, &a, &m)?)
}

fn build_tree(
    store: &dyn ChunkStore,
    manifest: &str,
    entries: &[Entry],
    tmp: &Path,
    stats: &mut RestoreStats,
) -> Result<(), Error> {
    fs::create_dir(tmp).map_err(io_err("create", tmp.display()))?;
    let result = fill_tree(store, manifest, entries, tmp, stats);
    if result.is_err() {
        let _ = fs::remove_dir_all(tmp);
    }
    result
}

fn fill_tree(
    store: &dyn ChunkStore,
    manifest: &str,
    entries: &[Entry],
    tmp: &Path,
    stats: &mut RestoreStats,
) -> Result<(), Error> {
    let root = open(tmp, DIR_FLAGS, Mode::empty()).map_err(|e| io_err("open", tmp.display())(e.into()))?;
    let mut dirs = Dirs { root, last: None };
    let mut made_dirs = Vec::new();
    for e in entries.iter().skip(1) {
        // Manifest::decode checked every path.
        let path = path_bytes(&e.path).unwrap_or_default();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let (parent, name) = split(&path);
        let cname = cstring(name).map_err(io_err("restore", &shown))?;
        let err = |op| io_err(op, shown.clone());
        if let Kind::Hardlink { target } = &e.kind {
            let target = path_bytes(target).unwrap_or_default();
            let (tparent, tname) = split(&target);
            let tdir = dirs.open(tparent).map_err(err("open directory of"))?.try_clone_to_owned();
            let tdir = tdir.map_err(err("open directory of"))?;
            let dir = dirs.open(parent).map_err(err("open directory of"))?;
            let tname = cstring(tname).map_err(err("restore"))?;
            linkat(&tdir, tname.as_c_str(), dir, cname.as_c_str(), AtFlags::empty())
                .map_err(|x| err("hard link")(x.into()))?;
            stats.entries += 1;
            continue;
        }
        let dir = dirs.open(parent).map_err(err("open directory of"))?;
        let (uid, gid) = ids(e);
        let (a, m) = times(e);
        let at_meta = |dir: BorrowedFd<'_>, chmod: bool| -> std::io::Result<()> {
            fchownat(dir, cname.as_c_str(), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if chmod {
                // Created just now in a directory only we can reach: not a symlink.
                fchmodat(dir, cname.as_c_str(), Mode::from_bits_truncate(e.mode), FchmodatFlags::FollowSymlink)?;
            }
            set_xattrs(&Xattrs::at(dir, &cname)?, e)?;
            Ok(utimensat(dir, cname.as_c_str(), &a, &m, UtimensatFlags::NoFollowSymlink)?)
        };
        match &e.kind {
            Kind::Dir => {
                mkdirat(dir, cname.as_c_str(), Mode::S_IRWXU).map_err(|x| err("create directory")(x.into()))?;
                made_dirs.push(e);
            }
            Kind::File { data } => {
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = openat(dir, cname.as_c_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR)
                    .map_err(|x| err("create")(x.into()))?;
                let file = File::from(fd);
                write_data(store, manifest, data, &file, &shown, stats)?;
                meta_fd(file.as_fd(), e).map_err(err("set owner, mode, xattrs and times of"))?;
            }
            Kind::Symlink { target } => {
                let target = unescape(target).unwrap_or_default();
                symlinkat(OsStr::from_bytes(&target), dir, cname.as_c_str())
                    .map_err(|x| err("create symlink")(x.into()))?;
                at_meta(dir, false).map_err(err("set owner, xattrs and times of"))?;
            }
            Kind::Char { .. } | Kind::Block { .. } | Kind::Fifo | Kind::Socket => {
                let (kind, dev) = match &e.kind {
                    Kind::Char { major, minor } => (SFlag::S_IFCHR, makedev(*major, *minor)),
                    Kind::Block { major, minor } => (SFlag::S_IFBLK, makedev(*major, *minor)),
                    Kind::Fifo => (SFlag::S_IFIFO, 0),
                    _ => (SFlag::S_IFSOCK, 0),
                };
                mknodat(dir, cname.as_c_str(), kind, Mode::S_IRUSR | Mode::S_IWUSR, dev)
                    .map_err(|x| err("create node")(x.into()))?;
                at_meta(dir, true).map_err(err("set owner, mode, xattrs and times of"))?;
            }
            Kind::Hardlink { .. } => {}
        }
        stats.entries += 1;
    }
    // Directories get their metadata last, deepest first: creating their content would
    // change their times, and a read-only mode would stop it.
    for e in made_dirs.iter().rev() {
        let path = path_bytes(&e.path).unwrap_or_default();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let (parent, name) = split(&path);
        let dir = dirs.open(parent).map_err(io_err("open directory of", &shown))?;
        let fd = openat(dir, cstring(name).map_err(io_err("restore", &shown))?.as_c_str(), DIR_FLAGS, Mode::empty())
            .map_err(|x| io_err("open", &shown)(x.into()))?;
        meta_fd(fd.as_fd(), e).map_err(io_err("set owner, mode, xattrs and times of", &shown))?;
    }
    dirs.last = None;
    if let Some(root) = entries.first() {
        meta_fd(dirs.root.as_fd(), root).map_err(io_err("set owner, mode, xattrs and times of", tmp.display()))?;
    }
    stats.entries += 1;
    syncfs(&dirs.root).map_err(|x| io_err("syncfs", tmp.display())(x.into()))
}

/// The outcome of a restore drill.
#[derive(Clone, Debug)]
pub struct Drill {
    pub manifest: String,
    /// `None` when every chunk and every restored byte checked out.
    pub failure: Option<String>,
    pub bytes: u64,
    pub chunks: u64,
    pub entries: u64,
    pub elapsed: Duration,
}

impl Drill {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl std::fmt::Display for Drill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        write!(
            f,
            "{verdict} {}: {} entries, {} chunks, {} bytes restored and read back in {:.3}s",
            self.manifest,
            self.entries,
            self.chunks,
            self.bytes,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(why) = &self.failure {
            write!(f, ": {why}")?;
        }
        Ok(())
    }
}

/// The restore drill: restores manifest `name` into a new directory inside `scratch`,
/// which checks the manifest and every chunk, then reads every restored byte back and
/// hashes it again, chunk by chunk; the restored copy is removed whatever the outcome.
pub fn verify(store: &dyn ChunkStore, name: &str, scratch: &Path) -> Drill {
    let start = Instant::now();
    let dest: PathBuf = scratch.join(format!("drill-{name}-{}", uuid::Uuid::new_v4().simple()));
    let mut drill =
        Drill { manifest: name.into(), failure: None, bytes: 0, chunks: 0, entries: 0, elapsed: Duration::ZERO };
    let outcome = restore(store, name, &dest).and_then(|stats| {
        (drill.bytes, drill.chunks, drill.entries) = (stats.bytes, stats.chunks, stats.entries);
        read_back(&load(store, name)?, &dest)
    });
    drill.failure = outcome.err().map(|e| e.to_string());
    let _ = if dest.is_dir() { fs::remove_dir_all(&dest) } else { fs::remove_file(&dest) };
    drill.elapsed = start.elapsed();
    drill
}

fn read_back(manifest: &Manifest, dest: &Path) -> Result<(), Error> {
    let check = |file: &File, data: &Data, shown: &str| -> Result<(), Error> {
        let mut reader = data.ranges.iter().map(|&[o, l]| (o, l));
        let (mut off, mut left) = (0, 0);
        for c in &data.chunks {
            let mut buf = vec![0u8; c.len as usize];
            let mut filled = 0;
            while filled < buf.len() {
                if left == 0 {
                    let Some((o, l)) = reader.next() else { break };
                    (off, left) = (o, l);
                }
                let n = ((buf.len() - filled) as u64).min(left) as usize;
                file.read_exact_at(&mut buf[filled..filled + n], off).map_err(io_err("read back", shown))?;
                (filled, off, left) = (filled + n, off + n as u64, left - n as u64);
            }
            if Hash::of(&buf) != c.hash {
                return Err(Error::ReadBack { path: shown.into(), manifest: manifest.name.clone(), chunk: c.hash });
            }
        }
        Ok(())
    };
    match &manifest.content {
        Content::Image { data } => {
            let file = File::open(dest).map_err(io_err("open", dest.display()))?;
            check(&file, data, &dest.display().to_string())
        }
        Content::Tree { entries } => {
            for e in entries {
                if let Kind::File { data } = &e.kind {
                    let rel = path_bytes(&e.path).unwrap_or_default();
                    let path = dest.join(OsStr::from_bytes(&rel));
                    let shown = path.display().to_string();
                    let fd = open(&path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                        .map_err(|x| io_err("open", &shown)(x.into()))?;
                    check(&File::from(fd), data, &shown)?;
                }
            }
            Ok(())
        }
    }
}
