//! The command line of `berth csi`: one subcommand per CSI RPC, grouped by the service
//! that answers it. This file holds the groups and the identity commands (which take no
//! arguments); `controller` and `node` each hold a service's commands and their
//! arguments, and `common` the pieces they share (capabilities, secrets, paging,
//! `key=value` maps, byte sizes).

mod common;
mod controller;
mod node;

use clap::Subcommand;

pub use common::{AccessMode, CapArgs, PageArgs, SecretArgs, key_value, quantity, to_map};
pub use controller::{
    CapacityArgs, ControllerCmd, ControllerExpandArgs, ControllerPublishArgs, ControllerUnpublishArgs,
    CreateSnapshotArgs, CreateVolumeArgs, ListSnapshotsArgs, ModifyArgs, SnapshotArgs, ValidateArgs, VolumeArgs,
    VolumeIdArg,
};
pub use node::{NodeCmd, NodeExpandArgs, NodePublishArgs, NodeUnpublishArgs, StageArgs, StatsArgs, UnstageArgs};

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
