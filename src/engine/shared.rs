//! What the engine does differently for shared pools (NFS), whose storage every node
//! reaches and whose durable records live with the storage:
//!
//! - the central controller rebuilds its record cache from the pool at start, and node
//!   plugins announce themselves to the pool, so ControllerPublishVolume can tell a real
//!   node from an unknown one;
//! - ControllerPublishVolume gives single-node access modes their meaning across nodes;
//! - a node plugin, which holds no records, finds a volume from its volume context;
//! - node-side checks of NFS mounts never stat a mount that may be dead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Capability, Engine, Error, Placement, Result};
use crate::backend::{Condition, Pool, Shared, Usage};
use crate::ids::{self, Kind};
use crate::mount::mountinfo::{MountEntry, is_nfs};
use crate::mount::{MntFlags, mountinfo, ops};
use crate::state::VolumeRecord;

/// Shared pools whose records the central controller has not loaded yet.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Held only to read or change the set, never across a network call.
    pending: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// One gate per pool, held while that pool's records load: a slow or dead server
    /// holds up calls on its own pool only.
    loading: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>,
}

impl Engine {
    /// The pools every node reaches, with their record-keeping part.
    fn shared_pools(&self) -> impl Iterator<Item = (&Pool, &Arc<dyn Shared>)> {
        self.pools.values().filter_map(|p| p.records().map(|s| (p, s)))
    }

    /// On a node, announces this node to each shared pool in the background. On the
    /// central controller, marks each shared pool's records as still to be loaded: the
    /// first call that needs them loads them ([`Engine::ensure_synced`]), so the controller
    /// starts serving even while a server is unreachable.
    pub(super) fn start_shared(&self, placement: Placement) -> std::result::Result<(), String> {
        let mut pending = self.shared_sync.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (pool, shared) in self.shared_pools() {
            match placement {
                // Nothing is mounted from a pool of copies: no node to announce.
                Placement::OnNode if pool.info().copies_only => {}
                Placement::OnNode => Arc::clone(shared).register_node(&self.node_id),
                Placement::Central => {
                    pending.insert(pool.name().to_string());
                }
            }
        }
        Ok(())
    }

    /// Loads into the local store the records a shared pool keeps itself (all pools when
    /// `pool` is `None`), once; the export is the truth, so cached records it no longer
    /// has are dropped. Until that succeeds, calls on the pool answer UNAVAILABLE: a cache
    /// that missed records could hand out a name twice or leave a deleted volume behind.
    pub(super) fn ensure_synced(&self, pool: Option<&str>) -> Result<()> {
        let pending = || self.shared_sync.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let todo: Vec<String> =
            pending().iter().filter(|p| pool.is_none_or(|want| want == p.as_str())).cloned().collect();
        for name in todo {
            let Some(shared) = self.pools.get(&name).and_then(Pool::records) else { continue };
            let gate = {
                let mut loading = self.shared_sync.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Arc::clone(loading.entry(name.clone()).or_default())
            };
            // Calls on this pool wait for one load; calls on other pools never do.
            let _loading = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !pending().contains(&name) {
                continue;
            }
            let state = |id: &str, e: std::io::Error| Error::State { id: id.to_string(), source: e };
            let (volumes, snapshots) = shared.stored_records()?;
            let keep: std::collections::HashSet<_> = volumes.iter().map(|v| v.id.clone()).collect();
            for stale in self.store.volumes_where(|v| v.pool == name && !keep.contains(&v.id)) {
                self.store.remove_volume(&stale.id).map_err(|e| state(&stale.id, e))?;
            }
            let keep: std::collections::HashSet<_> = snapshots.iter().map(|s| s.id.clone()).collect();
            let stale = self.store.snapshots_page(None, usize::MAX, |s| s.pool == name && !keep.contains(&s.id)).0;
            for s in stale {
                self.store.remove_snapshot(&s.id).map_err(|e| state(&s.id, e))?;
            }
            let (nv, ns) = (volumes.len(), snapshots.len());
            for v in volumes {
                self.store.put_volume(&v).map_err(|e| state(&v.id, e))?;
            }
            for s in snapshots {
                self.store.put_snapshot(&s).map_err(|e| state(&s.id, e))?;
            }
            tracing::info!(pool = %name, volumes = nv, snapshots = ns, "records loaded from the pool");
            pending().remove(&name);
        }
        Ok(())
    }

    /// [`Engine::ensure_synced`] for the pool a berth volume or snapshot ID names; other
    /// IDs need nothing loaded.
    pub(super) fn sync_for_id(&self, kind: Kind, id: &str) -> Result<()> {
        match ids::parse(kind, id) {
            Some(parsed) => self.ensure_synced(Some(parsed.pool)),
            None => Ok(()),
        }
    }

    /// NOT_FOUND for a node that has not registered with a shared pool, saying why as far
    /// as the pool can tell (no node registered at all points at the server's settings).
    pub(super) fn unknown_shared_node(&self, pool: &Pool, node: &str) -> Error {
        let why = pool.records().map(|s| format!("; {}", s.unknown_node(node))).unwrap_or_default();
        Error::UnknownNode { node: node.to_string(), pool: pool.name().to_string(), why }
    }

    /// ControllerPublishVolume for a shared pool's volume: the node must have announced
    /// itself (else NOT_FOUND); a single-node mode refuses a second node with
    /// FAILED_PRECONDITION naming the node that has it; multi-node modes publish anywhere.
    pub(super) fn publish_shared(
        &self,
        record: &VolumeRecord,
        node: &str,
        capability: &Capability,
        readonly: bool,
    ) -> Result<()> {
        let pool = self.pool(&record.pool)?.clone();
        let known = |node: &str| pool.records().map_or(Ok(false), |s| s.knows_node(node));
        if node != self.node_id && !record.published.contains_key(node) && !known(node)? {
            return Err(self.unknown_shared_node(&pool, node));
        }
        if let Some(reason) = super::volumes::unsupported(pool.as_ref(), capability) {
            return Err(Error::BadRequest(reason));
        }
        match record.published.get(node) {
            Some(&was) if was == readonly => return Ok(()),
            Some(&was) => {
                return Err(Error::PublishedOtherwise {
                    volume: record.id.clone(),
                    at: format!("to node {node}"),
                    readonly: was,
                });
            }
            None => {}
        }
        if !capability.mode.multi_node()
            && let Some(other) = record.published.keys().find(|n| n.as_str() != node)
        {
            return Err(Error::WrongNode {
                volume: record.id.clone(),
                held: format!(
                    "is published to node {other} and access mode {} allows one node; unpublish it there first",
                    capability.mode
                ),
                node: node.to_string(),
            });
        }
        let mut record = record.clone();
        record.published.insert(node.to_string(), readonly);
        self.put_volume(&record)
    }

    /// The shared pool and directory a volume context names, for a node plugin that holds
    /// no record: a berth-made volume (the ID names the pool, the context `subDir`) or a
    /// static volume (`server`, `export`, `subDir` matching a configured pool).
    pub(super) fn resolve_shared(
        &self,
        id: &str,
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<(Pool, PathBuf)>> {
        if let Some(parsed) = ids::parse(Kind::Volume, id)
            && let Some(pool) = self.pools.get(parsed.pool)
            && let Some(shared) = pool.records()
        {
            return Ok(shared.context_path(context)?.map(|rel| (pool.clone(), rel)));
        }
        let has_location = context.contains_key("server") || context.contains_key("export");
        let named = context.get("pool");
        let candidates: Vec<_> = self.shared_pools().filter(|(p, _)| named.is_none_or(|n| p.name() == n)).collect();
        if !has_location && candidates.len() > 1 {
            return Err(Error::BadRequest(
                "volume attributes must name server and export (or pool) when several NFS pools are configured".into(),
            ));
        }
        for (pool, shared) in candidates {
            if let Some(rel) = shared.context_path(context)? {
                return Ok(Some((pool.clone(), rel)));
            }
        }
        if has_location && context.contains_key("subDir") {
            return Err(Error::BadRequest(format!(
                "volume attributes name server {:?} export {:?}, which no configured NFS pool serves",
                context.get("server").map_or("", String::as_str),
                context.get("export").map_or("", String::as_str)
            )));
        }
        Ok(None)
    }

    /// NodeGetVolumeStats for an NFS mount, decided from the mount table (never a stat):
    /// usage of this volume's directory, measured off the RPC thread.
    pub(super) fn shared_stats(
        &self,
        volume_id: &str,
        path: &Path,
        table: &[MountEntry],
    ) -> Result<Option<(Usage, Condition)>> {
        if self.shared_pools().next().is_none() {
            return Ok(None);
        }
        if !mountinfo::at(table, path).last().is_some_and(|m| is_nfs(m)) {
            return Ok(None);
        }
        let record = self.store.volume(volume_id);
        let by_id = ids::parse(Kind::Volume, volume_id).and_then(|p| self.pools.get(p.pool));
        let Some(pool) = record
            .as_ref()
            .and_then(|r| self.pools.get(&r.pool))
            .or(by_id)
            .or_else(|| self.shared_pools().next().map(|(p, _)| p))
        else {
            return Ok(None);
        };
        let measured = match (&record, pool.records()) {
            (Some(r), _) => Some(pool.usage(r, path)),
            (None, Some(shared)) => Some(shared.unrecorded_usage(path)),
            (None, None) => None,
        };
        Ok(measured.map(|m| match m {
            Ok(usage) => (usage, Condition::healthy()),
            Err(e) => (Usage::default(), Condition::abnormal(e.to_string())),
        }))
    }

    /// If the NFS mount `table` shows at `path` answers ESTALE, ENOTCONN or EIO, or not at
    /// all within a few seconds, detaches it so the caller can mount again, and reads
    /// `table` again.
    pub(super) fn clear_stale_mount(&self, path: &Path, table: &mut Vec<MountEntry>) -> Result<()> {
        if !mountinfo::at(table, path).last().is_some_and(|m| is_nfs(m)) {
            return Ok(());
        }
        if matches!(ops::probe(path), Ok(ops::Probe::Stale)) {
            tracing::warn!(path = %path.display(), "NFS mount is stale or unresponsive; detaching it to mount again");
            self.sys.umount(path, MntFlags::MNT_DETACH).map_err(|e| {
                Error::Backend(crate::backend::Error::Io { op: "detach stale mount", path: path.into(), source: e })
            })?;
            *table = self.mount_table(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
