//! The Controller service: volumes and snapshots, publishing, capacity.

use std::collections::HashMap;

use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use super::pb::{self, controller_service_capability as csc};
use super::{
    Describe, Shared, answer, capabilities, capability, check_secrets, id, map, request_bytes, run, wire_bytes,
};
use crate::engine::{CapacityQuery, CreateVolume, Engine, TOPOLOGY_KEY};
use crate::state::{ContentSource, SnapshotRecord, VolumeRecord};

/// Serves the Controller RPCs.
pub struct ControllerService(pub Shared);

fn topology(node: &str) -> Vec<pb::Topology> {
    vec![pb::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]) }]
}

/// The controller capabilities of a driver, with the attaching ones when `attaches`.
#[must_use]
pub fn controller_capabilities(attaches: bool) -> Vec<csc::rpc::Type> {
    use csc::rpc::Type;
    let mut capabilities = vec![
        Type::CreateDeleteVolume,
        Type::ListVolumes,
        Type::GetCapacity,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::ExpandVolume,
        Type::VolumeCondition,
        Type::GetVolume,
        Type::SingleNodeMultiWriter,
        Type::GetSnapshot,
        Type::ModifyVolume,
    ];
    if attaches {
        capabilities.extend([Type::PublishUnpublishVolume, Type::PublishReadonly, Type::ListVolumesPublishedNodes]);
    }
    capabilities
}

/// The wire form of a volume record and its volume context (see
/// [`Engine::volume_context`](crate::engine::Engine::volume_context)).
#[must_use]
pub fn volume(v: &VolumeRecord, context: std::collections::BTreeMap<String, String>) -> pb::Volume {
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let content_source = v.source.as_ref().map(|s| pb::VolumeContentSource {
        r#type: Some(match s {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource { snapshot_id: id.clone() }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource { volume_id: id.clone() }),
        }),
    });
    pb::Volume {
        capacity_bytes: wire_bytes(v.capacity),
        volume_id: v.id.clone(),
        volume_context: context.into_iter().collect(),
        content_source,
        // A volume of a shared pool has no node: it is reachable from every node.
        accessible_topology: if v.node.is_empty() { Vec::new() } else { topology(&v.node) },
    }
}

pub(super) fn timestamp(ms: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The wire form of a snapshot record.
#[must_use]
pub fn snapshot(s: &SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: wire_bytes(s.size),
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time: Some(timestamp(s.created_unix_ms)),
        ready_to_use: s.ready_to_use(),
        group_snapshot_id: s.group.as_ref().map(|g| g.id.clone()).unwrap_or_default(),
    }
}

fn condition(c: &crate::backend::Condition) -> pb::VolumeCondition {
    pb::VolumeCondition { abnormal: c.abnormal, message: c.message.clone() }
}

fn engine(shared: &Shared) -> std::sync::Arc<Engine> {
    std::sync::Arc::clone(&shared.engine)
}

fn max_entries(value: i32) -> Result<usize, Status> {
    usize::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("max_entries must not be negative, got {value}")))
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    /// Provisions a volume (empty, from a snapshot, or a clone); idempotent by name.
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "CreateVolume", req.fields(), move || {
            id("name", &req.name)?;
            check_secrets(&req.secrets)?;
            let parameters = map("parameters", &req.parameters)?;
            let mutable = map("mutable_parameters", &req.mutable_parameters)?;
            let range = req.capacity_range.unwrap_or_default();
            let source = match req.volume_content_source.and_then(|s| s.r#type) {
                None => None,
                Some(pb::volume_content_source::Type::Snapshot(s)) => {
                    id("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?;
                    Some(ContentSource::Snapshot(s.snapshot_id))
                }
                Some(pb::volume_content_source::Type::Volume(v)) => {
                    id("volume_content_source.volume.volume_id", &v.volume_id)?;
                    Some(ContentSource::Volume(v.volume_id))
                }
            };
            let allowed_nodes = req.accessibility_requirements.as_ref().filter(|t| !t.requisite.is_empty()).map(|t| {
                t.requisite.iter().filter_map(|topo| topo.segments.get(TOPOLOGY_KEY).cloned()).collect::<Vec<_>>()
            });
            let record = engine.create_volume(CreateVolume {
                name: req.name,
                required_bytes: request_bytes("capacity_range.required_bytes", range.required_bytes)?,
                limit_bytes: request_bytes("capacity_range.limit_bytes", range.limit_bytes)?,
                capabilities: capabilities(&req.volume_capabilities)?,
                parameters,
                source,
                allowed_nodes,
                key: crate::crypt::Key::from_secrets(&req.secrets)
                    .map_err(Status::invalid_argument)?
                    .map(std::sync::Arc::new),
                mutable,
            })?;
            Ok(pb::CreateVolumeResponse { volume: Some(volume(&record, engine.volume_context(&record))) })
        })
        .await
    }

    /// Deletes a volume; unknown IDs succeed, volumes in use are FAILED_PRECONDITION.
    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "DeleteVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            check_secrets(&req.secrets)?;
            engine.delete_volume(&req.volume_id)?;
            Ok(pb::DeleteVolumeResponse {})
        })
        .await
    }

    /// Records that a node may use a volume (node-local volumes: only their own node).
    async fn controller_publish_volume(
        &self,
        request: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ControllerPublishVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            if req.node_id.is_empty() {
                return Err(Status::invalid_argument("node_id is required"));
            }
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            let cap = capability("volume_capability", cap)?;
            check_secrets(&req.secrets)?;
            let context = map("volume_context", &req.volume_context)?;
            engine.controller_publish(&req.volume_id, &req.node_id, &cap, req.readonly, &context)?;
            Ok(pb::ControllerPublishVolumeResponse { publish_context: HashMap::new() })
        })
        .await
    }

    /// Forgets a node's use of a volume; idempotent.
    async fn controller_unpublish_volume(
        &self,
        request: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ControllerUnpublishVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            check_secrets(&req.secrets)?;
            engine.controller_unpublish(&req.volume_id, &req.node_id)?;
            Ok(pb::ControllerUnpublishVolumeResponse {})
        })
        .await
    }

    /// Confirms the capabilities only when every one of them is supported.
    async fn validate_volume_capabilities(
        &self,
        request: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ValidateVolumeCapabilities", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            check_secrets(&req.secrets)?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities is required"));
            }
            let caps = capabilities(&req.volume_capabilities)?;
            let parameters = map("parameters", &req.parameters)?;
            let verdict = engine.validate_capabilities(&req.volume_id, &caps, &parameters)?;
            Ok(match verdict {
                Ok(()) => pb::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                },
                Err(reason) => pb::ValidateVolumeCapabilitiesResponse { confirmed: None, message: reason },
            })
        })
        .await
    }

    /// Pages through volumes with the nodes each is published to and its condition.
    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ListVolumes", req.fields(), move || {
            let page = engine.list_volumes(max_entries(req.max_entries)?, &req.starting_token)?;
            let entries = page
                .items
                .iter()
                .map(|item| pb::list_volumes_response::Entry {
                    volume: Some(volume(&item.volume, engine.volume_context(&item.volume))),
                    status: Some(pb::list_volumes_response::VolumeStatus {
                        published_node_ids: item.volume.published.keys().cloned().collect(),
                        volume_condition: Some(condition(&item.condition)),
                    }),
                })
                .collect();
            Ok(pb::ListVolumesResponse { entries, next_token: page.next_token })
        })
        .await
    }

    /// Free bytes of the selected pool on this node; zero for topology or capabilities it cannot serve.
    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "GetCapacity", req.fields(), move || {
            let query = CapacityQuery {
                parameters: map("parameters", &req.parameters)?,
                node: req
                    .accessible_topology
                    .as_ref()
                    .map(|t| t.segments.get(TOPOLOGY_KEY).cloned().unwrap_or_default()),
                capabilities: capabilities(&req.volume_capabilities)?,
            };
            let cap = engine.capacity(&query)?;
            Ok(pb::GetCapacityResponse {
                available_capacity: wire_bytes(cap.available_bytes),
                maximum_volume_size: Some(wire_bytes(cap.maximum_volume_bytes)),
                minimum_volume_size: None,
            })
        })
        .await
    }

    /// What this controller offers. Attaching (ControllerPublish, its read-only flag and
    /// the published nodes in ListVolumes) only where a configured pool is shared: the
    /// node-local driver's CSIDriver says attachRequired: false, and advertising it would
    /// make every node's provisioner watch VolumeAttachments cluster-wide for nothing.
    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = controller_capabilities(self.0.engine.attaches())
            .into_iter()
            .map(|t| pb::ControllerServiceCapability { r#type: Some(csc::Type::Rpc(csc::Rpc { r#type: t as i32 })) })
            .collect();
        answer(&self.0, "ControllerGetCapabilities", || Ok(pb::ControllerGetCapabilitiesResponse { capabilities }))
    }

    /// Snapshots a volume; idempotent by name and source.
    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "CreateSnapshot", req.fields(), move || {
            id("source_volume_id", &req.source_volume_id)?;
            id("name", &req.name)?;
            check_secrets(&req.secrets)?;
            let mut copy_to = None;
            for (key, value) in map("parameters", &req.parameters)? {
                if key == crate::engine::COPY_TO {
                    if value.is_empty() {
                        return Err(Status::invalid_argument(format!("parameter {key} names no pool")));
                    }
                    copy_to = Some(value);
                } else if !key.starts_with("csi.storage.k8s.io/") {
                    return Err(Status::invalid_argument(format!("unknown snapshot parameter {key:?}")));
                }
            }
            let key = crate::crypt::Key::from_secrets(&req.secrets).map_err(Status::invalid_argument)?;
            let record = engine.create_snapshot(&req.source_volume_id, &req.name, key.as_ref(), copy_to.as_deref())?;
            Ok(pb::CreateSnapshotResponse { snapshot: Some(snapshot(&record)) })
        })
        .await
    }

    /// Deletes a snapshot; unknown IDs succeed.
    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "DeleteSnapshot", req.fields(), move || {
            id("snapshot_id", &req.snapshot_id)?;
            check_secrets(&req.secrets)?;
            engine.delete_snapshot(&req.snapshot_id)?;
            Ok(pb::DeleteSnapshotResponse {})
        })
        .await
    }

    /// Pages through snapshots, filtered by ID or source volume.
    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ListSnapshots", req.fields(), move || {
            check_secrets(&req.secrets)?;
            let page = engine.list_snapshots(
                max_entries(req.max_entries)?,
                &req.starting_token,
                &req.snapshot_id,
                &req.source_volume_id,
            )?;
            let entries =
                page.items.iter().map(|s| pb::list_snapshots_response::Entry { snapshot: Some(snapshot(s)) }).collect();
            Ok(pb::ListSnapshotsResponse { entries, next_token: page.next_token })
        })
        .await
    }

    /// Raises a volume's enforced size. The central controller defers node-local volumes to
    /// NodeExpandVolume on their node.
    async fn controller_expand_volume(
        &self,
        request: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ControllerExpandVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            check_secrets(&req.secrets)?;
            let range = req.capacity_range.ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
            if let Some(cap) = &req.volume_capability {
                capability("volume_capability", cap)?;
            }
            let (bytes, node_expansion_required) = engine.controller_expand(
                &req.volume_id,
                request_bytes("capacity_range.required_bytes", range.required_bytes)?,
                request_bytes("capacity_range.limit_bytes", range.limit_bytes)?,
            )?;
            Ok(pb::ControllerExpandVolumeResponse { capacity_bytes: wire_bytes(bytes), node_expansion_required })
        })
        .await
    }

    /// A volume with its published nodes and condition.
    async fn controller_get_volume(
        &self,
        request: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ControllerGetVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            let item = engine.get_volume(&req.volume_id)?;
            Ok(pb::ControllerGetVolumeResponse {
                volume: Some(volume(&item.volume, engine.volume_context(&item.volume))),
                status: Some(pb::controller_get_volume_response::VolumeStatus {
                    published_node_ids: item.volume.published.keys().cloned().collect(),
                    volume_condition: Some(condition(&item.condition)),
                }),
            })
        })
        .await
    }

    /// Changes the parameters users may change on a live volume (btrfs compression, an
    /// NFS volume's onDelete); anything else is INVALID_ARGUMENT naming the key.
    async fn controller_modify_volume(
        &self,
        request: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "ControllerModifyVolume", req.fields(), move || {
            id("volume_id", &req.volume_id)?;
            check_secrets(&req.secrets)?;
            let params = map("mutable_parameters", &req.mutable_parameters)?;
            engine.modify_volume(&req.volume_id, &params)?;
            Ok(pb::ControllerModifyVolumeResponse {})
        })
        .await
    }

    /// A snapshot by ID.
    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = engine(&self.0);
        run(&self.0, "GetSnapshot", req.fields(), move || {
            id("snapshot_id", &req.snapshot_id)?;
            check_secrets(&req.secrets)?;
            let record = engine.get_snapshot(&req.snapshot_id)?;
            Ok(pb::GetSnapshotResponse { snapshot: Some(snapshot(&record)) })
        })
        .await
    }
}
