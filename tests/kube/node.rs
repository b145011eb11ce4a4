//! A node: its disk (a filesystem image holding the berth pool), its berth process
//! (`berth serve --mode all`, the node plugin plus the node-deployed controller), and the
//! kubelet's directory layout under its own kubelet root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::common::{self, Berth};

/// What a node is built from.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Filesystem of the pool's disk: btrfs (sizes enforced by qgroups), ext4 or xfs.
    pub fs: &'static str,
    /// Size of the disk image, as `truncate -s` reads it.
    pub size: &'static str,
    /// More entries for berth's `pools:` list (YAML, indented as list items), after the
    /// hostPath pool `default` on the disk. A new backend's pool goes here; `$DISK` stands
    /// for the directory the node's disk is mounted on.
    pub extra_pools: String,
}

impl NodeSpec {
    /// A node whose pool is on a 1 GiB btrfs disk, so volume sizes are enforced.
    pub fn btrfs(name: &str) -> NodeSpec {
        NodeSpec { name: name.to_string(), fs: "btrfs", size: "1G", extra_pools: String::new() }
    }

    /// A node whose pool is on an ext4 disk of `size`.
    pub fn ext4(name: &str, size: &'static str) -> NodeSpec {
        NodeSpec { name: name.to_string(), fs: "ext4", size, extra_pools: String::new() }
    }

    /// Adds pools to the node's berth configuration (YAML list items).
    pub fn pools(mut self, yaml: &str) -> NodeSpec {
        self.extra_pools.push_str(yaml);
        self
    }

    /// Adds a block pool `name` (volumes are image files on the node's disk, attached
    /// through loop devices at NodeStage).
    pub fn block_pool(self, name: &str) -> NodeSpec {
        self.pools(&format!("  - {{name: {name}, type: block, path: $DISK/{name}, createPath: true}}\n"))
    }

    /// The extra pools with `$DISK` replaced by `disk`.
    pub fn extra_pools_on(&self, disk: &Path) -> String {
        self.extra_pools.replace("$DISK", path_str(disk))
    }
}

/// A filesystem in an image file, loop-mounted; it can be unmounted and mounted again as a
/// reboot does (fstab brings it back before berth starts).
pub struct Disk {
    image: PathBuf,
    pub mount: PathBuf,
}

impl Disk {
    /// Formats and mounts a disk in `dir`; `None` (with a SKIPPED line) without the mkfs tool.
    pub fn create(dir: &Path, test: &str, fs: &str, size: &str) -> Option<Disk> {
        let mkfs = format!("mkfs.{fs}");
        if !common::have(&mkfs) {
            println!("SKIPPED: {test}: {mkfs} is not installed");
            return None;
        }
        let disk = Disk { image: dir.join("disk.img"), mount: dir.join("disk") };
        std::fs::create_dir_all(&disk.mount).expect("mkdir disk mount point");
        common::sh("truncate", &["-s", size, path_str(&disk.image)]);
        let force = if fs == "ext4" { "-F" } else { "-f" };
        common::sh(&mkfs, &["-q", force, path_str(&disk.image)]);
        disk.attach();
        Some(disk)
    }

    /// Mounts the image (as fstab does at boot).
    pub fn attach(&self) {
        common::sh("mount", &["-o", "loop", path_str(&self.image), path_str(&self.mount)]);
    }

    /// Unmounts it (as shutdown does).
    pub fn detach(&self) {
        common::unmount_below(&self.mount);
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        common::unmount_below(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A volume the kubelet has published for a pod on this node.
#[derive(Debug, Clone)]
pub struct Published {
    /// The CSI driver that published it.
    pub driver: String,
    pub handle: String,
    pub target: PathBuf,
    /// The staging path, for volumes that were staged (not inline ephemeral ones).
    pub staging: Option<PathBuf>,
    /// The claim it came from, if any.
    pub claim: Option<String>,
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    /// The node's berth: Identity, Node, and the Controller that csi-provisioner and
    /// csi-snapshotter (`--node-deployment`) call for this node's pools.
    pub berth: Berth,
    /// The kubelet's root directory (`/var/lib/kubelet` on a real node).
    pub kubelet_root: PathBuf,
    /// The berth pool's directory on this node's disk.
    pub pool: PathBuf,
    /// The topology segments NodeGetInfo reported (the node's topology labels).
    pub topology: BTreeMap<String, String>,
    /// The kubelet's in-memory state: volume handle → staging path.
    pub staged: BTreeMap<String, PathBuf>,
    /// The kubelet's in-memory state: (pod UID, pod volume name) → what was published.
    pub published: BTreeMap<(String, String), Published>,
    /// Shut down (NotReady): no kubelet, no berth, no scheduling.
    pub down: bool,
    pub disk: Disk,
}

impl Node {
    /// Where node-driver-registrar finds the driver: `plugins/<driver>/csi.sock`.
    pub fn plugin_dir(kubelet_root: &Path, driver: &str) -> PathBuf {
        kubelet_root.join("plugins").join(driver)
    }

    /// The kubelet's staging path of a filesystem volume:
    /// `plugins/kubernetes.io/csi/<driver>/<sha256(volume handle)>/globalmount`.
    pub fn staging_path(&self, driver: &str, handle: &str) -> PathBuf {
        let sha = hex::encode(sha2::Sha256::digest(handle.as_bytes()));
        self.kubelet_root.join("plugins/kubernetes.io/csi").join(driver).join(sha).join("globalmount")
    }

    /// The kubelet's publish path of a filesystem volume:
    /// `pods/<pod uid>/volumes/kubernetes.io~csi/<pv or inline volume name>/mount`.
    pub fn publish_path(&self, pod_uid: &str, spec_name: &str) -> PathBuf {
        self.kubelet_root.join("pods").join(pod_uid).join("volumes/kubernetes.io~csi").join(spec_name).join("mount")
    }

    /// The kubelet's staging path of a raw block volume:
    /// `plugins/kubernetes.io/csi/volumeDevices/staging/<pv name>`.
    pub fn block_staging_path(&self, pv: &str) -> PathBuf {
        self.kubelet_root.join("plugins/kubernetes.io/csi/volumeDevices/staging").join(pv)
    }

    /// The kubelet's publish path of a raw block volume (a file the driver creates):
    /// `plugins/kubernetes.io/csi/volumeDevices/publish/<pv name>/<pod uid>`.
    pub fn block_publish_path(&self, pv: &str, pod_uid: &str) -> PathBuf {
        self.kubelet_root.join("plugins/kubernetes.io/csi/volumeDevices/publish").join(pv).join(pod_uid)
    }

    /// True when `labels` (a PV node affinity term) all match this node's topology.
    pub fn matches(&self, term: &BTreeMap<String, String>) -> bool {
        term.iter().all(|(k, v)| self.topology.get(k) == Some(v))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Pod mounts first: they hold the disk busy.
        common::unmount_below(&self.kubelet_root);
    }
}
