//! The Node service: stage, publish, stats and expansion on this node.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, node_service_capability as nsc};
use super::{Describe, Shared, answer, capability, check_secrets, id, map, request_bytes, run, run_slow, wire_bytes};
use crate::engine::{NodePublish, NodeStage, TOPOLOGY_KEY};

/// Checks the volume_path of stats and expansion: missing or with control characters is
/// INVALID_ARGUMENT; any other path that cannot hold a volume (relative, `..`) simply has
/// no volume at it, which the spec answers with NOT_FOUND.
fn volume_path(value: &str) -> Result<std::path::PathBuf, Status> {
    use crate::safepath::PathError;
    match crate::safepath::absolute("volume_path", value) {
        Ok(p) => Ok(crate::safepath::resolve_parent(&p)),
        Err(e @ (PathError::Empty { .. } | PathError::BadCharacter { .. } | PathError::TooLong { .. })) => {
            Err(Status::invalid_argument(e.to_string()))
        }
        Err(e) => Err(Status::not_found(format!("{e}, so no volume is mounted there"))),
    }
}

/// A validated absolute path with its parent directories resolved (see
/// [`crate::safepath::resolve_parent`]).
fn node_path(field: &'static str, value: &str) -> Result<std::path::PathBuf, Status> {
    let checked = crate::safepath::mount_target(field, value).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let resolved = crate::safepath::resolve_parent(&checked);
    // A symlinked parent must not lead into a system tree either.
    crate::safepath::mount_target(field, &resolved.to_string_lossy())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Serves the Node RPCs.
pub struct NodeService(pub Shared);

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    /// Mounts the volume at the staging path once per node.
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run(&self.0, "NodeStageVolume", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let staging = node_path("staging_target_path", &req.staging_target_path)?;
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            check_secrets(&req.secrets)?;
            engine.node_stage(&NodeStage {
                volume_id: req.volume_id,
                staging,
                capability: capability("volume_capability", cap)?,
                context: map("volume_context", &req.volume_context)?,
                key: crate::crypt::Key::from_secrets(&req.secrets)
                    .map_err(Status::invalid_argument)?
                    .map(std::sync::Arc::new),
            })?;
            Ok(pb::NodeStageVolumeResponse {})
        })
        .await
    }

    /// Unmounts and removes the staging path; idempotent.
    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run(&self.0, "NodeUnstageVolume", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let staging = node_path("staging_target_path", &req.staging_target_path)?;
            engine.node_unstage(&req.volume_id, &staging)?;
            Ok(pb::NodeUnstageVolumeResponse {})
        })
        .await
    }

    /// Bind-mounts the staged volume at the pod's target path (creating it).
    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run(&self.0, "NodePublishVolume", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let target = node_path("target_path", &req.target_path)?;
            let staging = if req.staging_target_path.is_empty() {
                None
            } else {
                Some(node_path("staging_target_path", &req.staging_target_path)?)
            };
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            check_secrets(&req.secrets)?;
            tracing::debug!(context = %super::redacted(&req.volume_context), "publish context");
            engine.node_publish(&NodePublish {
                volume_id: req.volume_id,
                staging,
                target,
                capability: capability("volume_capability", cap)?,
                readonly: req.readonly,
                context: map("volume_context", &req.volume_context)?,
            })?;
            Ok(pb::NodePublishVolumeResponse {})
        })
        .await
    }

    /// Unmounts and removes the target path; idempotent, also for paths never mounted.
    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run(&self.0, "NodeUnpublishVolume", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let target = node_path("target_path", &req.target_path)?;
            engine.node_unpublish(&req.volume_id, &target)?;
            Ok(pb::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    /// Bytes and inodes of this volume, and its condition.
    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run_slow(&self.0, "NodeGetVolumeStats", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let volume_path = volume_path(&req.volume_path)?;
            let (usage, condition) = engine.node_stats(&req.volume_id, &volume_path)?;
            use pb::volume_usage::Unit;
            let mut entries = vec![pb::VolumeUsage {
                available: wire_bytes(usage.available_bytes),
                total: wire_bytes(usage.total_bytes),
                used: wire_bytes(usage.used_bytes),
                unit: Unit::Bytes as i32,
            }];
            // Only with a known total: btrfs allocates inodes as it goes, and a total taken
            // as the count used would report every volume out of inodes.
            if let (Some(used), Some(total)) = (usage.used_inodes, usage.total_inodes) {
                entries.push(pb::VolumeUsage {
                    available: wire_bytes(total.saturating_sub(used)),
                    total: wire_bytes(total),
                    used: wire_bytes(used),
                    unit: Unit::Inodes as i32,
                });
            }
            Ok(pb::NodeGetVolumeStatsResponse {
                usage: entries,
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: condition.abnormal,
                    message: condition.message,
                }),
            })
        })
        .await
    }

    /// Applies a larger size to a mounted volume.
    async fn node_expand_volume(
        &self,
        request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = Arc::clone(&self.0.engine);
        run(&self.0, "NodeExpandVolume", req.fields().node(&engine.node_id), move || {
            id("volume_id", &req.volume_id)?;
            let volume_path = volume_path(&req.volume_path)?;
            check_secrets(&req.secrets)?;
            if let Some(cap) = &req.volume_capability {
                capability("volume_capability", cap)?;
            }
            let range = req.capacity_range.unwrap_or_default();
            let bytes = engine.node_expand(
                &req.volume_id,
                &volume_path,
                request_bytes("capacity_range.required_bytes", range.required_bytes)?,
                request_bytes("capacity_range.limit_bytes", range.limit_bytes)?,
            )?;
            Ok(pb::NodeExpandVolumeResponse { capacity_bytes: wire_bytes(bytes) })
        })
        .await
    }

    /// What this node offers.
    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use nsc::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| pb::NodeServiceCapability { r#type: Some(nsc::Type::Rpc(nsc::Rpc { r#type: t as i32 })) })
        .collect();
        answer(&self.0, "NodeGetCapabilities", || Ok(pb::NodeGetCapabilitiesResponse { capabilities }))
    }

    /// The node's ID, its topology segment and its volume limit.
    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        let engine = &self.0.engine;
        answer(&self.0, "NodeGetInfo", || {
            Ok(pb::NodeGetInfoResponse {
                node_id: engine.node_id.clone(),
                max_volumes_per_node: i64::try_from(engine.config.max_volumes_per_node).unwrap_or(i64::MAX),
                accessible_topology: Some(pb::Topology {
                    segments: HashMap::from([(TOPOLOGY_KEY.to_string(), engine.node_id.clone())]),
                }),
            })
        })
    }
}
