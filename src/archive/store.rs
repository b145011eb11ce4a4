//! Where copies live: chunks named by their hash and small named files (manifests, leases,
//! collection markers), behind a trait an NFSv3 client can implement.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::manifest::ChunkRef;
use super::{Error, Hash, io_err};

/// The areas of small named files a store keeps beside its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Committed manifests, one per copy.
    Manifests,
    /// Leases of copies in progress (see [`super::lease`]).
    Pending,
    /// Collection markers and leases taken over by a collection.
    Gc,
}

impl Area {
    pub fn dir(self) -> &'static str {
        match self {
            Area::Manifests => "manifests",
            Area::Pending => "pending",
            Area::Gc => "gc",
        }
    }
}

/// What copies, restores and collections need of the place chunks are stored. Every
/// method works on names the caller checked ([`super::check_name`]); `Ok(false)` answers
/// "was not there" where that is an expected outcome rather than an error. Everything
/// here maps onto NFSv3: LOOKUP, CREATE (guarded), WRITE + COMMIT, READ, RENAME, REMOVE,
/// READDIRPLUS.
pub trait ChunkStore: Send + Sync {
    /// Where the store is, for messages.
    fn describe(&self) -> String;

    /// Stores `data` as chunk `hash` unless it is there; `true` when it was written. The
    /// chunk is visible under its name only after [`ChunkStore::flush`], and then whole.
    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error>;
    /// Makes every chunk put so far durable and visible under its name.
    fn flush(&self) -> Result<(), Error>;
    /// Whether chunk `hash` is stored (and flushed). Asked by copies, which hold a lease:
    /// a store may answer from a listing of its chunks taken after it last created a file
    /// in [`Area::Pending`] (a copy's lease), kept up to date with its own flushes and
    /// removals. That listing stays true while the lease is held: no collection sweeps
    /// then (see [`super`]), so a chunk listed is still there when the manifest commits.
    /// A chunk another process stored since is answered absent and written again.
    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error>;
    /// Chunk `hash`'s bytes as stored, unchecked; `None` when absent. At most `limit`
    /// bytes plus one are read, so a chunk longer than expected is seen as such.
    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error>;
    /// Hints that `chunks` are read next, in this order; returns how many of them (from
    /// the first) the store fetched ahead, which the caller reads before it hints again.
    /// What was fetched is served by [`ChunkStore::read_chunk_raw`], unchecked as ever;
    /// a failure here is not reported (the ordinary read reports it). A store that does not
    /// read ahead returns 0.
    fn read_ahead(&self, chunks: &[ChunkRef]) -> usize {
        let _ = chunks;
        0
    }
    /// Every stored chunk's hash, each once, in no particular order.
    fn list_chunks(&self) -> Result<Vec<Hash>, Error>;
    /// Removes chunk `hash`; `false` when it was not there.
    fn remove_chunk(&self, hash: &Hash) -> Result<bool, Error>;
    /// Removes what copies that are no longer running left unflushed. Called only by a
    /// collection that holds its marker with no lease left.
    fn remove_abandoned_uploads(&self) -> Result<u64, Error>;

    /// Creates `name` in `area` with `bytes`, durably; `false` (and nothing written) when
    /// it exists.
    fn create_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error>;
    /// Replaces the content of the existing file `name`, durably, looking it up by name;
    /// `false` when it no longer exists.
    fn rewrite_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error>;
    /// The content of `name`; `None` when absent.
    fn read_file(&self, area: Area, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// The names in `area` (temporary names of the store's own excluded).
    fn list_files(&self, area: Area) -> Result<Vec<String>, Error>;
    /// Renames a file, replacing `to` if it exists, durably; `false` when `from` is gone.
    /// Of two renames of the same file, exactly one succeeds.
    fn rename_file(&self, from: (Area, &str), to: (Area, &str)) -> Result<bool, Error>;
    /// Removes `name`, durably; `false` when it was not there.
    fn remove_file(&self, area: Area, name: &str) -> Result<bool, Error>;

    /// Chunk `hash` of `manifest`, `len` bytes long, read and checked against its hash.
    fn read_chunk(&self, hash: &Hash, len: usize, manifest: &str) -> Result<Vec<u8>, Error> {
        let manifest = manifest.to_string();
        let Some(data) = self.read_chunk_raw(hash, len)? else {
            return Err(Error::ChunkMissing { chunk: *hash, manifest });
        };
        if data.len() != len {
            return Err(Error::ChunkLength { chunk: *hash, manifest, expected: len, found: data.len() });
        }
        let actual = Hash::of(&data);
        if actual != *hash {
            return Err(Error::ChunkCorrupt { chunk: *hash, manifest, actual, len: data.len() });
        }
        Ok(data)
    }
}

/// A store in a directory of a local (or kernel-mounted) filesystem:
/// `chunks/ab/<hash>`, `manifests/<name>`, `pending/<name>`, `gc/<name>`, and
/// `uploads/<instance>/<hash>` for chunks put but not yet flushed.
pub struct DirStore {
    root: PathBuf,
    /// This instance's upload directory name.
    instance: String,
    /// Chunks put since the last flush.
    unflushed: Mutex<HashSet<Hash>>,
    /// Held for a whole flush: two copies sharing this instance flush one at a time.
    flushing: Mutex<()>,
}

fn exists(path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat", path.display())(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir.display()))
}

fn absent_ok<T>(r: io::Result<T>, op: &'static str, path: &Path) -> Result<bool, Error> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(op, path.display())(e)),
    }
}

impl DirStore {
    /// Opens the store at `root`, creating it and its directories when missing.
    pub fn open(root: &Path) -> Result<DirStore, Error> {
        fs::create_dir_all(root).map_err(io_err("create directory", root.display()))?;
        for sub in ["chunks", "uploads", "manifests", "pending", "gc"] {
            let dir = root.join(sub);
            match fs::create_dir(&dir) {
                Ok(()) => sync_dir(root)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create directory", dir.display())(e)),
            }
        }
        Ok(DirStore {
            root: root.to_path_buf(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            unflushed: Mutex::new(HashSet::new()),
            flushing: Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where chunk `hash` lives once flushed.
    pub fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let name = hash.to_string();
        self.root.join("chunks").join(&name[..2]).join(name)
    }

    fn upload_dir(&self) -> PathBuf {
        self.root.join("uploads").join(&self.instance)
    }

    fn file(&self, area: Area, name: &str) -> PathBuf {
        self.root.join(area.dir()).join(name)
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, HashSet<Hash>> {
        self.unflushed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn syncfs(&self) -> Result<(), Error> {
        let root = File::open(&self.root).map_err(io_err("open", self.root.display()))?;
        nix::unistd::syncfs(&root).map_err(|e| io_err("syncfs", self.root.display())(e.into()))
    }
}

impl ChunkStore for DirStore {
    fn describe(&self) -> String {
        format!("directory store {}", self.root.display())
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error> {
        if self.unflushed().contains(hash) || exists(&self.chunk_path(hash))? {
            return Ok(false);
        }
        let dir = self.upload_dir();
        let path = dir.join(hash.to_string());
        let write = || -> io::Result<()> {
            let mut f = match File::create(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    File::create(&path)?
                }
                r => r?,
            };
            f.write_all(data)
        };
        write().map_err(io_err("write chunk", path.display()))?;
        self.unflushed().insert(*hash);
        Ok(true)
    }

    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pending: Vec<Hash> = self.unflushed().iter().copied().collect();
        if pending.is_empty() {
            return Ok(());
        }
        // One syncfs makes every upload's data durable before any gets its final name,
        // far cheaper than an fsync per chunk; a second makes the renames durable.
        self.syncfs()?;
        crate::failpoint::hit("archive.store.flush.synced").map_err(io_err("flush", self.root.display()))?;
        let dir = self.upload_dir();
        for hash in &pending {
            let to = self.chunk_path(hash);
            let from = dir.join(hash.to_string());
            let rename = || -> io::Result<()> {
                match fs::rename(&from, &to) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => {
                        Err(io::Error::new(io::ErrorKind::NotFound, "upload removed (by a collection?)"))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir_all(to.parent().unwrap_or(&self.root))?;
                        fs::rename(&from, &to)
                    }
                    r => r,
                }
            };
            rename().map_err(io_err("rename chunk", from.display()))?;
        }
        self.syncfs()?;
        let mut unflushed = self.unflushed();
        for hash in &pending {
            unflushed.remove(hash);
        }
        if unflushed.is_empty() {
            let _ = fs::remove_dir(&dir);
        }
        Ok(())
    }

    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        exists(&self.chunk_path(hash))
    }

    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        let path = self.chunk_path(hash);
        let file = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            r => r.map_err(io_err("open chunk", path.display()))?,
        };
        let mut data = Vec::with_capacity(limit + 1);
        file.take(limit as u64 + 1).read_to_end(&mut data).map_err(io_err("read chunk", path.display()))?;
        Ok(Some(data))
    }

    fn list_chunks(&self) -> Result<Vec<Hash>, Error> {
        let top = self.root.join("chunks");
        let mut out = Vec::new();
        for prefix in fs::read_dir(&top).map_err(io_err("list", top.display()))? {
            let prefix = prefix.map_err(io_err("list", top.display()))?.path();
            for entry in fs::read_dir(&prefix).map_err(io_err("list", prefix.display()))? {
                let entry = entry.map_err(io_err("list", prefix.display()))?;
                // Anything else in the chunk directories is not a chunk and not ours to touch.
                if let Some(hash) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    fn remove_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let path = self.chunk_path(hash);
        absent_ok(fs::remove_file(&path), "remove chunk", &path)
    }

    fn remove_abandoned_uploads(&self) -> Result<u64, Error> {
        let top = self.root.join("uploads");
        let mut removed = 0;
        for entry in fs::read_dir(&top).map_err(io_err("list", top.display()))? {
            let path = entry.map_err(io_err("list", top.display()))?.path();
            if path.file_name().and_then(|n| n.to_str()) == Some(&self.instance) {
                continue;
            }
            // remove_dir_all does not follow symlinks.
            fs::remove_dir_all(&path).map_err(io_err("remove upload", path.display()))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn create_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error> {
        let path = self.file(area, name);
        let tmp = self.file(area, &format!(".{name}.{}.tmp", self.instance));
        let mut f = File::create(&tmp).map_err(io_err("create", tmp.display()))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io_err("write", tmp.display()))?;
        drop(f);
        // link(2) never replaces: the file appears whole, and only if it was absent.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            r => r.map_err(io_err("create", path.display()))?,
        }
        sync_dir(&self.root.join(area.dir()))?;
        Ok(true)
    }

    fn rewrite_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error> {
        let path = self.file(area, name);
        let mut f = match OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            r => r.map_err(io_err("open", path.display()))?,
        };
        let mut write = || -> io::Result<()> {
            f.set_len(0)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().map_err(io_err("rewrite", path.display()))?;
        Ok(true)
    }

    fn read_file(&self, area: Area, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.file(area, name);
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            r => r.map(Some).map_err(io_err("read", path.display())),
        }
    }

    fn list_files(&self, area: Area) -> Result<Vec<String>, Error> {
        let dir = self.root.join(area.dir());
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", dir.display()))? {
            let entry = entry.map_err(io_err("list", dir.display()))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    fn rename_file(&self, from: (Area, &str), to: (Area, &str)) -> Result<bool, Error> {
        let (src, dst) = (self.file(from.0, from.1), self.file(to.0, to.1));
        if !absent_ok(fs::rename(&src, &dst), "rename", &src)? {
            return Ok(false);
        }
        sync_dir(&self.root.join(to.0.dir()))?;
        if from.0 != to.0 {
            sync_dir(&self.root.join(from.0.dir()))?;
        }
        Ok(true)
    }

    fn remove_file(&self, area: Area, name: &str) -> Result<bool, Error> {
        let path = self.file(area, name);
        if !absent_ok(fs::remove_file(&path), "remove", &path)? {
            return Ok(false);
        }
        sync_dir(&self.root.join(area.dir()))?;
        Ok(true)
    }
}
