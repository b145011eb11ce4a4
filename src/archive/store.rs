//! Where copies live: chunks named by their hash and small named files (manifests, leases,
//! collection markers), behind a trait an NFSv3 client can implement.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::manifest::ChunkRef;
use super::{Error, Hash, io_err, pack};

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

/// What a store's listing of `packs/` found: a pack and its index, or a file there whose
/// index could not be read (never removed: what it holds is unknown).
#[derive(Debug)]
pub enum Listed {
    Pack(pack::Index),
    Damaged { name: Hash, problem: String },
}

/// What copies, restores and collections need of the place chunks are stored. Every
/// method works on names the caller checked ([`super::check_name`]); `Ok(false)` answers
/// "was not there" where that is an expected outcome rather than an error. Everything
/// here maps onto NFSv3: LOOKUP, CREATE (guarded), WRITE + COMMIT, READ, RENAME, REMOVE,
/// READDIRPLUS.
///
/// Chunks are stored in packs ([`pack`]); stores written before packs hold them one per
/// file (`chunks/ab/<hash>`, "loose"), which every store still reads and collects.
pub trait ChunkStore: Send + Sync {
    /// Where the store is, for messages.
    fn describe(&self) -> String;

    /// Stores `data` as chunk `hash` unless it is there; `true` when it was written. The
    /// chunk is visible only after [`ChunkStore::flush`], and then whole.
    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error>;
    /// Makes every chunk put so far durable and visible: its pack is written under a
    /// temporary name, made durable, then renamed into `packs/`.
    fn flush(&self) -> Result<(), Error>;
    /// Whether chunk `hash` is stored (and flushed). Asked by copies, which hold a lease:
    /// a store may answer from a listing of its chunks taken after it last created a file
    /// in [`Area::Pending`] (a copy's lease), kept up to date with its own flushes and
    /// removals. That listing stays true while the lease is held: no collection sweeps
    /// or rewrites a pack then (see [`super`]), so a chunk listed is still there when the
    /// manifest commits. A chunk another process stored since is answered absent and
    /// written again.
    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error>;
    /// Chunk `hash`'s bytes as stored, unchecked; `None` when absent. A loose chunk is read
    /// to at most `limit` bytes plus one, so one longer than expected is seen as such; a
    /// packed one is as long as its pack's index says.
    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error>;
    /// Hints that `chunks` are read next, in this order; returns how many of them (from
    /// the first) the store considered, which the caller reads before it hints again.
    /// What was fetched is served by [`ChunkStore::read_chunk_raw`], unchecked as ever;
    /// a failure here is not reported (the ordinary read reports it). A store that does not
    /// read ahead returns 0.
    fn read_ahead(&self, chunks: &[ChunkRef]) -> usize {
        let _ = chunks;
        0
    }
    /// Every loose chunk's hash (the layout before packs), listed now.
    fn list_loose(&self) -> Result<Vec<Hash>, Error>;
    /// Removes loose chunk `hash`; `false` when it was not there.
    fn remove_loose(&self, hash: &Hash) -> Result<bool, Error>;
    /// Every pack in `packs/` with its index, listed now.
    fn list_packs(&self) -> Result<Vec<Listed>, Error>;
    /// Writes `pack` under its name, durably, as a flush does; for a collection that
    /// rewrites packs.
    fn write_pack(&self, pack: pack::Sealed) -> Result<(), Error>;
    /// Removes pack `name`, durably; `false` when it was not there.
    fn remove_pack(&self, name: &Hash) -> Result<bool, Error>;
    /// Removes what copies that are no longer running left unflushed. Called only by a
    /// collection that holds its marker with no lease left.
    fn remove_abandoned_uploads(&self) -> Result<u64, Error>;

    /// Every stored chunk's hash, loose or packed, each once, in no particular order.
    fn list_chunks(&self) -> Result<Vec<Hash>, Error> {
        let mut all: HashSet<Hash> = self.list_loose()?.into_iter().collect();
        for listed in self.list_packs()? {
            if let Listed::Pack(index) = listed {
                all.extend(index.entries.iter().map(|e| e.hash));
            }
        }
        Ok(all.into_iter().collect())
    }

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

/// Where each packed chunk is, as a store last listed `packs/` (and has flushed since).
#[derive(Default, Clone)]
pub(crate) struct PackMap {
    pub chunks: std::collections::HashMap<Hash, (Hash, u64, u32)>,
}

impl PackMap {
    pub fn add(&mut self, index: &pack::Index) {
        for e in &index.entries {
            self.chunks.insert(e.hash, (index.name, e.offset, e.len));
        }
    }
}

/// A pack's index read from its head: `read(n)` gives the pack's first `n` bytes (or
/// fewer, when it is shorter); `probe` is how many to read first.
pub(crate) fn read_index(
    name: &Hash,
    probe: Vec<u8>,
    mut read: impl FnMut(usize) -> Result<Vec<u8>, Error>,
) -> Result<Listed, Error> {
    let mut head = probe;
    loop {
        match pack::parse(name, &head) {
            Ok(pack::Parsed::Index(index)) => return Ok(Listed::Pack(index)),
            Ok(pack::Parsed::NeedMore(n)) if head.len() < n => {
                let more = read(n)?;
                if more.len() <= head.len() {
                    let problem = format!("it ends within its index ({} bytes)", more.len());
                    return Ok(Listed::Damaged { name: *name, problem });
                }
                head = more;
            }
            Ok(pack::Parsed::NeedMore(_)) => {
                return Ok(Listed::Damaged { name: *name, problem: "its index does not parse".into() });
            }
            Err(problem) => return Ok(Listed::Damaged { name: *name, problem: problem.to_string() }),
        }
    }
}

/// A store in a directory of a local (or kernel-mounted) filesystem:
/// `packs/<name>`, `manifests/<name>`, `pending/<name>`, `gc/<name>`,
/// `uploads/<instance>/<name>` for packs written but not yet flushed, and `chunks/ab/<hash>`
/// where a store written before packs kept its chunks.
pub struct DirStore {
    root: PathBuf,
    /// This instance's upload directory name.
    instance: String,
    building: Mutex<Building>,
    /// Held for a whole flush: two copies sharing this instance flush one at a time.
    flushing: Mutex<()>,
    /// Packed chunks as listed after this instance last created a lease, with its own
    /// flushes since; `None` until needed.
    packed: Mutex<Option<PackMap>>,
}

/// Chunks put and not yet flushed.
#[derive(Default)]
struct Building {
    pack: pack::Builder,
    /// Packs sealed and written under `uploads/<instance>/`.
    sealed: Vec<pack::Index>,
    /// Every chunk in `pack` or `sealed`.
    names: HashSet<Hash>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The entries of `dir`; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    let list = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(io_err("list", dir.display()))?,
    };
    list.map(|e| e.map_err(io_err("list", dir.display()))).collect()
}

/// Up to `len` bytes of `path` from `offset`; `None` when the file does not exist.
fn read_at(path: &Path, offset: u64, len: usize) -> Result<Option<Vec<u8>>, Error> {
    use std::io::{Seek, SeekFrom};
    let mut file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r.map_err(io_err("open", path.display()))?,
    };
    let mut data = Vec::with_capacity(len);
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(len as u64).read_to_end(&mut data))
        .map_err(io_err("read", path.display()))?;
    Ok(Some(data))
}

impl DirStore {
    /// Opens the store at `root`, creating it and its directories when missing.
    pub fn open(root: &Path) -> Result<DirStore, Error> {
        fs::create_dir_all(root).map_err(io_err("create directory", root.display()))?;
        for sub in ["packs", "uploads", "manifests", "pending", "gc"] {
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
            building: Mutex::new(Building::default()),
            flushing: Mutex::new(()),
            packed: Mutex::new(None),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where chunk `hash` is stored: its file, offset and length (a loose chunk's whole
    /// file), listed now; `None` when it is not stored.
    pub fn chunk_location(&self, hash: &Hash) -> Result<Option<(PathBuf, u64, u64)>, Error> {
        for listed in self.list_packs()? {
            if let Listed::Pack(index) = listed
                && let Some(e) = index.entries.iter().find(|e| e.hash == *hash)
            {
                return Ok(Some((self.pack_path(&index.name), e.offset, u64::from(e.len))));
            }
        }
        let path = self.loose_path(hash);
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(Some((path, 0, meta.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", path.display())(e)),
        }
    }

    fn loose_path(&self, hash: &Hash) -> PathBuf {
        let name = hash.to_string();
        self.root.join("chunks").join(&name[..2]).join(name)
    }

    fn pack_path(&self, name: &Hash) -> PathBuf {
        self.root.join("packs").join(name.to_string())
    }

    fn upload_dir(&self) -> PathBuf {
        self.root.join("uploads").join(&self.instance)
    }

    fn file(&self, area: Area, name: &str) -> PathBuf {
        self.root.join(area.dir()).join(name)
    }

    fn syncfs(&self) -> Result<(), Error> {
        let root = File::open(&self.root).map_err(io_err("open", self.root.display()))?;
        nix::unistd::syncfs(&root).map_err(|e| io_err("syncfs", self.root.display())(e.into()))
    }

    /// Writes a sealed pack under `uploads/<instance>/`, to be flushed.
    fn upload(&self, b: &mut Building, sealed: pack::Sealed) -> Result<(), Error> {
        let dir = self.upload_dir();
        let path = dir.join(sealed.index.name.to_string());
        let write = || -> io::Result<()> {
            let mut f = match File::create(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    File::create(&path)?
                }
                r => r?,
            };
            f.write_all(&sealed.bytes)
        };
        write().map_err(io_err("write pack", path.display()))?;
        b.sealed.push(sealed.index);
        Ok(())
    }

    /// The packed chunks, listed when this instance has no listing.
    fn with_packed<T>(&self, f: impl FnOnce(&PackMap) -> T) -> Result<T, Error> {
        let mut packed = lock(&self.packed);
        if packed.is_none() {
            let mut map = PackMap::default();
            for listed in self.list_packs()? {
                if let Listed::Pack(index) = listed {
                    map.add(&index);
                }
            }
            *packed = Some(map);
        }
        Ok(f(packed.get_or_insert_with(PackMap::default)))
    }
}

impl ChunkStore for DirStore {
    fn describe(&self) -> String {
        format!("directory store {}", self.root.display())
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error> {
        if lock(&self.building).names.contains(hash) || self.has_chunk(hash)? {
            return Ok(false);
        }
        let mut b = lock(&self.building);
        if !b.names.insert(*hash) {
            return Ok(false);
        }
        b.pack.push(*hash, data);
        if b.pack.full() {
            let sealed = b.pack.seal();
            self.upload(&mut b, sealed)?;
        }
        Ok(true)
    }

    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.flushing);
        let mut b = lock(&self.building);
        if !b.pack.is_empty() {
            let sealed = b.pack.seal();
            self.upload(&mut b, sealed)?;
        }
        if b.sealed.is_empty() {
            return Ok(());
        }
        // One syncfs makes every upload's data durable before any gets its final name;
        // a second makes the renames durable.
        self.syncfs()?;
        crate::failpoint::hit("archive.store.flush.synced").map_err(io_err("flush", self.root.display()))?;
        let dir = self.upload_dir();
        let packs = self.root.join("packs");
        for index in &b.sealed {
            let from = dir.join(index.name.to_string());
            let rename = || -> io::Result<()> {
                match fs::rename(&from, self.pack_path(&index.name)) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => {
                        Err(io::Error::new(io::ErrorKind::NotFound, "upload removed (by a collection?)"))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir_all(&packs)?;
                        fs::rename(&from, self.pack_path(&index.name))
                    }
                    r => r,
                }
            };
            rename().map_err(io_err("rename pack", from.display()))?;
        }
        self.syncfs()?;
        let sealed = std::mem::take(&mut b.sealed);
        if let Some(map) = lock(&self.packed).as_mut() {
            for index in &sealed {
                map.add(index);
            }
        }
        b.names.clear();
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        Ok(self.with_packed(|p| p.chunks.contains_key(hash))? || exists(&self.loose_path(hash))?)
    }

    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        // A collection may have rewritten the pack since this instance listed: the chunk
        // is then in a pack written before the old one went, which a new listing finds.
        for _ in 0..2 {
            if let Some((name, offset, len)) = self.with_packed(|p| p.chunks.get(hash).copied())?
                && let Some(data) = read_at(&self.pack_path(&name), offset, len as usize)?
            {
                return Ok(Some(data));
            }
            if let Some(data) = read_at(&self.loose_path(hash), 0, limit + 1)? {
                return Ok(Some(data));
            }
            *lock(&self.packed) = None;
        }
        Ok(None)
    }

    fn list_loose(&self) -> Result<Vec<Hash>, Error> {
        let mut out = Vec::new();
        for prefix in entries(&self.root.join("chunks"))? {
            for entry in entries(&prefix.path())? {
                // Anything else in the chunk directories is not a chunk and not ours to touch.
                if let Some(hash) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    fn remove_loose(&self, hash: &Hash) -> Result<bool, Error> {
        let path = self.loose_path(hash);
        absent_ok(fs::remove_file(&path), "remove chunk", &path)
    }

    fn list_packs(&self) -> Result<Vec<Listed>, Error> {
        let mut out = Vec::new();
        for entry in entries(&self.root.join("packs"))? {
            let Some(name) = entry.file_name().to_str().and_then(|n| n.parse::<Hash>().ok()) else { continue };
            let path = entry.path();
            let read = |n: usize| Ok(read_at(&path, 0, n)?.unwrap_or_default());
            let probe = read(pack::INDEX_PROBE as usize)?;
            out.push(read_index(&name, probe, read)?);
        }
        Ok(out)
    }

    fn write_pack(&self, sealed: pack::Sealed) -> Result<(), Error> {
        {
            let mut b = lock(&self.building);
            self.upload(&mut b, sealed)?;
        }
        self.flush()
    }

    fn remove_pack(&self, name: &Hash) -> Result<bool, Error> {
        let path = self.pack_path(name);
        if !absent_ok(fs::remove_file(&path), "remove pack", &path)? {
            return Ok(false);
        }
        sync_dir(&self.root.join("packs"))?;
        // Its chunks may be in other packs too: the next lookup lists again.
        *lock(&self.packed) = None;
        Ok(true)
    }

    fn remove_abandoned_uploads(&self) -> Result<u64, Error> {
        let mut removed = 0;
        for entry in entries(&self.root.join("uploads"))? {
            let path = entry.path();
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
        if area == Area::Pending {
            // A copy announces itself: a listing taken before may be older than a
            // collection that ran while this instance held no lease (see `has_chunk`).
            *lock(&self.packed) = None;
        }
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
