//! Writing a copy: a directory tree or an image file read once, each data range cut into
//! chunks, only the chunks the store lacks sent, then the manifest committed through the
//! copy's lease (see [`super::lease`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, open, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat, major, minor};

use super::chunker::{Chunker, DEFAULT_SIZES, Sizes};
use super::fsmeta::{DIR_FLAGS, Xattrs, bytes, cstring, data_ranges, names, open_dir_at, open_file_at, stat_at};
use super::lease::{Lease, Timing};
use super::manifest::{ChunkRef, Content, Data, Entry, Kind, Manifest};
use super::store::{Area, ChunkStore};
use super::{Error, Hash, check_name, escape, io_err};

/// Directory levels a copy descends; one descriptor is open per level.
pub const MAX_DEPTH: usize = 256;

/// Told after every chunk how many data bytes the copy has read; answers false to stop it.
pub type Progress<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// How a copy cuts and waits, what its manifest says about it, and who watches it.
#[derive(Clone, Default)]
pub struct CopyOptions<'a> {
    pub sizes: Sizes,
    pub timing: Timing,
    /// Written into the manifest ([`super::manifest::Manifest::labels`]).
    pub labels: std::collections::BTreeMap<String, String>,
    pub progress: Option<Progress<'a>>,
}

impl Default for Sizes {
    fn default() -> Self {
        DEFAULT_SIZES
    }
}

/// What a copy read and sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Data bytes read from the source (holes are not read).
    pub bytes_read: u64,
    /// Bytes written to the store: new chunks plus the manifest.
    pub bytes_sent: u64,
    /// Chunks written because the store lacked them.
    pub chunks_new: u64,
    /// Chunk bytes of those.
    pub bytes_new: u64,
    /// Chunks the store (or this copy, earlier) already had.
    pub chunks_reused: u64,
    pub manifest_bytes: u64,
    /// Tree entries (the root included), or 1 for an image.
    pub entries: u64,
    /// Mount points inside the source, left out.
    pub skipped_mounts: u64,
    pub elapsed: Duration,
}

/// Data ranges at least this long are cut by a second thread while the first stores
/// chunks (a store's put may wait for the network)...
const PIPELINE_FROM: u64 = 1 << 20;
/// ...and at most this many chunks wait between the two.
const PIPELINE: usize = 1024;

struct Copier<'a> {
    store: &'a dyn ChunkStore,
    lease: Lease<'a>,
    sizes: Sizes,
    seen: HashSet<Hash>,
    stats: CopyStats,
    labels: std::collections::BTreeMap<String, String>,
    progress: Option<Progress<'a>>,
    name: String,
}

/// Reads `len` bytes of a file from `off` with pread: no shared file offset.
struct Range<'a> {
    file: &'a File,
    off: u64,
    left: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.off)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank during the copy"));
        }
        self.off += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

impl Copier<'_> {
    fn data(&mut self, file: &File, size: u64, path: &str) -> Result<Data, Error> {
        let ranges = data_ranges(file, size).map_err(io_err("find data ranges of", path))?;
        let mut data = Data { size, ranges: Vec::with_capacity(ranges.len()), chunks: Vec::new() };
        for (off, len) in ranges {
            data.ranges.push([off, len]);
            let range = Range { file, off, left: len };
            if len < PIPELINE_FROM {
                let mut chunker = Chunker::new(range, self.sizes);
                while let Some(chunk) = chunker.next_chunk().map_err(io_err("read", path))? {
                    self.take(&chunk.hash, chunk.data, &mut data, path)?;
                }
                continue;
            }
            // A second thread reads and cuts while this one hashes and stores what it cut.
            let sizes = self.sizes;
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE);
                scope.spawn(move || {
                    let mut chunker = Chunker::new(range, sizes);
                    loop {
                        let next = chunker.next_cut().map(|c| c.map(<[u8]>::to_vec));
                        let done = !matches!(next, Ok(Some(_)));
                        // The loop below stopped (it failed): nothing more to cut.
                        if tx.send(next).is_err() || done {
                            return;
                        }
                    }
                });
                // `rx` is consumed here, so it is gone before the scope waits for the
                // reader: a reader blocked on a full channel wakes to a failed send.
                for next in rx {
                    let Some(bytes) = next.map_err(io_err("read", path))? else { break };
                    self.take(&Hash::of(&bytes), &bytes, &mut data, path)?;
                }
                Ok::<_, Error>(())
            })?;
        }
        Ok(data)
    }

    /// Stores one chunk cut from a file unless this copy or the store has it.
    fn take(&mut self, hash: &Hash, bytes: &[u8], data: &mut Data, path: &str) -> Result<(), Error> {
        let n = bytes.len();
        self.stats.bytes_read += n as u64;
        if self.seen.insert(*hash) && self.store.put_chunk(hash, bytes)? {
            self.stats.chunks_new += 1;
            self.stats.bytes_new += n as u64;
        } else {
            self.stats.chunks_reused += 1;
        }
        data.chunks.push(ChunkRef { hash: *hash, len: n as u32 });
        crate::failpoint::hit("archive.copy.chunk").map_err(io_err("copy", path))?;
        if self.progress.is_some_and(|p| !p(self.stats.bytes_read)) {
            return Err(Error::Stopped { copy: self.name.clone() });
        }
        self.lease.heartbeat()
    }

    fn walk(
        &mut self,
        dir: &OwnedFd,
        rel: &[u8],
        dev: u64,
        depth: usize,
        out: &mut Vec<Entry>,
        links: &mut HashMap<(u64, u64), String>,
    ) -> Result<(), Error> {
        let shown = String::from_utf8_lossy(rel).into_owned();
        for name in names(dir.as_fd()).map_err(io_err("list", &shown))? {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(bytes(&name));
            let show = String::from_utf8_lossy(&path).into_owned();
            let cname = cstring(bytes(&name)).map_err(io_err("copy", &show))?;
            let st = match stat_at(dir.as_fd(), &cname) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                r => r.map_err(io_err("stat", &show))?,
            };
            if st.st_dev != dev {
                self.stats.skipped_mounts += 1;
                continue;
            }
            let escaped = escape(&path);
            let (kind, xattrs, st) = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(Error::TooDeep { path: show, max: MAX_DEPTH });
                    }
                    let fd = open_dir_at(dir.as_fd(), &cname).map_err(io_err("open directory", &show))?;
                    let st = fstat(&fd).map_err(|e| io_err("stat", &show)(e.into()))?;
                    let x = Xattrs::Fd(fd.as_fd()).read_all().map_err(io_err("read xattrs of", &show))?;
                    out.push(entry(escaped, Kind::Dir, &st, x));
                    self.walk(&fd, &path, dev, depth + 1, out, links)?;
                    continue;
                }
                libc::S_IFREG => {
                    if st.st_nlink > 1 {
                        if let Some(target) = links.get(&(st.st_dev, st.st_ino)) {
                            out.push(entry(escaped, Kind::Hardlink { target: target.clone() }, &st, Vec::new()));
                            self.stats.entries += 1;
                            continue;
                        }
                        links.insert((st.st_dev, st.st_ino), escaped.clone());
                    }
                    let file = open_file_at(dir.as_fd(), &cname, &st).map_err(io_err("open", &show))?;
                    let st = fstat(&file).map_err(|e| io_err("stat", &show)(e.into()))?;
                    let x = Xattrs::Fd(file.as_fd()).read_all().map_err(io_err("read xattrs of", &show))?;
                    (Kind::File { data: self.data(&file, st.st_size as u64, &show)? }, x, st)
                }
                kind => {
                    let k = match kind {
                        libc::S_IFLNK => {
                            let t = readlinkat(dir.as_fd(), cname.as_c_str())
                                .map_err(|e| io_err("read link", &show)(e.into()))?;
                            Kind::Symlink { target: escape(bytes(&t)) }
                        }
                        libc::S_IFCHR => Kind::Char { major: major(st.st_rdev), minor: minor(st.st_rdev) },
                        libc::S_IFBLK => Kind::Block { major: major(st.st_rdev), minor: minor(st.st_rdev) },
                        libc::S_IFIFO => Kind::Fifo,
                        libc::S_IFSOCK => Kind::Socket,
                        other => return Err(Error::Unsupported { path: show, what: format!("file type {other:o}") }),
                    };
                    let at = Xattrs::at(dir.as_fd(), &cname).map_err(io_err("copy", &show))?;
                    (k, at.read_all().map_err(io_err("read xattrs of", &show))?, st)
                }
            };
            out.push(entry(escaped, kind, &st, xattrs));
        }
        Ok(())
    }
}

fn entry(path: String, kind: Kind, st: &FileStat, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Entry {
    Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs: xattrs.iter().map(|(n, v)| (escape(n), hex::encode(v))).collect(),
    }
}

fn begin<'a>(store: &'a dyn ChunkStore, name: &str, opts: &CopyOptions<'a>) -> Result<Copier<'a>, Error> {
    check_name("manifest", name)?;
    opts.sizes.check().map_err(|e| Error::Unsupported { path: name.to_string(), what: e })?;
    let lease = Lease::acquire(store, opts.timing)?;
    if store.read_file(Area::Manifests, name)?.is_some() {
        return Err(Error::ManifestExists { name: name.to_string() });
    }
    Ok(Copier {
        store,
        lease,
        sizes: opts.sizes,
        seen: HashSet::new(),
        stats: CopyStats::default(),
        labels: opts.labels.clone(),
        progress: opts.progress,
        name: name.to_string(),
    })
}

fn finish(mut c: Copier<'_>, name: &str, source: &Path, content: Content, start: Instant) -> Result<CopyStats, Error> {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let labels = std::mem::take(&mut c.labels);
    let manifest = Manifest { name: name.to_string(), created, source: source.display().to_string(), labels, content };
    let bytes = manifest.encode();
    c.store.flush()?;
    crate::failpoint::hit("archive.copy.flushed").map_err(io_err("copy", name))?;
    c.lease.commit(name, &bytes)?;
    c.stats.manifest_bytes = bytes.len() as u64;
    c.stats.bytes_sent = c.stats.bytes_new + c.stats.manifest_bytes;
    c.stats.elapsed = start.elapsed();
    tracing::info!(
        archive.manifest = name,
        archive.read = c.stats.bytes_read,
        archive.sent = c.stats.bytes_sent,
        archive.chunks_new = c.stats.chunks_new,
        archive.chunks_reused = c.stats.chunks_reused,
        "archive: copy committed"
    );
    Ok(c.stats)
}

/// Copies the directory tree at `src` (not followed if a symlink) into `store` as
/// manifest `name`. Symlinks are recorded, never followed; mount points inside are left
/// out; hard links are recorded once with their other names.
pub fn copy_tree<'a>(
    store: &'a dyn ChunkStore,
    name: &str,
    src: &Path,
    opts: &CopyOptions<'a>,
) -> Result<CopyStats, Error> {
    let start = Instant::now();
    let mut c = begin(store, name, opts)?;
    let shown = src.display().to_string();
    let root = open(src, DIR_FLAGS, Mode::empty()).map_err(|e| io_err("open source", &shown)(e.into()))?;
    let st = fstat(&root).map_err(|e| io_err("stat", &shown)(e.into()))?;
    let x = Xattrs::Fd(root.as_fd()).read_all().map_err(io_err("read xattrs of", &shown))?;
    let mut entries = vec![entry(String::new(), Kind::Dir, &st, x)];
    c.walk(&root, &[], st.st_dev, 0, &mut entries, &mut HashMap::new())?;
    c.stats.entries = entries.len() as u64;
    finish(c, name, src, Content::Tree { entries }, start)
}

/// Copies the image file at `src` (a regular file, not followed if a symlink) into
/// `store` as manifest `name`; its holes are recorded, not read.
pub fn copy_image<'a>(
    store: &'a dyn ChunkStore,
    name: &str,
    src: &Path,
    opts: &CopyOptions<'a>,
) -> Result<CopyStats, Error> {
    let start = Instant::now();
    let mut c = begin(store, name, opts)?;
    let shown = src.display().to_string();
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = File::from(open(src, flags, Mode::empty()).map_err(|e| io_err("open source", &shown)(e.into()))?);
    let st = fstat(&file).map_err(|e| io_err("stat", &shown)(e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Unsupported { path: shown, what: "an image that is not a regular file".into() });
    }
    let data = c.data(&file, st.st_size as u64, &shown)?;
    c.stats.entries = 1;
    finish(c, name, src, Content::Image { data }, start)
}
