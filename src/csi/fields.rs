//! What each RPC's span says about its request (volume, snapshot, node, paths), and which of
//! its values are sensitive: every secret, and every volume context or parameter value whose
//! key names a token, password or key. [`super::run`] records the first and scrubs the
//! second out of any error message before it is logged or returned.

use std::collections::HashMap;

use tracing::Span;

use super::pb;

/// The loggable identity of one RPC, and the values it must never echo.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub volume_id: String,
    pub snapshot_id: String,
    pub node_id: String,
    pub target_path: String,
    pub staging_path: String,
    sensitive: Vec<String>,
}

impl From<&str> for Fields {
    /// Fields naming only a volume.
    fn from(volume_id: &str) -> Fields {
        Fields { volume_id: volume_id.to_string(), ..Fields::default() }
    }
}

impl From<&String> for Fields {
    fn from(volume_id: &String) -> Fields {
        Fields::from(volume_id.as_str())
    }
}

impl Fields {
    /// Names the node the RPC concerns, unless the request already named one.
    #[must_use]
    pub fn node(mut self, node_id: &str) -> Fields {
        if self.node_id.is_empty() {
            self.node_id = node_id.to_string();
        }
        self
    }

    /// Adds every value of a secrets map to the values never to echo.
    fn secrets(mut self, secrets: &HashMap<String, String>) -> Fields {
        self.sensitive.extend(secrets.values().filter(|v| !v.is_empty()).cloned());
        self
    }

    /// Adds the values of a context or parameter map's sensitive keys.
    fn context(mut self, map: &HashMap<String, String>) -> Fields {
        self.sensitive.extend(
            map.iter().filter(|(k, v)| crate::sensitive::is_sensitive_key(k) && !v.is_empty()).map(|(_, v)| v.clone()),
        );
        self
    }

    /// Sets the span's fields that are known (the span declares them all as empty).
    pub fn record(&self, span: &Span) {
        for (name, value) in [
            ("volume.id", &self.volume_id),
            ("snapshot.id", &self.snapshot_id),
            ("node.id", &self.node_id),
            ("target.path", &self.target_path),
            ("staging.path", &self.staging_path),
        ] {
            if !value.is_empty() {
                span.record(name, value.as_str());
            }
        }
    }

    /// `text` with every sensitive value replaced (see [`crate::sensitive::scrub`]).
    pub fn scrub(&self, text: &str) -> String {
        crate::sensitive::scrub(text, self.sensitive.iter().map(String::as_str))
    }

    /// A status with the same code and a scrubbed message (berth sets no details).
    #[must_use]
    pub fn scrub_status(&self, status: tonic::Status) -> tonic::Status {
        let message = self.scrub(status.message());
        if message == status.message() { status } else { tonic::Status::new(status.code(), message) }
    }
}

/// Builds the span fields of a request.
pub trait Describe {
    /// The request's fields.
    fn fields(&self) -> Fields;
}

fn base(volume_id: &str) -> Fields {
    Fields::from(volume_id)
}

impl Describe for pb::CreateVolumeRequest {
    /// CreateVolume has no ID yet: the span names the requested volume name.
    fn fields(&self) -> Fields {
        base(&self.name).secrets(&self.secrets).context(&self.parameters).context(&self.mutable_parameters)
    }
}

impl Describe for pb::DeleteVolumeRequest {
    fn fields(&self) -> Fields {
        base(&self.volume_id).secrets(&self.secrets)
    }
}

impl Describe for pb::ControllerPublishVolumeRequest {
    fn fields(&self) -> Fields {
        Fields { node_id: self.node_id.clone(), ..base(&self.volume_id) }
            .secrets(&self.secrets)
            .context(&self.volume_context)
    }
}

impl Describe for pb::ControllerUnpublishVolumeRequest {
    fn fields(&self) -> Fields {
        Fields { node_id: self.node_id.clone(), ..base(&self.volume_id) }.secrets(&self.secrets)
    }
}

impl Describe for pb::ValidateVolumeCapabilitiesRequest {
    fn fields(&self) -> Fields {
        base(&self.volume_id)
            .secrets(&self.secrets)
            .context(&self.volume_context)
            .context(&self.parameters)
            .context(&self.mutable_parameters)
    }
}

impl Describe for pb::ListVolumesRequest {
    fn fields(&self) -> Fields {
        Fields::default()
    }
}

impl Describe for pb::GetCapacityRequest {
    fn fields(&self) -> Fields {
        Fields::default().context(&self.parameters)
    }
}

impl Describe for pb::CreateSnapshotRequest {
    /// CreateSnapshot has no snapshot ID yet: the span names the requested snapshot name.
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.name.clone(), ..base(&self.source_volume_id) }
            .secrets(&self.secrets)
            .context(&self.parameters)
    }
}

impl Describe for pb::CreateVolumeGroupSnapshotRequest {
    /// No group ID yet: the span names the requested group name and its first volume.
    fn fields(&self) -> Fields {
        let first = self.source_volume_ids.first().map_or("", String::as_str);
        Fields { snapshot_id: self.name.clone(), ..base(first) }.secrets(&self.secrets).context(&self.parameters)
    }
}

impl Describe for pb::DeleteVolumeGroupSnapshotRequest {
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.group_snapshot_id.clone(), ..Fields::default() }.secrets(&self.secrets)
    }
}

impl Describe for pb::GetVolumeGroupSnapshotRequest {
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.group_snapshot_id.clone(), ..Fields::default() }.secrets(&self.secrets)
    }
}

impl Describe for pb::DeleteSnapshotRequest {
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.snapshot_id.clone(), ..Fields::default() }.secrets(&self.secrets)
    }
}

impl Describe for pb::ListSnapshotsRequest {
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.snapshot_id.clone(), ..base(&self.source_volume_id) }.secrets(&self.secrets)
    }
}

impl Describe for pb::GetSnapshotRequest {
    fn fields(&self) -> Fields {
        Fields { snapshot_id: self.snapshot_id.clone(), ..Fields::default() }.secrets(&self.secrets)
    }
}

impl Describe for pb::ControllerExpandVolumeRequest {
    fn fields(&self) -> Fields {
        base(&self.volume_id).secrets(&self.secrets)
    }
}

impl Describe for pb::ControllerGetVolumeRequest {
    fn fields(&self) -> Fields {
        base(&self.volume_id)
    }
}

impl Describe for pb::ControllerModifyVolumeRequest {
    fn fields(&self) -> Fields {
        base(&self.volume_id).secrets(&self.secrets).context(&self.mutable_parameters)
    }
}

impl Describe for pb::NodeStageVolumeRequest {
    fn fields(&self) -> Fields {
        Fields { staging_path: self.staging_target_path.clone(), ..base(&self.volume_id) }
            .secrets(&self.secrets)
            .context(&self.volume_context)
            .context(&self.publish_context)
    }
}

impl Describe for pb::NodeUnstageVolumeRequest {
    fn fields(&self) -> Fields {
        Fields { staging_path: self.staging_target_path.clone(), ..base(&self.volume_id) }
    }
}

impl Describe for pb::NodePublishVolumeRequest {
    fn fields(&self) -> Fields {
        Fields {
            target_path: self.target_path.clone(),
            staging_path: self.staging_target_path.clone(),
            ..base(&self.volume_id)
        }
        .secrets(&self.secrets)
        .context(&self.volume_context)
        .context(&self.publish_context)
    }
}

impl Describe for pb::NodeUnpublishVolumeRequest {
    fn fields(&self) -> Fields {
        Fields { target_path: self.target_path.clone(), ..base(&self.volume_id) }
    }
}

impl Describe for pb::NodeGetVolumeStatsRequest {
    /// The volume path is logged as the target path.
    fn fields(&self) -> Fields {
        Fields {
            target_path: self.volume_path.clone(),
            staging_path: self.staging_target_path.clone(),
            ..base(&self.volume_id)
        }
    }
}

impl Describe for pb::NodeExpandVolumeRequest {
    /// The volume path is logged as the target path.
    fn fields(&self) -> Fields {
        Fields {
            target_path: self.volume_path.clone(),
            staging_path: self.staging_target_path.clone(),
            ..base(&self.volume_id)
        }
        .secrets(&self.secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_sensitive_context_values_are_scrubbed() {
        let req = pb::NodePublishVolumeRequest {
            volume_id: "vol-1".into(),
            target_path: "/t".into(),
            secrets: [("anything".to_string(), "S3CRET-LONG".to_string())].into(),
            volume_context: [
                ("csi.storage.k8s.io/serviceAccount.tokens".to_string(), "TOKEN-XYZ".to_string()),
                ("pool".to_string(), "fast".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let f = req.fields();
        assert_eq!((f.volume_id.as_str(), f.target_path.as_str()), ("vol-1", "/t"));
        let status = tonic::Status::not_found("saw S3CRET-LONG and TOKEN-XYZ in pool fast");
        let scrubbed = f.scrub_status(status);
        assert_eq!(scrubbed.code(), tonic::Code::NotFound);
        assert_eq!(scrubbed.message(), "saw <redacted> and <redacted> in pool fast");
    }

    #[test]
    fn node_fills_in_only_when_the_request_names_none() {
        let publish = pb::ControllerPublishVolumeRequest { node_id: "n2".into(), ..Default::default() };
        assert_eq!(publish.fields().node("n1").node_id, "n2");
        assert_eq!(Fields::from("v").node("n1").node_id, "n1");
    }
}
