//! The kubelet's volume manager: for each pod on its node it waits for attachment, stages
//! each persistent volume once per node (NodeStageVolume), publishes it per pod
//! (NodePublishVolume), expands it when a resize is pending (NodeExpandVolume), and on pod
//! deletion unpublishes, then unstages what no other pod on the node uses. A kubelet restart
//! forgets all of this and replays stage and publish for the pods it runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use berth::csi::pb;
use sha2::Digest;

use super::node::Published;
use super::{Cluster, NAMESPACE, PodPhase, VolumeSource, rpc_error};

/// The kubelet's record next to each mount (`vol_data.json`), read back on unmount.
fn save_volume_data(dir: &Path, driver: &str, handle: &str) {
    std::fs::create_dir_all(dir).expect("mkdir volume data dir");
    let json = serde_json::json!({ "driverName": driver, "volumeHandle": handle });
    std::fs::write(dir.join("vol_data.json"), json.to_string()).expect("write vol_data.json");
}

/// The kubelet's `removeMountDir`: the mount directory (when nothing is mounted there and it
/// is empty), the volume data file, and their parent.
fn remove_mount_dir(path: &Path) {
    if path.exists() && !crate::common::mounts_below(path).iter().any(|m| m.mount_point == path) {
        let _ = std::fs::remove_dir(path);
    }
    if let Some(parent) = path.parent() {
        let _ = std::fs::remove_file(parent.join("vol_data.json"));
        let _ = std::fs::remove_dir(parent);
    }
}

/// The kubelet treats these codes as "the operation may still be in progress" and keeps what
/// it created; after any other error it removes the mount directory it made.
fn is_final(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    !matches!(status.code(), Cancelled | DeadlineExceeded | Unavailable | ResourceExhausted | Aborted)
}

/// The volume handle in a `vol_data.json`.
fn volume_handle(dir: &Path) -> Option<String> {
    volume_data(dir).map(|(_, handle)| handle)
}

/// The driver name and volume handle in a `vol_data.json`.
fn volume_data(dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join("vol_data.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Some((field("driverName")?, field("volumeHandle")?))
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(std::result::Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// Published volumes found on disk: (pod UID, driver, volume handle, target) for every
/// `pods/<uid>/volumes/kubernetes.io~csi/<name>/vol_data.json`.
fn reconstruct_published(kubelet_root: &Path) -> Vec<(String, String, String, PathBuf)> {
    let mut found = Vec::new();
    for pod in subdirs(&kubelet_root.join("pods")) {
        let uid = pod.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for volume in subdirs(&pod.join("volumes/kubernetes.io~csi")) {
            if let Some((driver, handle)) = volume_data(&volume) {
                found.push((uid.clone(), driver, handle, volume.join("mount")));
            }
        }
    }
    found
}

/// Staged volumes found on disk: (volume handle, staging path) for every
/// `plugins/kubernetes.io/csi/<driver>/<sha>/vol_data.json`.
fn reconstruct_staged(driver_dir: &Path) -> Vec<(String, PathBuf)> {
    subdirs(driver_dir).into_iter().filter_map(|d| volume_handle(&d).map(|h| (h, d.join("globalmount")))).collect()
}

/// The handle the kubelet gives an inline ephemeral volume: `csi-<sha256(pod uid + name)>`.
pub fn ephemeral_handle(pod_uid: &str, volume: &str) -> String {
    format!("csi-{}", hex::encode(sha2::Sha256::digest(format!("{pod_uid}{volume}").as_bytes())))
}

/// One pod volume, resolved the way the kubelet's volume manager resolves it.
struct Resolved {
    driver: String,
    handle: String,
    /// The name in the publish path: the PV name, or the pod's volume name when inline.
    spec_name: String,
    pv: Option<super::Pv>,
    claim: Option<String>,
    capability: pb::VolumeCapability,
    read_only: bool,
    attributes: BTreeMap<String, String>,
    ephemeral: bool,
}

impl Cluster {
    fn resolve(&self, pod: &super::Pod, volume: &super::PodVolume) -> Result<Resolved, String> {
        match &volume.source {
            VolumeSource::Claim(claim) => {
                let pvc = self.pvcs.get(claim).ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
                let pv_name = pvc.volume_name.as_ref().ok_or_else(|| format!("PVC {claim} is not bound"))?;
                let pv = self.pvs.get(pv_name).ok_or_else(|| format!("PV {pv_name} not found"))?.clone();
                if !self.has_driver(&pv.driver) {
                    return Err(format!("driver {} is not registered on this node", pv.driver));
                }
                // The kubelet passes the PV's first access mode.
                let capability =
                    self.capability(&pv.driver, pv.block, &pv.fs_type, &pv.mount_options, pv.access_modes[0]);
                Ok(Resolved {
                    driver: pv.driver.clone(),
                    handle: pv.handle.clone(),
                    spec_name: pv.name.clone(),
                    claim: Some(claim.clone()),
                    capability,
                    read_only: volume.read_only || pv.read_only,
                    attributes: pv.attributes.clone(),
                    pv: Some(pv),
                    ephemeral: false,
                })
            }
            VolumeSource::Csi { driver, attributes } => {
                if *driver != self.driver.name {
                    return Err(format!("driver {driver} is not registered on this node"));
                }
                Ok(Resolved {
                    driver: driver.clone(),
                    handle: ephemeral_handle(&pod.uid, &volume.name),
                    spec_name: volume.name.clone(),
                    pv: None,
                    claim: None,
                    capability: self.capability(driver, false, "", &[], super::AccessMode::ReadWriteOnce),
                    read_only: volume.read_only,
                    attributes: attributes.clone(),
                    ephemeral: true,
                })
            }
        }
    }

    /// The volume context of NodePublishVolume: the PV's (or inline) attributes, plus pod
    /// information when the CSIDriver sets podInfoOnMount.
    fn publish_context(&self, pod: &super::Pod, r: &Resolved) -> HashMap<String, String> {
        let mut context: HashMap<String, String> = r.attributes.clone().into_iter().collect();
        if self.driver_named(&r.driver).pod_info_on_mount {
            let k = |s: &str| format!("csi.storage.k8s.io/{s}");
            context.insert(k("pod.name"), pod.name.clone());
            context.insert(k("pod.namespace"), NAMESPACE.to_string());
            context.insert(k("pod.uid"), pod.uid.clone());
            context.insert(k("serviceAccount.name"), pod.service_account.clone());
            context.insert(k("ephemeral"), r.ephemeral.to_string());
        }
        context
    }

    /// Mounts every volume of a pod on its node; the pod runs once all are published.
    async fn kubelet_mount(&mut self, pod_name: &str) -> Result<(), String> {
        let pod = self.pod(pod_name).clone();
        let node_name = pod.node.clone().expect("the kubelet only runs pods bound to its node");
        for volume in &pod.volumes {
            let r = self.resolve(&pod, volume)?;
            let driver = r.driver.clone();
            let key = (pod.uid.clone(), volume.name.clone());
            let mut publish_context = BTreeMap::new();
            if let Some(pv) = &r.pv
                && self.driver_named(&driver).attach_required
            {
                publish_context = self.attach(pv, &node_name).await?;
            }
            let mut staging = None;
            if let Some(pv) = &r.pv {
                let node = self.node(&node_name);
                let path =
                    if pv.block { node.block_staging_path(&pv.name) } else { node.staging_path(&driver, &r.handle) };
                if !node.staged.contains_key(&r.handle) {
                    std::fs::create_dir_all(&path).expect("mkdir staging path");
                    save_volume_data(path.parent().expect("parent"), &driver, &r.handle);
                    let mut client = self.node_client(&node_name, &driver);
                    let result = client
                        .node_stage_volume(pb::NodeStageVolumeRequest {
                            volume_id: r.handle.clone(),
                            publish_context: publish_context.clone().into_iter().collect(),
                            staging_target_path: path.display().to_string(),
                            volume_capability: Some(r.capability.clone()),
                            secrets: HashMap::new(),
                            volume_context: r.attributes.clone().into_iter().collect(),
                        })
                        .await;
                    if let Err(s) = result {
                        if is_final(&s) {
                            remove_mount_dir(&path);
                        }
                        return Err(rpc_error("MountVolume.MountDevice failed: NodeStageVolume", &s));
                    }
                    self.node_mut(&node_name).staged.insert(r.handle.clone(), path.clone());
                    if let Some(claim) = &r.claim
                        && self.pvc(claim).resize_pending
                    {
                        self.node_expand(&node_name, claim, &path, Some(&path)).await?;
                    }
                }
                staging = Some(path);
            }
            let node = self.node(&node_name);
            if !node.published.contains_key(&key) {
                let target = match &r.pv {
                    Some(pv) if pv.block => node.block_publish_path(&pv.name, &pod.uid),
                    _ => node.publish_path(&pod.uid, &r.spec_name),
                };
                let parent = target.parent().expect("parent").to_path_buf();
                save_volume_data(&parent, &driver, &r.handle);
                let mut client = self.node_client(&node_name, &driver);
                let result = client
                    .node_publish_volume(pb::NodePublishVolumeRequest {
                        volume_id: r.handle.clone(),
                        publish_context: publish_context.into_iter().collect(),
                        staging_target_path: staging.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        target_path: target.display().to_string(),
                        volume_capability: Some(r.capability.clone()),
                        readonly: r.read_only,
                        secrets: HashMap::new(),
                        volume_context: self.publish_context(&pod, &r),
                    })
                    .await;
                if let Err(s) = result {
                    if is_final(&s) {
                        remove_mount_dir(&target);
                    }
                    return Err(rpc_error("MountVolume.SetUp failed: NodePublishVolume", &s));
                }
                let published = Published {
                    driver: driver.clone(),
                    handle: r.handle.clone(),
                    target,
                    staging: staging.clone(),
                    claim: r.claim,
                };
                self.node_mut(&node_name).published.insert(key, published);
            }
        }
        self.kubelet_expand(pod_name).await
    }

    /// NodeExpandVolume for a claim whose resize waits for the node; the claim's capacity
    /// follows once it succeeds. `volume_path` is the staging path when the kubelet expands
    /// right after staging (offline resize), the publish target when the volume is in use.
    async fn node_expand(
        &mut self,
        node: &str,
        claim: &str,
        volume_path: &Path,
        staging: Option<&Path>,
    ) -> Result<(), String> {
        let pv = self.pv_of(claim).clone();
        let mut client = self.node_client(node, &pv.driver);
        client
            .node_expand_volume(pb::NodeExpandVolumeRequest {
                volume_id: pv.handle.clone(),
                volume_path: volume_path.display().to_string(),
                capacity_range: Some(pb::CapacityRange { required_bytes: pv.capacity as i64, limit_bytes: 0 }),
                staging_target_path: staging.map(|s| s.display().to_string()).unwrap_or_default(),
                volume_capability: Some(self.capability(
                    &pv.driver,
                    pv.block,
                    &pv.fs_type,
                    &pv.mount_options,
                    pv.access_modes[0],
                )),
                secrets: HashMap::new(),
            })
            .await
            .map_err(|s| rpc_error("NodeExpandVolume", &s))?;
        let pvc = self.pvcs.get_mut(claim).expect("PVC");
        pvc.capacity = pv.capacity;
        pvc.resize_pending = false;
        Ok(())
    }

    /// The kubelet's in-use expansion: NodeExpandVolume on a published volume of the pod.
    async fn kubelet_expand(&mut self, pod_name: &str) -> Result<(), String> {
        let pod = self.pod(pod_name).clone();
        let Some(node_name) = pod.node.clone() else { return Ok(()) };
        let published: Vec<Published> =
            self.node(&node_name).published.iter().filter(|(k, _)| k.0 == pod.uid).map(|(_, v)| v.clone()).collect();
        for p in published {
            let Some(claim) = &p.claim else { continue };
            if self.pvc(claim).resize_pending {
                self.node_expand(&node_name, claim, &p.target, p.staging.as_deref()).await?;
            }
        }
        Ok(())
    }

    /// The kubelet's sync loop: start pods bound to a node, finish pending expansions.
    pub(super) async fn kubelet_sync(&mut self) {
        let up: Vec<String> = self.nodes.iter().filter(|n| !n.down).map(|n| n.name.clone()).collect();
        let pods: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.node.as_ref().is_some_and(|n| up.contains(n)))
            .map(|p| p.name.clone())
            .collect();
        for name in pods {
            let result = self.kubelet_mount(&name).await;
            let pod = self.pods.get_mut(&name).expect("pod");
            match result {
                Ok(()) => pod.phase = PodPhase::Running,
                Err(e) => {
                    pod.phase = PodPhase::ContainerCreating(e.clone());
                    self.event(&format!("pod/{name}"), e);
                }
            }
        }
    }

    /// Unpublishes a pod's volumes, then unstages (and detaches) those no other pod on the
    /// node still uses.
    pub(super) async fn kubelet_tear_down(&mut self, pod_name: &str) -> Result<(), String> {
        let pod = self.pod(pod_name).clone();
        let Some(node_name) = pod.node.clone() else { return Ok(()) };
        let mine: Vec<((String, String), Published)> = self
            .node(&node_name)
            .published
            .iter()
            .filter(|(k, _)| k.0 == pod.uid)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, p) in mine {
            let mut client = self.node_client(&node_name, &p.driver);
            client
                .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                    volume_id: p.handle.clone(),
                    target_path: p.target.display().to_string(),
                })
                .await
                .map_err(|s| rpc_error("UnmountVolume.TearDown failed: NodeUnpublishVolume", &s))?;
            remove_mount_dir(&p.target);
            self.node_mut(&node_name).published.remove(&key);
            let still_used = self.node(&node_name).published.values().any(|o| o.handle == p.handle);
            if let (Some(staging), false) = (&p.staging, still_used) {
                let mut client = self.node_client(&node_name, &p.driver);
                client
                    .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                        volume_id: p.handle.clone(),
                        staging_target_path: staging.display().to_string(),
                    })
                    .await
                    .map_err(|s| rpc_error("UnmountDevice failed: NodeUnstageVolume", &s))?;
                remove_mount_dir(staging);
                self.node_mut(&node_name).staged.remove(&p.handle);
                if let Some(claim) = &p.claim
                    && self.driver_named(&p.driver).attach_required
                {
                    let pv = self.pv_of(claim).clone();
                    self.detach(&pv, &node_name).await?;
                }
            }
        }
        Ok(())
    }

    /// Restarts the kubelet on `node`. Its memory of what it staged and published is gone: it
    /// reconstructs volumes from its directories, tears down those of pods that no longer
    /// exist (NodeUnpublishVolume, then NodeUnstageVolume), and calls NodeStageVolume and
    /// NodePublishVolume again for every pod it runs.
    pub async fn restart_kubelet(&mut self, node: &str) {
        let n = self.node_mut(node);
        n.staged.clear();
        n.published.clear();
        let live: Vec<String> =
            self.pods.values().filter(|p| p.node.as_deref() == Some(node)).map(|p| p.uid.clone()).collect();
        let root = self.node(node).kubelet_root.clone();
        for (uid, driver, handle, target) in reconstruct_published(&root) {
            if live.contains(&uid) || !self.has_driver(&driver) {
                continue;
            }
            let mut client = self.node_client(node, &driver);
            match client
                .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                    volume_id: handle,
                    target_path: target.display().to_string(),
                })
                .await
            {
                Ok(_) => {
                    remove_mount_dir(&target);
                    // cleanupOrphanedPodDirs: the pod's directory goes once its volumes are gone.
                    let pod_dir = root.join("pods").join(&uid);
                    if subdirs(&pod_dir.join("volumes/kubernetes.io~csi")).is_empty() {
                        let _ = std::fs::remove_dir_all(&pod_dir);
                    }
                }
                Err(s) => self.event(&format!("node/{node}"), rpc_error("orphaned pod: NodeUnpublishVolume", &s)),
            }
        }
        self.kubelet_sync().await;
        let mut drivers = vec![self.driver.name.clone()];
        drivers.extend(self.nfs.as_ref().map(|n| n.driver.name.clone()));
        let staged: Vec<(String, String, PathBuf)> = drivers
            .iter()
            .flat_map(|d| {
                let dir = root.join("plugins/kubernetes.io/csi").join(d);
                reconstruct_staged(&dir).into_iter().map(move |(h, p)| (d.clone(), h, p))
            })
            .collect();
        for (driver, handle, staging) in staged {
            if self.node(node).staged.contains_key(&handle) {
                continue;
            }
            let mut client = self.node_client(node, &driver);
            match client
                .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                    volume_id: handle,
                    staging_target_path: staging.display().to_string(),
                })
                .await
            {
                Ok(_) => remove_mount_dir(&staging),
                Err(s) => self.event(&format!("node/{node}"), rpc_error("unused volume: NodeUnstageVolume", &s)),
            }
        }
    }

    /// Shuts `node` down: berth stops, and every mount under the kubelet root and the pool's
    /// disk vanishes. The node is NotReady until [`Cluster::boot_node`].
    pub async fn shutdown_node(&mut self, node: &str) {
        if let Some(plugin) = self.nfs.as_mut().and_then(|nfs| nfs.nodes.get_mut(node)) {
            let status = plugin.stop();
            assert!(status.success(), "the NFS node plugin on {node} exited with {status}");
        }
        let n = self.node_mut(node);
        let status = n.berth.stop();
        assert!(status.success(), "berth on {node} exited with {status}");
        crate::common::unmount_below(&n.kubelet_root);
        assert!(crate::common::mounts_below(&n.kubelet_root).is_empty(), "mounts survived the shutdown");
        n.disk.detach();
        n.staged.clear();
        n.published.clear();
        n.down = true;
    }

    /// Boots `node`: the pool's disk is mounted (fstab), berth starts, the kubelet restarts.
    pub async fn boot_node(&mut self, node: &str) {
        let n = self.node_mut(node);
        n.disk.attach();
        n.berth.restart().await;
        n.down = false;
        if let Some(plugin) = self.nfs.as_mut().and_then(|nfs| nfs.nodes.get_mut(node)) {
            plugin.restart().await;
        }
        self.restart_kubelet(node).await;
    }

    /// Reboots `node` with nothing changing while it is down.
    pub async fn reboot_node(&mut self, node: &str) {
        self.shutdown_node(node).await;
        self.boot_node(node).await;
    }

    /// The kubelet's volume stats for a pod volume (what `kubelet_volume_stats_*` report).
    pub async fn volume_stats(&self, pod: &str, volume: &str) -> pb::NodeGetVolumeStatsResponse {
        let p = self.running(pod);
        let node = self.node(p.node.as_deref().expect("node"));
        let published = node.published.get(&(p.uid.clone(), volume.to_string())).expect("published");
        let mut client = self.node_client(&node.name, &published.driver);
        client
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: published.handle.clone(),
                volume_path: published.target.display().to_string(),
                staging_target_path: published.staging.as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
            })
            .await
            .unwrap_or_else(|s| panic!("{}", rpc_error("NodeGetVolumeStats", &s)))
            .into_inner()
    }

    /// Bytes the volume holds at most, as the kubelet's stats report it.
    pub async fn volume_size(&self, pod: &str, volume: &str) -> i64 {
        let stats = self.volume_stats(pod, volume).await;
        stats
            .usage
            .iter()
            .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
            .map(|u| u.total)
            .expect("byte usage")
    }
}
