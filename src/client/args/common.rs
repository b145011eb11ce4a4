//! What the commands of `berth csi` share: the volume capability flags, secrets,
//! paging of list commands, and the parsers of `key=value` pairs and byte sizes.

use std::collections::HashMap;

use clap::{Args, ValueEnum};

use crate::csi::pb;
use crate::units::Bytes;

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
