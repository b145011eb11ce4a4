//! Inline ephemeral volumes: created at NodePublishVolume, deleted at NodeUnpublishVolume,
//! through the same state machine as every other volume.

use super::node::{EPHEMERAL_KEY, NodePublish};
use super::paths::prepare_dir;
use super::{Engine, Error, Result};
use crate::backend::StageSource;
use crate::ids::{self, Kind};
use crate::mount::mountinfo;
use crate::state::{Phase, VolumeRecord};
use crate::units::Bytes;

impl Engine {
    /// Creates (once) and mounts an inline ephemeral volume; it lives until unpublish.
    pub(super) fn publish_ephemeral(&self, req: &NodePublish) -> Result<()> {
        for key in req.context.keys() {
            if !matches!(key.as_str(), "pool" | "size") && !key.starts_with("csi.storage.k8s.io/") {
                return Err(Error::BadRequest(format!(
                    "unknown volume attribute {key:?} for an ephemeral volume; berth accepts \"pool\" and \"size\""
                )));
            }
        }
        let pool = self.select_pool(req.context.get("pool").map(String::as_str))?.clone();
        let size = match req.context.get("size") {
            Some(text) => {
                text.parse::<Bytes>().map_err(|e| Error::BadRequest(format!("volume attribute size: {e}")))?.0
            }
            None => self.config.default_volume_size.0,
        };
        let allowed = self.config.pools.iter().any(|p| p.name() == pool.name() && p.ephemeral());
        if !allowed {
            return Err(Error::PoolRefuses {
                pool: pool.name().to_string(),
                refusal: "does not serve inline ephemeral volumes; its configuration must say `ephemeral: true` \
                          (device pools never do)",
            });
        }
        let mut flags = self.check_node_capability(pool.as_ref(), &req.capability)?;
        flags.readonly |= req.readonly || req.capability.mode.read_only();
        if self.store.volume(&req.volume_id).is_none() {
            let room = pool.capacity()?;
            if size > room.maximum_volume_bytes.min(room.available_bytes) {
                return Err(Error::PoolFull {
                    pool: pool.name().to_string(),
                    available: room.available_bytes,
                    requested: size,
                });
            }
        }
        let record = match self.store.volume(&req.volume_id) {
            // Never a persistent volume: that would skip its staging and single-writer checks.
            Some(r) if !r.ephemeral => {
                return Err(Error::NotEphemeral { volume: r.id.clone(), key: EPHEMERAL_KEY });
            }
            Some(r) if r.phase == Phase::Ready => r,
            existing => {
                let fresh = existing.is_none();
                // An interrupted create is finished: its record changes, so it is copied.
                let mut record = existing.map_or_else(
                    || {
                        let key = ids::mint(Kind::Volume, pool.name()).1;
                        let (id, name, node) = (req.volume_id.clone(), req.volume_id.clone(), self.node_id.clone());
                        VolumeRecord { ephemeral: true, ..VolumeRecord::intent(id, key, name, pool.name(), node, size) }
                    },
                    std::sync::Arc::unwrap_or_clone,
                );
                if fresh {
                    self.begin_volume(&record)?;
                }
                self.build_volume(pool.as_ref(), &mut record, None, 0, &crate::backend::Work::new())?;
                std::sync::Arc::new(record)
            }
        };
        let source = StageSource::Managed(&record);
        let table = self.mount_table(&req.target)?;
        let created = prepare_dir("target_path", &req.target, &table)?;
        if !mountinfo::at(&table, &req.target).is_empty() {
            return self.check_existing_publish(pool.as_ref(), source, &req.target, flags.readonly, &table);
        }
        let mut capability = req.capability.clone();
        if flags.readonly {
            capability.mount_flags.push("ro".into());
        }
        pool.stage(source, &req.target, &capability, None)?;
        created.keep();
        tracing::info!(volume.id = %req.volume_id, target.path = %req.target.display(), "ephemeral volume published");
        Ok(())
    }
}
