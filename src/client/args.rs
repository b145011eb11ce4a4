//! The command line of `berth csi`: one subcommand per CSI RPC, and the pieces they share
//! (capabilities, `key=value` maps, byte sizes, paging).

use std::collections::HashMap;

use clap::{Args, Subcommand, ValueEnum};

use crate::csi::pb;
use crate::units::Bytes;

/// Which service a command calls.
#[derive(Debug, Clone, Subcommand)]
pub enum Group {
    /// Identity service: who the driver is and whether it is ready.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Controller service: volumes, snapshots, capacity.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// Node service: staging, publishing, stats on this node.
    #[command(subcommand)]
    Node(NodeCmd),
}

/// Identity RPCs.
#[derive(Debug, Clone, Subcommand)]
pub enum IdentityCmd {
    /// GetPluginInfo: name, version, manifest.
    Info,
    /// GetPluginCapabilities: services and expansion the driver offers.
    Capabilities,
    /// Probe: is the driver ready.
    Probe,
}

/// Controller RPCs.
#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCmd {
    /// CreateVolume: provision a volume, empty, from a snapshot or as a clone.
    CreateVolume(CreateVolumeArgs),
    /// DeleteVolume: remove a volume and its data.
    DeleteVolume(VolumeArgs),
    /// ControllerPublishVolume: make a volume available to a node.
    Publish(ControllerPublishArgs),
    /// ControllerUnpublishVolume: withdraw a volume from a node.
    Unpublish(ControllerUnpublishArgs),
    /// ValidateVolumeCapabilities: would the volume serve this capability.
    Validate(ValidateArgs),
    /// ListVolumes: every page, or one with --max-entries / --starting-token.
    ListVolumes(PageArgs),
    /// ControllerGetVolume: a volume, where it is published and its condition.
    GetVolume(VolumeIdArg),
    /// GetCapacity: free space for new volumes.
    Capacity(CapacityArgs),
    /// ControllerGetCapabilities: which controller RPCs the driver offers.
    Capabilities,
    /// CreateSnapshot: snapshot a volume.
    CreateSnapshot(CreateSnapshotArgs),
    /// DeleteSnapshot: remove a snapshot.
    DeleteSnapshot(SnapshotArgs),
    /// ListSnapshots: every page, or one with --max-entries / --starting-token.
    ListSnapshots(ListSnapshotsArgs),
    /// GetSnapshot: one snapshot by ID.
    GetSnapshot(SnapshotArgs),
    /// ControllerExpandVolume: grow a volume.
    Expand(ControllerExpandArgs),
    /// ControllerModifyVolume: change mutable parameters.
    Modify(ModifyArgs),
}

/// Node RPCs.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCmd {
    /// NodeStageVolume: mount the volume at a staging path.
    Stage(StageArgs),
    /// NodeUnstageVolume: unmount the staging path.
    Unstage(UnstageArgs),
    /// NodePublishVolume: make the volume visible at a target path.
    Publish(NodePublishArgs),
    /// NodeUnpublishVolume: unmount the target path.
    Unpublish(NodeUnpublishArgs),
    /// NodeGetVolumeStats: bytes and inodes used, and the volume's condition.
    Stats(StatsArgs),
    /// NodeExpandVolume: grow a volume on this node.
    Expand(NodeExpandArgs),
    /// NodeGetInfo: node ID, topology, volume limit.
    Info,
    /// NodeGetCapabilities: which node RPCs the driver offers.
    Capabilities,
}

/// Parses `key=value`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// Parses a byte quantity (`1Gi`, `512Mi`, `4096`).
pub fn quantity(text: &str) -> Result<i64, String> {
    let bytes: Bytes = text.parse().map_err(|e: crate::units::ParseBytesError| e.to_string())?;
    i64::try_from(bytes.0).map_err(|_| format!("{text} is too large"))
}

/// Turns repeated `key=value` flags into a map.
#[must_use]
pub fn to_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

/// An access mode, as CSI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    fn wire(self) -> pb::volume_capability::access_mode::Mode {
        use pb::volume_capability::access_mode::Mode;
        match self {
            AccessMode::SingleNodeWriter => Mode::SingleNodeWriter,
            AccessMode::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
            AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
            AccessMode::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
            AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
            AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
            AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        }
    }
}

/// A volume capability.
#[derive(Debug, Clone, Default, Args)]
pub struct CapArgs {
    /// Access mode [default: single-node-writer where a capability is required].
    #[arg(long, value_enum)]
    pub access_mode: Option<AccessMode>,
    /// A raw block volume instead of a mounted filesystem.
    #[arg(long)]
    pub block: bool,
    /// Filesystem type of a mounted volume (ext4, xfs, btrfs, ...).
    #[arg(long, conflicts_with = "block")]
    pub fs_type: Option<String>,
    /// A mount flag (repeatable).
    #[arg(long = "mount-flag", value_name = "FLAG", conflicts_with = "block")]
    pub mount_flags: Vec<String>,
}

impl CapArgs {
    /// The capability; when not `required`, only if some capability flag was given.
    #[must_use]
    pub fn capability(&self, required: bool) -> Option<pb::VolumeCapability> {
        use pb::volume_capability::{AccessType, BlockVolume, MountVolume};
        let given = self.access_mode.is_some() || self.block || self.fs_type.is_some() || !self.mount_flags.is_empty();
        if !required && !given {
            return None;
        }
        let mode = self.access_mode.unwrap_or(AccessMode::SingleNodeWriter).wire();
        let access_type = if self.block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone().unwrap_or_default(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: String::new(),
            })
        };
        Some(pb::VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
        })
    }
}

/// Secrets sent with a request.
#[derive(Debug, Clone, Default, Args)]
pub struct SecretArgs {
    /// A secret key=value (repeatable); never printed.
    #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = key_value)]
    pub secrets: Vec<(String, String)>,
}

/// CreateVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct CreateVolumeArgs {
    /// The volume's name (idempotency key).
    #[arg(long)]
    pub name: String,
    /// Required size (e.g. 1Gi).
    #[arg(long, value_parser = quantity)]
    pub capacity: Option<i64>,
    /// Largest acceptable size.
    #[arg(long, value_parser = quantity)]
    pub limit: Option<i64>,
    /// A StorageClass parameter key=value (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// A mutable parameter key=value (repeatable).
    #[arg(long = "mutable-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub mutable_params: Vec<(String, String)>,
    /// Restore from this snapshot ID.
    #[arg(long, conflicts_with = "from_volume")]
    pub from_snapshot: Option<String>,
    /// Clone this volume ID.
    #[arg(long)]
    pub from_volume: Option<String>,
    /// A topology segment key=value the volume must be reachable from (repeatable; all
    /// together form one requisite and preferred topology).
    #[arg(long = "topology", value_name = "KEY=VALUE", value_parser = key_value)]
    pub topology: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// A volume ID.
#[derive(Debug, Clone, Args)]
pub struct VolumeIdArg {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
}

/// A volume ID with secrets.
#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ControllerPublishVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct ControllerPublishArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// The node to publish to.
    #[arg(long)]
    pub node_id: String,
    /// Publish read-only.
    #[arg(long)]
    pub readonly: bool,
    /// A volume context key=value (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub context: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ControllerUnpublishVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct ControllerUnpublishArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// The node to unpublish from (empty: every node).
    #[arg(long, default_value = "")]
    pub node_id: String,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ValidateVolumeCapabilities' arguments.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// A volume context key=value (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub context: Vec<(String, String)>,
    /// A parameter key=value (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// Paging of list commands.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Ask for one page of at most this many entries (prints next_token).
    #[arg(long)]
    pub max_entries: Option<i32>,
    /// Ask for the one page starting at this token (prints next_token).
    #[arg(long)]
    pub starting_token: Option<String>,
    /// Fetch every page, this many entries per call (default: the driver's page size).
    #[arg(long, conflicts_with_all = ["max_entries", "starting_token"])]
    pub page_size: Option<i32>,
}

impl PageArgs {
    /// True when the user asked for exactly one page.
    #[must_use]
    pub fn single_page(&self) -> bool {
        self.max_entries.is_some() || self.starting_token.is_some()
    }
}

/// GetCapacity's arguments.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// A parameter key=value (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    /// A topology segment key=value (repeatable) to ask about.
    #[arg(long = "topology", value_name = "KEY=VALUE", value_parser = key_value)]
    pub topology: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
}

/// CreateSnapshot's arguments.
#[derive(Debug, Clone, Args)]
pub struct CreateSnapshotArgs {
    /// The volume to snapshot.
    #[arg(long)]
    pub source_volume_id: String,
    /// The snapshot's name (idempotency key).
    #[arg(long)]
    pub name: String,
    /// A parameter key=value (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// A snapshot ID with secrets.
#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// The snapshot ID.
    #[arg(long)]
    pub snapshot_id: String,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ListSnapshots' filters and paging.
#[derive(Debug, Clone, Args)]
pub struct ListSnapshotsArgs {
    /// Only this snapshot.
    #[arg(long, default_value = "")]
    pub snapshot_id: String,
    /// Only snapshots of this volume.
    #[arg(long, default_value = "")]
    pub source_volume_id: String,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ControllerExpandVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct ControllerExpandArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// New required size (e.g. 2Gi).
    #[arg(long, value_parser = quantity)]
    pub capacity: i64,
    /// Largest acceptable size.
    #[arg(long, value_parser = quantity)]
    pub limit: Option<i64>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// ControllerModifyVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct ModifyArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// A mutable parameter key=value (repeatable).
    #[arg(long = "mutable-param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub mutable_params: Vec<(String, String)>,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// NodeStageVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// Where to stage (the kubelet uses .../globalmount).
    #[arg(long)]
    pub staging_path: String,
    /// A volume context key=value (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub context: Vec<(String, String)>,
    /// A publish context key=value from ControllerPublishVolume (repeatable).
    #[arg(long = "publish-context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub publish_context: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// NodeUnstageVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct UnstageArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// The staging path.
    #[arg(long)]
    pub staging_path: String,
}

/// NodePublishVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct NodePublishArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// Where the pod sees the volume.
    #[arg(long)]
    pub target_path: String,
    /// The staging path, when the driver stages.
    #[arg(long, default_value = "")]
    pub staging_path: String,
    /// Publish read-only.
    #[arg(long)]
    pub readonly: bool,
    /// A volume context key=value (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub context: Vec<(String, String)>,
    /// A publish context key=value from ControllerPublishVolume (repeatable).
    #[arg(long = "publish-context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub publish_context: Vec<(String, String)>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// NodeUnpublishVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct NodeUnpublishArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// The target path.
    #[arg(long)]
    pub target_path: String,
}

/// NodeGetVolumeStats' arguments.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// A path where the volume is published or staged.
    #[arg(long)]
    pub volume_path: String,
    /// The staging path.
    #[arg(long, default_value = "")]
    pub staging_path: String,
}

/// NodeExpandVolume's arguments.
#[derive(Debug, Clone, Args)]
pub struct NodeExpandArgs {
    /// The volume ID.
    #[arg(long)]
    pub volume_id: String,
    /// A path where the volume is published.
    #[arg(long)]
    pub volume_path: String,
    /// The staging path.
    #[arg(long, default_value = "")]
    pub staging_path: String,
    /// New required size (e.g. 2Gi).
    #[arg(long, value_parser = quantity)]
    pub capacity: i64,
    /// Largest acceptable size.
    #[arg(long, value_parser = quantity)]
    pub limit: Option<i64>,
    #[command(flatten)]
    pub cap: CapArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}
