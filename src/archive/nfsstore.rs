//! A [`ChunkStore`] on an NFSv3 export through berth's userspace client: no kernel
//! mount, the same layout as [`super::store::DirStore`] (a directory written by one can
//! be read by the other).
//!
//! One synchronous RPC per step per chunk made a copy cost about five round trips per
//! 8 KiB chunk, so the store works in batches, each a pipeline of calls on the one
//! connection ([`Client::write_many`] and the like):
//! - Which chunks exist is learned once per copy by listing `chunks/` (one READDIRPLUS
//!   listing per prefix directory), not by a LOOKUP per chunk; see [`ChunkStore::has_chunk`]
//!   for why that listing is safe to use.
//! - Chunks put are queued in memory and sent in batches: CREATE of every queued chunk
//!   under `uploads/<instance>/`, then its UNSTABLE WRITEs. A flush sends the rest, COMMITs
//!   every upload, and only then RENAMEs each into `chunks/ab/` (the server makes a RENAME
//!   durable before it answers, RFC 1813): a chunk under its name is whole and durable.
//! - A restore hints the chunks it reads next ([`ChunkStore::read_ahead`]); the store
//!   READs a window of them in one batch, by the handles its listing of `chunks/` gave
//!   (a LOOKUP batch first for chunks the listing did not see).
//!
//! Small files are written FILE_SYNC; a new one appears whole and only if absent through
//! LINK of a temporary file.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::manifest::ChunkRef;
use super::store::{Area, ChunkStore};
use super::{Error, Hash};
use crate::nfs::{Client, Fh, SetAttr};

/// Queued chunks are sent once they hold this many bytes...
const BATCH_BYTES: usize = 4 << 20;
/// ...or this many chunks.
const BATCH_CHUNKS: usize = 512;
/// Chunks a restore's read-ahead fetches in one batch.
const READ_AHEAD: usize = 256;

/// A chunk store in a directory of an NFS export.
pub struct NfsStore {
    client: Mutex<Client>,
    place: String,
    top: HashMap<&'static str, Fh>,
    prefixes: Mutex<HashMap<u8, Fh>>,
    instance: String,
    uploads: Mutex<Uploads>,
    flushing: Mutex<()>,
    present: Mutex<Present>,
    ahead: Mutex<HashMap<Hash, Vec<u8>>>,
    /// The handles of chunks the last listing saw (and this store renamed since), so a
    /// restore's read-ahead READs them without a LOOKUP. A handle gone stale fails its
    /// READ, and the ordinary read looks the chunk up again.
    handles: Mutex<HashMap<Hash, Fh>>,
}

/// Chunks put and not yet renamed into `chunks/`. Lock order: `uploads`, then `client`.
#[derive(Default)]
struct Uploads {
    /// `uploads/<instance>`, made when the first chunk is sent.
    dir: Option<Fh>,
    /// In the order put; an upload leaves when its RENAME succeeded.
    items: Vec<Upload>,
    names: HashSet<Hash>,
    /// Bytes of uploads not yet written.
    queued: usize,
}

struct Upload {
    hash: Hash,
    /// Emptied once written.
    data: Vec<u8>,
    fh: Option<Fh>,
    written: bool,
}

/// What `chunks/` held when listed, kept up to date with this store's own renames and
/// removals. `generation` counts the leases this store created: a listing started before
/// the newest is dropped rather than kept.
#[derive(Default)]
struct Present {
    listed: Option<HashSet<Hash>>,
    generation: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An NFS failure as an archive error: the server out of reach as such, a status with
/// its errno (a full export is ENOSPC), anything else as it was said.
fn nfs_err(op: &'static str, path: impl std::fmt::Display) -> impl FnOnce(crate::nfs::Error) -> Error {
    move |e| {
        if e.is_transport() {
            return Error::Unreachable { store: path.to_string(), reason: format!("{op}: {e}") };
        }
        let source = match e.status().and_then(crate::nfs::types::Status::errno) {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e.to_string()),
        };
        Error::Io { op, path: path.to_string(), source }
    }
}

/// `Ok(true)`, or `Ok(false)` when the server answered NOENT.
fn found(r: crate::nfs::Result<()>, op: &'static str, path: impl std::fmt::Display) -> Result<bool, Error> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_noent() => Ok(false),
        Err(e) => Err(nfs_err(op, path)(e)),
    }
}

fn mkdir_p(c: &mut Client, dir: &Fh, name: &[u8], shown: &str) -> Result<Fh, Error> {
    if let Some((fh, _)) = c.lookup(dir, name).map_err(nfs_err("look up", shown))? {
        return Ok(fh);
    }
    match c.mkdir(dir, name, 0o755) {
        Ok((fh, _)) => Ok(fh),
        Err(e) if e.is_exist() => c
            .lookup(dir, name)
            .map_err(nfs_err("look up", shown))?
            .map(|(fh, _)| fh)
            .ok_or_else(|| nfs_err("create directory", shown)(e)),
        Err(e) => Err(nfs_err("create directory", shown)(e)),
    }
}

/// Writes `data` at `start`, one call at a time.
fn write_all(c: &mut Client, fh: &Fh, start: u64, data: &[u8], stable: bool, shown: &str) -> Result<(), Error> {
    let step = c.io_size.max(4096) as usize;
    let mut off = 0;
    while off < data.len() {
        let end = (off + step).min(data.len());
        let n = c.write(fh, start + off as u64, &data[off..end], stable).map_err(nfs_err("write", shown))?;
        if n == 0 {
            return Err(nfs_err("write", shown)(crate::nfs::Error::Stopped));
        }
        off += n as usize;
    }
    Ok(())
}

fn read_all(c: &mut Client, fh: &Fh, limit: usize, shown: &str) -> Result<Vec<u8>, Error> {
    let step = c.io_size.max(4096);
    let mut out = Vec::new();
    loop {
        let (data, eof) = c.read(fh, out.len() as u64, step).map_err(nfs_err("read", shown))?;
        out.extend_from_slice(&data);
        if eof || data.is_empty() || out.len() > limit {
            return Ok(out);
        }
    }
}

impl NfsStore {
    /// Opens (creating what is missing) the store at `path`, a directory relative to
    /// the export's root given as its components.
    pub fn open(mut client: Client, path: &[&[u8]], server: &str) -> Result<NfsStore, Error> {
        let place = format!(
            "NFS store {server}:/{}",
            path.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>().join("/")
        );
        let mut dir = client.root.clone();
        for part in path {
            dir = mkdir_p(&mut client, &dir, part, &place)?;
        }
        let mut top = HashMap::new();
        for sub in ["chunks", "uploads", "manifests", "pending", "gc"] {
            top.insert(sub, mkdir_p(&mut client, &dir, sub.as_bytes(), &format!("{place}/{sub}"))?);
        }
        Ok(NfsStore {
            client: Mutex::new(client),
            place,
            top,
            prefixes: Mutex::new(HashMap::new()),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            uploads: Mutex::new(Uploads::default()),
            flushing: Mutex::new(()),
            present: Mutex::new(Present::default()),
            ahead: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        })
    }

    fn top(&self, name: &str) -> Result<&Fh, Error> {
        self.top.get(name).ok_or_else(|| Error::Unsupported { path: self.place.clone(), what: format!("no {name}") })
    }

    fn shown(&self, rest: impl std::fmt::Display) -> String {
        format!("{}/{rest}", self.place)
    }

    /// The handle of `chunks/<first byte as hex>`, made when `create`.
    fn prefix(&self, c: &mut Client, hash: &Hash, create: bool) -> Result<Option<Fh>, Error> {
        if let Some(fh) = lock(&self.prefixes).get(&hash.0[0]) {
            return Ok(Some(fh.clone()));
        }
        let name = format!("{:02x}", hash.0[0]);
        let shown = self.shown(format!("chunks/{name}"));
        let fh = if create {
            Some(mkdir_p(c, self.top("chunks")?, name.as_bytes(), &shown)?)
        } else {
            c.lookup(self.top("chunks")?, name.as_bytes()).map_err(nfs_err("look up", &shown))?.map(|(fh, _)| fh)
        };
        if let Some(fh) = &fh {
            lock(&self.prefixes).insert(hash.0[0], fh.clone());
        }
        Ok(fh)
    }

    fn area(&self, area: Area) -> Result<&Fh, Error> {
        self.top(area.dir())
    }

    fn upload_shown(&self, hash: &Hash) -> String {
        self.shown(format!("uploads/{}/{hash}", self.instance))
    }

    /// Sends the queued chunks: CREATE of those without a file, then WRITE of those not
    /// written, each step one pipelined batch. What failed stays queued for the next try.
    fn send(&self, up: &mut Uploads, c: &mut Client) -> Result<(), Error> {
        if up.queued == 0 && up.items.iter().all(|u| u.written) {
            return Ok(());
        }
        let dir = if let Some(fh) = &up.dir {
            fh.clone()
        } else {
            let shown = self.shown(format!("uploads/{}", self.instance));
            let fh = mkdir_p(c, self.top("uploads")?, self.instance.as_bytes(), &shown)?;
            up.dir = Some(fh.clone());
            fh
        };
        let unmade: Vec<usize> = (0..up.items.len()).filter(|&i| up.items[i].fh.is_none()).collect();
        if !unmade.is_empty() {
            let names: Vec<String> = unmade.iter().map(|&i| up.items[i].hash.to_string()).collect();
            let refs: Vec<&[u8]> = names.iter().map(String::as_bytes).collect();
            let made = c.create_many(&dir, &refs, 0o644).map_err(nfs_err("create", self.shown("uploads")))?;
            let mut first = None;
            for (&i, r) in unmade.iter().zip(made) {
                match r {
                    Ok(fh) => up.items[i].fh = Some(fh),
                    Err(e) => {
                        first.get_or_insert_with(|| nfs_err("create", self.upload_shown(&up.items[i].hash))(e));
                    }
                }
            }
            if let Some(e) = first {
                return Err(e);
            }
        }
        let step = c.io_size.max(4096) as usize;
        let mut writes = Vec::new();
        let mut owner = Vec::new();
        for (i, u) in up.items.iter().enumerate() {
            if let (false, Some(fh)) = (u.written, &u.fh) {
                for (n, piece) in u.data.chunks(step).enumerate() {
                    writes.push((fh, (n * step) as u64, piece));
                    owner.push(i);
                }
            }
        }
        let done = c.write_many(&writes, false).map_err(nfs_err("write", self.shown("uploads")))?;
        let mut failed = HashMap::new();
        for ((&i, w), r) in owner.iter().zip(&writes).zip(done) {
            match r {
                Ok(n) if n as usize == w.2.len() => {}
                // A short write (the server may take less): the rest, one call at a time.
                Ok(n) => {
                    let fh = w.0.clone();
                    let shown = self.upload_shown(&up.items[i].hash);
                    if let Err(e) = write_all(c, &fh, w.1 + u64::from(n), &w.2[n as usize..], false, &shown) {
                        failed.entry(i).or_insert(e);
                    }
                }
                Err(e) => {
                    failed.entry(i).or_insert_with(|| nfs_err("write", self.upload_shown(&up.items[i].hash))(e));
                }
            }
        }
        drop(writes);
        for i in owner {
            if !failed.contains_key(&i) && !up.items[i].written {
                up.queued -= up.items[i].data.len();
                up.items[i].written = true;
                up.items[i].data = Vec::new();
            }
        }
        match failed.into_values().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The handles of the prefix directories of `hashes`, made where missing.
    fn prefixes_for(&self, c: &mut Client, hashes: impl Iterator<Item = Hash>) -> Result<HashMap<u8, Fh>, Error> {
        let mut out = HashMap::new();
        for hash in hashes {
            if let std::collections::hash_map::Entry::Vacant(v) = out.entry(hash.0[0]) {
                v.insert(self.prefix(c, &hash, true)?.unwrap_or_else(|| self.top["chunks"].clone()));
            }
        }
        Ok(out)
    }

    /// Every chunk in `chunks/`, listed now (their handles kept in `handles`).
    fn listing(&self) -> Result<HashSet<Hash>, Error> {
        let mut c = lock(&self.client);
        let mut out = HashSet::new();
        let mut handles = HashMap::new();
        let prefixes = c.readdirplus(self.top("chunks")?).map_err(nfs_err("list", self.shown("chunks")))?;
        for p in prefixes {
            if p.name.len() != 2 || !p.name.iter().all(u8::is_ascii_hexdigit) {
                continue;
            }
            let shown = self.shown(format!("chunks/{}", String::from_utf8_lossy(&p.name)));
            let fh = match p.fh {
                Some(fh) => fh,
                None => match c.lookup(self.top("chunks")?, &p.name).map_err(nfs_err("look up", &shown))? {
                    Some((fh, _)) => fh,
                    None => continue,
                },
            };
            if let Ok(Ok(byte)) = std::str::from_utf8(&p.name).map(|n| u8::from_str_radix(n, 16)) {
                lock(&self.prefixes).insert(byte, fh.clone());
            }
            for e in c.readdirplus(&fh).map_err(nfs_err("list", &shown))? {
                if let Some(hash) = std::str::from_utf8(&e.name).ok().and_then(|n| n.parse().ok()) {
                    out.insert(hash);
                    if let Some(fh) = e.fh {
                        handles.insert(hash, fh);
                    }
                }
            }
        }
        *lock(&self.handles) = handles;
        Ok(out)
    }
}

impl ChunkStore for NfsStore {
    fn describe(&self) -> String {
        self.place.clone()
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error> {
        if lock(&self.uploads).names.contains(hash) || self.has_chunk(hash)? {
            return Ok(false);
        }
        let mut up = lock(&self.uploads);
        if !up.names.insert(*hash) {
            return Ok(false);
        }
        up.items.push(Upload { hash: *hash, data: data.to_vec(), fh: None, written: false });
        up.queued += data.len();
        let unsent = up.items.iter().filter(|u| !u.written).count();
        if up.queued >= BATCH_BYTES || unsent >= BATCH_CHUNKS {
            let mut c = lock(&self.client);
            self.send(&mut up, &mut c)?;
        }
        Ok(true)
    }

    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.flushing);
        let mut up = lock(&self.uploads);
        if up.items.is_empty() {
            return Ok(());
        }
        let mut c = lock(&self.client);
        self.send(&mut up, &mut c)?;
        let files: Vec<&Fh> = up.items.iter().filter_map(|u| u.fh.as_ref()).collect();
        let committed = c.commit_many(&files).map_err(nfs_err("commit", self.shown("uploads")))?;
        for (u, r) in up.items.iter().zip(committed) {
            r.map_err(nfs_err("commit", self.upload_shown(&u.hash)))?;
        }
        crate::failpoint::hit("archive.store.flush.synced").map_err(|e| Error::Io {
            op: "flush",
            path: self.place.clone(),
            source: e,
        })?;
        let dirs = self.prefixes_for(&mut c, up.items.iter().map(|u| u.hash))?;
        let names: Vec<String> = up.items.iter().map(|u| u.hash.to_string()).collect();
        let up_dir = up.dir.clone().ok_or_else(|| Error::Unsupported {
            path: self.place.clone(),
            what: "chunks to flush but no upload directory".into(),
        })?;
        // One RENAME at a time: ganesha 4.3 answers some of several RENAMEs in flight a
        // second late (docs/performance.md), far more than the round trips cost.
        let mut first = None;
        let mut moved = Vec::new();
        for (u, name) in up.items.iter().zip(&names) {
            match c.rename(&up_dir, name.as_bytes(), &dirs[&u.hash.0[0]], name.as_bytes()) {
                Ok(()) => {
                    moved.push(u.hash);
                    if let Some(fh) = &u.fh {
                        lock(&self.handles).insert(u.hash, fh.clone());
                    }
                }
                Err(e) => {
                    first = Some(nfs_err("rename chunk", self.upload_shown(&u.hash))(e));
                    break;
                }
            }
        }
        let gone: HashSet<Hash> = moved.iter().copied().collect();
        up.items.retain(|u| !gone.contains(&u.hash));
        for h in &moved {
            up.names.remove(h);
        }
        if let Some(listed) = lock(&self.present).listed.as_mut() {
            listed.extend(moved);
        }
        if let Some(e) = first {
            return Err(e);
        }
        let _ = c.rmdir(self.top("uploads")?, self.instance.as_bytes());
        up.dir = None;
        Ok(())
    }

    /// From a listing of `chunks/` taken after this store last created a lease (see the
    /// trait), kept up to date with this store's own flushes and removals.
    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let generation = {
            let present = lock(&self.present);
            if let Some(listed) = &present.listed {
                return Ok(listed.contains(hash));
            }
            present.generation
        };
        let listed = self.listing()?;
        let found = listed.contains(hash);
        let mut present = lock(&self.present);
        if present.generation == generation {
            present.listed = Some(listed);
        }
        Ok(found)
    }

    fn read_ahead(&self, chunks: &[ChunkRef]) -> usize {
        if lock(&self.handles).is_empty() {
            // One listing gives every chunk's handle: far cheaper than a LOOKUP each.
            let _ = self.listing();
        }
        let mut c = lock(&self.client);
        let limit = c.io_size.max(4096) as usize;
        let window: Vec<&ChunkRef> = chunks.iter().take(READ_AHEAD).collect();
        let mut wanted: Vec<Hash> = Vec::new();
        let mut seen = HashSet::new();
        for r in &window {
            if (r.len as usize) < limit && seen.insert(r.hash) {
                wanted.push(r.hash);
            }
        }
        let mut ahead = lock(&self.ahead);
        ahead.clear();
        if wanted.len() < 2 {
            return 0;
        }
        let mut files = Vec::new();
        let mut unknown = Vec::new();
        {
            let handles = lock(&self.handles);
            for h in wanted {
                match handles.get(&h) {
                    Some(fh) => files.push((h, fh.clone())),
                    None => unknown.push(h),
                }
            }
        }
        let mut dirs = HashMap::new();
        for h in &unknown {
            if let std::collections::hash_map::Entry::Vacant(v) = dirs.entry(h.0[0]) {
                match self.prefix(&mut c, h, false) {
                    Ok(Some(fh)) => {
                        v.insert(fh);
                    }
                    _ => return 0,
                }
            }
        }
        let names: Vec<String> = unknown.iter().map(Hash::to_string).collect();
        let lookups: Vec<(&Fh, &[u8])> =
            unknown.iter().zip(&names).map(|(h, n)| (&dirs[&h.0[0]], n.as_bytes())).collect();
        let Ok(found) = c.lookup_many(&lookups) else { return 0 };
        for (h, r) in unknown.iter().zip(found) {
            if let Ok(Some(fh)) = r {
                files.push((*h, fh));
            }
        }
        let lens: HashMap<Hash, u32> = window.iter().map(|r| (r.hash, r.len)).collect();
        let reads: Vec<(&Fh, u64, u32)> = files.iter().map(|(h, fh)| (fh, 0, lens[h] + 1)).collect();
        let Ok(got) = c.read_many(&reads) else { return 0 };
        for ((h, _), r) in files.iter().zip(got) {
            // Only a whole chunk (the file ended, or it is longer than it should be) is
            // kept; anything else is read again the ordinary way, which reports it.
            if let Ok((data, eof)) = r
                && (eof || data.len() > lens[h] as usize)
            {
                ahead.insert(*h, data);
            }
        }
        window.len()
    }

    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        if let Some(data) = lock(&self.ahead).remove(hash) {
            return Ok(Some(data));
        }
        let mut c = lock(&self.client);
        let Some(dir) = self.prefix(&mut c, hash, false)? else { return Ok(None) };
        let name = hash.to_string();
        let shown = self.shown(format!("chunks/{}/{name}", &name[..2]));
        let Some((fh, _)) = c.lookup(&dir, name.as_bytes()).map_err(nfs_err("look up", &shown))? else {
            return Ok(None);
        };
        read_all(&mut c, &fh, limit, &shown).map(Some)
    }

    fn list_chunks(&self) -> Result<Vec<Hash>, Error> {
        Ok(self.listing()?.into_iter().collect())
    }

    fn remove_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let mut c = lock(&self.client);
        let Some(dir) = self.prefix(&mut c, hash, false)? else { return Ok(false) };
        let name = hash.to_string();
        let removed = c.remove(&dir, name.as_bytes());
        if let Some(listed) = lock(&self.present).listed.as_mut() {
            listed.remove(hash);
        }
        lock(&self.handles).remove(hash);
        found(removed, "remove chunk", self.shown(format!("chunks/{}/{name}", &name[..2])))
    }

    fn remove_abandoned_uploads(&self) -> Result<u64, Error> {
        let mut c = lock(&self.client);
        let uploads = self.top("uploads")?.clone();
        let mut removed = 0;
        for d in c.readdirplus(&uploads).map_err(nfs_err("list", self.shown("uploads")))? {
            if d.name == b"." || d.name == b".." || d.name == self.instance.as_bytes() {
                continue;
            }
            let shown = self.shown(format!("uploads/{}", String::from_utf8_lossy(&d.name)));
            let Some((fh, _)) = c.lookup(&uploads, &d.name).map_err(nfs_err("look up", &shown))? else { continue };
            for e in c.readdirplus(&fh).map_err(nfs_err("list", &shown))? {
                if e.name != b"." && e.name != b".." {
                    found(c.remove(&fh, &e.name), "remove upload", &shown)?;
                }
            }
            found(c.rmdir(&uploads, &d.name), "remove upload", &shown)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn create_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error> {
        let dir = self.area(area)?.clone();
        let tmp = format!(".{name}.{}.tmp", self.instance);
        let shown = self.shown(format!("{}/{name}", area.dir()));
        if area == Area::Pending {
            // A copy announces itself: a listing of chunks taken before may be older than
            // a collection that ran while this store held no lease (see `has_chunk`).
            let mut present = lock(&self.present);
            present.generation += 1;
            present.listed = None;
        }
        let mut c = lock(&self.client);
        let (fh, _) = c.create(&dir, tmp.as_bytes(), 0o644, false).map_err(nfs_err("create", &shown))?;
        write_all(&mut c, &fh, 0, bytes, true, &shown)?;
        let linked = c.link(&fh, &dir, name.as_bytes());
        let _ = c.remove(&dir, tmp.as_bytes());
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.is_exist() => Ok(false),
            Err(e) => Err(nfs_err("create", &shown)(e)),
        }
    }

    fn rewrite_file(&self, area: Area, name: &str, bytes: &[u8]) -> Result<bool, Error> {
        let dir = self.area(area)?.clone();
        let shown = self.shown(format!("{}/{name}", area.dir()));
        let mut c = lock(&self.client);
        let Some((fh, _)) = c.lookup(&dir, name.as_bytes()).map_err(nfs_err("look up", &shown))? else {
            return Ok(false);
        };
        c.setattr(&fh, &SetAttr { size: Some(0), ..SetAttr::default() }).map_err(nfs_err("truncate", &shown))?;
        write_all(&mut c, &fh, 0, bytes, true, &shown)?;
        Ok(true)
    }

    fn read_file(&self, area: Area, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let dir = self.area(area)?.clone();
        let shown = self.shown(format!("{}/{name}", area.dir()));
        let mut c = lock(&self.client);
        let Some((fh, _)) = c.lookup(&dir, name.as_bytes()).map_err(nfs_err("look up", &shown))? else {
            return Ok(None);
        };
        read_all(&mut c, &fh, super::manifest::MAX_MANIFEST, &shown).map(Some)
    }

    fn list_files(&self, area: Area) -> Result<Vec<String>, Error> {
        let dir = self.area(area)?.clone();
        let entries = lock(&self.client).readdirplus(&dir).map_err(nfs_err("list", self.shown(area.dir())))?;
        let mut out: Vec<String> = entries
            .into_iter()
            .filter_map(|e| String::from_utf8(e.name).ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }

    fn rename_file(&self, from: (Area, &str), to: (Area, &str)) -> Result<bool, Error> {
        let (fd, td) = (self.area(from.0)?.clone(), self.area(to.0)?.clone());
        let r = lock(&self.client).rename(&fd, from.1.as_bytes(), &td, to.1.as_bytes());
        found(r, "rename", self.shown(format!("{}/{}", from.0.dir(), from.1)))
    }

    fn remove_file(&self, area: Area, name: &str) -> Result<bool, Error> {
        let dir = self.area(area)?.clone();
        let r = lock(&self.client).remove(&dir, name.as_bytes());
        found(r, "remove", self.shown(format!("{}/{name}", area.dir())))
    }
}
