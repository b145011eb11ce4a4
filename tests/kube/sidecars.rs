//! The controller-side sidecars: csi-provisioner (with capacity tracking), csi-snapshotter,
//! csi-resizer and csi-attacher, each sending the requests the real sidecar sends.

use std::collections::{BTreeMap, HashMap};

use berth::csi::pb;
use berth::csi::pb::controller_client::ControllerClient;
use tonic::transport::Channel;

use super::{Binding, Cluster, DataSource, NAMESPACE, Pv, Reclaim, VolumePhase, rpc_error};
use crate::kube::objects::{ClaimPhase, ClaimRef};

/// The StorageClass parameter prefix csi-provisioner reserves for itself.
const PREFIX: &str = "csi.storage.k8s.io/";
/// Prefixed keys csi-provisioner consumes and strips before CreateVolume.
const STRIPPED: &[&str] = &[
    "fstype",
    "secret-name",
    "secret-namespace",
    "provisioner-secret-name",
    "provisioner-secret-namespace",
    "controller-publish-secret-name",
    "controller-publish-secret-namespace",
    "node-stage-secret-name",
    "node-stage-secret-namespace",
    "node-publish-secret-name",
    "node-publish-secret-namespace",
    "controller-expand-secret-name",
    "controller-expand-secret-namespace",
    "node-expand-secret-name",
    "node-expand-secret-namespace",
];
pub const FSTYPE: &str = "csi.storage.k8s.io/fstype";

/// csi-provisioner's `removePrefixedParameters`: known prefixed keys are dropped, unknown
/// ones are an error.
fn strip_prefixed(parameters: &BTreeMap<String, String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in parameters {
        match k.strip_prefix(PREFIX) {
            Some(rest) if STRIPPED.contains(&rest) => {}
            Some(_) => return Err(format!("found unknown parameter key \"{k}\" with reserved namespace {PREFIX}")),
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

fn topology(segments: &BTreeMap<String, String>) -> pb::Topology {
    pb::Topology { segments: segments.iter().map(|(k, v)| (k.clone(), v.clone())).collect() }
}

impl Cluster {
    /// A volume capability as csi-provisioner and the kubelet build it.
    pub(super) fn capability(
        &self,
        driver: &str,
        block: bool,
        fs_type: &str,
        mount_options: &[String],
        mode: super::AccessMode,
    ) -> pb::VolumeCapability {
        use pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
        let access_type = if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: fs_type.to_string(),
                mount_flags: mount_options.to_vec(),
                volume_mount_group: String::new(),
            })
        };
        pb::VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode { mode: mode.csi(self.snmw(driver)) as i32 }),
        }
    }

    /// The Controller service a sidecar for a volume on `node` talks to: with
    /// `--node-deployment` that node's berth, otherwise the central controller.
    pub(super) fn controller_on(&self, node: Option<&str>) -> Result<ControllerClient<Channel>, String> {
        self.controller_for(&self.driver.name, node)
    }

    /// The Controller service that serves `driver`'s volumes on `node`: the NFS driver's
    /// central controller, or [`Cluster::controller_on`]'s choice for the node-local driver.
    pub(super) fn controller_for(&self, driver: &str, node: Option<&str>) -> Result<ControllerClient<Channel>, String> {
        if let Some(nfs) = &self.nfs
            && nfs.driver.name == driver
        {
            return Ok(nfs.controller.controller.clone());
        }
        if self.driver.provisioner.node_deployment
            && let Some(node) = node
        {
            return Ok(self.node(node).berth.controller.clone());
        }
        self.controller
            .as_ref()
            .map(|c| c.controller.clone())
            .ok_or_else(|| "no controller serves this volume (no node and no central controller)".to_string())
    }

    /// csi-provisioner's `GenerateAccessibilityRequirements` for the flags in use.
    fn accessibility_requirements(&self, driver: &str, selected: Option<&str>) -> Option<pb::TopologyRequirement> {
        let flags = &self.driver_named(driver).provisioner;
        let all: Vec<pb::Topology> = self.nodes.iter().map(|n| topology(&n.topology)).collect();
        match selected {
            Some(node) => {
                let own = topology(&self.node(node).topology);
                if flags.strict_topology {
                    return Some(pb::TopologyRequirement { requisite: vec![own.clone()], preferred: vec![own] });
                }
                // Every node's topology, the selected node's first among the preferred.
                let i = all.iter().position(|t| *t == own).unwrap_or(0);
                let mut preferred = all[i..].to_vec();
                preferred.extend_from_slice(&all[..i]);
                Some(pb::TopologyRequirement { requisite: all, preferred })
            }
            None if !flags.immediate_topology => None,
            None => Some(pb::TopologyRequirement { requisite: all.clone(), preferred: all }),
        }
    }

    /// GetCapacity for a class on a node, as each node's csi-provisioner (with
    /// `--enable-capacity`) asks to publish CSIStorageCapacity.
    pub async fn get_capacity(&self, node: &str, class: &str) -> Result<pb::GetCapacityResponse, tonic::Status> {
        let sc = self.classes.get(class).expect("StorageClass");
        let mut controller = self.controller_on(Some(node)).map_err(tonic::Status::internal)?;
        let req = pb::GetCapacityRequest {
            volume_capabilities: Vec::new(),
            parameters: sc.parameters.clone().into_iter().collect(),
            accessible_topology: Some(topology(&self.node(node).topology)),
        };
        controller.get_capacity(req).await.map(tonic::Response::into_inner)
    }

    /// Refreshes every CSIStorageCapacity object (the provisioner does it periodically and
    /// after volumes come and go).
    pub async fn refresh_capacity(&mut self) {
        let classes: Vec<String> =
            self.classes.values().filter(|c| c.provisioner == self.driver.name).map(|c| c.name.clone()).collect();
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for class in &classes {
            for node in &nodes {
                match self.get_capacity(node, class).await {
                    Ok(r) => {
                        let bytes = r.maximum_volume_size.unwrap_or(r.available_capacity);
                        self.capacity.insert((node.clone(), class.clone()), bytes);
                    }
                    Err(s) => {
                        self.capacity.remove(&(node.clone(), class.clone()));
                        self.event(&format!("csistoragecapacity/{node}-{class}"), rpc_error("GetCapacity", &s));
                    }
                }
            }
        }
    }

    /// csi-provisioner for one claim. With `--node-deployment` only the provisioner of the
    /// selected node acts; for an Immediate claim the first node with room claims it first
    /// (`becomeOwner` sets the selected-node annotation).
    pub(super) async fn provision(&mut self, claim: &str) -> Result<(), String> {
        let pvc = self.pvc(claim).clone();
        let sc = self.classes.get(&pvc.class).ok_or_else(|| format!("storageclass {:?} not found", pvc.class))?.clone();
        let mut selected = pvc.selected_node.clone();
        if !self.has_driver(&sc.provisioner) {
            return Err(format!("no provisioner runs for {}", sc.provisioner));
        }
        let driver = self.driver_named(&sc.provisioner).clone();
        if selected.is_none() && sc.binding == Binding::Immediate && driver.provisioner.node_deployment {
            let owner = self
                .capacity
                .iter()
                .find(|((_, class), bytes)| *class == sc.name && u64::try_from(**bytes).unwrap_or(0) >= pvc.request)
                .map(|((node, _), _)| node.clone());
            let Some(owner) = owner else {
                return Err("no node has room for the claim; waiting".to_string());
            };
            self.pvcs.get_mut(claim).expect("PVC").selected_node = Some(owner.clone());
            selected = Some(owner);
        }
        let pv_name = format!("pvc-{}", pvc.uid);
        let mut parameters = strip_prefixed(&sc.parameters)?;
        if driver.provisioner.extra_create_metadata {
            parameters.insert("csi.storage.k8s.io/pvc/name".into(), pvc.name.clone());
            parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), NAMESPACE.into());
            parameters.insert("csi.storage.k8s.io/pv/name".into(), pv_name.clone());
        }
        let fs_type = sc.parameters.get(FSTYPE).cloned().unwrap_or_default();
        let capabilities: Vec<_> = pvc
            .access_modes
            .iter()
            .map(|m| self.capability(&driver.name, pvc.block, &fs_type, &sc.mount_options, *m))
            .collect();
        let content_source = match &pvc.data_source {
            None => None,
            Some(DataSource::Snapshot(name)) => {
                let snap = self.snapshots.get(name).ok_or_else(|| format!("volumesnapshot {name} not found"))?;
                let handle =
                    snap.handle.clone().filter(|_| snap.ready).ok_or_else(|| format!("snapshot {name} not bound"))?;
                if pvc.request < snap.restore_size {
                    return Err(format!(
                        "requested volume size {} is less than the size {} for the source snapshot {name}",
                        pvc.request, snap.restore_size
                    ));
                }
                Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                    snapshot_id: handle,
                }))
            }
            Some(DataSource::Claim(name)) => {
                let source = self.pvcs.get(name).ok_or_else(|| format!("source PVC {name} not found"))?;
                let handle = self.pv_of(&source.name).handle.clone();
                if pvc.request < source.capacity {
                    return Err(format!(
                        "error, new PVC request must be greater than or equal in size to the specified PVC data source, requested {} but source is {}",
                        pvc.request, source.capacity
                    ));
                }
                Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
                    volume_id: handle,
                }))
            }
        };
        let req = pb::CreateVolumeRequest {
            name: pv_name.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: pvc.request as i64, limit_bytes: 0 }),
            volume_capabilities: capabilities,
            parameters,
            secrets: HashMap::new(),
            volume_content_source: content_source.map(|t| pb::VolumeContentSource { r#type: Some(t) }),
            accessibility_requirements: self.accessibility_requirements(&driver.name, selected.as_deref()),
            mutable_parameters: HashMap::new(),
        };
        let mut controller = self.controller_for(&driver.name, selected.as_deref())?;
        let volume = match controller.create_volume(req).await {
            Ok(r) => r.into_inner().volume.ok_or("CreateVolume returned no volume")?,
            Err(s) => {
                let message = rpc_error("CreateVolume", &s);
                let pvc = self.pvcs.get_mut(claim).expect("PVC");
                pvc.events.push(format!("ProvisioningFailed: {message}"));
                // Give up on this node and let the scheduler choose again: only for errors that
                // say "no room here" on a claim with a selected node (ProvisioningReschedule).
                if s.code() == tonic::Code::ResourceExhausted && pvc.selected_node.is_some() {
                    pvc.selected_node = None;
                    pvc.events.push("selected node removed: rescheduling".to_string());
                }
                return Err(message);
            }
        };
        let capacity = if volume.capacity_bytes > 0 { volume.capacity_bytes as u64 } else { pvc.request };
        let pv = Pv {
            name: pv_name.clone(),
            capacity,
            access_modes: pvc.access_modes.clone(),
            reclaim: sc.reclaim,
            class: sc.name.clone(),
            mount_options: sc.mount_options.clone(),
            block: pvc.block,
            driver: driver.name.clone(),
            handle: volume.volume_id,
            fs_type,
            attributes: volume.volume_context.into_iter().collect(),
            read_only: false,
            node_affinity: volume.accessible_topology.into_iter().map(|t| t.segments.into_iter().collect()).collect(),
            claim: Some(ClaimRef { name: pvc.name.clone(), uid: pvc.uid.clone() }),
            phase: VolumePhase::Bound,
            provisioned_by: Some(driver.name.clone()),
        };
        self.pvs.insert(pv_name.clone(), pv);
        let pvc = self.pvcs.get_mut(claim).expect("PVC");
        pvc.volume_name = Some(pv_name.clone());
        pvc.phase = ClaimPhase::Bound;
        pvc.capacity = capacity;
        pvc.events.push(format!("ProvisioningSucceeded: volume {pv_name}"));
        self.refresh_capacity().await;
        Ok(())
    }

    /// csi-provisioner's deleter: DeleteVolume for a released PV it provisioned, by the
    /// provisioner of the PV's node. The PV goes away only when DeleteVolume succeeds.
    pub(super) async fn delete_volume(&mut self, pv_name: &str) -> Result<(), String> {
        let pv = self.pv(pv_name).clone();
        let node = self.node_of_pv(&pv);
        let mut controller = self.controller_for(&pv.driver, node.as_deref())?;
        controller
            .delete_volume(pb::DeleteVolumeRequest { volume_id: pv.handle.clone(), secrets: HashMap::new() })
            .await
            .map_err(|s| rpc_error("DeleteVolume", &s))?;
        self.pvs.remove(pv_name);
        self.refresh_capacity().await;
        Ok(())
    }

    /// snapshot-controller + csi-snapshotter: a VolumeSnapshot of a bound claim, taken by the
    /// snapshotter of the node that holds it (distributed snapshotting).
    pub(super) async fn take_snapshot(&mut self, name: &str, claim: &str) {
        let uid = super::uid();
        let pv = self.pv_of(claim).clone();
        let node = self.node_of_pv(&pv);
        let mut snap = super::VolumeSnapshot {
            name: name.to_string(),
            uid: uid.clone(),
            source_claim: claim.to_string(),
            ready: false,
            handle: None,
            restore_size: 0,
            node: node.clone(),
            error: String::new(),
        };
        let result = match self.controller_on(node.as_deref()) {
            Ok(mut controller) => controller
                .create_snapshot(pb::CreateSnapshotRequest {
                    source_volume_id: pv.handle.clone(),
                    name: format!("snapshot-{uid}"),
                    secrets: HashMap::new(),
                    parameters: HashMap::new(),
                })
                .await
                .map_err(|s| rpc_error("CreateSnapshot", &s)),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => {
                let s = r.into_inner().snapshot.expect("CreateSnapshot returned no snapshot");
                snap.ready = s.ready_to_use;
                snap.handle = Some(s.snapshot_id);
                snap.restore_size = u64::try_from(s.size_bytes).unwrap_or(0);
            }
            Err(e) => snap.error = e,
        }
        self.snapshots.insert(name.to_string(), snap);
    }

    /// csi-snapshotter for a deleted VolumeSnapshot whose content's deletionPolicy is Delete.
    pub(super) async fn remove_snapshot(&mut self, name: &str) {
        let snap = self.snapshots.get(name).unwrap_or_else(|| panic!("no VolumeSnapshot {name}")).clone();
        if let Some(handle) = &snap.handle {
            let mut controller = self.controller_on(snap.node.as_deref()).expect("controller");
            controller
                .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: handle.clone(), secrets: HashMap::new() })
                .await
                .unwrap_or_else(|s| panic!("{}", rpc_error("DeleteSnapshot", &s)));
        }
        self.snapshots.remove(name);
    }

    /// Admission, then csi-resizer: ControllerExpandVolume; when the answer says the node
    /// must finish, the claim waits for the kubelet's NodeExpandVolume (FileSystemResizePending).
    pub(super) async fn resize(&mut self, claim: &str, bytes: u64) -> Result<(), String> {
        let pvc = self.pvc(claim).clone();
        let sc = self.classes.get(&pvc.class).ok_or("only dynamically provisioned PVCs can be resized")?;
        if !sc.allow_expansion {
            return Err(format!("storageclass {} does not allow volume expansion", sc.name));
        }
        if bytes < pvc.request {
            return Err("spec.resources.requests.storage: field can not be less than previous value".into());
        }
        self.pvcs.get_mut(claim).expect("PVC").request = bytes;
        let pv = self.pv_of(claim).clone();
        let node = self.node_of_pv(&pv);
        let mut controller = match &self.controller {
            Some(central) if !self.is_nfs(&pv.driver) => central.controller.clone(),
            _ => self.controller_for(&pv.driver, node.as_deref())?,
        };
        let cap = self.capability(&pv.driver, pv.block, &pv.fs_type, &pv.mount_options, pv.access_modes[0]);
        let resp = controller
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: pv.handle.clone(),
                capacity_range: Some(pb::CapacityRange { required_bytes: bytes as i64, limit_bytes: 0 }),
                secrets: HashMap::new(),
                volume_capability: Some(cap),
            })
            .await
            .map_err(|s| rpc_error("ControllerExpandVolume", &s))?
            .into_inner();
        let new_size = u64::try_from(resp.capacity_bytes).unwrap_or(0).max(bytes);
        self.pvs.get_mut(&pv.name).expect("PV").capacity = new_size;
        let pvc = self.pvcs.get_mut(claim).expect("PVC");
        if resp.node_expansion_required {
            pvc.resize_pending = true;
        } else {
            pvc.capacity = new_size;
        }
        Ok(())
    }

    /// The attach/detach controller and csi-attacher: a VolumeAttachment for (volume, node),
    /// attached by ControllerPublishVolume. Returns the publish context for the kubelet.
    pub async fn attach(&mut self, pv: &Pv, node: &str) -> Result<BTreeMap<String, String>, String> {
        let key = (pv.handle.clone(), node.to_string());
        if let Some(context) = self.attachments.get(&key) {
            return Ok(context.clone());
        }
        let owner = self.node_of_pv(pv);
        let mut controller = self.controller_for(&pv.driver, owner.as_deref())?;
        let cap = self.capability(&pv.driver, pv.block, &pv.fs_type, &pv.mount_options, pv.access_modes[0]);
        let resp = controller
            .controller_publish_volume(pb::ControllerPublishVolumeRequest {
                volume_id: pv.handle.clone(),
                node_id: node.to_string(),
                volume_capability: Some(cap),
                readonly: pv.read_only,
                secrets: HashMap::new(),
                volume_context: pv.attributes.clone().into_iter().collect(),
            })
            .await
            .map_err(|s| rpc_error("ControllerPublishVolume", &s))?
            .into_inner();
        let context: BTreeMap<String, String> = resp.publish_context.into_iter().collect();
        self.attachments.insert(key, context.clone());
        Ok(context)
    }

    /// Detaches after the kubelet has unstaged: ControllerUnpublishVolume, then the
    /// VolumeAttachment goes.
    pub async fn detach(&mut self, pv: &Pv, node: &str) -> Result<(), String> {
        let key = (pv.handle.clone(), node.to_string());
        if !self.attachments.contains_key(&key) {
            return Ok(());
        }
        let owner = self.node_of_pv(pv);
        let mut controller = self.controller_for(&pv.driver, owner.as_deref())?;
        controller
            .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
                volume_id: pv.handle.clone(),
                node_id: node.to_string(),
                secrets: HashMap::new(),
            })
            .await
            .map_err(|s| rpc_error("ControllerUnpublishVolume", &s))?;
        self.attachments.remove(&key);
        Ok(())
    }

    /// The PV controller's reclaim step for one released PV.
    pub(super) async fn reclaim(&mut self, pv_name: &str) {
        let pv = self.pv(pv_name).clone();
        match (pv.reclaim, &pv.provisioned_by) {
            (Reclaim::Retain, _) => {}
            (Reclaim::Delete, Some(driver)) if self.has_driver(driver) => {
                if let Err(e) = self.delete_volume(pv_name).await {
                    self.event(&format!("pv/{pv_name}"), format!("VolumeFailedDelete: {e}"));
                }
            }
            (Reclaim::Delete, _) => {
                self.pvs.get_mut(pv_name).expect("PV").phase =
                    VolumePhase::Failed("no deleter for a PV this provisioner did not create".into());
            }
        }
    }
}
