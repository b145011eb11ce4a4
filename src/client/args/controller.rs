//! The controller service's commands and their arguments: volumes, snapshots,
//! publishing to nodes, capacity, expansion and modification.

use clap::{Args, Subcommand};

use super::common::{CapArgs, PageArgs, SecretArgs, key_value, quantity};

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
