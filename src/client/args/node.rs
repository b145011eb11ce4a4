//! The node service's commands and their arguments: staging, publishing, stats and
//! expansion on this node.

use clap::{Args, Subcommand};

use super::common::{CapArgs, SecretArgs, key_value, quantity};

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
