//! A [`ChunkStore`] on an NFSv3 export through berth's userspace client: no kernel
//! mount, the same layout as [`super::store::DirStore`] (a directory written by one can
//! be read by the other). Chunks are written UNSTABLE under `uploads/<instance>/`, and a
//! flush COMMITs each, then RENAMEs it into `chunks/ab/` (the server makes a RENAME
//! durable before it answers, RFC 1813). Small files are written FILE_SYNC; a new one
//! appears whole and only if absent through LINK of a temporary file.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::store::{Area, ChunkStore};
use super::{Error, Hash};
use crate::nfs::{Client, Fh, SetAttr};

/// A chunk store in a directory of an NFS export.
pub struct NfsStore {
    client: Mutex<Client>,
    place: String,
    top: HashMap<&'static str, Fh>,
    prefixes: Mutex<HashMap<u8, Fh>>,
    instance: String,
    upload_dir: Mutex<Option<Fh>>,
    unflushed: Mutex<HashMap<Hash, Fh>>,
    flushing: Mutex<()>,
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

fn write_all(c: &mut Client, fh: &Fh, data: &[u8], stable: bool, shown: &str) -> Result<(), Error> {
    let step = c.io_size.max(4096) as usize;
    let mut off = 0;
    while off < data.len() {
        let end = (off + step).min(data.len());
        let n = c.write(fh, off as u64, &data[off..end], stable).map_err(nfs_err("write", shown))?;
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
            upload_dir: Mutex::new(None),
            unflushed: Mutex::new(HashMap::new()),
            flushing: Mutex::new(()),
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
}

impl ChunkStore for NfsStore {
    fn describe(&self) -> String {
        self.place.clone()
    }

    fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<bool, Error> {
        if lock(&self.unflushed).contains_key(hash) || self.has_chunk(hash)? {
            return Ok(false);
        }
        let mut c = lock(&self.client);
        let up = {
            let mut slot = lock(&self.upload_dir);
            if slot.is_none() {
                let shown = self.shown(format!("uploads/{}", self.instance));
                *slot = Some(mkdir_p(&mut c, self.top("uploads")?, self.instance.as_bytes(), &shown)?);
            }
            slot.clone().unwrap_or_else(|| self.top["uploads"].clone())
        };
        let name = hash.to_string();
        let shown = self.shown(format!("uploads/{}/{name}", self.instance));
        let (fh, _) = c.create(&up, name.as_bytes(), 0o644, false).map_err(nfs_err("create", &shown))?;
        write_all(&mut c, &fh, data, false, &shown)?;
        lock(&self.unflushed).insert(*hash, fh);
        Ok(true)
    }

    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.flushing);
        let pending: Vec<(Hash, Fh)> = lock(&self.unflushed).iter().map(|(h, f)| (*h, f.clone())).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut c = lock(&self.client);
        for (hash, fh) in &pending {
            c.commit(fh).map_err(nfs_err("commit", self.shown(format!("uploads/{}/{hash}", self.instance))))?;
        }
        crate::failpoint::hit("archive.store.flush.synced").map_err(|e| Error::Io {
            op: "flush",
            path: self.place.clone(),
            source: e,
        })?;
        let up = lock(&self.upload_dir).clone().ok_or_else(|| Error::Unsupported {
            path: self.place.clone(),
            what: "chunks to flush but no upload directory".into(),
        })?;
        for (hash, _) in &pending {
            let name = hash.to_string();
            let to = self.prefix(&mut c, hash, true)?.unwrap_or_else(|| self.top["chunks"].clone());
            c.rename(&up, name.as_bytes(), &to, name.as_bytes())
                .map_err(nfs_err("rename chunk", self.shown(format!("uploads/{}/{name}", self.instance))))?;
            lock(&self.unflushed).remove(hash);
        }
        if lock(&self.unflushed).is_empty() {
            let _ = c.rmdir(self.top("uploads")?, self.instance.as_bytes());
            *lock(&self.upload_dir) = None;
        }
        Ok(())
    }

    fn has_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let mut c = lock(&self.client);
        let Some(dir) = self.prefix(&mut c, hash, false)? else { return Ok(false) };
        let name = hash.to_string();
        Ok(c.lookup(&dir, name.as_bytes()).map_err(nfs_err("look up", self.shown(format!("chunks/{name}"))))?.is_some())
    }

    fn read_chunk_raw(&self, hash: &Hash, limit: usize) -> Result<Option<Vec<u8>>, Error> {
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
        let mut c = lock(&self.client);
        let mut out = Vec::new();
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
            for e in c.readdirplus(&fh).map_err(nfs_err("list", &shown))? {
                if let Some(hash) = std::str::from_utf8(&e.name).ok().and_then(|n| n.parse().ok()) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    fn remove_chunk(&self, hash: &Hash) -> Result<bool, Error> {
        let mut c = lock(&self.client);
        let Some(dir) = self.prefix(&mut c, hash, false)? else { return Ok(false) };
        let name = hash.to_string();
        found(c.remove(&dir, name.as_bytes()), "remove chunk", self.shown(format!("chunks/{}/{name}", &name[..2])))
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
        let mut c = lock(&self.client);
        let (fh, _) = c.create(&dir, tmp.as_bytes(), 0o644, false).map_err(nfs_err("create", &shown))?;
        write_all(&mut c, &fh, bytes, true, &shown)?;
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
        write_all(&mut c, &fh, bytes, true, &shown)?;
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
