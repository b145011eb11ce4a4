//! The engine: what each CSI operation does, independent of gRPC. The services in `csi`
//! translate requests into these calls (on blocking threads) and errors into codes.

mod archive;
mod copies;
pub mod encryption;
mod ephemeral;
mod error;
#[cfg(test)]
mod group_tests;
mod groups;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
mod listing;
#[cfg(test)]
mod luks_tests;
mod modify;
mod node;
mod paths;
mod publish;
mod reconcile;
mod shared;
mod snapshots;
mod stats;
#[cfg(test)]
mod tests;
mod volumes;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backend::device::Holdings;
use crate::backend::{self, Pool};
use crate::config::Config;
use crate::locks::{Guard, Locks};
use crate::mount::Syscall;
use crate::state::Store;

pub use crate::backend::{AccessMode, Capability, FS_TYPES};
pub use archive::COPY_TO;
pub use error::{Error, Result};
pub use groups::GroupSnapshot;
pub use listing::{CapacityQuery, ListedVolume, Page};
pub use node::{NodePublish, NodeStage};
pub use reconcile::Report;
pub use volumes::CreateVolume;

/// The topology key naming the node that holds a node-local volume.
pub const TOPOLOGY_KEY: &str = "topology.berth.csi.io/node";
/// ListVolumes/ListSnapshots page size when the CO sets none: small enough that a page of
/// the largest records stays far below gRPC's 4 MiB message limit.
pub const DEFAULT_PAGE: usize = 500;
/// The most entries one page holds whatever max_entries asks (the spec lets a plugin
/// return fewer): a page of the largest records stays under 4 MiB.
pub const MAX_PAGE: usize = 1000;

/// Everything an operation needs: configuration, records, locks, pools and the kernel.
pub struct Engine {
    pub config: Config,
    pub node_id: String,
    pub store: Store,
    pub locks: Locks,
    pub pools: BTreeMap<String, Pool>,
    pub sys: Arc<dyn Syscall>,
    /// Node-local pools this process does not open: it is the central controller, and the
    /// pools live on the nodes (see [`Placement::Central`]).
    pub remote_pools: std::collections::BTreeSet<String>,
    /// Configured pools whose directory is not the filesystem they were made on (see
    /// [`backend::identity`]), with the reason: every call for them is UNAVAILABLE.
    pub unavailable: BTreeMap<String, String>,
    /// Shared pools whose records the central controller still has to load.
    pub shared_sync: shared::SyncState,
    /// Encryption keys calls hold in the kernel (see [`encryption`]).
    pub key_holds: encryption::KeyHolds,
    /// Copies running in the background.
    pub copies: copies::Copies,
    /// The freezes of filesystems, recorded so that a start thaws what a crash left frozen.
    pub freezes: backend::blockvol::Freezes,
    /// Snapshot copies to shared pools made, failed and restored, since the start.
    pub archived: archive::ArchiveCounters,
    /// This engine, once [`Engine::shared`] put it in an `Arc`: background copies hold it.
    me: std::sync::Weak<Engine>,
}

/// Where this process runs relative to the node-local pools it is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On a node: open every pool (`--mode all` or `--mode node`).
    OnNode,
    /// The central controller (`--mode controller`): node-local pools are provisioned by
    /// each node's own controller, so they are known by name only. Expansion of their
    /// volumes is answered with "node expansion required" and done by NodeExpandVolume.
    Central,
}

/// A fault point inside an engine operation (see [`crate::failpoint`]).
pub(crate) fn failpoint(name: &'static str) -> Result<()> {
    crate::failpoint::hit(name)
        .map_err(|source| Error::Backend(backend::Error::Io { op: name, path: "".into(), source }))
}

impl Engine {
    /// Opens the state and every pool, then finishes or rolls back what a crash left
    /// half-done ([`Engine::reconcile`]) before returning.
    pub fn open(
        config: Config,
        node_id: String,
        sys: Arc<dyn Syscall>,
        placement: Placement,
    ) -> std::result::Result<Engine, String> {
        let engine = Engine::open_unreconciled(config, node_id, sys, placement)?;
        engine.recover();
        Ok(engine)
    }

    /// Finishes or rolls back what a crash left half-done; `berth serve` runs it in the
    /// background while it already answers Probe (not ready) and /healthz.
    pub fn recover(&self) {
        let started = std::time::Instant::now();
        self.reconcile();
        self.remove_unused_keys();
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "reconciled records with the pools");
    }

    /// Opens the state and every pool, without [`Engine::recover`]: calls other than
    /// Identity's must wait until it has run.
    pub fn open_unreconciled(
        config: Config,
        node_id: String,
        sys: Arc<dyn Syscall>,
        placement: Placement,
    ) -> std::result::Result<Engine, String> {
        config.check_resolved_roots()?;
        let (store, unreadable) = Store::open(&config.state_dir)
            .map_err(|e| format!("opening state in {}: {e}", config.state_dir.display()))?;
        for bad in &unreadable {
            tracing::warn!(path = %bad.path.display(), reason = %bad.reason, "state record cannot be read; left in place for the operator");
        }
        let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
        let mut remote_pools = std::collections::BTreeSet::new();
        let mut unavailable = BTreeMap::new();
        // Before any pool is touched: a crash may have left a volume's filesystem frozen.
        let freezes = backend::blockvol::Freezes::new(config.state_dir.join("freezes"));
        freezes.thaw_left(sys.as_ref()).map_err(|e| format!("thawing filesystems a crash left frozen: {e}"))?;
        // One record of the devices every device pool holds: a disk two pools list is
        // handed out once.
        let held = Holdings::default();
        // New project IDs never collide with those already recorded, in any pool.
        let max_project = store.volumes_where(|v| v.project_id.is_some()).iter().filter_map(|v| v.project_id).max();
        let context = backend::registry::Context {
            config: &config,
            store: &store,
            sys: &sys,
            freezes: &freezes,
            held: &held,
            max_project,
        };
        for pool in &config.pools {
            if placement == Placement::Central && pool.node_local() {
                remote_pools.insert(pool.name().to_string());
                continue;
            }
            if let Some(root) = pool.path()
                && let Err(reason) =
                    backend::identity::claim(pool.name(), root, store.count_in_pool(pool.name()), pool.creates_path())
            {
                tracing::error!(pool = pool.name(), path = %root.display(), reason, "pool unavailable");
                unavailable.insert(pool.name().to_string(), reason);
                continue;
            }
            let backend = backend::registry::open(pool, &context)?;
            pools.insert(pool.name().to_string(), backend);
        }
        let engine = Engine {
            config,
            node_id,
            store,
            locks: Locks::default(),
            pools,
            sys,
            remote_pools,
            unavailable,
            shared_sync: shared::SyncState::default(),
            key_holds: encryption::KeyHolds::default(),
            copies: copies::Copies::default(),
            freezes,
            archived: archive::ArchiveCounters::default(),
            me: std::sync::Weak::new(),
        };
        engine.start_shared(placement)?;
        Ok(engine)
    }

    /// Shares the engine between threads. Only a shared engine runs long copies in the
    /// background (see [`copies`]); otherwise each call runs its copy to the end.
    #[must_use]
    pub fn shared(self) -> Arc<Engine> {
        Arc::new_cyclic(|me| Engine { me: me.clone(), ..self })
    }

    /// Asks every background copy to stop because berth is stopping; each leaves its
    /// intent recorded for the next start. [`Engine::wait_for_copies`] waits for them.
    pub fn stop_copies_for_shutdown(&self) {
        self.copies.stop_all();
    }

    /// Takes the per-object locks for `keys`, or answers ABORTED naming what is busy.
    pub fn lock(&self, keys: &[String]) -> Result<Guard> {
        self.locks.try_lock(keys.iter().cloned()).ok_or_else(|| Error::Busy { keys: keys.to_vec() })
    }

    /// Takes `keys` exclusively and the [`crate::locks::reading`] keys of `sources`
    /// shared, or answers ABORTED naming what is busy.
    pub fn lock_reading(&self, keys: &[String], sources: &[&str]) -> Result<Guard> {
        let reading: Vec<String> = sources.iter().map(|id| crate::locks::reading(id)).collect();
        self.locks.try_lock_sharing(keys.iter().cloned(), reading).ok_or_else(|| Error::BusyOrDeleting {
            keys: keys.to_vec(),
            sources: sources.iter().map(ToString::to_string).collect(),
        })
    }

    fn pool(&self, name: &str) -> Result<&Pool> {
        self.pools.get(name).ok_or_else(|| {
            self.missing_pool(name, Error::NoPool { pool: name.to_string(), node: self.node_id.clone() })
        })
    }

    /// The pool holding a volume this process has a record of: FAILED_PRECONDITION when
    /// the pool is no longer configured (UNAVAILABLE when it is, but not open).
    pub(crate) fn pool_of(&self, record: &crate::state::VolumeRecord) -> Result<Pool> {
        self.pools.get(&record.pool).cloned().ok_or_else(|| {
            self.missing_pool(&record.pool, Error::PoolGone { volume: record.id.clone(), pool: record.pool.clone() })
        })
    }

    /// The error for pool `name`, which is not open: UNAVAILABLE with the reason when its
    /// directory is not its filesystem, `otherwise` when it is not configured.
    pub(crate) fn missing_pool(&self, name: &str, otherwise: Error) -> Error {
        match self.unavailable.get(name) {
            Some(reason) => Error::PoolUnavailable { pool: name.to_string(), reason: reason.clone() },
            None => otherwise,
        }
    }

    /// The pool a request's parameters select: `pool`, or the only pool.
    pub fn select_pool(&self, requested: Option<&str>) -> Result<&Pool> {
        match requested {
            Some(name) if self.remote_pools.contains(name) => Err(Error::PoolRefuses {
                pool: name.to_string(),
                refusal: "is node-local: each node's berth provisions it (csi-provisioner --node-deployment), not the central controller",
            }),
            Some(name) if self.pools.get(name).is_some_and(|p| p.info().copies_only) => Err(Error::PoolRefuses {
                pool: name.to_string(),
                refusal: "holds snapshot copies only (copiesOnly): a VolumeSnapshotClass's copyTo names it, a StorageClass cannot",
            }),
            Some(name) => self.pools.get(name).ok_or_else(|| {
                self.missing_pool(
                    name,
                    Error::BadRequest(format!(
                        "parameter pool={name:?} names no configured pool; pools: {}",
                        self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                )
            }),
            None if self.pools.is_empty() && self.remote_pools.is_empty() && self.unavailable.len() == 1 => {
                let name = self.unavailable.keys().next().map_or("", String::as_str);
                Err(self.missing_pool(name, Error::BadRequest("no pools are configured".into())))
            }
            None if self.pools.values().filter(|p| !p.info().copies_only).count() == 1
                && self.remote_pools.is_empty() =>
            {
                self.pools
                    .values()
                    .find(|p| !p.info().copies_only)
                    .ok_or_else(|| Error::BadRequest("no pools are configured".into()))
            }
            None if self.pools.is_empty() && self.remote_pools.len() == 1 => Err(Error::PoolRefuses {
                pool: self.remote_pools.iter().next().cloned().unwrap_or_default(),
                refusal: "is the only pool, and node-local: each node's berth provisions it, not the central controller",
            }),
            None => Err(Error::BadRequest(format!(
                "parameter pool is required when several pools are configured: {}",
                self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}
