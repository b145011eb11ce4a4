//! The Identity service: who the plugin is, what it offers, whether it is ready.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::pb::{self, plugin_capability};
use super::{Shared, answer};

/// Serves GetPluginInfo, GetPluginCapabilities and Probe.
pub struct IdentityService(pub Shared);

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    /// Name and version; the name must match the CSIDriver object and StorageClasses.
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        answer(&self.0, "GetPluginInfo", || {
            Ok(pb::GetPluginInfoResponse {
                name: self.0.driver_name.clone(),
                vendor_version: crate::VERSION.to_string(),
                manifest: HashMap::from([("node-id".to_string(), self.0.engine.node_id.clone())]),
            })
        })
    }

    /// The controller and group controller services (when this process serves them),
    /// topology, and online expansion.
    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{Service, VolumeExpansion, service, volume_expansion};
        let service = |t: service::Type| pb::PluginCapability {
            r#type: Some(plugin_capability::Type::Service(Service { r#type: t as i32 })),
        };
        let mut capabilities = vec![service(service::Type::VolumeAccessibilityConstraints)];
        if self.0.controller {
            capabilities.push(service(service::Type::ControllerService));
            capabilities.push(service(service::Type::GroupControllerService));
        }
        capabilities.push(pb::PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        });
        answer(&self.0, "GetPluginCapabilities", || Ok(pb::GetPluginCapabilitiesResponse { capabilities }))
    }

    /// Ready once the state is loaded, every pool is open and the socket is served; not
    /// ready while shutting down (the same answer as the metrics server's `/healthz`).
    async fn probe(&self, _: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        answer(&self.0, "Probe", || Ok(pb::ProbeResponse { ready: Some(self.0.metrics.ready()) }))
    }
}
