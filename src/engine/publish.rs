//! ControllerPublishVolume and ControllerUnpublishVolume: which nodes may use a volume.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::volumes::unsupported;
use super::{Capability, Engine, Error, Result};
use crate::ids::{self, Kind};

impl Engine {
    fn known_node(&self, node: &str) -> bool {
        node == self.node_id || self.store.any_volume(|v| v.node == node)
    }

    /// Records that `node` may use the volume. Unknown volume or node: NOT_FOUND; another
    /// node than the one holding a node-local volume: FAILED_PRECONDITION naming the owner;
    /// already published there with another readonly flag: ALREADY_EXISTS.
    pub fn controller_publish(
        &self,
        id: &str,
        node: &str,
        capability: &Capability,
        readonly: bool,
        context: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        let _guard = self.lock(&[id.to_string()])?;
        // A static volume an administrator made on a shared pool (server, export, subDir in
        // its attributes): berth keeps no record of it, so attaching it checks only that
        // the attributes are valid and the node is one that mounts the pool. Handles berth
        // minted never take this path: a deleted volume stays NOT_FOUND.
        if self.store.volume(id).is_none()
            && ids::parse(Kind::Volume, id).is_none()
            && !context.is_empty()
            && let Some((pool, _)) = self.resolve_shared(id, context)?
        {
            if !pool.records().map_or(Ok(false), |s| s.knows_node(node))? {
                return Err(self.unknown_shared_node(&pool, node));
            }
            if let Some(reason) = unsupported(pool.as_ref(), capability) {
                return Err(Error::BadRequest(reason));
            }
            return Ok(());
        }
        let record = self.ready_volume(id)?;
        if record.node.is_empty() {
            return self.publish_shared(&record, node, capability, readonly);
        }
        if node != record.node {
            if !self.known_node(node) {
                return Err(Error::UnknownNode {
                    node: node.to_string(),
                    pool: record.pool.clone(),
                    why: String::new(),
                });
            }
            return Err(Error::WrongNode {
                volume: id.to_string(),
                held: format!("is local to node {}", record.node),
                node: node.to_string(),
            });
        }
        let pool = self.pool(&record.pool)?.clone();
        if let Some(reason) = unsupported(pool.as_ref(), capability) {
            return Err(Error::BadRequest(reason));
        }
        match record.published.get(node) {
            Some(&was) if was == readonly => return Ok(()),
            Some(&was) => {
                return Err(Error::PublishedOtherwise {
                    volume: id.to_string(),
                    at: format!("to node {node}"),
                    readonly: was,
                });
            }
            None => {}
        }
        let mut published = (*record).clone();
        published.published.insert(node.to_string(), readonly);
        self.put_volume(&published)
    }

    /// Forgets that `node` (or every node, when empty) may use the volume. Idempotent.
    pub fn controller_unpublish(&self, id: &str, node: &str) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        let _guard = self.lock(&[id.to_string()])?;
        let Some(record) = self.store.volume(id) else {
            return Ok(());
        };
        if record.published.is_empty() || (!node.is_empty() && !record.published.contains_key(node)) {
            return Ok(());
        }
        let mut record = Arc::unwrap_or_clone(record);
        if node.is_empty() {
            record.published.clear();
        } else {
            record.published.remove(node);
        }
        self.put_volume(&record)
    }
}
