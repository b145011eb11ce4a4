//! Reconciliation at start: every record left mid-operation by a crash is finished (or,
//! when it cannot be, rolled back), and storage no record accounts for is reported, never
//! deleted, since it may be someone's data.

use std::sync::Arc;

use super::Engine;
use crate::backend::Source;
use crate::state::{ContentSource, Phase};

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub finished: usize,
    pub rolled_back: usize,
    pub deleted: usize,
    pub failed: usize,
    /// Paths in pool directories that no record names.
    pub unaccounted: Vec<std::path::PathBuf>,
}

impl Engine {
    /// Finishes or rolls back half-done work recorded in the state, then reports data that
    /// no record accounts for.
    pub fn reconcile(&self) -> Report {
        let mut report = Report::default();
        for mut volume in self.store.volumes_where(|v| v.phase != Phase::Ready) {
            let Some(pool) = self.pools.get(&volume.pool).map(Arc::clone) else { continue };
            let _guard = self.locks.try_lock([volume.id.clone()]);
            match volume.phase {
                Phase::Creating => {
                    let snapshot = match &volume.source {
                        Some(ContentSource::Snapshot(id)) => {
                            self.store.snapshot(id).filter(|s| s.phase == Phase::Ready)
                        }
                        _ => None,
                    };
                    let source_volume = match &volume.source {
                        Some(ContentSource::Volume(id)) => self.store.volume(id).filter(|v| v.phase == Phase::Ready),
                        _ => None,
                    };
                    let source = match (&volume.source, &snapshot, &source_volume) {
                        (None, _, _) => Some(None),
                        (_, Some(s), _) => Some(Some(Source::Snapshot(s))),
                        (_, _, Some(v)) => Some(Some(Source::Volume(v))),
                        _ => None,
                    };
                    let finished = match source {
                        Some(source) => pool.create_volume(&mut volume, source).map_err(|e| e.to_string()),
                        None => Err("its source is gone".to_string()),
                    };
                    match finished {
                        Ok(()) => {
                            volume.phase = Phase::Ready;
                            match self.store.put_volume(&volume) {
                                Ok(()) => {
                                    report.finished += 1;
                                    tracing::info!(volume.id = %volume.id, "finished an interrupted CreateVolume");
                                }
                                Err(e) => {
                                    report.failed += 1;
                                    tracing::error!(volume.id = %volume.id, error = %e, "recording a finished volume");
                                }
                            }
                        }
                        Err(reason) => {
                            tracing::warn!(volume.id = %volume.id, reason, "cannot finish an interrupted CreateVolume; rolling it back");
                            match pool
                                .delete_volume(&volume)
                                .map_err(|e| e.to_string())
                                .and_then(|()| self.store.remove_volume(&volume.id).map_err(|e| e.to_string()))
                            {
                                Ok(()) => report.rolled_back += 1,
                                Err(e) => {
                                    report.failed += 1;
                                    tracing::error!(volume.id = %volume.id, error = %e, "rolling back an interrupted CreateVolume");
                                }
                            }
                        }
                    }
                }
                Phase::Deleting => {
                    match pool
                        .delete_volume(&volume)
                        .map_err(|e| e.to_string())
                        .and_then(|()| self.store.remove_volume(&volume.id).map_err(|e| e.to_string()))
                    {
                        Ok(()) => {
                            report.deleted += 1;
                            tracing::info!(volume.id = %volume.id, "finished an interrupted DeleteVolume");
                        }
                        Err(e) => {
                            report.failed += 1;
                            tracing::error!(volume.id = %volume.id, error = %e, "finishing an interrupted DeleteVolume");
                        }
                    }
                }
                Phase::Ready => {}
            }
        }
        for mut snapshot in self.store.snapshots_page(None, usize::MAX, |s| s.phase != Phase::Ready).0 {
            let Some(pool) = self.pools.get(&snapshot.pool).map(Arc::clone) else { continue };
            let result = match snapshot.phase {
                Phase::Creating => match self.store.volume(&snapshot.source_volume).filter(|v| v.phase == Phase::Ready)
                {
                    Some(volume) => {
                        pool.create_snapshot(&volume, &mut snapshot).map_err(|e| e.to_string()).and_then(|()| {
                            snapshot.phase = Phase::Ready;
                            self.store.put_snapshot(&snapshot).map_err(|e| e.to_string())
                        })
                    }
                    None => Err("its source volume is gone".to_string()),
                },
                _ => Err(String::new()),
            };
            match (snapshot.phase, result) {
                (Phase::Ready, Ok(())) => {
                    report.finished += 1;
                    tracing::info!(snapshot.id = %snapshot.id, "finished an interrupted CreateSnapshot");
                }
                _ => match pool
                    .delete_snapshot(&snapshot)
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.store.remove_snapshot(&snapshot.id).map_err(|e| e.to_string()))
                {
                    Ok(()) => {
                        report.deleted += 1;
                        tracing::info!(snapshot.id = %snapshot.id, "rolled back or finished deleting an interrupted snapshot");
                    }
                    Err(e) => {
                        report.failed += 1;
                        tracing::error!(snapshot.id = %snapshot.id, error = %e, "reconciling an interrupted snapshot");
                    }
                },
            }
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
                unaccounted = report.unaccounted.len(),
                "reconciled state at start"
            );
        }
        report
    }
}
