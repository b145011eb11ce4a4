//! ListVolumes, ControllerGetVolume and GetCapacity.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::volumes::{check_parameters, unsupported};
use super::{Capability, DEFAULT_PAGE, Engine, Error, Result};
use crate::backend::{Capacity, Condition};
use crate::ids::{self, Kind};
use crate::state::VolumeRecord;

/// One ListVolumes entry.
#[derive(Debug, Clone)]
pub struct ListedVolume {
    pub volume: Arc<VolumeRecord>,
    pub condition: Condition,
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: String,
}

/// A GetCapacity request.
#[derive(Debug, Clone, Default)]
pub struct CapacityQuery {
    pub parameters: BTreeMap<String, String>,
    /// The node the CO asks about, if it named one.
    pub node: Option<String>,
    pub capabilities: Vec<Capability>,
}

/// Volume context keys every volume carries.
pub const CONTEXT_POOL: &str = "berth.csi.io/pool";
pub const CONTEXT_ENFORCEMENT: &str = "berth.csi.io/capacity-enforcement";

impl Engine {
    /// Whether volumes of this driver are attached (ControllerPublishVolume) before a node
    /// uses them: only where a configured pool is shared by several nodes.
    pub fn attaches(&self) -> bool {
        self.config.pools.iter().any(|p| !p.node_local())
    }

    /// What the CO hands the volume's node calls: its pool, how its size is enforced, and
    /// what its pool adds (a shared volume's directory, for node plugins that hold no
    /// records).
    pub fn volume_context(&self, volume: &VolumeRecord) -> BTreeMap<String, String> {
        let mut context = BTreeMap::from([
            (CONTEXT_POOL.to_string(), volume.pool.clone()),
            (CONTEXT_ENFORCEMENT.to_string(), volume.enforced.as_str().to_string()),
        ]);
        if let Some(pool) = self.pools.get(&volume.pool) {
            context.extend(pool.volume_context(volume));
        }
        context.extend(volume.mutable.iter().map(|(k, v)| (k.clone(), v.clone())));
        context
    }

    /// A page of volumes after `token`. A token berth did not hand out is ABORTED.
    pub fn list_volumes(&self, max_entries: usize, token: &str) -> Result<Page<ListedVolume>> {
        self.ensure_synced(None)?;
        let after = if token.is_empty() {
            None
        } else if ids::parse(Kind::Volume, token).is_some() || self.store.volume(token).is_some() {
            Some(token)
        } else {
            return Err(Error::UnknownToken { token: token.to_string() });
        };
        let limit = if max_entries == 0 { DEFAULT_PAGE } else { max_entries.min(super::MAX_PAGE) };
        let (records, more) = self.store.volumes_page(after, limit);
        let next_token = if more { records.last().map(|v| v.id.clone()).unwrap_or_default() } else { String::new() };
        let items = records
            .into_iter()
            .map(|volume| {
                let condition = match self.pools.get(&volume.pool) {
                    Some(pool) => pool.condition(&volume),
                    None => Condition::abnormal(format!("pool {} is no longer configured", volume.pool)),
                };
                ListedVolume { volume, condition }
            })
            .collect();
        Ok(Page { items, next_token })
    }

    /// A volume and its condition.
    pub fn get_volume(&self, id: &str) -> Result<ListedVolume> {
        self.sync_for_id(Kind::Volume, id)?;
        let volume = self.ready_volume(id)?;
        let condition = self.pool(&volume.pool)?.condition(&volume);
        Ok(ListedVolume { volume, condition })
    }

    /// Free space for new volumes matching the query; zero where they cannot be placed.
    pub fn capacity(&self, query: &CapacityQuery) -> Result<Capacity> {
        let pool = self.select_pool(check_parameters(&query.parameters)?)?.clone();
        let none = Capacity { total_bytes: 0, available_bytes: 0, maximum_volume_bytes: 0 };
        // A shared pool's free space is the same whichever node asks.
        if pool.info().node_local && query.node.as_ref().is_some_and(|n| n != &self.node_id) {
            return Ok(none);
        }
        if query.capabilities.iter().any(|c| unsupported(pool.as_ref(), c).is_some()) {
            return Ok(none);
        }
        Ok(pool.capacity()?)
    }
}
