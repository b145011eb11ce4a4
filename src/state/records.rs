//! The records: what berth knows of each volume and snapshot, as the journal and the
//! checkpoint store them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where an object is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Intent recorded; storage may be partly created.
    Creating,
    Ready,
    /// Deletion started; storage may be partly removed.
    Deleting,
}

/// How a volume's size is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforced {
    BtrfsQgroup,
    ProjectQuota,
    /// A block volume cannot outgrow its device.
    DeviceSize,
    None,
}

impl Enforced {
    /// The name reported in volume contexts and ControllerGetVolume.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Enforced::BtrfsQgroup => "btrfs-qgroup",
            Enforced::ProjectQuota => "project-quota",
            Enforced::DeviceSize => "device-size",
            Enforced::None => "none",
        }
    }
}

/// What a volume was created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// Whether a volume is a directory tree or a raw device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    Mount,
    Block,
}

impl AccessKind {
    /// The name messages and labels use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Mount => "mount",
            AccessKind::Block => "block",
        }
    }
}

/// One layer of a block volume's device stack, bottom first (see
/// [`crate::backend::stack`]). What a layer acts on (the image, the disk) is named by
/// the record's other fields, so the layer records only its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The volume's image file in its block pool, through a loop device berth tags with
    /// the volume's key.
    Loop,
    /// The disk the record's `device` and `device_identity` name.
    Disk,
    /// A LUKS2 container on the layer below, opened through device-mapper under a name
    /// derived from the volume's key (`berth-<key>`), with the key NodeStage brings.
    Crypt,
}

impl Layer {
    /// The name messages use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Layer::Loop => "loop",
            Layer::Disk => "disk",
            Layer::Crypt => "crypt",
        }
    }
}

/// A volume berth created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    /// The CO's name for it (CreateVolume name, or the kubelet's ID for ephemeral volumes).
    pub name: String,
    pub pool: String,
    /// Names its storage inside the pool: 32 hex digits.
    pub key: String,
    /// The node whose disk holds it.
    pub node: String,
    pub capacity: u64,
    pub phase: Phase,
    pub access: AccessKind,
    pub enforced: Enforced,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
    /// Nodes it is ControllerPublished to, with the readonly flag of each.
    #[serde(default)]
    pub published: BTreeMap<String, bool>,
    #[serde(default)]
    pub ephemeral: bool,
    /// Filesystem of a block or device volume in Filesystem mode (ext4, xfs, btrfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// The device of a device-pool volume: the path as the pool's allow-list names it
    /// (records written before [`DeviceIdentity`] hold the kernel's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What identifies that device across reboots; checked before every stage and wipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_identity: Option<DeviceIdentity>,
    /// The device stack of a block or device volume, bottom first, recorded at creation
    /// before the first stage; empty for directories and for records from before layers
    /// were recorded (their pool's default stack applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// StorageClass parameters berth acted on (never secrets).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The target a ReadWriteOncePod publish holds: while it is mounted, the volume is
    /// published nowhere else, whatever access mode a request names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_writer: Option<PathBuf>,
    /// How the volume is encrypted at rest, and the identifier of its key (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
    /// The parameters a user may change on the live volume (see
    /// [`crate::backend::mutable`]), as last asked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mutable: BTreeMap<String, String>,
    /// Set while a change of `mutable` is recorded but not yet applied to the storage: a
    /// start after a crash applies it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub modifying: bool,
    pub created_unix_ms: u64,
}

/// What identifies a device-pool volume's disk when the kernel's names (/dev/sdX) change
/// from one boot to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The kernel's name for the device when it was chosen: for messages only.
    pub kernel_name: String,
    /// WWN, serial number or another hardware identity from sysfs, when the kernel exposes
    /// one (see [`crate::mount::BlockInfo::serial`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// The UUID of the volume's filesystem, recorded once one is on the disk (after the
    /// first stage, or a restore): a signature on the disk itself, which tells apart disks
    /// whose kernel exposes no serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_uuid: Option<String>,
}

/// How a snapshot's data was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMethod {
    BtrfsSnapshot,
    Reflink,
    Copy,
}

/// A snapshot berth created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub key: String,
    pub node: String,
    pub source_volume: String,
    pub phase: Phase,
    pub size: u64,
    pub method: Option<SnapshotMethod>,
    /// The source volume's encryption: a snapshot's content is encrypted under its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
    /// The group snapshot this snapshot is a member of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
    /// The copy of the snapshot's content on a shared pool, when its class asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<SnapshotCopy>,
    pub created_unix_ms: u64,
}

impl SnapshotRecord {
    /// Whether the CO may use the snapshot: cut, and its copy (if it has one) committed
    /// and checked. The CSI spec's post-cut processing: `ready_to_use` false until then.
    #[must_use]
    pub fn ready_to_use(&self) -> bool {
        self.phase == Phase::Ready && self.copy.as_ref().is_none_or(|c| c.done)
    }
}

/// A snapshot's copy on a shared pool (see [`crate::archive`]): recorded with the
/// snapshot's intent, `done` once the manifest is committed and every chunk read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCopy {
    /// The shared pool whose store holds it.
    pub pool: String,
    /// Its manifest's name in that store ([`crate::archive::snapshot_manifest`]).
    pub manifest: String,
    pub done: bool,
    /// Bytes the copy sent to the store (new chunks and the manifest).
    #[serde(default)]
    pub sent_bytes: u64,
}

/// A member snapshot's group: every member carries it, so the group needs no record of its
/// own. A group is whole when none of its members is still `Creating`: members turn
/// Ready only after every member's data is taken, so a crash in between leaves at least
/// one `Creating` member, and the whole group is rolled back (never finished alone, which
/// would break its single point in time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// `group:<pool>:<key>` (see [`crate::ids`]).
    pub id: String,
    /// The CO's name for the group (CreateVolumeGroupSnapshot name).
    pub name: String,
}

impl VolumeRecord {
    /// The intent record of a new volume (phase Creating), written before any side effect:
    /// what its pool fills in later (enforcement, project ID, device) starts empty.
    pub fn intent(id: String, key: String, name: String, pool: &str, node: String, capacity: u64) -> VolumeRecord {
        VolumeRecord {
            id,
            name,
            pool: pool.to_string(),
            key,
            node,
            capacity,
            phase: Phase::Creating,
            access: AccessKind::Mount,
            enforced: Enforced::None,
            project_id: None,
            source: None,
            published: BTreeMap::new(),
            ephemeral: false,
            fs_type: None,
            device: None,
            device_identity: None,
            layers: Vec::new(),
            parameters: BTreeMap::new(),
            single_writer: None,
            encryption: None,
            mutable: BTreeMap::new(),
            modifying: false,
            created_unix_ms: now_ms(),
        }
    }
}

/// Milliseconds since the epoch, for record timestamps.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
