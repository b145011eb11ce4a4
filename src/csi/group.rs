//! The GroupController service: group snapshots (see [`crate::engine::GroupSnapshot`]).

use tonic::{Request, Response, Status};

use super::controller::{snapshot, timestamp};
use super::pb::{self, group_controller_service_capability as gcc};
use super::{Describe, Shared, answer, check_secrets, id, map, run};
use crate::engine::GroupSnapshot;

/// Serves the GroupController RPCs.
pub struct GroupControllerService(pub Shared);

/// The wire form of a group snapshot.
fn group(g: &GroupSnapshot) -> pb::VolumeGroupSnapshot {
    pb::VolumeGroupSnapshot {
        group_snapshot_id: g.id.clone(),
        snapshots: g.members.iter().map(|m| snapshot(m)).collect(),
        creation_time: Some(timestamp(g.created_unix_ms())),
        ready_to_use: g.ready(),
    }
}

/// Each of `ids`, checked as an opaque ID.
fn snapshot_ids(ids: &[String]) -> Result<(), Status> {
    ids.iter().try_for_each(|s| id("snapshot_ids", s))
}

#[tonic::async_trait]
impl pb::group_controller_server::GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<pb::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::GroupControllerGetCapabilitiesResponse>, Status> {
        let rpc = gcc::Rpc { r#type: gcc::rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32 };
        let capabilities = vec![pb::GroupControllerServiceCapability { r#type: Some(gcc::Type::Rpc(rpc)) }];
        answer(&self.0, "GroupControllerGetCapabilities", || {
            Ok(pb::GroupControllerGetCapabilitiesResponse { capabilities })
        })
    }

    /// Snapshots volumes of one node at one point in time; idempotent by name and sources.
    async fn create_volume_group_snapshot(
        &self,
        request: Request<pb::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = std::sync::Arc::clone(&self.0.engine);
        run(&self.0, "CreateVolumeGroupSnapshot", req.fields(), move || {
            id("name", &req.name)?;
            req.source_volume_ids.iter().try_for_each(|v| id("source_volume_ids", v))?;
            check_secrets(&req.secrets)?;
            for key in map("parameters", &req.parameters)?.keys() {
                if key == crate::engine::COPY_TO {
                    return Err(Status::invalid_argument(format!(
                        "{key}: group snapshots are not copied to a shared pool; snapshot each volume with a VolumeSnapshotClass that names it"
                    )));
                }
                if !key.starts_with("csi.storage.k8s.io/") {
                    return Err(Status::invalid_argument(format!("unknown group snapshot parameter {key:?}")));
                }
            }
            let key = crate::crypt::Key::from_secrets(&req.secrets).map_err(Status::invalid_argument)?;
            let taken = engine.create_group_snapshot(&req.name, &req.source_volume_ids, key.as_ref())?;
            Ok(pb::CreateVolumeGroupSnapshotResponse { group_snapshot: Some(group(&taken)) })
        })
        .await
    }

    /// Deletes a group snapshot and its members; unknown IDs succeed.
    async fn delete_volume_group_snapshot(
        &self,
        request: Request<pb::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = std::sync::Arc::clone(&self.0.engine);
        run(&self.0, "DeleteVolumeGroupSnapshot", req.fields(), move || {
            id("group_snapshot_id", &req.group_snapshot_id)?;
            snapshot_ids(&req.snapshot_ids)?;
            check_secrets(&req.secrets)?;
            engine.delete_group_snapshot(&req.group_snapshot_id, &req.snapshot_ids)?;
            Ok(pb::DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    /// A group snapshot and its members.
    async fn get_volume_group_snapshot(
        &self,
        request: Request<pb::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let engine = std::sync::Arc::clone(&self.0.engine);
        run(&self.0, "GetVolumeGroupSnapshot", req.fields(), move || {
            id("group_snapshot_id", &req.group_snapshot_id)?;
            snapshot_ids(&req.snapshot_ids)?;
            check_secrets(&req.secrets)?;
            let found = engine.get_group_snapshot(&req.group_snapshot_id, &req.snapshot_ids)?;
            Ok(pb::GetVolumeGroupSnapshotResponse { group_snapshot: Some(group(&found)) })
        })
        .await
    }
}
