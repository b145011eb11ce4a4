//! The announcements copies and collections make before they look at the store: a copy's
//! lease in `pending/`, a collection's marker in `gc/` (the protocol is in the module
//! documentation of [`super`]). Both are small files their holder rewrites as it works (a
//! heartbeat); whoever waits for one takes it over once its content has stayed the same
//! for [`Timing::stale_after`] by the waiter's own clock, so no two nodes' clocks are
//! compared. A live holder whose heartbeat fails stops: a copy with
//! [`Error::LeaseLost`], a collection with [`Error::MarkerLost`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::store::{Area, ChunkStore};
use super::{Error, io_err};

/// How long leases and markers live without a heartbeat, and how waits behave.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A lease or marker unchanged this long belongs to a process that is gone. It must be
    /// longer than any pause a live copy or collection can take between two heartbeats
    /// (they beat every quarter of it).
    pub stale_after: Duration,
    /// How often a waiter looks again.
    pub poll: Duration,
    /// How long a copy waits for collections, or a collection for copies, before it
    /// gives up with [`Error::Busy`].
    pub give_up_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stale_after: Duration::from_secs(600),
            poll: Duration::from_secs(1),
            give_up_after: Duration::from_secs(3600),
        }
    }
}

fn content(kind: &str, id: &str, beat: u64) -> Vec<u8> {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    serde_json::json!({ "kind": kind, "id": id, "host": host, "pid": std::process::id(), "beat": beat })
        .to_string()
        .into_bytes()
}

/// Waits until `area` holds no file `wanted` accepts, taking over those that go stale.
/// Returns the names taken over.
fn drain(
    store: &dyn ChunkStore,
    area: Area,
    wanted: fn(&str) -> bool,
    timing: Timing,
    what: &'static str,
) -> Result<Vec<String>, Error> {
    let start = Instant::now();
    let mut seen: HashMap<String, (Vec<u8>, Instant)> = HashMap::new();
    let mut taken = Vec::new();
    loop {
        let present: Vec<String> = store.list_files(area)?.into_iter().filter(|n| wanted(n)).collect();
        if present.is_empty() {
            return Ok(taken);
        }
        seen.retain(|name, _| present.contains(name));
        for name in &present {
            let Some(now) = store.read_file(area, name)? else { continue };
            match seen.get(name) {
                Some((old, since)) if *old == now && since.elapsed() >= timing.stale_after => {
                    if take_over(store, area, name, &now)? {
                        tracing::warn!(store = store.describe(), name, "archive: took over a stale {}", area.dir());
                        taken.push(name.clone());
                    }
                    seen.remove(name);
                }
                Some((old, _)) if *old == now => {}
                _ => {
                    seen.insert(name.clone(), (now, Instant::now()));
                }
            }
        }
        if start.elapsed() >= timing.give_up_after {
            return Err(Error::Busy { what, holders: present, waited_ms: start.elapsed().as_millis() });
        }
        std::thread::sleep(timing.poll);
    }
}

/// Renames a stale file out of the way, and back if its holder beat in the meantime;
/// `true` when it was dead and is removed.
fn take_over(store: &dyn ChunkStore, area: Area, name: &str, observed: &[u8]) -> Result<bool, Error> {
    let stolen = format!("stolen-{name}");
    if !store.rename_file((area, name), (Area::Gc, &stolen))? {
        return Ok(false);
    }
    if store.read_file(Area::Gc, &stolen)?.as_deref() == Some(observed) {
        store.remove_file(Area::Gc, &stolen)?;
        return Ok(true);
    }
    store.rename_file((Area::Gc, &stolen), (area, name))?;
    Ok(false)
}

fn is_marker(name: &str) -> bool {
    name.starts_with("gc-")
}

/// A copy's lease: while it exists no collection sweeps. Dropped without
/// [`Lease::commit`], it is removed.
pub struct Lease<'a> {
    store: &'a dyn ChunkStore,
    id: String,
    beat: u64,
    last: Instant,
    timing: Timing,
    done: bool,
}

impl<'a> Lease<'a> {
    /// Creates a lease, then waits out any collection running (see the protocol).
    pub fn acquire(store: &'a dyn ChunkStore, timing: Timing) -> Result<Lease<'a>, Error> {
        let id = format!("copy-{}", uuid::Uuid::new_v4().simple());
        loop {
            if !store.create_file(Area::Pending, &id, &content("copy", &id, 0))? {
                return Err(io_err("create lease", &id)(std::io::ErrorKind::AlreadyExists.into()));
            }
            crate::failpoint::hit("archive.lease.created").map_err(io_err("create lease", &id))?;
            if !store.list_files(Area::Gc)?.iter().any(|n| is_marker(n)) {
                return Ok(Lease { store, id, beat: 0, last: Instant::now(), timing, done: false });
            }
            store.remove_file(Area::Pending, &id)?;
            drain(store, Area::Gc, is_marker, timing, "copy waiting for garbage collection")?;
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Rewrites the lease when a quarter of the stale interval has passed since the last
    /// time; [`Error::LeaseLost`] when a collection took it over.
    pub fn heartbeat(&mut self) -> Result<(), Error> {
        if self.last.elapsed() < self.timing.stale_after / 4 {
            return Ok(());
        }
        self.beat += 1;
        if !self.store.rewrite_file(Area::Pending, &self.id, &content("copy", &self.id, self.beat))? {
            return Err(Error::LeaseLost { copy: self.id.clone() });
        }
        self.last = Instant::now();
        Ok(())
    }

    /// Writes `manifest` into the lease and renames it to `manifests/<name>`: the copy is
    /// committed, or [`Error::LeaseLost`] and nothing is.
    pub fn commit(mut self, name: &str, manifest: &[u8]) -> Result<(), Error> {
        if !self.store.rewrite_file(Area::Pending, &self.id, manifest)? {
            self.done = true;
            return Err(Error::LeaseLost { copy: self.id.clone() });
        }
        crate::failpoint::hit("archive.lease.commit").map_err(io_err("commit", name))?;
        let renamed = self.store.rename_file((Area::Pending, &self.id), (Area::Manifests, name))?;
        self.done = true;
        if renamed { Ok(()) } else { Err(Error::LeaseLost { copy: self.id.clone() }) }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.store.remove_file(Area::Pending, &self.id);
        }
    }
}

/// A collection's marker: while it exists no copy starts. Dropped, it is removed.
pub struct Marker<'a> {
    store: &'a dyn ChunkStore,
    id: String,
    beat: u64,
    last: Instant,
    timing: Timing,
}

impl<'a> Marker<'a> {
    /// Creates the marker, then waits until no copy holds a lease, taking over stale ones.
    pub fn acquire(store: &'a dyn ChunkStore, timing: Timing) -> Result<(Marker<'a>, Vec<String>), Error> {
        let id = format!("gc-{}", uuid::Uuid::new_v4().simple());
        store.create_file(Area::Gc, &id, &content("gc", &id, 0))?;
        let mut marker = Marker { store, id, beat: 0, last: Instant::now(), timing };
        crate::failpoint::hit("archive.gc.marker-created").map_err(io_err("create marker", &marker.id))?;
        let taken = drain(store, Area::Pending, |_| true, timing, "garbage collection waiting for copies")?;
        marker.beat_now()?; // the wait may have been long
        Ok((marker, taken))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Rewrites the marker when a quarter of the stale interval has passed;
    /// [`Error::MarkerLost`] when a copy took it over.
    pub fn heartbeat(&mut self) -> Result<(), Error> {
        if self.last.elapsed() < self.timing.stale_after / 4 {
            return Ok(());
        }
        self.beat_now()
    }

    fn beat_now(&mut self) -> Result<(), Error> {
        self.beat += 1;
        if !self.store.rewrite_file(Area::Gc, &self.id, &content("gc", &self.id, self.beat))? {
            return Err(Error::MarkerLost { gc: self.id.clone() });
        }
        self.last = Instant::now();
        Ok(())
    }
}

impl Drop for Marker<'_> {
    fn drop(&mut self) {
        let _ = self.store.remove_file(Area::Gc, &self.id);
    }
}
