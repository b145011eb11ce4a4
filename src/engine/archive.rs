//! Snapshot copies that outlive the node (issue 22): a snapshot whose class names a shared
//! pool (`copyTo`) is cut as usual, then its content is copied into that pool's store
//! ([`crate::archive`]) in the background. The snapshot answers `ready_to_use` false until
//! the copy's manifest is committed and every chunk it needs has been read back and
//! checked; then true. A failed copy is answered once to the next CreateSnapshot of the
//! name (the snapshotter retries while a snapshot is not ready), and that retry starts it
//! again: a store that was full or out of reach heals without a new snapshot.
//!
//! The copy is named by the snapshot's key ([`crate::archive::snapshot_manifest`]) and
//! carries the labels a restore needs ([`label`]), so any node with the shared pool
//! configured restores it: CreateVolume from a snapshot ID this node has no record of looks
//! for its copy in every shared pool's store and fills the new volume from it, whether or
//! not the node that took it still exists. DeleteSnapshot deletes the copy, then the local
//! snapshot; on a node without the snapshot's record it deletes the copy it finds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Engine, Error, Result, copies};
use crate::archive::manifest::{Content as Stored, Manifest};
use crate::archive::store::ChunkStore;
use crate::archive::{self, copy::CopyOptions, restore};
use crate::backend::{Backend, Content, Pool, PoolInfo, Work};
use crate::ids::{self, Kind};
use crate::state::{AccessKind, SnapshotCopy, SnapshotRecord, VolumeRecord};

/// The VolumeSnapshotClass parameter naming the shared pool a snapshot is copied to.
pub const COPY_TO: &str = "copyTo";

/// What a copy's manifest says about the snapshot, for a restore on another node.
pub mod label {
    pub const SNAPSHOT: &str = "berth.csi.io/snapshot";
    pub const VOLUME: &str = "berth.csi.io/volume";
    pub const NODE: &str = "berth.csi.io/node";
    pub const POOL: &str = "berth.csi.io/pool";
    /// `mount` or `block`: the source volume's access type.
    pub const ACCESS: &str = "berth.csi.io/access";
    pub const FS_TYPE: &str = "berth.csi.io/fs-type";
    /// The source volume's capacity: a restore is at least this large.
    pub const CAPACITY: &str = "berth.csi.io/capacity";
    /// The source volume's encryption (LUKS2 copies carry ciphertext and need its key).
    pub const ENCRYPTION: &str = "berth.csi.io/encryption";
}

/// How long a deletion's sweep waits for copies in progress before leaving the chunks to
/// the next sweep: a DeleteSnapshot call never waits for a copy of another snapshot.
const SWEEP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Data bytes between two progress lines of a long copy.
const PROGRESS_EVERY: u64 = 256 << 20;

/// Counters of snapshot copies since the start, for /metrics.
#[derive(Debug, Default)]
pub struct ArchiveCounters {
    pub copied: AtomicU64,
    pub failed: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub restored: AtomicU64,
}

/// A copy found in a shared pool's store: the store, open, and its manifest, read and checked.
pub(super) struct FoundCopy {
    pub pool: String,
    pub store: Box<dyn ChunkStore>,
    pub manifest: Manifest,
}

impl FoundCopy {
    fn label(&self, key: &str) -> Option<&str> {
        self.manifest.labels.get(key).map(String::as_str)
    }

    /// The capacity a restore needs: the source volume's, or the stored data's size.
    pub fn needs_bytes(&self) -> u64 {
        match &self.manifest.content {
            Stored::Image { data } => {
                self.label(label::CAPACITY).and_then(|c| c.parse().ok()).unwrap_or(data.size).max(data.size)
            }
            Stored::Tree { .. } => self.manifest.data_streams().map(archive::manifest::Data::stored).sum(),
        }
    }

    pub fn access(&self) -> AccessKind {
        if self.label(label::ACCESS) == Some("block") { AccessKind::Block } else { AccessKind::Mount }
    }

    pub fn fs_type(&self) -> Option<String> {
        self.label(label::FS_TYPE).map(str::to_string)
    }

    pub fn encryption(&self) -> Result<Option<crate::crypt::Encryption>> {
        match self.label(label::ENCRYPTION) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json).map(Some).map_err(|e| {
                Error::BadRequest(format!(
                    "the copy {} in pool {} has an encryption label that does not parse: {e}",
                    self.manifest.name, self.pool
                ))
            }),
        }
    }

    fn shown(&self) -> String {
        let snapshot = self.label(label::SNAPSHOT).unwrap_or(&self.manifest.name);
        format!("restoring snapshot {snapshot} from its copy {} in pool {}", self.manifest.name, self.pool)
    }
}

fn archive_err(what: impl Into<String>) -> impl FnOnce(archive::Error) -> Error {
    let what = what.into();
    move |source| Error::Archive { what, source: Box::new(source) }
}

impl Engine {
    /// The shared pool a snapshot of `volume` may be copied to, checked: configured here,
    /// shared, and the snapshot's content is something a copy can read.
    pub(super) fn check_copy_to(&self, target: &str, pool: &dyn Backend, snapshot: &SnapshotRecord) -> Result<()> {
        let Some(shared) = self.pools.get(target) else {
            return Err(Error::BadRequest(format!(
                "parameter {COPY_TO} names pool {target:?}, which is not configured on node {}",
                self.node_id
            )));
        };
        if shared.records().is_none() {
            return Err(Error::BadRequest(format!(
                "parameter {COPY_TO} names pool {target}, a {} pool on one node's disks; copies go to a shared (nfs) pool",
                shared.info().kind
            )));
        }
        match pool.snapshot_content(snapshot) {
            None => Err(Error::BadRequest(format!(
                "snapshots of pool {} ({} pool) cannot be copied to {target}: it keeps no snapshot content a copy can read",
                pool.name(),
                pool.info().kind
            ))),
            Some(Content::Tree(_)) if snapshot.encryption.is_some() => Err(Error::BadRequest(format!(
                "volume {} is encrypted with fscrypt: its snapshot's files cannot be read without its key, so it cannot be copied to {target} (copies of LUKS2 block volumes carry their ciphertext)",
                snapshot.source_volume
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The copy a new snapshot record asks for.
    pub(super) fn copy_for(target: &str, record: &SnapshotRecord) -> SnapshotCopy {
        SnapshotCopy {
            pool: target.to_string(),
            manifest: archive::snapshot_manifest(&record.key),
            done: false,
            sent_bytes: 0,
        }
    }

    /// Answers CreateSnapshot for a cut snapshot whose copy is not done: the copy running
    /// (waited for up to [`Engine::copy_wait`]), its failure once, or the copy started again.
    pub(super) fn await_snapshot_copy(
        &self,
        name: &str,
        volume: &VolumeRecord,
        record: Arc<SnapshotRecord>,
    ) -> Result<Arc<SnapshotRecord>> {
        let job = if let Some(job) = self.copies.running(&record.id) {
            job
        } else {
            if let Some(failed) = self.copies.take_failure(&copies::snapshot_key(name)) {
                return Err(failed);
            }
            self.start_snapshot_copy_out(volume, (*record).clone())?
        };
        job.wait(self.copy_wait());
        match self.store.snapshot(&record.id) {
            Some(s) if s.ready_to_use() => Ok(s),
            Some(s) => match self.copies.running(&s.id) {
                Some(_) => Ok(s),
                // Ended badly within the wait: answer it now, once.
                None => self.copies.take_failure(&copies::snapshot_key(name)).map_or(Ok(s), Err),
            },
            None => Err(Error::NoSnapshot { id: record.id.clone(), node: self.node_id.clone() }),
        }
    }

    /// Copies a cut snapshot to its shared pool in the background, holding what copies
    /// read of the snapshot (a delete stops the copy first).
    fn start_snapshot_copy_out(&self, volume: &VolumeRecord, record: SnapshotRecord) -> Result<Arc<copies::Job>> {
        let Some(copy) = record.copy.clone() else {
            return Err(Error::BadRequest(format!("snapshot {} asks for no copy", record.id)));
        };
        let source = self.pool(&record.pool)?.clone();
        let target = self.pool(&copy.pool)?.clone();
        let guard = self.lock_reading(&[format!("copy-out:{}", record.id)], &[&record.id])?;
        let labels = self.labels_of(volume, &record)?;
        let (id, key) = (record.id.clone(), copies::snapshot_key(&record.name));
        Ok(self.start_copy(&id, &id, key, guard, move |engine, work| {
            let outcome = engine.copy_out(&source, &target, record, labels, work);
            let counter = if outcome.is_ok() { &engine.archived.copied } else { &engine.archived.failed };
            if work.stopped().is_none() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        }))
    }

    fn labels_of(&self, volume: &VolumeRecord, record: &SnapshotRecord) -> Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::from([
            (label::SNAPSHOT.to_string(), record.id.clone()),
            (label::VOLUME.to_string(), volume.id.clone()),
            (label::NODE.to_string(), self.node_id.clone()),
            (label::POOL.to_string(), record.pool.clone()),
            (label::ACCESS.to_string(), volume.access.as_str().to_string()),
            (label::CAPACITY.to_string(), volume.capacity.to_string()),
        ]);
        if let Some(fs) = &volume.fs_type {
            labels.insert(label::FS_TYPE.to_string(), fs.clone());
        }
        if let Some(e) = &record.encryption {
            let json = serde_json::to_string(e).map_err(|e| Error::BadRequest(format!("encoding encryption: {e}")))?;
            labels.insert(label::ENCRYPTION.to_string(), json);
        }
        Ok(labels)
    }

    /// The copy itself: the manifest written (unless a run before a crash committed it),
    /// then every chunk read back and checked, then the record marked done.
    fn copy_out(
        &self,
        source: &Pool,
        target: &Pool,
        mut record: SnapshotRecord,
        labels: BTreeMap<String, String>,
        work: &Work,
    ) -> Result<()> {
        let Some(mut copy) = record.copy.clone() else { return Ok(()) };
        let what = format!("copying snapshot {} to pool {}", record.id, copy.pool);
        let store = open_store(target, &what)?;
        let content = source.snapshot_content(&record).ok_or_else(|| {
            Error::BadRequest(format!("pool {} keeps no snapshot content a copy can read", source.name()))
        })?;
        let last = AtomicU64::new(0);
        let logged = AtomicU64::new(0);
        let progress = |done: u64| {
            work.add_bytes(done.saturating_sub(last.swap(done, Ordering::Relaxed)));
            if done / PROGRESS_EVERY > logged.load(Ordering::Relaxed) {
                logged.store(done / PROGRESS_EVERY, Ordering::Relaxed);
                tracing::info!(snapshot.id = %record.id, bytes = done, "snapshot copy: {} MiB read", done >> 20);
            }
            work.stopped().is_none()
        };
        let manifest = match restore::load(store.as_ref(), &copy.manifest) {
            Ok(m) => {
                tracing::info!(snapshot.id = %record.id, manifest = %copy.manifest, "snapshot copy committed before a restart; checking it");
                m
            }
            Err(archive::Error::ManifestMissing { .. }) => {
                let opts = CopyOptions { labels, progress: Some(&progress), ..CopyOptions::default() };
                let stats = match &content {
                    Content::Tree(path) => archive::copy::copy_tree(store.as_ref(), &copy.manifest, path, &opts),
                    Content::Image(path) => archive::copy::copy_image(store.as_ref(), &copy.manifest, path, &opts),
                }
                .map_err(archive_err(what.clone()))?;
                copy.sent_bytes = stats.bytes_sent;
                self.archived.sent_bytes.fetch_add(stats.bytes_sent, Ordering::Relaxed);
                tracing::info!(
                    snapshot.id = %record.id, pool = %copy.pool, read = stats.bytes_read, sent = stats.bytes_sent,
                    chunks_new = stats.chunks_new, chunks_reused = stats.chunks_reused, elapsed_s = stats.elapsed.as_secs_f64(),
                    "snapshot copy committed; checking its chunks"
                );
                restore::load(store.as_ref(), &copy.manifest).map_err(archive_err(what.clone()))?
            }
            Err(e) => return Err(archive_err(what)(e)),
        };
        super::failpoint("archive.copy.before-check")?;
        let checked = |_: u64| work.stopped().is_none();
        let (chunks, bytes) = restore::check_chunks(store.as_ref(), &manifest, Some(&checked))
            .map_err(archive_err(format!("checking the copy of snapshot {} in pool {}", record.id, copy.pool)))?;
        copy.done = true;
        record.copy = Some(copy);
        self.put_snapshot(&record)?;
        tracing::info!(snapshot.id = %record.id, chunks, bytes, "snapshot copy checked: ready to use");
        Ok(())
    }

    /// The copy of snapshot `id` in a shared pool's store, when one holds it.
    pub(super) fn find_copy(&self, id: &str) -> Result<Option<FoundCopy>> {
        let Some(parsed) = ids::parse(Kind::Snapshot, id) else { return Ok(None) };
        let name = archive::snapshot_manifest(parsed.key);
        for pool in self.pools.values().filter(|p| p.records().is_some()) {
            let what = format!("looking for the copy of snapshot {id} in pool {}", pool.name());
            let store = open_store(pool, &what)?;
            match restore::load(store.as_ref(), &name) {
                Ok(manifest) => {
                    if manifest.labels.get(label::SNAPSHOT).is_some_and(|s| s != id) {
                        return Err(archive_err(what)(archive::Error::Unsupported {
                            path: name,
                            what: "a manifest labelled for another snapshot".into(),
                        }));
                    }
                    return Ok(Some(FoundCopy { pool: pool.name().to_string(), store, manifest }));
                }
                Err(archive::Error::ManifestMissing { .. }) => {}
                Err(e) => return Err(archive_err(what)(e)),
            }
        }
        Ok(None)
    }

    /// Checks that `found` can be restored into `pool` as a volume of `size` bytes.
    pub(super) fn check_restore(
        &self,
        found: &FoundCopy,
        pool: &dyn Backend,
        size: u64,
        access: AccessKind,
    ) -> Result<()> {
        let info: &PoolInfo = pool.info();
        let fits = match &found.manifest.content {
            Stored::Tree { .. } => info.kind == crate::backend::PoolKind::Hostpath,
            Stored::Image { .. } => info.kind == crate::backend::PoolKind::Block,
        };
        let what = match &found.manifest.content {
            Stored::Tree { .. } => "a directory tree, restored into a hostpath pool",
            Stored::Image { .. } => "a block image, restored into a block pool",
        };
        if !fits {
            return Err(Error::BadRequest(format!(
                "{}: the copy is {what}, and pool {} is a {} pool",
                found.shown(),
                pool.name(),
                info.kind
            )));
        }
        if access != found.access() {
            return Err(Error::BadRequest(format!(
                "{}: the copy is of a {} volume, the request asks for {} access",
                found.shown(),
                found.access().as_str(),
                access.as_str()
            )));
        }
        let needs = found.needs_bytes();
        if size < needs {
            return Err(Error::TooSmall {
                what: format!("a restore of snapshot {} from its copy", found.manifest.name),
                needs,
                allowed: format!("{size} requested"),
            });
        }
        Ok(())
    }

    /// Fills a new volume, made empty by its pool, from a copy.
    pub(super) fn fill_from_copy(&self, pool: &dyn Backend, record: &VolumeRecord, found: &FoundCopy) -> Result<()> {
        let dest = pool.volume_content(record).ok_or_else(|| {
            Error::BadRequest(format!("{}: pool {} cannot be filled from a copy", found.shown(), pool.name()))
        })?;
        let stats =
            restore::fill(found.store.as_ref(), &found.manifest, dest.path()).map_err(archive_err(found.shown()))?;
        self.archived.restored.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            volume.id = %record.id, copy = %found.manifest.name, pool = %found.pool, bytes = stats.bytes,
            chunks = stats.chunks, elapsed_s = stats.elapsed.as_secs_f64(), "volume restored from a snapshot copy"
        );
        Ok(())
    }

    /// CreateVolume from snapshot `id`, which this node has no record of: restored from
    /// its copy in a shared pool's store, in the background (ABORTED with the progress
    /// until done, as NFS clones are). An interrupted restore starts over from an empty
    /// volume. NOT_FOUND when no shared pool holds a copy.
    pub(super) fn create_from_copy(
        &self,
        req: &super::CreateVolume,
        pool: Pool,
        existing: Option<Arc<VolumeRecord>>,
        size: u64,
        access: AccessKind,
        fs_type: Option<String>,
    ) -> Result<Arc<VolumeRecord>> {
        let Some(crate::state::ContentSource::Snapshot(id)) = &req.source else {
            return Err(Error::BadRequest("a restore from a copy needs a snapshot source".into()));
        };
        let found = self.find_copy(id)?.ok_or_else(|| Error::NoSource {
            kind: "snapshot",
            id: id.clone(),
            node: format!("{} (and no shared pool configured here holds a copy of it)", self.node_id),
        })?;
        self.check_restore(&found, pool.as_ref(), size, access)?;
        let fs_type = match (&found.manifest.content, access) {
            (Stored::Image { .. }, AccessKind::Mount) => {
                let stored = found.fs_type();
                let asked = req
                    .capabilities
                    .iter()
                    .map(|c| c.fs_type.as_str())
                    .chain(req.parameters.get(super::volumes::FSTYPE_PARAMETER).map(String::as_str))
                    .find(|t| !t.is_empty());
                if let Some(asked) = asked
                    && Some(asked) != stored.as_deref()
                {
                    return Err(Error::BadRequest(format!(
                        "{}: the copy holds a {} filesystem, the request asks for {asked}",
                        found.shown(),
                        stored.as_deref().unwrap_or("unknown")
                    )));
                }
                stored.or(fs_type)
            }
            _ => fs_type,
        };
        let encryption = found.encryption()?;
        let asked = req.parameters.get(crate::crypt::PARAMETER).map(String::as_str);
        let scheme = crate::crypt::Scheme::from_parameter(asked).map_err(Error::BadRequest)?;
        if scheme != encryption.as_ref().map(|e| e.scheme) {
            return Err(Error::BadRequest(format!(
                "{}: the copy is {}, the request asks for {}",
                found.shown(),
                encryption.as_ref().map_or("not encrypted".to_string(), |e| format!("encrypted ({:?})", e.scheme)),
                scheme.map_or("no encryption".to_string(), |s| format!("{s:?}"))
            )));
        }
        let record = if let Some(v) = existing {
            // A restore cut short: start over from an empty volume.
            let v = Arc::unwrap_or_clone(v);
            pool.delete_volume(&v)?;
            v
        } else {
            self.check_room(pool.as_ref(), size)?;
            let mut record = self.new_volume_record(req, pool.as_ref(), size, access, fs_type);
            record.encryption = encryption;
            self.begin_volume(&record)?;
            record
        };
        let guard = self.lock_reading(std::slice::from_ref(&record.id), &[])?;
        let (target, key) = (record.id.clone(), copies::volume_key(&record.name));
        let limit = req.limit_bytes;
        let job = self.start_copy(&target, id, key, guard, move |engine, work| {
            let mut record = record;
            engine.build_volume_with(pool.as_ref(), &mut record, None, limit, work, |made| {
                engine.fill_from_copy(pool.as_ref(), made, &found)
            })
        });
        self.await_volume(&req.name, &target, &job)
    }

    /// Deletes a snapshot's copy from its shared pool: its manifest (then the copy is
    /// gone: nothing restores from it), then, as far as it can without waiting for copies
    /// in progress, the chunks no other manifest needs. Chunks a sweep could not reach
    /// now are garbage the next deletion's sweep removes. A copy already gone is success.
    pub(super) fn delete_copy(&self, snapshot: &str, pool: &str, manifest: &str) -> Result<()> {
        let what = format!("deleting the copy of snapshot {snapshot} from pool {pool}");
        let target = self.pool(pool)?.clone();
        let store = open_store(&target, &what)?;
        archive::check_name("manifest", manifest).map_err(archive_err(what.clone()))?;
        let removed = store.remove_file(archive::store::Area::Manifests, manifest).map_err(archive_err(what))?;
        super::failpoint("archive.delete.manifest-removed")?;
        tracing::info!(snapshot.id = %snapshot, pool, manifest, removed, "snapshot copy deleted");
        let timing = archive::lease::Timing { give_up_after: SWEEP_WAIT, ..archive::lease::Timing::default() };
        match archive::gc::collect(store.as_ref(), timing) {
            Ok(report) => tracing::info!(
                pool,
                removed = report.chunks_removed,
                kept = report.chunks_kept,
                "swept chunks no copy needs"
            ),
            Err(e) => tracing::warn!(pool, error = %e, "chunks no copy needs are left for the next sweep"),
        }
        Ok(())
    }
}

fn open_store(pool: &Pool, what: &str) -> Result<Box<dyn ChunkStore>> {
    let shared =
        pool.records().ok_or_else(|| Error::BadRequest(format!("pool {} is not a shared pool", pool.name())))?;
    shared.archive().map_err(archive_err(what))
}
