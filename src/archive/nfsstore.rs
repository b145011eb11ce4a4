//! A [`ChunkStore`] on an NFSv3 export through berth's userspace client: no kernel
//! mount, the same layout as [`super::store::DirStore`] (a directory written by one can
//! be read by the other).
//!
//! A file costs the server a CREATE, a COMMIT and a RENAME whatever the client does
//! (about 0.4 ms each on nfs-ganesha 4.3; docs/performance.md), so chunks travel in packs
//! ([`super::pack`]) of up to 8 MiB, and every step is a pipeline of calls on the one
//! connection ([`Client::write_many`] and the like):
//! - Which chunks exist is learned once per copy by listing `packs/` and READing every
//!   pack's index in one batch (and `chunks/`, where a store written before packs kept
//!   them), not by a LOOKUP per chunk; see [`ChunkStore::has_chunk`] for why that listing
//!   is safe to use.
//! - Chunks put are gathered into a pack; a full pack is sent at once: a CREATE under
//!   `uploads/<instance>/`, then its UNSTABLE WRITEs in one batch. A flush sends the last
//!   one, COMMITs every upload, and only then RENAMEs each into `packs/` (the server makes
//!   a RENAME durable before it answers, RFC 1813): a pack under its name is whole and
//!   durable.
//! - A restore hints the chunks it reads next ([`ChunkStore::read_ahead`]); the store
//!   READs the ranges of their packs in one batch, neighbouring chunks in one READ.
//!
//! Small files are written FILE_SYNC; a new one appears whole and only if absent through
//! LINK of a temporary file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::manifest::ChunkRef;
use super::pack;
use super::store::{Area, ChunkStore, Listed, PackMap, read_index};
use super::{Error, Hash};
use crate::nfs::{Client, Fh, SetAttr};

/// Bytes of chunks a restore's read-ahead fetches in one batch...
const READ_AHEAD_BYTES: usize = 8 << 20;
/// ...in at most this many chunks.
const READ_AHEAD: usize = 2048;

/// A chunk store in a directory of an NFS export.
pub struct NfsStore {
    client: Mutex<Client>,
    place: String,
    top: HashMap<&'static str, Fh>,
    instance: String,
    uploads: Mutex<Uploads>,
    flushing: Mutex<()>,
    known: Mutex<Known>,
    ahead: Mutex<HashMap<Hash, Vec<u8>>>,
}

/// Chunks put and packs not yet renamed into `packs/`. Lock order: `uploads`, then `client`.
#[derive(Default)]
struct Uploads {
    pack: pack::Builder,
    /// Every chunk in `pack` or `items`.
    names: HashSet<Hash>,
    /// `uploads/<instance>`, made when the first pack is sent.
    dir: Option<Fh>,
    /// In the order sealed; an upload leaves when its RENAME succeeded.
    items: Vec<Upload>,
}

struct Upload {
    index: pack::Index,
    /// Emptied once written.
    data: Vec<u8>,
    fh: Option<Fh>,
    written: bool,
}

impl Uploads {
    /// A sealed pack, to be sent.
    fn queue(&mut self, sealed: pack::Sealed) {
        self.items.push(Upload { index: sealed.index, data: sealed.bytes, fh: None, written: false });
    }
}

/// What the store last listed, kept up to date with its own flushes and removals.
/// `generation` counts the leases this store created: a listing started before the
/// newest is dropped rather than kept for [`ChunkStore::has_chunk`].
#[derive(Default)]
struct Known {
    listing: Option<Arc<Listing>>,
    generation: u64,
}

#[derive(Default, Clone)]
struct Listing {
    packed: PackMap,
    /// Every pack's handle.
    packs: HashMap<Hash, Fh>,
    /// Loose chunks (a store written before packs).
    loose: HashSet<Hash>,
}

/// What a listing of the store found: every pack with its handle, every loose chunk.
struct Found {
    packs: Vec<(Listed, Fh)>,
    loose: HashSet<Hash>,
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

/// The handle of a listed entry of `dir`: the one READDIRPLUS gave, else looked up;
/// `None` when it went since.
fn handle(c: &mut Client, dir: &Fh, entry: crate::nfs::Entry, shown: &str) -> Result<Option<Fh>, Error> {
    match entry.fh {
        Some(fh) => Ok(Some(fh)),
        None => Ok(c.lookup(dir, &entry.name).map_err(nfs_err("look up", shown))?.map(|(fh, _)| fh)),
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
        for sub in ["packs", "uploads", "manifests", "pending", "gc"] {
            top.insert(sub, mkdir_p(&mut client, &dir, sub.as_bytes(), &format!("{place}/{sub}"))?);
        }
        // Only a store written before packs has `chunks/`; none is made.
        if let Some((fh, _)) = client.lookup(&dir, b"chunks").map_err(nfs_err("look up", format!("{place}/chunks")))? {
            top.insert("chunks", fh);
        }
        Ok(NfsStore {
            client: Mutex::new(client),
            place,
            top,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            uploads: Mutex::new(Uploads::default()),
            flushing: Mutex::new(()),
            known: Mutex::new(Known::default()),
            ahead: Mutex::new(HashMap::new()),
        })
    }

    fn top(&self, name: &str) -> Result<&Fh, Error> {
        self.top.get(name).ok_or_else(|| Error::Unsupported { path: self.place.clone(), what: format!("no {name}") })
    }

    fn shown(&self, rest: impl std::fmt::Display) -> String {
        format!("{}/{rest}", self.place)
    }

    fn area(&self, area: Area) -> Result<&Fh, Error> {
        self.top(area.dir())
    }

    fn upload_shown(&self, name: &Hash) -> String {
        self.shown(format!("uploads/{}/{name}", self.instance))
    }

    /// Sends the sealed packs: CREATE of those without a file, then WRITE of those not
    /// written, each step one pipelined batch. What failed stays for the next try.
    fn send(&self, up: &mut Uploads, c: &mut Client) -> Result<(), Error> {
        if up.items.iter().all(|u| u.written) {
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
            let names: Vec<String> = unmade.iter().map(|&i| up.items[i].index.name.to_string()).collect();
            let refs: Vec<&[u8]> = names.iter().map(String::as_bytes).collect();
            let made = c.create_many(&dir, &refs, 0o644).map_err(nfs_err("create", self.shown("uploads")))?;
            let mut first = None;
            for (&i, r) in unmade.iter().zip(made) {
                match r {
                    Ok(fh) => up.items[i].fh = Some(fh),
                    Err(e) => {
                        first.get_or_insert_with(|| nfs_err("create", self.upload_shown(&up.items[i].index.name))(e));
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
                    let shown = self.upload_shown(&up.items[i].index.name);
                    if let Err(e) = write_all(c, &fh, w.1 + u64::from(n), &w.2[n as usize..], false, &shown) {
                        failed.entry(i).or_insert(e);
                    }
                }
                Err(e) => {
                    failed.entry(i).or_insert_with(|| nfs_err("write", self.upload_shown(&up.items[i].index.name))(e));
                }
            }
        }
        drop(writes);
        for i in owner {
            if !failed.contains_key(&i) {
                up.items[i].written = true;
                up.items[i].data = Vec::new();
            }
        }
        match failed.into_values().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every pack in `packs/` with its handle and index, and every loose chunk, listed now.
    fn list(&self, c: &mut Client) -> Result<Found, Error> {
        let shown = self.shown("packs");
        let mut files = Vec::new();
        for e in c.readdirplus(self.top("packs")?).map_err(nfs_err("list", &shown))? {
            let Some(name) = std::str::from_utf8(&e.name).ok().and_then(|n| n.parse::<Hash>().ok()) else { continue };
            if let Some(fh) = handle(c, self.top("packs")?, e, &shown)? {
                files.push((name, fh));
            }
        }
        let reads: Vec<(&Fh, u64, u32)> = files.iter().map(|(_, fh)| (fh, 0, pack::INDEX_PROBE)).collect();
        let heads = c.read_many(&reads).map_err(nfs_err("read", &shown))?;
        let mut packs = Vec::new();
        for ((name, fh), head) in files.into_iter().zip(heads) {
            let pack_shown = self.shown(format!("packs/{name}"));
            let probe = match head {
                Ok((data, _)) => data,
                // Removed since the listing (a collection rewrote it): not there.
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(nfs_err("read", &pack_shown)(e)),
            };
            let listed = read_index(&name, probe, |n| read_all(c, &fh, n, &pack_shown))?;
            packs.push((listed, fh));
        }
        let mut loose = HashSet::new();
        if let Some(chunks) = self.top.get("chunks") {
            for p in c.readdirplus(chunks).map_err(nfs_err("list", self.shown("chunks")))? {
                if p.name.len() != 2 || !p.name.iter().all(u8::is_ascii_hexdigit) {
                    continue;
                }
                let shown = self.shown(format!("chunks/{}", String::from_utf8_lossy(&p.name)));
                let Some(fh) = handle(c, chunks, p, &shown)? else { continue };
                for e in c.readdirplus(&fh).map_err(nfs_err("list", &shown))? {
                    if let Some(hash) = std::str::from_utf8(&e.name).ok().and_then(|n| n.parse().ok()) {
                        loose.insert(hash);
                    }
                }
            }
        }
        Ok(Found { packs, loose })
    }

    /// The last listing, or a new one. A listing taken while this store created a lease
    /// is used for this call but not kept (see `has_chunk`).
    fn listing(&self) -> Result<Arc<Listing>, Error> {
        let generation = {
            let known = lock(&self.known);
            if let Some(listing) = &known.listing {
                return Ok(listing.clone());
            }
            known.generation
        };
        let found = self.list(&mut lock(&self.client))?;
        let mut listing = Listing { loose: found.loose, ..Listing::default() };
        for (listed, fh) in found.packs {
            match listed {
                Listed::Pack(index) => {
                    listing.packed.add(&index);
                    listing.packs.insert(index.name, fh);
                }
                Listed::Damaged { name, problem } => {
                    tracing::warn!(archive.store = self.place, archive.pack = %name, "archive: pack unreadable: {problem}");
                }
            }
        }
        let listing = Arc::new(listing);
        let mut known = lock(&self.known);
        if known.generation == generation {
            known.listing = Some(listing.clone());
        }
        Ok(listing)
    }

    /// The prefix directory of loose chunk `hash` (a store written before packs), the
    /// chunk's name there and how it is shown; `None` when the store has no such directory.
    fn loose_dir(&self, c: &mut Client, hash: &Hash) -> Result<Option<(Fh, String, String)>, Error> {
        let Some(chunks) = self.top.get("chunks") else { return Ok(None) };
        let name = hash.to_string();
        let shown = self.shown(format!("chunks/{}/{name}", &name[..2]));
        let dir = c.lookup(chunks, &name.as_bytes()[..2]).map_err(nfs_err("look up", &shown))?;
        Ok(dir.map(|(fh, _)| (fh, name, shown)))
    }

    /// Loose chunk `hash`, to at most `limit` bytes plus one.
    fn read_loose(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        let mut c = lock(&self.client);
        let Some((dir, name, shown)) = self.loose_dir(&mut c, hash)? else { return Ok(None) };
        let Some((fh, _)) = c.lookup(&dir, name.as_bytes()).map_err(nfs_err("look up", &shown))? else {
            return Ok(None);
        };
        read_all(&mut c, &fh, limit, &shown).map(Some)
    }

    /// Forgets the listing: a pack it names is gone.
    fn forget(&self) {
        lock(&self.known).listing = None;
    }

    /// Changes the kept listing (this store flushed or removed something).
    fn amend(&self, f: impl FnOnce(&mut Listing)) {
        if let Some(listing) = lock(&self.known).listing.as_mut() {
            f(Arc::make_mut(listing));
        }
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
        up.pack.push(*hash, data);
        if up.pack.full() {
            let sealed = up.pack.seal();
            up.queue(sealed);
            let mut c = lock(&self.client);
            self.send(&mut up, &mut c)?;
        }
        Ok(true)
    }

    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.flushing);
        let mut up = lock(&self.uploads);
        if !up.pack.is_empty() {
            let sealed = up.pack.seal();
            up.queue(sealed);
        }
        if up.items.is_empty() {
            return Ok(());
        }
        let mut c = lock(&self.client);
        self.send(&mut up, &mut c)?;
        let files: Vec<&Fh> = up.items.iter().filter_map(|u| u.fh.as_ref()).collect();
        let committed = c.commit_many(&files).map_err(nfs_err("commit", self.shown("uploads")))?;
        for (u, r) in up.items.iter().zip(committed) {
            r.map_err(nfs_err("commit", self.upload_shown(&u.index.name)))?;
        }
        crate::failpoint::hit("archive.store.flush.synced").map_err(|e| Error::Io {
            op: "flush",
            path: self.place.clone(),
            source: e,
        })?;
        let up_dir = up.dir.clone().ok_or_else(|| Error::Unsupported {
            path: self.place.clone(),
            what: "packs to flush but no upload directory".into(),
        })?;
        let packs = self.top("packs")?.clone();
        let mut first = None;
        let mut moved = 0;
        for u in &up.items {
            let name = u.index.name.to_string();
            match c.rename(&up_dir, name.as_bytes(), &packs, name.as_bytes()) {
                Ok(()) => moved += 1,
                Err(e) => {
                    first = Some(nfs_err("rename pack", self.upload_shown(&u.index.name))(e));
                    break;
                }
            }
        }
        let done: Vec<Upload> = up.items.drain(..moved).collect();
        self.amend(|l| {
            for u in &done {
                l.packed.add(&u.index);
                if let Some(fh) = &u.fh {
                    l.packs.insert(u.index.name, fh.clone());
                }
            }
        });
        for u in &done {
            for e in &u.index.entries {
                up.names.remove(&e.hash);
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        let _ = c.rmdir(self.top("uploads")?, self.instance.as_bytes());
        up.dir = None;
        Ok(())
    }

    /// From a listing of `packs/` (and `chunks/`) taken after this store last created a
    /// lease (see the trait), kept up to date with this store's own flushes and removals.
    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let listing = self.listing()?;
        Ok(listing.packed.chunks.contains_key(hash) || listing.loose.contains(hash))
    }

    fn read_ahead(&self, chunks: &[ChunkRef]) -> usize {
        let mut ahead = lock(&self.ahead);
        ahead.clear();
        let Ok(listing) = self.listing() else { return 0 };
        let mut c = lock(&self.client);
        let step = u64::from(c.io_size.max(4096));
        // Neighbouring chunks of one pack in one READ of up to `step` bytes.
        let mut ranges: Vec<(Hash, u64, u64, Vec<Hash>)> = Vec::new();
        let (mut taken, mut bytes) = (0, 0);
        for r in chunks.iter().take(READ_AHEAD) {
            taken += 1;
            let Some(&(pack, offset, len)) = listing.packed.chunks.get(&r.hash) else { continue };
            bytes += len as usize;
            match ranges.last_mut() {
                Some((p, start, end, hashes))
                    if *p == pack && *end == offset && offset + u64::from(len) - *start <= step =>
                {
                    *end += u64::from(len);
                    hashes.push(r.hash);
                }
                _ => ranges.push((pack, offset, offset + u64::from(len), vec![r.hash])),
            }
            if bytes >= READ_AHEAD_BYTES {
                break;
            }
        }
        let reads: Vec<(&Fh, u64, u32)> = ranges
            .iter()
            .filter_map(|(p, start, end, _)| Some((listing.packs.get(p)?, *start, (end - start) as u32)))
            .collect();
        if reads.len() < ranges.len() {
            return 0;
        }
        let Ok(got) = c.read_many(&reads) else { return 0 };
        for ((_, start, _, hashes), r) in ranges.iter().zip(got) {
            // What did not come back whole is read again the ordinary way, which reports it.
            let Ok((data, _)) = r else { continue };
            for h in hashes {
                let (_, offset, len) = listing.packed.chunks[h];
                let from = (offset - start) as usize;
                if let Some(bytes) = data.get(from..from + len as usize) {
                    ahead.insert(*h, bytes.to_vec());
                }
            }
        }
        taken
    }

    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        if let Some(data) = lock(&self.ahead).remove(hash) {
            return Ok(Some(data));
        }
        // A collection may have rewritten the pack since this store listed: the chunk is
        // then in a pack written before the old one went, which a new listing finds.
        for _ in 0..2 {
            let listing = self.listing()?;
            if let Some(&(pack, offset, len)) = listing.packed.chunks.get(hash)
                && let Some(fh) = listing.packs.get(&pack)
            {
                match lock(&self.client).read(fh, offset, len) {
                    Ok((data, _)) => return Ok(Some(data)),
                    Err(e) if e.is_gone() => {}
                    Err(e) => return Err(nfs_err("read", self.shown(format!("packs/{pack}")))(e)),
                }
            }
            if let Some(data) = self.read_loose(hash, limit)? {
                return Ok(Some(data));
            }
            self.forget();
        }
        Ok(None)
    }

    fn list_loose(&self) -> Result<Vec<Hash>, Error> {
        Ok(self.list(&mut lock(&self.client))?.loose.into_iter().collect())
    }

    fn remove_loose(&self, hash: &Hash) -> Result<bool, Error> {
        let mut c = lock(&self.client);
        let Some((dir, name, shown)) = self.loose_dir(&mut c, hash)? else { return Ok(false) };
        let removed = c.remove(&dir, name.as_bytes());
        self.amend(|l| {
            l.loose.remove(hash);
        });
        found(removed, "remove chunk", shown)
    }

    fn list_packs(&self) -> Result<Vec<Listed>, Error> {
        Ok(self.list(&mut lock(&self.client))?.packs.into_iter().map(|(listed, _)| listed).collect())
    }

    fn write_pack(&self, sealed: pack::Sealed) -> Result<(), Error> {
        lock(&self.uploads).queue(sealed);
        self.flush()
    }

    fn remove_pack(&self, name: &Hash) -> Result<bool, Error> {
        let text = name.to_string();
        let r = lock(&self.client).remove(self.top("packs")?, text.as_bytes());
        // Its chunks may be in other packs too: the next lookup lists again.
        self.forget();
        found(r, "remove pack", self.shown(format!("packs/{text}")))
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
            let mut known = lock(&self.known);
            known.generation += 1;
            known.listing = None;
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
