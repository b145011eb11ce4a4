//! The Kubernetes objects the harness models, reduced to the fields storage components read
//! and write: StorageClass, PersistentVolumeClaim, PersistentVolume, Pod, VolumeSnapshot and
//! VolumeSnapshotContent. Constructors give the defaults `kubectl apply` would.

use std::collections::BTreeMap;

use berth::csi::pb::volume_capability::access_mode::Mode;

/// Every object lives in this namespace (the harness models one).
pub const NAMESPACE: &str = "default";

/// A fresh object UID.
pub fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A PersistentVolume(Claim) access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names, reason = "Kubernetes's own names")]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl AccessMode {
    /// The CSI mode csi-provisioner and the kubelet send for it (csi-lib-utils
    /// `ToCSIAccessMode`, kubelet `asCSIAccessModeV1`): with SINGLE_NODE_MULTI_WRITER
    /// advertised, RWO becomes SINGLE_NODE_MULTI_WRITER and RWOP SINGLE_NODE_SINGLE_WRITER.
    pub fn csi(self, single_node_multi_writer: bool) -> Mode {
        match (self, single_node_multi_writer) {
            (AccessMode::ReadWriteOnce, true) => Mode::SingleNodeMultiWriter,
            (AccessMode::ReadWriteOnce, false) => Mode::SingleNodeWriter,
            (AccessMode::ReadOnlyMany, _) => Mode::MultiNodeReaderOnly,
            (AccessMode::ReadWriteMany, _) => Mode::MultiNodeMultiWriter,
            (AccessMode::ReadWriteOncePod, true) => Mode::SingleNodeSingleWriter,
            (AccessMode::ReadWriteOncePod, false) => Mode::SingleNodeWriter,
        }
    }
}

/// What happens to a PV when its claim is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    Delete,
    Retain,
}

/// When a claim of the class is provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// At once, before any pod uses it.
    Immediate,
    /// When the scheduler has placed the first pod that uses it (selected-node annotation).
    WaitForFirstConsumer,
}

/// A StorageClass.
#[derive(Debug, Clone)]
pub struct StorageClass {
    pub name: String,
    pub provisioner: String,
    pub parameters: BTreeMap<String, String>,
    pub reclaim: Reclaim,
    pub binding: Binding,
    pub allow_expansion: bool,
    pub mount_options: Vec<String>,
}

impl StorageClass {
    /// A class of `driver` with the chart's defaults: Delete, WaitForFirstConsumer,
    /// expansion allowed, no parameters.
    pub fn new(name: &str, driver: &str) -> StorageClass {
        StorageClass {
            name: name.to_string(),
            provisioner: driver.to_string(),
            parameters: BTreeMap::new(),
            reclaim: Reclaim::Delete,
            binding: Binding::WaitForFirstConsumer,
            allow_expansion: true,
            mount_options: Vec::new(),
        }
    }

    pub fn param(mut self, key: &str, value: &str) -> StorageClass {
        self.parameters.insert(key.to_string(), value.to_string());
        self
    }

    pub fn reclaim(mut self, reclaim: Reclaim) -> StorageClass {
        self.reclaim = reclaim;
        self
    }

    /// `mountOptions`: the kubelet passes them as the capability's mount_flags.
    pub fn mount_options(mut self, options: &[&str]) -> StorageClass {
        self.mount_options = options.iter().map(std::string::ToString::to_string).collect();
        self
    }

    pub fn binding(mut self, binding: Binding) -> StorageClass {
        self.binding = binding;
        self
    }
}

/// Where a claim's initial content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A VolumeSnapshot in the claim's namespace.
    Snapshot(String),
    /// Another claim (a clone).
    Claim(String),
}

/// A claim's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimPhase {
    Pending,
    Bound,
}

/// A PersistentVolumeClaim: spec, then the status fields controllers maintain.
#[derive(Debug, Clone)]
pub struct Pvc {
    pub name: String,
    pub uid: String,
    /// `spec.storageClassName`; empty for "no class" (static binding only).
    pub class: String,
    pub access_modes: Vec<AccessMode>,
    /// `spec.resources.requests.storage` in bytes.
    pub request: u64,
    /// `spec.volumeMode: Block`.
    pub block: bool,
    pub data_source: Option<DataSource>,
    /// `spec.volumeName`: bind to this PV only.
    pub volume_name: Option<String>,
    pub phase: ClaimPhase,
    /// `status.capacity.storage`.
    pub capacity: u64,
    /// The `volume.kubernetes.io/selected-node` annotation.
    pub selected_node: Option<String>,
    /// The FileSystemResizePending condition: the kubelet still has to call NodeExpandVolume.
    pub resize_pending: bool,
    /// Deletion was requested; the pvc-protection finalizer holds it while pods use it.
    pub terminating: bool,
    /// Events, newest last (`kubectl describe pvc`).
    pub events: Vec<String>,
}

impl Pvc {
    /// A ReadWriteOnce filesystem claim of `bytes` in `class`.
    pub fn new(name: &str, class: &str, bytes: u64) -> Pvc {
        Pvc {
            name: name.to_string(),
            uid: uid(),
            class: class.to_string(),
            access_modes: vec![AccessMode::ReadWriteOnce],
            request: bytes,
            block: false,
            data_source: None,
            volume_name: None,
            phase: ClaimPhase::Pending,
            capacity: 0,
            selected_node: None,
            resize_pending: false,
            terminating: false,
            events: Vec::new(),
        }
    }

    pub fn access(mut self, modes: &[AccessMode]) -> Pvc {
        self.access_modes = modes.to_vec();
        self
    }

    pub fn restore(mut self, snapshot: &str) -> Pvc {
        self.data_source = Some(DataSource::Snapshot(snapshot.to_string()));
        self
    }

    /// `volumeMode: Block`: the kubelet uses the volumeDevices paths and a block capability.
    pub fn block(mut self) -> Pvc {
        self.block = true;
        self
    }

    pub fn clone_of(mut self, claim: &str) -> Pvc {
        self.data_source = Some(DataSource::Claim(claim.to_string()));
        self
    }

    pub fn volume_name(mut self, pv: &str) -> Pvc {
        self.volume_name = Some(pv.to_string());
        self
    }

    /// The latest event, for assertion messages.
    pub fn last_event(&self) -> &str {
        self.events.last().map_or("", String::as_str)
    }
}

/// A volume's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePhase {
    Available,
    Bound,
    Released,
    Failed(String),
}

/// The claim a PV is bound to (`spec.claimRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub name: String,
    pub uid: String,
}

/// A PersistentVolume with a CSI source.
#[derive(Debug, Clone)]
pub struct Pv {
    pub name: String,
    pub capacity: u64,
    pub access_modes: Vec<AccessMode>,
    pub reclaim: Reclaim,
    pub class: String,
    pub mount_options: Vec<String>,
    pub block: bool,
    /// `spec.csi`: driver, volumeHandle, fsType, volumeAttributes, readOnly.
    pub driver: String,
    pub handle: String,
    pub fs_type: String,
    pub attributes: BTreeMap<String, String>,
    pub read_only: bool,
    /// `spec.nodeAffinity` as OR-ed terms of topology labels (empty: any node).
    pub node_affinity: Vec<BTreeMap<String, String>>,
    pub claim: Option<ClaimRef>,
    pub phase: VolumePhase,
    /// The `pv.kubernetes.io/provisioned-by` annotation: set on dynamically provisioned PVs.
    pub provisioned_by: Option<String>,
}

impl Pv {
    /// A static PV an administrator writes for an existing volume.
    pub fn new(name: &str, driver: &str, handle: &str, bytes: u64) -> Pv {
        Pv {
            name: name.to_string(),
            capacity: bytes,
            access_modes: vec![AccessMode::ReadWriteOnce],
            reclaim: Reclaim::Retain,
            class: String::new(),
            mount_options: Vec::new(),
            block: false,
            driver: driver.to_string(),
            handle: handle.to_string(),
            fs_type: String::new(),
            attributes: BTreeMap::new(),
            read_only: false,
            node_affinity: Vec::new(),
            claim: None,
            phase: VolumePhase::Available,
            provisioned_by: None,
        }
    }

    pub fn attribute(mut self, key: &str, value: &str) -> Pv {
        self.attributes.insert(key.to_string(), value.to_string());
        self
    }

    /// Restricts the PV to nodes carrying `label=value`.
    pub fn node_affinity(mut self, label: &str, value: &str) -> Pv {
        self.node_affinity.push(BTreeMap::from([(label.to_string(), value.to_string())]));
        self
    }
}

/// Where a pod volume comes from.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    /// `persistentVolumeClaim.claimName`.
    Claim(String),
    /// An inline CSI ephemeral volume: `csi.driver` and `csi.volumeAttributes`.
    Csi { driver: String, attributes: BTreeMap<String, String> },
}

/// One entry of `spec.volumes`.
#[derive(Debug, Clone)]
pub struct PodVolume {
    pub name: String,
    pub source: VolumeSource,
    pub read_only: bool,
}

/// A pod's lifecycle as `kubectl get pod` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPhase {
    /// Not scheduled; the reason is the scheduler's message.
    Pending(String),
    /// On a node, waiting for its volumes; the message is the kubelet's last mount error.
    ContainerCreating(String),
    Running,
}

/// A Pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    /// `spec.nodeName`: set by the scheduler, or by the user to bypass it.
    pub node: Option<String>,
    /// `spec.nodeSelector` on `kubernetes.io/hostname`.
    pub node_selector: Option<String>,
    pub service_account: String,
    pub volumes: Vec<PodVolume>,
    pub phase: PodPhase,
    /// The StatefulSet that owns it.
    pub owner: Option<String>,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        Pod {
            name: name.to_string(),
            uid: uid(),
            node: None,
            node_selector: None,
            service_account: "default".to_string(),
            volumes: Vec::new(),
            phase: PodPhase::Pending(String::new()),
            owner: None,
        }
    }

    /// Mounts claim `claim` as pod volume `volume`.
    pub fn claim(mut self, volume: &str, claim: &str) -> Pod {
        self.volumes.push(PodVolume {
            name: volume.to_string(),
            source: VolumeSource::Claim(claim.to_string()),
            read_only: false,
        });
        self
    }

    /// Mounts claim `claim` read-only (`persistentVolumeClaim.readOnly: true`).
    pub fn claim_read_only(mut self, volume: &str, claim: &str) -> Pod {
        self.volumes.push(PodVolume {
            name: volume.to_string(),
            source: VolumeSource::Claim(claim.to_string()),
            read_only: true,
        });
        self
    }

    /// An inline CSI ephemeral volume.
    pub fn csi_ephemeral(mut self, volume: &str, driver: &str, attributes: &[(&str, &str)]) -> Pod {
        self.volumes.push(PodVolume {
            name: volume.to_string(),
            source: VolumeSource::Csi {
                driver: driver.to_string(),
                attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            read_only: false,
        });
        self
    }

    /// `spec.nodeSelector: {kubernetes.io/hostname: node}`: the scheduler must pick it.
    pub fn on_node(mut self, node: &str) -> Pod {
        self.node_selector = Some(node.to_string());
        self
    }

    /// `spec.nodeName: node`: the scheduler is bypassed and the kubelet runs it directly.
    pub fn node_name(mut self, node: &str) -> Pod {
        self.node = Some(node.to_string());
        self
    }

    pub fn is_running(&self) -> bool {
        self.phase == PodPhase::Running
    }
}

/// A VolumeSnapshot with its bound VolumeSnapshotContent folded in.
#[derive(Debug, Clone)]
pub struct VolumeSnapshot {
    pub name: String,
    pub uid: String,
    pub source_claim: String,
    /// `status.readyToUse`.
    pub ready: bool,
    /// The content's `status.snapshotHandle`.
    pub handle: Option<String>,
    /// `status.restoreSize`.
    pub restore_size: u64,
    /// The node whose csi-snapshotter took it (distributed snapshotting).
    pub node: Option<String>,
    pub error: String,
}

/// A StatefulSet with one volumeClaimTemplate.
#[derive(Debug, Clone)]
pub struct StatefulSet {
    pub name: String,
    pub replicas: usize,
    /// volumeClaimTemplates[0]: name, class, size.
    pub template: (String, String, u64),
}
