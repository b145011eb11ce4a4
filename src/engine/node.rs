//! Node operations: staging and publishing volumes with bind mounts. Inline ephemeral
//! volumes are in `ephemeral.rs`, usage statistics and node-side expansion in `stats.rs`,
//! the handling of target and staging paths in `paths.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::paths::{io_err, prepare_dir, prepare_file, tear_down};
use super::{Capability, Engine, Error, Result};
use crate::backend::{self, Backend, Pool, RAW_DEVICE_FILE, StageSource};
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::ops;
use crate::state::{AccessKind, Phase, VolumeRecord};

/// The volume context key the kubelet sets for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// A validated NodeStageVolume request.
#[derive(Debug, Clone)]
pub struct NodeStage {
    pub volume_id: String,
    pub staging: PathBuf,
    pub capability: Capability,
    pub context: BTreeMap<String, String>,
    /// The key of an encrypted volume, from the node-stage secrets.
    pub key: Option<std::sync::Arc<crate::crypt::Key>>,
}

/// A validated NodePublishVolume request.
#[derive(Debug, Clone)]
pub struct NodePublish {
    pub volume_id: String,
    pub staging: Option<PathBuf>,
    pub target: PathBuf,
    pub capability: Capability,
    pub readonly: bool,
    pub context: BTreeMap<String, String>,
}

enum Resolved {
    Managed(Pool, Arc<VolumeRecord>),
    Static(Pool, PathBuf),
}

impl Resolved {
    fn parts(&self) -> (&Pool, StageSource<'_>) {
        match self {
            Resolved::Managed(pool, record) => (pool, StageSource::Managed(record)),
            Resolved::Static(pool, rel) => (pool, StageSource::Static(rel)),
        }
    }
}

impl Engine {
    fn resolve(&self, id: &str, context: &BTreeMap<String, String>) -> Result<Resolved> {
        if let Some(record) = self.store.volume(id).filter(|v| v.phase == Phase::Ready) {
            let pool = self.pool_of(&record)?;
            return Ok(Resolved::Managed(pool, record));
        }
        if let Some(sub_path) = context.get("subPath") {
            let pool = self.select_pool(context.get("pool").map(String::as_str))?.clone();
            let rel = pool.static_path(sub_path)?;
            return Ok(Resolved::Static(pool, rel));
        }
        if let Some((pool, rel)) = self.resolve_shared(id, context)? {
            return Ok(Resolved::Static(pool, rel));
        }
        Err(Error::NoVolume { id: id.to_string(), node: self.node_id.clone() })
    }

    /// A raw block volume holds whatever its pod wrote: staged or published with a
    /// filesystem capability, the node would mount (or format) it. FAILED_PRECONDITION.
    fn check_access_type(id: &str, source: StageSource<'_>, capability: &Capability) -> Result<()> {
        match source {
            StageSource::Managed(record) if record.access == AccessKind::Block && !capability.block => {
                Err(Error::Unusable(format!(
                    "volume {id} is a raw block volume: it cannot be staged or published with a mount capability"
                )))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn check_node_capability(&self, pool: &dyn Backend, capability: &Capability) -> Result<ops::Flags> {
        use super::volumes::{Unfit, unfit};
        unfit(pool, capability).map_err(|reason| match reason {
            Unfit::AccessMode(m) | Unfit::RawBlock(m) => Error::Unusable(m),
            Unfit::Filesystem(m) | Unfit::MountFlags(m) => Error::BadRequest(m),
        })
    }

    /// Mounts the volume at the staging path. Already staged there: success; something
    /// else mounted there: ALREADY_EXISTS. A bare directory left by a reboot is remounted.
    pub fn node_stage(&self, req: &NodeStage) -> Result<()> {
        let _guard = self.lock(std::slice::from_ref(&req.volume_id))?;
        let mut resolved = self.resolve(&req.volume_id, &req.context)?;
        // Held until the volume is mounted, which then keeps the key in the kernel.
        let _key = match &mut resolved {
            Resolved::Managed(pool, record) => self.unlock(pool, record, req.key.as_deref())?,
            Resolved::Static(..) => None,
        };
        let (pool, source) = resolved.parts();
        Self::check_access_type(&req.volume_id, source, &req.capability)?;
        self.check_node_capability(pool.as_ref(), &req.capability)?;
        let mut table = self.mount_table(&req.staging)?;
        self.clear_stale_mount(&req.staging, &mut table)?;
        let created = prepare_dir("staging_target_path", &req.staging, &table)?;
        let staged_at = backend::publish_source(&req.staging, req.capability.block);
        let key = match source {
            StageSource::Managed(record) if record.encryption.is_some() => req.key.as_deref(),
            _ => None,
        };
        if !mountinfo::at(&table, &staged_at).is_empty() {
            if pool.is_mounted_at(source, &staged_at, &table)? {
                return pool.finish_stage(source, &req.staging, key).map_err(Error::from);
            }
            return Err(Error::Occupied { occupant: "another volume", field: "staging path", path: staged_at });
        }
        super::failpoint("node.stage.mount")?;
        pool.stage(source, &req.staging, &req.capability, key)?;
        created.keep();
        if let StageSource::Managed(record) = source {
            self.note_staged(pool.as_ref(), record);
        }
        tracing::info!(volume.id = %req.volume_id, staging.path = %req.staging.display(), "volume staged");
        Ok(())
    }

    /// For an encrypted volume, checks `key` against the one it is recorded under (and
    /// records it, before the kernel sees it, at the first stage of a volume created
    /// without it), and adds it to the pool's keyring for the stage (fscrypt); a pool
    /// without one opens the volume's crypt layer with it in [`Backend::stage`] (LUKS2).
    fn unlock(
        &self,
        pool: &Pool,
        record: &mut Arc<VolumeRecord>,
        key: Option<&crate::crypt::Key>,
    ) -> Result<Option<super::encryption::KeyHold<'_>>> {
        let Some(encryption) = record.encryption.clone() else { return Ok(None) };
        let key = key.ok_or_else(|| Error::KeyMissing {
            volume: record.id.clone(),
            scheme: encryption.scheme,
            from: crate::crypt::KeyFrom::NodeStage,
        })?;
        let id = Self::check_key(&format!("volume {}", record.id), encryption.key_id, key)?;
        if encryption.key_id.is_none() {
            let keyed = VolumeRecord {
                encryption: Some(crate::crypt::Encryption { key_id: Some(id), ..encryption }),
                ..(**record).clone()
            };
            self.put_volume(&keyed)?;
            *record = Arc::new(keyed);
        }
        if pool.keyring().is_none() {
            return Ok(None);
        }
        super::failpoint("node.stage.add-key")?;
        let hold = self.hold_key(pool, key)?;
        super::failpoint("node.stage.key-added")?;
        Ok(Some(hold))
    }

    /// Records what staging put on a volume's storage (a device's filesystem UUID, checked
    /// before later stages and wipes). The volume is staged either way: a failure is
    /// logged, and the next stage records it.
    fn note_staged(&self, pool: &dyn Backend, record: &VolumeRecord) {
        match pool.note_staged(record) {
            Ok(None) => {}
            Ok(Some(noted)) => {
                if let Err(e) = self.put_volume(&noted) {
                    tracing::warn!(volume.id = %record.id, error = %e, "recording what staging wrote");
                }
            }
            Err(e) => tracing::warn!(volume.id = %record.id, error = %e, "reading what staging wrote"),
        }
    }

    /// Unmounts the staging path and removes it. Idempotent, also for paths never mounted.
    pub fn node_unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        let _guard = self.lock(&[volume_id.to_string()])?;
        super::failpoint("node.unstage.unmount")?;
        let raw = staging.join(RAW_DEVICE_FILE);
        // Bound, the file shows the device node; unbound, the empty file berth created.
        if fs::symlink_metadata(&raw).is_ok_and(|m| !m.is_dir() && !m.file_type().is_symlink()) {
            tear_down(self, "staging device file", &raw)?;
        }
        tear_down(self, "staging_target_path", staging)?;
        if let Some(record) = self.store.volume(volume_id).filter(|v| !v.ephemeral)
            && let Some(pool) = self.pools.get(&record.pool)
        {
            pool.unstage(StageSource::Managed(&record))?;
            self.release_key_of(pool, &record);
        }
        tracing::info!(volume.id = %volume_id, staging.path = %staging.display(), "volume unstaged");
        Ok(())
    }

    /// Bind-mounts the staged volume at the target (read-only as a second step when asked).
    /// Every check reads one copy of the mount table ([`Engine::mount_table`]): nothing
    /// between them mounts, and the bind that ends the call is checked by none.
    pub fn node_publish(&self, req: &NodePublish) -> Result<()> {
        let _guard = self.lock(std::slice::from_ref(&req.volume_id))?;
        if req.context.get(EPHEMERAL_KEY).is_some_and(|v| v == "true") {
            return self.publish_ephemeral(req);
        }
        let resolved = self.resolve(&req.volume_id, &req.context)?;
        let (pool, source) = resolved.parts();
        Self::check_access_type(&req.volume_id, source, &req.capability)?;
        let mut flags = self.check_node_capability(pool.as_ref(), &req.capability)?;
        flags.readonly |= req.readonly || req.capability.mode.read_only();
        let staging = req.staging.as_deref().ok_or_else(|| {
            Error::Unusable("staging_target_path is required: berth stages volumes before publishing them".into())
        })?;
        let staged_at = backend::publish_source(staging, req.capability.block);
        let mut table = self.mount_table(&req.target)?;
        if !pool.is_mounted_at(source, &staged_at, &table)? {
            return Err(Error::NotStaged { volume: req.volume_id.clone(), path: staging.to_path_buf() });
        }
        self.clear_stale_mount(&req.target, &mut table)?;
        let created = if req.capability.block {
            prepare_file("target_path", &req.target)?
        } else {
            prepare_dir("target_path", &req.target, &table)?
        };
        if !mountinfo::at(&table, &req.target).is_empty() {
            return self.check_existing_publish(pool.as_ref(), source, &req.target, flags.readonly, &table);
        }
        // A single-writer publish elsewhere, still mounted, bars every other publish: the
        // mode a request names is the requester's word, not the volume's.
        if let StageSource::Managed(record) = source
            && let Some(held) = record.single_writer.as_deref().filter(|held| *held != req.target)
            && pool.is_mounted_at(source, held, &table)?
        {
            return Err(Error::WriterHeld { volume: req.volume_id.clone(), at: vec![held.to_path_buf()] });
        }
        if req.capability.mode == super::AccessMode::SingleNodeSingleWriter {
            let others: Vec<_> = pool
                .mounts(source, &table)?
                .into_iter()
                .filter(|m| m != staging && *m != staged_at && *m != req.target)
                .collect();
            if !others.is_empty() {
                return Err(Error::WriterHeld { volume: req.volume_id.clone(), at: others });
            }
            // Recorded before the mount: a claim whose target is not mounted bars nothing.
            if let StageSource::Managed(record) = source
                && record.single_writer.as_deref() != Some(req.target.as_path())
            {
                let claimed = VolumeRecord { single_writer: Some(req.target.clone()), ..record.clone() };
                self.put_volume(&claimed)?;
            }
        }
        super::failpoint("node.publish.bind")?;
        let from = if req.capability.block { staged_at } else { pool.publish_from(source, &staged_at) };
        ops::bind(self.sys.as_ref(), &from, &req.target, flags).map_err(io_err("bind mount", &req.target))?;
        created.keep();
        tracing::info!(volume.id = %req.volume_id, target.path = %req.target.display(), readonly = flags.readonly, "volume published");
        Ok(())
    }

    pub(super) fn check_existing_publish(
        &self,
        pool: &dyn Backend,
        source: StageSource<'_>,
        target: &Path,
        readonly: bool,
        table: &[MountEntry],
    ) -> Result<()> {
        if !pool.is_mounted_at(source, target, table)? {
            return Err(Error::Occupied {
                occupant: "another filesystem",
                field: "target",
                path: target.to_path_buf(),
            });
        }
        let mounted_ro = mountinfo::at(table, target).last().is_some_and(|m| m.read_only());
        if mounted_ro != readonly {
            let volume = match source {
                StageSource::Managed(record) => record.id.clone(),
                StageSource::Static(path) => path.display().to_string(),
            };
            return Err(Error::PublishedOtherwise {
                volume,
                at: format!("at {}", target.display()),
                readonly: mounted_ro,
            });
        }
        Ok(())
    }

    /// Unmounts the target and removes it; for an ephemeral volume also deletes its data.
    pub fn node_unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        let _guard = self.lock(&[volume_id.to_string()])?;
        super::failpoint("node.unpublish.unmount")?;
        tear_down(self, "target_path", target)?;
        if let Some(record) = self.store.volume(volume_id).filter(|v| v.single_writer.as_deref() == Some(target)) {
            self.put_volume(&VolumeRecord { single_writer: None, ..(*record).clone() })?;
        }
        if let Some(record) = self.store.volume(volume_id).filter(|v| v.ephemeral) {
            let pool = self.pool_of(&record)?;
            self.delete_volume_storage(pool.as_ref(), &mut Arc::unwrap_or_clone(record))?;
            tracing::info!(volume.id = %volume_id, "ephemeral volume deleted");
        }
        tracing::info!(volume.id = %volume_id, target.path = %target.display(), "volume unpublished");
        Ok(())
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
