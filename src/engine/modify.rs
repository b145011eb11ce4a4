//! ControllerModifyVolume: the parameters users may change on a live volume (see
//! [`crate::backend::mutable`]). A change is recorded (with `modifying` set) before it is
//! applied to the storage, and `modifying` is cleared once it is; a start after a crash in
//! between applies it again ([`Engine::finish_modifications`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Engine, Error, Result, failpoint};
use crate::backend::{Backend, mutable};
use crate::ids::Kind;
use crate::state::{Phase, VolumeRecord};

/// Checks `params` against what `pool` lets users change: INVALID_ARGUMENT naming the key.
pub(super) fn check(pool: &dyn Backend, params: &BTreeMap<String, String>) -> Result<()> {
    mutable::check(pool.info().name.as_str(), pool.mutable_keys(), params).map_err(Error::BadRequest)
}

impl Engine {
    /// Changes the mutable parameters of volume `id` to include `params`. Asking for what
    /// the volume already has changes nothing, and so does asking for nothing (the spec
    /// lets a plugin change only the keys a request names; csi-sanity sends none).
    pub fn modify_volume(&self, id: &str, params: &BTreeMap<String, String>) -> Result<Arc<VolumeRecord>> {
        if let Some(parsed) = crate::ids::parse(Kind::Volume, id)
            && self.remote_pools.contains(parsed.pool)
        {
            return Err(Error::PoolRefuses {
                pool: parsed.pool.to_string(),
                refusal: "is node-local: its volumes take mutable parameters when they are created (the claim's \
                          VolumeAttributesClass); the central controller cannot reach their storage to change them",
            });
        }
        self.sync_for_id(Kind::Volume, id)?;
        let _guard = self.lock(&[id.to_string()])?;
        let current = self.ready_volume(id)?;
        if current.phase != Phase::Ready {
            return Err(Error::BadRequest(format!("volume {id} is still being created; change it once it is ready")));
        }
        let pool = self.pool_of(&current)?;
        check(pool.as_ref(), params)?;
        let unchanged = params.iter().all(|(k, v)| current.mutable.get(k) == Some(v));
        if unchanged && !current.modifying {
            return Ok(current);
        }
        pool.check_writable()?;
        let mut record = Arc::unwrap_or_clone(current);
        record.mutable.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        record.modifying = true;
        self.put_volume(&record)?;
        failpoint("volume.modify.recorded")?;
        self.apply_modification(pool.as_ref(), &mut record)?;
        tracing::info!(volume.id = %id, parameters = ?record.mutable, "volume modified");
        Ok(Arc::new(record))
    }

    /// Applies a recorded change to the storage, then clears `modifying`.
    fn apply_modification(&self, pool: &dyn Backend, record: &mut VolumeRecord) -> Result<()> {
        pool.apply_mutable(record)?;
        record.modifying = false;
        self.put_volume(record)
    }

    /// Applies the changes a crash left recorded but not applied; run at start.
    pub(super) fn finish_modifications(&self) {
        for volume in self.store.volumes_where(|v| v.modifying && v.phase == Phase::Ready) {
            let mut volume = Arc::unwrap_or_clone(volume);
            let Some(pool) = self.pools.get(&volume.pool).cloned() else { continue };
            let Some(_guard) = self.locks.try_lock([volume.id.clone()]) else { continue };
            match self.apply_modification(pool.as_ref(), &mut volume) {
                Ok(()) => tracing::info!(volume.id = %volume.id, "applied an interrupted volume modification"),
                Err(e) => {
                    tracing::error!(volume.id = %volume.id, error = %e, "cannot apply an interrupted volume modification; a retry will");
                }
            }
        }
    }
}
