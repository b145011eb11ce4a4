//! The one state machine of volumes and snapshots, used by the RPCs and by recovery at
//! start alike. Records are written here and nowhere else in the engine (apart from the
//! loading of a shared pool's records into the local cache):
//!
//! ```text
//! volume    (none) --begin--> Creating --build--> Ready --retire--> Deleting --finish_delete--> (none)
//!                             Creating --roll_back-------------------------------------------> (none)
//! snapshot  (none) --begin--> Creating --build--> Ready --retire--> Deleting --finish_delete--> (none)
//!                             Creating --roll_back-------------------------------------------> (none)
//! ```
//!
//! Every step records its intent before its side effects, and a fault point sits between
//! each side effect and the record that follows it, so a crash anywhere leaves a record
//! whose phase says what [`Engine::resume_volume`] / [`Engine::resume_snapshot`] must do.
//! A record is written first where its pool keeps its durable truth (an NFS export), then
//! in the local store; a record is forgotten in the same order.

use std::sync::Arc;

use super::{Engine, Error, Result, failpoint};
use crate::backend::{Backend, Pool, Source, Stop, Work};
use crate::state::{ContentSource, Phase, SnapshotRecord, VolumeRecord};

/// What a volume is copied from: a snapshot or another volume (or neither), shared with
/// the store while the copy reads them.
pub(super) type Sources = (Option<Arc<SnapshotRecord>>, Option<Arc<VolumeRecord>>);

/// What resuming an unfinished record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// An interrupted creation was finished: the object is Ready.
    Finished,
    /// An interrupted creation could not be finished and was undone.
    RolledBack,
    /// An interrupted deletion was finished.
    Deleted,
}

impl Engine {
    /// Records a volume: first where its pool keeps its durable truth, then locally.
    pub(super) fn put_volume(&self, record: &VolumeRecord) -> Result<()> {
        if let Some(shared) = self.pools.get(&record.pool).and_then(Pool::records) {
            shared.persist_volume(record)?;
        }
        self.store.put_volume(record).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    /// Forgets a volume in its pool's own records and in the local store.
    fn remove_volume_record(&self, record: &VolumeRecord) -> Result<()> {
        if let Some(shared) = self.pools.get(&record.pool).and_then(Pool::records) {
            shared.forget_volume(record)?;
        }
        self.store.remove_volume(&record.id).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    pub(super) fn put_snapshot(&self, record: &SnapshotRecord) -> Result<()> {
        if let Some(shared) = self.pools.get(&record.pool).and_then(Pool::records) {
            shared.persist_snapshot(record)?;
        }
        self.store.put_snapshot(record).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    fn remove_snapshot_record(&self, record: &SnapshotRecord) -> Result<()> {
        if let Some(shared) = self.pools.get(&record.pool).and_then(Pool::records) {
            shared.forget_snapshot(record)?;
        }
        self.store.remove_snapshot(&record.id).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    /// Records the intent to create `record` (phase Creating) before any side effect.
    pub(super) fn begin_volume(&self, record: &VolumeRecord) -> Result<()> {
        debug_assert_eq!(record.phase, Phase::Creating);
        self.put_volume(record)
    }

    /// Makes the storage of a volume whose intent is recorded and marks it Ready. A
    /// failure rolls the volume back (the failure is final and leaves nothing behind);
    /// a crash leaves the intent for a retry or for recovery to finish. `limit_bytes`
    /// (0: none) refuses a pool that can only offer more than the request allows. A copy
    /// stopped for shutdown is left as a crash would leave it, for the next start.
    pub(super) fn build_volume(
        &self,
        pool: &dyn Backend,
        record: &mut VolumeRecord,
        source: Option<Source<'_>>,
        limit_bytes: u64,
        work: &Work,
    ) -> Result<()> {
        self.build_volume_with(pool, record, source, limit_bytes, work, |_| Ok(()))
    }

    /// [`Engine::build_volume`], with `fill` writing the volume's content once its pool
    /// made it (a restore from a snapshot copy); a failure of `fill` rolls back too.
    pub(super) fn build_volume_with(
        &self,
        pool: &dyn Backend,
        record: &mut VolumeRecord,
        source: Option<Source<'_>>,
        limit_bytes: u64,
        work: &Work,
        fill: impl FnOnce(&VolumeRecord) -> Result<()>,
    ) -> Result<()> {
        failpoint("volume.create.after-intent")?;
        // What the volume will occupy (a device pool's disk) is recorded before anything
        // is written to it, so a crash mid-write leaves a record that names the disk.
        match pool.reserve(record) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.put_volume(record) {
                    self.roll_back_logged(pool, record);
                    return Err(e);
                }
                failpoint("volume.create.after-reserve")?;
            }
            Err(e) => {
                self.roll_back_logged(pool, record);
                return Err(e.into());
            }
        }
        // A copy stopped for shutdown is left as a crash would leave it, for the next start.
        let made = pool
            .create_volume(record, source, work)
            .and_then(|()| pool.apply_mutable(record))
            .map_err(Error::from)
            .and_then(|()| fill(record));
        if let Err(e) = made {
            if work.stopped() != Some(Stop::Shutdown) {
                self.roll_back_logged(pool, record);
            }
            return Err(e);
        }
        failpoint("volume.create.before-ready")?;
        if limit_bytes > 0 && record.capacity > limit_bytes {
            self.roll_back_logged(pool, record);
            return Err(Error::TooSmall {
                what: format!("the smallest volume pool {} can offer", pool.name()),
                needs: record.capacity,
                allowed: format!("limit_bytes is {limit_bytes}"),
            });
        }
        record.phase = Phase::Ready;
        self.put_volume(record)
    }

    /// Undoes a creation: removes whatever storage exists, then the record.
    fn roll_back_volume(&self, pool: &dyn Backend, record: &VolumeRecord) -> Result<()> {
        pool.delete_volume(record)?;
        self.remove_volume_record(record)
    }

    /// [`Engine::roll_back_volume`] for a request that already failed: the request's own
    /// error is what the caller answers, so this one is logged. If the undo fails, the
    /// intent record stays for a retry or recovery to finish.
    fn roll_back_logged(&self, pool: &dyn Backend, record: &VolumeRecord) {
        if let Err(e) = self.roll_back_volume(pool, record) {
            tracing::error!(volume.id = %record.id, error = %e, "rolling back a failed volume; a retry will finish it");
        }
    }

    /// Records the intent to delete a volume (phase Deleting), then removes its storage
    /// and its record. A volume already Deleting (a crash or a failure mid-way) continues.
    pub(super) fn delete_volume_storage(&self, pool: &dyn Backend, record: &mut VolumeRecord) -> Result<()> {
        if record.phase != Phase::Deleting {
            record.phase = Phase::Deleting;
            self.put_volume(record)?;
        }
        failpoint("volume.delete.after-intent")?;
        pool.delete_volume(record)?;
        failpoint("volume.delete.before-forget")?;
        self.remove_volume_record(record)
    }

    /// Records the intent to snapshot a volume (phase Creating).
    pub(super) fn begin_snapshot(&self, record: &SnapshotRecord) -> Result<()> {
        debug_assert_eq!(record.phase, Phase::Creating);
        self.put_snapshot(record)
    }

    /// Takes the snapshot whose intent is recorded and marks it Ready; a failure rolls it
    /// back, a crash (or a copy stopped for shutdown) leaves the intent.
    pub(super) fn build_snapshot(
        &self,
        pool: &dyn Backend,
        volume: &VolumeRecord,
        record: &mut SnapshotRecord,
        work: &Work,
    ) -> Result<()> {
        failpoint("snapshot.create.after-intent")?;
        if let Err(e) = pool.create_snapshot(volume, record, work) {
            if work.stopped() == Some(Stop::Shutdown) {
                return Err(e.into());
            }
            if let Err(undo) = self.roll_back_snapshot(pool, record) {
                tracing::error!(snapshot.id = %record.id, error = %undo, "rolling back a failed snapshot; a retry will finish it");
            }
            return Err(e.into());
        }
        failpoint("snapshot.create.before-ready")?;
        record.phase = Phase::Ready;
        self.put_snapshot(record)
    }

    pub(super) fn roll_back_snapshot(&self, pool: &dyn Backend, record: &SnapshotRecord) -> Result<()> {
        pool.delete_snapshot(record)?;
        self.remove_snapshot_record(record)
    }

    /// Records the intent to delete a snapshot, then removes its content and its record.
    pub(super) fn delete_snapshot_storage(&self, pool: &dyn Backend, record: &mut SnapshotRecord) -> Result<()> {
        if record.phase != Phase::Deleting {
            record.phase = Phase::Deleting;
            self.put_snapshot(record)?;
        }
        failpoint("snapshot.delete.after-intent")?;
        pool.delete_snapshot(record)?;
        failpoint("snapshot.delete.before-forget")?;
        self.remove_snapshot_record(record)
    }

    /// The Ready snapshot or volume a Creating volume's record names as its source; why
    /// not, when it is gone.
    pub(super) fn recorded_source(&self, record: &VolumeRecord) -> std::result::Result<Sources, String> {
        match &record.source {
            None => Ok((None, None)),
            Some(ContentSource::Snapshot(id)) => match self.store.snapshot(id).filter(|s| s.phase == Phase::Ready) {
                Some(s) => Ok((Some(s), None)),
                None => Err(format!("its source snapshot {id} is gone")),
            },
            Some(ContentSource::Volume(id)) => match self.store.volume(id).filter(|v| v.phase == Phase::Ready) {
                Some(v) => Ok((None, Some(v))),
                None => Err(format!("its source volume {id} is gone")),
            },
        }
    }

    /// Takes an unfinished volume record to an end: a creation is finished when its
    /// source still exists (and rolled back when it cannot be finished), a deletion is
    /// finished. The caller holds the volume's lock.
    pub(super) fn resume_volume(&self, pool: &dyn Backend, record: &mut VolumeRecord) -> Result<Resumed> {
        match record.phase {
            Phase::Ready => Ok(Resumed::Finished),
            Phase::Deleting => self.delete_volume_storage(pool, record).map(|()| Resumed::Deleted),
            Phase::Creating => {
                let sources = self.recorded_source(record);
                let source = match &sources {
                    Ok((Some(s), _)) => Ok(Some(Source::Snapshot(s))),
                    Ok((_, Some(v))) => Ok(Some(Source::Volume(v))),
                    Ok((None, None)) => Ok(None),
                    Err(reason) => Err(reason.clone()),
                };
                let built = match source {
                    Ok(source) => self.build_volume(pool, record, source, 0, &Work::new()),
                    Err(reason) => {
                        tracing::warn!(volume.id = %record.id, reason, "cannot finish an interrupted CreateVolume; rolling it back");
                        return self.roll_back_volume(pool, record).map(|()| Resumed::RolledBack);
                    }
                };
                match built {
                    Ok(()) => Ok(Resumed::Finished),
                    // build_volume rolled back what it could not finish; the record is
                    // gone unless the undo failed too.
                    Err(e) if self.store.volume(&record.id).is_none() => {
                        tracing::warn!(volume.id = %record.id, error = %e, "cannot finish an interrupted CreateVolume; rolled it back");
                        Ok(Resumed::RolledBack)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Takes an unfinished snapshot record to an end: a creation is finished while its
    /// source volume is Ready, otherwise undone; a deletion is finished.
    pub(super) fn resume_snapshot(&self, pool: &dyn Backend, record: &mut SnapshotRecord) -> Result<Resumed> {
        match record.phase {
            Phase::Ready => Ok(Resumed::Finished),
            Phase::Deleting => self.delete_snapshot_storage(pool, record).map(|()| Resumed::Deleted),
            Phase::Creating => {
                let Some(volume) = self.store.volume(&record.source_volume).filter(|v| v.phase == Phase::Ready) else {
                    tracing::warn!(snapshot.id = %record.id, volume.id = %record.source_volume, "cannot finish an interrupted CreateSnapshot: its source volume is gone; rolling it back");
                    return self.roll_back_snapshot(pool, record).map(|()| Resumed::RolledBack);
                };
                match self.build_snapshot(pool, &volume, record, &Work::new()) {
                    Ok(()) => Ok(Resumed::Finished),
                    Err(e) if self.store.snapshot(&record.id).is_none() => {
                        tracing::warn!(snapshot.id = %record.id, error = %e, "cannot finish an interrupted CreateSnapshot; rolled it back");
                        Ok(Resumed::RolledBack)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}
