//! Deleting copies: the manifest goes first, then every chunk no remaining manifest
//! needs, under the collection protocol of [`super`] (a marker in `gc/`, no sweep while
//! a copy holds a lease). A crash after the manifest is removed leaves garbage, never a
//! manifest without its chunks; the next collection removes it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::lease::{Marker, Timing};
use super::manifest::Manifest;
use super::store::{Area, ChunkStore, Listed};
use super::{Error, Hash, check_name, io_err, pack};

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether the deleted copy's manifest was there (deleting twice is not an error).
    pub manifest_removed: bool,
    pub manifests: u64,
    pub chunks_kept: u64,
    pub chunks_removed: u64,
    /// Packs removed because none of their chunks was needed (rewritten ones included).
    pub packs_removed: u64,
    /// Packs mostly of unneeded chunks whose needed ones were written to a new pack.
    pub packs_rewritten: u64,
    /// Files in `packs/` whose index could not be read, left alone (named in the log).
    pub packs_damaged: u64,
    /// Upload directories of copies that died before they flushed.
    pub uploads_removed: u64,
    /// Leases of copies that stopped beating, taken over.
    pub leases_taken_over: Vec<String>,
    pub elapsed: Duration,
}

/// Deletes copy `name`: its manifest, durably, then [`collect`].
pub fn delete(store: &dyn ChunkStore, name: &str, timing: Timing) -> Result<GcReport, Error> {
    check_name("manifest", name)?;
    let removed = store.remove_file(Area::Manifests, name)?;
    crate::failpoint::hit("archive.gc.manifest-removed").map_err(io_err("delete", name))?;
    let mut report = collect(store, timing)?;
    report.manifest_removed = removed;
    Ok(report)
}

/// Removes the chunks no manifest needs, once no copy is running (a pack at least four
/// fifths needed is kept whole). Refuses to sweep when a manifest cannot be read: what it
/// needs is unknown.
pub fn collect(store: &dyn ChunkStore, timing: Timing) -> Result<GcReport, Error> {
    let start = Instant::now();
    let (mut marker, leases_taken_over) = Marker::acquire(store, timing)?;
    let mut report = GcReport { leases_taken_over, ..GcReport::default() };
    report.uploads_removed = store.remove_abandoned_uploads()?;
    for name in store.list_files(Area::Gc)? {
        if name.starts_with("stolen-") {
            store.remove_file(Area::Gc, &name)?;
        }
    }
    let mut needed = HashSet::new();
    for name in store.list_files(Area::Manifests)? {
        let Some(bytes) = store.read_file(Area::Manifests, &name)? else { continue };
        let manifest = Manifest::decode(&name, &bytes)?;
        needed.extend(manifest.chunks().map(|c| c.hash));
        report.manifests += 1;
    }
    // Needed chunks already kept (loose, or in a pack kept or being rewritten): a second
    // copy of one in another pack is not needed.
    let mut kept = HashSet::new();
    for hash in store.list_loose()? {
        if needed.contains(&hash) {
            kept.insert(hash);
            continue;
        }
        marker.heartbeat()?;
        crate::failpoint::hit("archive.gc.remove-chunk").map_err(io_err("remove chunk", hash))?;
        if store.remove_loose(&hash)? {
            report.chunks_removed += 1;
        }
    }
    sweep_packs(store, &needed, &mut kept, &mut marker, &mut report)?;
    report.chunks_kept = kept.len() as u64;
    drop(marker);
    report.elapsed = start.elapsed();
    tracing::info!(
        archive.store = store.describe(),
        archive.manifests = report.manifests,
        archive.chunks_removed = report.chunks_removed,
        archive.chunks_kept = report.chunks_kept,
        archive.packs_removed = report.packs_removed,
        archive.packs_rewritten = report.packs_rewritten,
        "archive: garbage collected"
    );
    Ok(report)
}

/// A pack whose needed chunks hold at least this share of its bytes is kept as it is:
/// rewriting it would move far more than it frees. So at most a fifth of what a store
/// holds in packs is chunks no copy needs, and a store holds at most 1.25 times the data
/// its copies need.
const KEEP_LIVE_PERCENT: u64 = 80;

/// Removes every pack none of whose chunks is needed, and rewrites each pack of which more
/// than a fifth is unneeded: its needed chunks go to a new pack, written durably, and only
/// then is the old one removed, so every needed chunk is in some pack at every moment. A
/// reader that finds a pack gone lists again (the stores do) and finds the new one.
fn sweep_packs(
    store: &dyn ChunkStore,
    needed: &HashSet<Hash>,
    kept: &mut HashSet<Hash>,
    marker: &mut Marker<'_>,
    report: &mut GcReport,
) -> Result<(), Error> {
    let mut rewrite = Rewrite::default();
    for listed in store.list_packs()? {
        let index = match listed {
            Listed::Pack(index) => index,
            Listed::Damaged { name, problem } => {
                tracing::warn!(archive.store = store.describe(), archive.pack = %name, "archive: pack left alone: {problem}");
                report.packs_damaged += 1;
                continue;
            }
        };
        let live: Vec<&pack::Entry> =
            index.entries.iter().filter(|e| needed.contains(&e.hash) && !kept.contains(&e.hash)).collect();
        let live_bytes: u64 = live.iter().map(|e| u64::from(e.len)).sum();
        let dead = index.entries.iter().filter(|e| !needed.contains(&e.hash)).count() as u64;
        if live.is_empty() {
            if !rewrite.written.contains(&index.name) && remove_pack(store, &index.name, marker)? {
                report.packs_removed += 1;
                report.chunks_removed += dead;
            }
            continue;
        }
        if live_bytes * 100 >= index.data_bytes() * KEEP_LIVE_PERCENT || rewrite.written.contains(&index.name) {
            kept.extend(live.iter().map(|e| e.hash));
            continue;
        }
        // Read every needed chunk first: one that does not read back whole keeps its pack.
        let mut chunks = Vec::with_capacity(live.len());
        for e in &live {
            match store.read_chunk(&e.hash, e.len as usize, &format!("pack {}", index.name)) {
                Ok(data) => chunks.push((e.hash, data)),
                Err(err) => {
                    tracing::warn!(archive.store = store.describe(), archive.pack = %index.name, "archive: pack kept: {err}");
                    break;
                }
            }
        }
        if chunks.len() < live.len() {
            kept.extend(live.iter().map(|e| e.hash));
            continue;
        }
        for (hash, data) in &chunks {
            rewrite.pack.push(*hash, data);
            kept.insert(*hash);
        }
        rewrite.emptied.push(index.name);
        report.chunks_removed += dead;
        if rewrite.pack.full() {
            rewrite.finish(store, marker, report)?;
        }
    }
    rewrite.finish(store, marker, report)
}

fn remove_pack(store: &dyn ChunkStore, name: &Hash, marker: &mut Marker<'_>) -> Result<bool, Error> {
    marker.heartbeat()?;
    crate::failpoint::hit("archive.gc.remove-pack").map_err(io_err("remove pack", name))?;
    store.remove_pack(name)
}

/// Needed chunks of packs being rewritten, gathered into a new pack.
#[derive(Default)]
struct Rewrite {
    pack: pack::Builder,
    /// Packs whose needed chunks are all in `pack`.
    emptied: Vec<Hash>,
    /// Packs this collection wrote: never removed by it (one may bear the name of a pack
    /// listed later, holding the same chunks).
    written: HashSet<Hash>,
}

impl Rewrite {
    fn finish(&mut self, store: &dyn ChunkStore, marker: &mut Marker<'_>, report: &mut GcReport) -> Result<(), Error> {
        if !self.pack.is_empty() {
            marker.heartbeat()?;
            let sealed = self.pack.seal();
            let name = sealed.index.name;
            store.write_pack(sealed)?;
            self.written.insert(name);
        }
        crate::failpoint::hit("archive.gc.pack-rewritten").map_err(io_err("rewrite packs", store.describe()))?;
        for name in std::mem::take(&mut self.emptied) {
            if self.written.contains(&name) {
                continue;
            }
            if remove_pack(store, &name, marker)? {
                report.packs_removed += 1;
                report.packs_rewritten += 1;
            }
        }
        Ok(())
    }
}
