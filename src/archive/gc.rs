//! Deleting copies: the manifest goes first, then every chunk no remaining manifest
//! needs, under the collection protocol of [`super`] (a marker in `gc/`, no sweep while
//! a copy holds a lease). A crash after the manifest is removed leaves garbage, never a
//! manifest without its chunks; the next collection removes it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::lease::{Marker, Timing};
use super::manifest::Manifest;
use super::store::{Area, ChunkStore};
use super::{Error, check_name, io_err};

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether the deleted copy's manifest was there (deleting twice is not an error).
    pub manifest_removed: bool,
    pub manifests: u64,
    pub chunks_kept: u64,
    pub chunks_removed: u64,
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

/// Removes every chunk no manifest needs, once no copy is running. Refuses to sweep
/// when a manifest cannot be read: what it needs is unknown.
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
    for hash in store.list_chunks()? {
        if needed.contains(&hash) {
            report.chunks_kept += 1;
            continue;
        }
        marker.heartbeat()?;
        crate::failpoint::hit("archive.gc.remove-chunk").map_err(io_err("remove chunk", hash))?;
        if store.remove_chunk(&hash)? {
            report.chunks_removed += 1;
        }
    }
    drop(marker);
    report.elapsed = start.elapsed();
    tracing::info!(
        archive.store = store.describe(),
        archive.manifests = report.manifests,
        archive.chunks_removed = report.chunks_removed,
        archive.chunks_kept = report.chunks_kept,
        "archive: garbage collected"
    );
    Ok(report)
}
