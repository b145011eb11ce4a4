//! A Kubernetes cluster without Kubernetes: the API objects as small structs, and the
//! components that touch storage — the PV controller, the scheduler, csi-provisioner,
//! csi-snapshotter, csi-resizer, csi-attacher and the kubelet — as code that calls the real
//! berth binaries exactly as those components do. docs/harness.md maps each piece to its
//! Kubernetes original.
//!
//! A user action (`create_pvc`, `create_pod`, `delete_pod`, ...) changes the objects and then
//! runs one pass of every controller (`sync`), the way a cluster reacts within seconds.

#![allow(dead_code)]

mod control;
mod kubelet;
pub mod node;
pub mod objects;
mod sidecars;

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth::csi::pb;

use crate::common::{self, Berth, Scratch};
pub use node::{Node, NodeSpec};
pub use objects::*;

/// The node-local driver's name (the chart's `local.driverName`).
pub const DRIVER: &str = "local.berth.csi.io";
/// The NFS driver's name (the chart's `nfs.driverName`).
pub const NFS_DRIVER: &str = "nfs.berth.csi.io";

/// How csi-provisioner is run (its command-line flags).
#[derive(Debug, Clone)]
pub struct ProvisionerFlags {
    /// `--node-deployment`: one provisioner per node, acting only on claims whose selected
    /// node is its own node (and, with Immediate binding, claiming them first).
    pub node_deployment: bool,
    /// `--strict-topology`: requisite and preferred name only the selected node.
    pub strict_topology: bool,
    /// `--immediate-topology`: Immediate claims get every node's topology as requisite;
    /// false sends no accessibility_requirements at all.
    pub immediate_topology: bool,
    /// `--extra-create-metadata`: pvc/name, pvc/namespace, pv/name as parameters.
    pub extra_create_metadata: bool,
}

/// The CSIDriver object and how the sidecars of the driver are deployed.
#[derive(Debug, Clone)]
pub struct Driver {
    pub name: String,
    /// CSIDriver `attachRequired`: csi-attacher calls ControllerPublishVolume before the
    /// kubelet stages, and ControllerUnpublishVolume after it unstages.
    pub attach_required: bool,
    /// CSIDriver `podInfoOnMount`: pod name, namespace, UID, service account and the
    /// ephemeral flag in NodePublishVolume's volume context.
    pub pod_info_on_mount: bool,
    /// CSIDriver `storageCapacity`: the scheduler places WaitForFirstConsumer claims only on
    /// nodes whose published capacity (GetCapacity) holds them.
    pub storage_capacity: bool,
    pub provisioner: ProvisionerFlags,
}

impl Driver {
    /// The node-local driver as charts/berth deploys it.
    pub fn chart() -> Driver {
        Driver {
            name: DRIVER.to_string(),
            attach_required: false,
            pod_info_on_mount: true,
            storage_capacity: true,
            provisioner: ProvisionerFlags {
                node_deployment: true,
                strict_topology: true,
                immediate_topology: false,
                extra_create_metadata: true,
            },
        }
    }

    /// The NFS driver as charts/berth deploys it (`nfs.enabled`): provisioned centrally,
    /// attached by csi-attacher, no capacity tracking.
    pub fn nfs() -> Driver {
        Driver {
            name: NFS_DRIVER.to_string(),
            attach_required: true,
            pod_info_on_mount: true,
            storage_capacity: false,
            provisioner: ProvisionerFlags {
                node_deployment: false,
                strict_topology: false,
                immediate_topology: false,
                extra_create_metadata: true,
            },
        }
    }
}

/// The NFS driver's deployment: its pools (the chart's `<release>-nfs-config` ConfigMap,
/// shared by the central controller and every node plugin) and the export they name.
#[derive(Debug, Clone)]
pub struct NfsSpec {
    /// The YAML list items under `pools:`.
    pub pools: String,
    /// The export's directory on this machine (the ganesha export), where node plugins
    /// register under `.berth/nodes/<node id>`.
    pub export: PathBuf,
}

impl NfsSpec {
    /// NFS pools `(name, extra YAML)` on the ganesha server `g`.
    pub fn on(g: &common::ganesha::Ganesha, pools: &[(&str, &str)]) -> NfsSpec {
        let config = common::ganesha::nfs_config(std::path::Path::new("/"), g, pools);
        let pools = config.split_once("pools:\n").map(|(_, p)| p.to_string()).expect("pools list");
        NfsSpec { pools, export: g.export.clone() }
    }

    fn config(&self, state: &std::path::Path) -> String {
        format!("stateDir: {}\npools:\n{}", state.display(), self.pools)
    }
}

/// The NFS driver when the cluster runs it: the central `berth --mode controller` (with
/// csi-provisioner, csi-attacher and csi-resizer next to it) and one `berth --mode node`
/// per node, each on its own socket under `plugins/nfs.berth.csi.io/`.
pub struct NfsDriver {
    pub driver: Driver,
    pub controller: Berth,
    /// Node name → that node's NFS node plugin.
    pub nodes: BTreeMap<String, Berth>,
    pub export: PathBuf,
    single_node_multi_writer: bool,
}

/// What to build.
pub struct ClusterSpec {
    pub driver: Driver,
    pub nodes: Vec<NodeSpec>,
    /// Run the central `berth serve --mode controller` next to csi-resizer (the chart's
    /// `local.expansion.enabled`): it answers ControllerExpandVolume for node-local volumes
    /// with node_expansion_required, and the kubelet's NodeExpandVolume applies the size.
    /// Without it, csi-resizer calls the controller of the node that holds the volume.
    pub central_controller: bool,
    /// Also deploy the NFS driver (`nfs.enabled`) on every node.
    pub nfs: Option<NfsSpec>,
}

impl ClusterSpec {
    /// The chart's driver on btrfs nodes with these names.
    pub fn btrfs_nodes(names: &[&str]) -> ClusterSpec {
        ClusterSpec {
            driver: Driver::chart(),
            nodes: names.iter().map(|n| NodeSpec::btrfs(n)).collect(),
            central_controller: false,
            nfs: None,
        }
    }

    /// Adds the NFS driver.
    pub fn with_nfs(mut self, nfs: NfsSpec) -> ClusterSpec {
        self.nfs = Some(nfs);
        self
    }
}

/// The cluster: objects, controllers, nodes.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The central `berth --mode controller`, when the spec asks for it.
    pub controller: Option<Berth>,
    pub driver: Driver,
    /// The NFS driver, when the spec deploys it.
    pub nfs: Option<NfsDriver>,
    /// From ControllerGetCapabilities / NodeGetCapabilities: whether RWO maps to
    /// SINGLE_NODE_MULTI_WRITER and RWOP to SINGLE_NODE_SINGLE_WRITER.
    single_node_multi_writer: bool,
    pub classes: BTreeMap<String, StorageClass>,
    pub pvcs: BTreeMap<String, Pvc>,
    pub pvs: BTreeMap<String, Pv>,
    pub pods: BTreeMap<String, Pod>,
    pub snapshots: BTreeMap<String, VolumeSnapshot>,
    pub statefulsets: BTreeMap<String, StatefulSet>,
    /// VolumeAttachments that csi-attacher reported attached: (volume handle, node) →
    /// publish_context.
    pub attachments: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// CSIStorageCapacity objects: (node, class) → bytes the scheduler compares a claim
    /// with (maximum_volume_size when reported, else available_capacity).
    pub capacity: BTreeMap<(String, String), i64>,
    /// `kubectl get events`, oldest first.
    pub events: Vec<String>,
    scratch: Scratch,
}

/// A gRPC error the way a sidecar logs it.
pub fn rpc_error(rpc: &str, status: &tonic::Status) -> String {
    format!("{rpc}: {:?}: {}", status.code(), status.message())
}

impl Cluster {
    /// Starts one berth per node (and the central controller when asked), registers each
    /// node as node-driver-registrar does, and reads the driver's capabilities. `None`, with
    /// a SKIPPED line, when not root or a filesystem tool is missing.
    pub async fn start(test: &str, spec: ClusterSpec) -> Option<Cluster> {
        if !common::require_root(test) {
            return None;
        }
        let scratch = Scratch::new();
        let mut nodes = Vec::new();
        for ns in &spec.nodes {
            let dir = scratch.path().join(&ns.name);
            std::fs::create_dir_all(&dir).expect("mkdir node");
            let disk = node::Disk::create(&dir, test, ns.fs, ns.size)?;
            let pool = disk.mount.join("pool");
            let kubelet_root = dir.join("kubelet");
            let plugin_dir = Node::plugin_dir(&kubelet_root, &spec.driver.name);
            std::fs::create_dir_all(&plugin_dir).expect("mkdir plugin dir");
            // Inline ephemeral volumes are a pool's opt-in.
            let config = common::hostpath_config(&dir.join("state"), &pool, "auto")
                + "    ephemeral: true\n"
                + &ns.extra_pools_on(&disk.mount);
            // A node-deployed driver serves its Controller on every node (csi-provisioner and
            // csi-snapshotter run next to it); otherwise the node runs the Node service only.
            let mode = if spec.driver.provisioner.node_deployment { "all" } else { "node" };
            let mut berth =
                Berth::start(&plugin_dir, &config, &ns.name, &["--mode", mode, "--driver-name", &spec.driver.name])
                    .await;
            // node-driver-registrar: the driver's name, then the node's ID and topology.
            let info = berth.identity.get_plugin_info(pb::GetPluginInfoRequest {}).await.expect("GetPluginInfo");
            assert_eq!(info.into_inner().name, spec.driver.name, "driver name");
            let info = berth.node.node_get_info(pb::NodeGetInfoRequest {}).await.expect("NodeGetInfo").into_inner();
            assert_eq!(info.node_id, ns.name, "node ID is the node name");
            let topology = info.accessible_topology.map(|t| t.segments.into_iter().collect()).unwrap_or_default();
            nodes.push(Node {
                name: ns.name.clone(),
                berth,
                kubelet_root,
                pool,
                topology,
                staged: BTreeMap::new(),
                published: BTreeMap::new(),
                down: false,
                disk,
            });
        }
        let controller = if spec.central_controller {
            let dir = scratch.path().join("controller");
            std::fs::create_dir_all(&dir).expect("mkdir controller");
            // The same pool list as the nodes (the chart shares one ConfigMap); the central
            // controller never opens node-local pools, it knows them by name.
            let config = common::hostpath_config(&dir.join("state"), &dir.join("no-pool-here"), "auto")
                + &spec.nodes[0].extra_pools_on(&dir.join("no-disk-here"));
            Some(
                Berth::start(
                    &dir,
                    &config,
                    "controller",
                    &["--mode", "controller", "--driver-name", &spec.driver.name],
                )
                .await,
            )
        } else {
            None
        };
        let mut provisioning = match (&controller, spec.driver.provisioner.node_deployment) {
            (_, true) => nodes[0].berth.controller.clone(),
            (Some(central), false) => central.controller.clone(),
            (None, false) => panic!("a driver that is not node-deployed needs the central controller"),
        };
        let caps = provisioning
            .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
            .await
            .expect("ControllerGetCapabilities")
            .into_inner();
        let snmw = pb::controller_service_capability::rpc::Type::SingleNodeMultiWriter as i32;
        let single_node_multi_writer = caps
            .capabilities
            .iter()
            .any(|c| matches!(&c.r#type, Some(pb::controller_service_capability::Type::Rpc(r)) if r.r#type == snmw));
        let nfs = match &spec.nfs {
            Some(nfs) => Some(Self::start_nfs(&scratch, &nodes, nfs).await),
            None => None,
        };
        Some(Cluster {
            nodes,
            controller,
            driver: spec.driver,
            nfs,
            single_node_multi_writer,
            classes: BTreeMap::new(),
            pvcs: BTreeMap::new(),
            pvs: BTreeMap::new(),
            pods: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            statefulsets: BTreeMap::new(),
            attachments: BTreeMap::new(),
            capacity: BTreeMap::new(),
            events: Vec::new(),
            scratch,
        })
    }

    /// Starts the NFS driver: the central controller, then a node plugin per node, which
    /// registers itself on the export (as the DaemonSet's pods do at start).
    async fn start_nfs(scratch: &Scratch, nodes: &[Node], spec: &NfsSpec) -> NfsDriver {
        let driver = Driver::nfs();
        let dir = scratch.path().join("nfs-controller");
        std::fs::create_dir_all(&dir).expect("mkdir nfs controller");
        let mut controller = Berth::start(
            &dir,
            &spec.config(&dir.join("state")),
            "nfs-controller",
            &["--mode", "controller", "--driver-name", &driver.name],
        )
        .await;
        let mut plugins = BTreeMap::new();
        for node in nodes {
            let plugin_dir = Node::plugin_dir(&node.kubelet_root, &driver.name);
            std::fs::create_dir_all(&plugin_dir).expect("mkdir nfs plugin dir");
            let state = node.kubelet_root.parent().expect("node dir").join("nfs-state");
            let mut berth = Berth::start(
                &plugin_dir,
                &spec.config(&state),
                &node.name,
                &["--mode", "node", "--driver-name", &driver.name],
            )
            .await;
            let info = berth.identity.get_plugin_info(pb::GetPluginInfoRequest {}).await.expect("GetPluginInfo");
            assert_eq!(info.into_inner().name, driver.name, "NFS driver name");
            plugins.insert(node.name.clone(), berth);
        }
        let registered = |n: &str| spec.export.join(".berth/nodes").join(n).exists();
        for _ in 0..200 {
            if nodes.iter().all(|n| registered(&n.name)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(nodes.iter().all(|n| registered(&n.name)), "every NFS node plugin registered on the export");
        let caps = controller
            .controller
            .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
            .await
            .expect("ControllerGetCapabilities (nfs)")
            .into_inner();
        let snmw = pb::controller_service_capability::rpc::Type::SingleNodeMultiWriter as i32;
        let single_node_multi_writer = caps
            .capabilities
            .iter()
            .any(|c| matches!(&c.r#type, Some(pb::controller_service_capability::Type::Rpc(r)) if r.r#type == snmw));
        NfsDriver { driver, controller, nodes: plugins, export: spec.export.clone(), single_node_multi_writer }
    }

    /// The CSIDriver object for a driver name (the node-local driver or the NFS driver).
    pub fn driver_named(&self, name: &str) -> &Driver {
        match &self.nfs {
            Some(nfs) if nfs.driver.name == name => &nfs.driver,
            _ => &self.driver,
        }
    }

    /// Whether `name` is a driver this cluster runs (a registered CSIDriver).
    pub fn has_driver(&self, name: &str) -> bool {
        self.driver.name == name || self.nfs.as_ref().is_some_and(|n| n.driver.name == name)
    }

    fn is_nfs(&self, driver: &str) -> bool {
        self.nfs.as_ref().is_some_and(|n| n.driver.name == driver)
    }

    /// The driver's answer to "SINGLE_NODE_MULTI_WRITER?" from its capabilities.
    pub(super) fn snmw(&self, driver: &str) -> bool {
        match &self.nfs {
            Some(nfs) if nfs.driver.name == driver => nfs.single_node_multi_writer,
            _ => self.single_node_multi_writer,
        }
    }

    /// The Node service of `driver` on `node` (the socket the kubelet found through that
    /// driver's registrar).
    pub(super) fn node_client(
        &self,
        node: &str,
        driver: &str,
    ) -> berth::csi::pb::node_client::NodeClient<tonic::transport::Channel> {
        match &self.nfs {
            Some(nfs) if nfs.driver.name == driver => {
                nfs.nodes.get(node).unwrap_or_else(|| panic!("no NFS node plugin on {node}")).node.clone()
            }
            _ => self.node(node).berth.node.clone(),
        }
    }

    // ---- reading objects (kubectl get) ----

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pvc(&self, name: &str) -> &Pvc {
        self.pvcs.get(name).unwrap_or_else(|| panic!("no PVC {name}"))
    }

    pub fn pv(&self, name: &str) -> &Pv {
        self.pvs.get(name).unwrap_or_else(|| panic!("no PV {name}"))
    }

    /// The PV bound to claim `claim`.
    pub fn pv_of(&self, claim: &str) -> &Pv {
        let pvc = self.pvc(claim);
        let name = pvc.volume_name.as_deref().unwrap_or_else(|| panic!("PVC {claim} is not bound: {pvc:?}"));
        self.pv(name)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.get(name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The pod, which must be Running (the assertion message says why it is not).
    pub fn running(&self, name: &str) -> &Pod {
        let pod = self.pod(name);
        assert!(pod.is_running(), "pod {name} is {:?}; events: {:#?}", pod.phase, self.events);
        pod
    }

    pub fn snapshot(&self, name: &str) -> &VolumeSnapshot {
        self.snapshots.get(name).unwrap_or_else(|| panic!("no VolumeSnapshot {name}"))
    }

    /// The node whose topology a PV's node affinity selects.
    pub fn node_of_pv(&self, pv: &Pv) -> Option<String> {
        if pv.node_affinity.is_empty() {
            return None;
        }
        self.nodes.iter().find(|n| pv.node_affinity.iter().any(|t| n.matches(t))).map(|n| n.name.clone())
    }

    /// What the pod sees at `volume`'s mount point: the publish target on its node.
    pub fn volume_path(&self, pod: &str, volume: &str) -> PathBuf {
        let pod = self.running(pod);
        let node = self.node(pod.node.as_deref().expect("running pods have a node"));
        node.published
            .get(&(pod.uid.clone(), volume.to_string()))
            .unwrap_or_else(|| panic!("volume {volume} of pod {} is not published", pod.name))
            .target
            .clone()
    }

    /// The staging path the kubelet used for `claim` on `node`.
    pub fn staging_path(&self, node: &str, claim: &str) -> PathBuf {
        let pv = self.pv_of(claim);
        self.node(node).staging_path(&pv.driver, &pv.handle)
    }

    fn event(&mut self, object: &str, message: String) {
        self.events.push(format!("{object}: {message}"));
    }

    // ---- user actions (kubectl apply / delete) ----

    pub async fn create_class(&mut self, class: StorageClass) {
        self.classes.insert(class.name.clone(), class);
        self.refresh_capacity().await;
    }

    pub async fn create_pvc(&mut self, pvc: Pvc) {
        assert!(!self.pvcs.contains_key(&pvc.name), "PVC {} exists", pvc.name);
        self.pvcs.insert(pvc.name.clone(), pvc);
        self.sync().await;
    }

    /// An administrator's PV (static provisioning).
    pub async fn create_pv(&mut self, pv: Pv) {
        assert!(!self.pvs.contains_key(&pv.name), "PV {} exists", pv.name);
        self.pvs.insert(pv.name.clone(), pv);
        self.sync().await;
    }

    /// `kubectl patch pv --type json -p '[{"op":"remove","path":"/spec/claimRef"}]'`: an
    /// administrator makes a Released PV available for a new claim.
    pub async fn make_available(&mut self, pv: &str) {
        let pv = self.pvs.get_mut(pv).expect("PV");
        pv.claim = None;
        pv.phase = VolumePhase::Available;
        self.sync().await;
    }

    pub async fn create_pod(&mut self, pod: Pod) {
        assert!(!self.pods.contains_key(&pod.name), "pod {} exists", pod.name);
        self.pods.insert(pod.name.clone(), pod);
        self.sync().await;
    }

    /// Deletes a pod: the kubelet unpublishes (and unstages what no other pod uses) before
    /// the pod object goes away.
    pub async fn delete_pod(&mut self, name: &str) {
        self.kubelet_tear_down(name).await.unwrap_or_else(|e| panic!("tearing down pod {name}: {e}"));
        self.pods.remove(name);
        self.sync().await;
    }

    /// `kubectl delete pod --force --grace-period=0`: the pod object goes at once, without
    /// waiting for its kubelet (as for pods of a node that is down).
    pub async fn force_delete_pod(&mut self, name: &str) {
        self.pods.remove(name).unwrap_or_else(|| panic!("no pod {name}"));
        self.sync().await;
    }

    /// Deletes a claim; it stays (terminating) while a pod uses it, then its PV is
    /// reclaimed per the reclaim policy.
    pub async fn delete_pvc(&mut self, name: &str) {
        self.pvcs.get_mut(name).unwrap_or_else(|| panic!("no PVC {name}")).terminating = true;
        self.sync().await;
    }

    /// Requests a larger size for a claim (`kubectl patch pvc ... storage: <bytes>`).
    pub async fn resize_pvc(&mut self, name: &str, bytes: u64) -> Result<(), String> {
        self.resize(name, bytes).await?;
        self.sync().await;
        Ok(())
    }

    /// Creates a VolumeSnapshot of `claim`.
    pub async fn create_snapshot(&mut self, name: &str, claim: &str) {
        self.take_snapshot(name, claim).await;
        self.sync().await;
    }

    /// Deletes a VolumeSnapshot (deletionPolicy Delete: the snapshot itself goes).
    pub async fn delete_snapshot(&mut self, name: &str) {
        self.remove_snapshot(name).await;
        self.sync().await;
    }

    pub async fn create_statefulset(&mut self, set: StatefulSet) {
        self.statefulsets.insert(set.name.clone(), set);
        self.sync().await;
    }

    /// Scales a StatefulSet: pods above the new count go, highest ordinal first; their
    /// claims stay (the default persistentVolumeClaimRetentionPolicy is Retain).
    pub async fn scale_statefulset(&mut self, name: &str, replicas: usize) {
        let old = {
            let set = self.statefulsets.get_mut(name).expect("StatefulSet");
            std::mem::replace(&mut set.replicas, replicas)
        };
        for ordinal in (replicas..old).rev() {
            self.delete_pod(&format!("{name}-{ordinal}")).await;
        }
        self.sync().await;
    }

    // ---- the control loop ----

    /// One pass of every controller, in the order a change ripples through a cluster.
    pub async fn sync(&mut self) {
        self.reconcile_statefulsets();
        self.bind_static_claims();
        self.provision_immediate().await;
        self.schedule_pending().await;
        self.kubelet_sync().await;
        self.finalize_claims();
        self.detach_unused().await;
        self.reclaim_released().await;
    }

    /// Live objects that mention `claim` in a pod volume.
    fn pods_using(&self, claim: &str) -> Vec<String> {
        self.pods
            .values()
            .filter(|p| p.volumes.iter().any(|v| matches!(&v.source, VolumeSource::Claim(c) if c == claim)))
            .map(|p| p.name.clone())
            .collect()
    }
}
