//! Reconciliation at start: every record left mid-operation by a crash is taken to an end
//! by the state machine ([`super::lifecycle`]), and storage no record accounts for is
//! reported, never deleted, since it may be someone's data.

use super::Engine;
use super::lifecycle::Resumed;
use crate::state::Phase;

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub finished: usize,
    pub rolled_back: usize,
    pub deleted: usize,
    pub failed: usize,
    /// Interrupted copies taken up again in the background.
    pub resumed: usize,
    /// Paths in pool directories that no record names.
    pub unaccounted: Vec<std::path::PathBuf>,
}

impl Report {
    fn count(&mut self, outcome: &super::Result<Resumed>) {
        match outcome {
            Ok(Resumed::Finished) => self.finished += 1,
            Ok(Resumed::RolledBack) => self.rolled_back += 1,
            Ok(Resumed::Deleted) => self.deleted += 1,
            Err(_) => self.failed += 1,
        }
    }
}

impl Engine {
    /// Takes an interrupted background copy into a volume up again in the background;
    /// false when the volume is not such a copy (or its source is gone, which the
    /// ordinary resumption rolls back).
    fn resume_volume_copy(&self, pool: &crate::backend::Pool, volume: &crate::state::VolumeRecord) -> bool {
        if volume.phase != Phase::Creating || volume.source.is_none() || !self.runs_copies_in_background(pool) {
            return false;
        }
        let Ok(sources) = self.recorded_source(volume) else { return false };
        match self.start_volume_copy(pool.clone(), volume.clone(), sources, 0) {
            Ok(_) => {
                tracing::info!(volume.id = %volume.id, "taking an interrupted copy up again in the background");
                true
            }
            Err(e) => {
                tracing::warn!(volume.id = %volume.id, error = %e, "an interrupted copy is in use; the call holding it finishes it");
                true
            }
        }
    }

    /// [`Engine::resume_volume_copy`] for a snapshot cut.
    fn resume_snapshot_copy(&self, pool: &crate::backend::Pool, snapshot: &crate::state::SnapshotRecord) -> bool {
        if snapshot.phase != Phase::Creating || !self.runs_copies_in_background(pool) {
            return false;
        }
        let Some(volume) = self.store.volume(&snapshot.source_volume).filter(|v| v.phase == Phase::Ready) else {
            return false;
        };
        match self.start_snapshot_copy(pool.clone(), volume, snapshot.clone()) {
            Ok(_) => {
                tracing::info!(snapshot.id = %snapshot.id, "taking an interrupted snapshot cut up again in the background");
                true
            }
            Err(e) => {
                tracing::warn!(snapshot.id = %snapshot.id, error = %e, "an interrupted snapshot cut is in use; the call holding it finishes it");
                true
            }
        }
    }

    /// Takes every unfinished volume and snapshot record to an end, then reports data no
    /// record accounts for. Runs before any call other than Identity's is served, so no
    /// lock is held by anyone else; a record whose lock is taken anyway is left for the
    /// call holding it, which finishes it as a retry does.
    pub fn reconcile(&self) -> Report {
        let mut report = Report::default();
        for volume in self.store.volumes_where(|v| v.phase != Phase::Ready) {
            let Some(pool) = self.pools.get(&volume.pool).cloned() else { continue };
            if self.resume_volume_copy(&pool, &volume) {
                report.resumed += 1;
                continue;
            }
            let Some(_guard) = self.locks.try_lock([volume.id.clone()]) else {
                tracing::warn!(volume.id = %volume.id, "an unfinished volume is in use; the call holding it finishes it");
                continue;
            };
            // Resuming changes the record: the copy to change.
            let mut volume = std::sync::Arc::unwrap_or_clone(volume);
            let outcome = self.resume_volume(pool.as_ref(), &mut volume);
            match &outcome {
                Ok(done) => {
                    tracing::info!(volume.id = %volume.id, outcome = ?done, "took an interrupted volume operation to its end");
                }
                Err(e) => {
                    tracing::error!(volume.id = %volume.id, error = %e, "cannot take an interrupted volume operation to its end; a retry will");
                }
            }
            report.count(&outcome);
        }
        self.finish_modifications();
        // A group's members are rolled back together, never finished one by one.
        self.roll_back_interrupted_groups();
        let unfinished = |s: &crate::state::SnapshotRecord| {
            s.phase == Phase::Deleting || (s.phase == Phase::Creating && s.group.is_none())
        };
        for snapshot in self.store.snapshots_page(None, usize::MAX, unfinished).0 {
            let Some(pool) = self.pools.get(&snapshot.pool).cloned() else { continue };
            if self.resume_snapshot_copy(&pool, &snapshot) {
                report.resumed += 1;
                continue;
            }
            let Some(_guard) = self.locks.try_lock([snapshot.id.clone()]) else {
                tracing::warn!(snapshot.id = %snapshot.id, "an unfinished snapshot is in use; the call holding it finishes it");
                continue;
            };
            let mut snapshot = std::sync::Arc::unwrap_or_clone(snapshot);
            let outcome = self.resume_snapshot(pool.as_ref(), &mut snapshot);
            match &outcome {
                Ok(done) => {
                    tracing::info!(snapshot.id = %snapshot.id, outcome = ?done, "took an interrupted snapshot operation to its end");
                }
                Err(e) => {
                    tracing::error!(snapshot.id = %snapshot.id, error = %e, "cannot take an interrupted snapshot operation to its end; a retry will");
                }
            }
            report.count(&outcome);
        }
        let known = self.store.storage_keys();
        for pool in self.pools.values() {
            for path in pool.unaccounted(&known) {
                tracing::warn!(pool = pool.name(), path = %path.display(), "data no volume or snapshot record accounts for; left in place");
                report.unaccounted.push(path);
            }
        }
        if report != Report::default() {
            tracing::info!(
                finished = report.finished,
                rolled_back = report.rolled_back,
                deleted = report.deleted,
                failed = report.failed,
                resumed = report.resumed,
                unaccounted = report.unaccounted.len(),
                "reconciled state at start"
            );
        }
        report
    }
}
