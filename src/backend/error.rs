//! What a backend's failure is: one variant per thing that can go wrong, carrying the
//! pool, volume, path or size it concerns, with its message in its `#[error]` attribute.
//! Backends know nothing of gRPC: `engine::error` gives every variant its code, in one
//! exhaustive match, so a new variant does not compile until its code is chosen.

use std::io;
use std::path::{Path, PathBuf};

use super::{PoolInfo, PoolKind};

/// What went wrong inside a backend: each variant says what happened and carries what it
/// concerns. `engine::error` gives every variant its gRPC code, in one exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },

    // The pool as a whole.
    /// The pool must enforce volume sizes and its filesystem cannot.
    #[error("pool {pool} requires enforced capacity, but {reason}")]
    Unenforceable { pool: String, reason: String },
    /// The pool's filesystem is mounted read-only: no volume can be created or removed.
    #[error("pool {pool} is on a read-only filesystem ({root}); it takes no changes until it is writable")]
    ReadOnlyPool { pool: String, root: PathBuf },
    /// A read-write stage of a volume on a read-only filesystem.
    #[error("pool {pool} is on a read-only filesystem: a read-write stage would fail every write of the pod")]
    ReadWriteStageOfReadOnlyPool { pool: String },
    /// Encryption asked of a pool whose type or filesystem cannot encrypt.
    #[error("pool {pool} cannot encrypt volumes: {reason}")]
    CannotEncrypt { pool: String, reason: String },
    /// A static volume (an administrator's directory) named in a pool that has none.
    #[error("pool {pool} is a {kind} pool; static volumes by subPath are served by hostpath pools")]
    NoStaticVolumes { pool: String, kind: PoolKind },
    /// A snapshot asked of a device pool that has no block pool to keep snapshots in.
    #[error("device pool {pool} keeps no snapshots: set snapshotPool to a block pool on this node")]
    NoSnapshots { pool: String },

    // What a request or a volume context names.
    /// A path from a request or a volume context is malformed.
    #[error(transparent)]
    BadPath(#[from] crate::safepath::PathError),
    /// A static volume's subPath names berth's own directories.
    #[error("subPath {sub_path:?} points into berth's managed volumes/ or snapshots/ directories")]
    ManagedSubPath { sub_path: String },
    /// An NFS volume's subDir cannot be formed from its template, or is not a safe
    /// relative path (`reason`, from the template, names the field).
    #[error("{reason}")]
    BadSubDir { reason: String },
    /// A volume context names an NFS server without its export, or the reverse.
    #[error("volume attribute {given} is given without {missing}: the two are given together")]
    LoneNfsAttribute { given: &'static str, missing: &'static str },
    /// A mount flag of a capability that berth does not apply.
    #[error(transparent)]
    BadMountFlag(#[from] crate::mount::ops::FlagError),
    /// An NFS mount option of a capability that berth does not allow.
    #[error(transparent)]
    BadMountOption(#[from] crate::config::mount_options::OptionError),
    /// A volume's directory is a symlink or leads out of its pool.
    #[error("{path} is not a plain directory inside pool {pool} (symlinks are not followed)")]
    NotPlainDirectory { pool: String, path: PathBuf },

    // A volume's storage, missing or not what its record says.
    /// A hostPath volume's directory (or a static volume's) is not there.
    #[error("volume directory {path} does not exist")]
    NoVolumeDirectory { path: PathBuf },
    /// A block volume's image file is not there.
    #[error("image {image} of volume {volume} does not exist")]
    NoImage { volume: String, image: PathBuf },
    /// A device-pool volume's record names no device.
    #[error("volume {volume} has no device recorded")]
    NoDeviceRecorded { volume: String },
    /// An NFS volume's record names no directory on the export.
    #[error("volume {volume} has no directory on the export")]
    NoExportDirectory { volume: String },
    /// The directory a mount names does not exist on the NFS server.
    #[error("{location} does not exist on the server")]
    NotOnServer { location: String },
    /// A volume recorded with a project quota has no project ID in its record.
    #[error("volume {volume} is recorded with a project quota but has no project ID")]
    NoProjectId { volume: String },
    /// A volume created with a project quota, in a pool that no longer has them.
    #[error(
        "volume {volume} was created with a project quota but the pool's filesystem no longer has project quotas enabled"
    )]
    ProjectQuotasGone { volume: String },
    /// An encrypted volume's directory is under another key than its record names.
    #[error("{path} is encrypted under key {found}, but volume {volume} is recorded under key {recorded}")]
    EncryptedOtherwise { volume: String, path: PathBuf, found: crate::crypt::KeyId, recorded: crate::crypt::KeyId },
    /// An encrypted volume's directory has no policy yet but holds files: berth never
    /// encrypts a directory that already holds plaintext.
    #[error(
        "{path} of encrypted volume {volume} holds files that are not encrypted; berth does not encrypt a directory that already holds data"
    )]
    PlaintextInEncrypted { volume: String, path: PathBuf },
    /// A btrfs volume holds subvolumes, which a snapshot or clone would leave empty.
    #[error(
        "volume {volume} holds btrfs subvolumes made inside it ({}): a snapshot or clone would miss their data; \
         delete them (btrfs subvolume delete) or move their data into plain directories",
        join(.subvolumes)
    )]
    NestedSubvolumes { volume: String, subvolumes: Vec<PathBuf> },

    // Block volumes: filesystems, device stacks, mounts.
    /// A capability names another filesystem than the volume was created with.
    #[error("the volume was created with a {created} filesystem and cannot be staged as {requested}")]
    FsTypeConflict { created: String, requested: String },
    /// A blank device would need formatting, but the stage is read-only.
    #[error("{device} holds no filesystem and the volume is staged read-only; berth formats only on a writable stage")]
    UnformattedReadOnly { device: PathBuf },
    /// The device holds another filesystem than the volume's.
    #[error("{device} holds a {found} filesystem, not {wanted}; berth never reformats a device that holds data")]
    WrongFilesystem { device: PathBuf, found: String, wanted: String },
    /// The device holds a partition table, so it is not blank.
    #[error("{device} holds a {table} partition table; berth formats only devices without any signature")]
    PartitionTable { device: PathBuf, table: String },
    /// Someone else attached a volume's image to another loop device and mounted it.
    #[error(
        "the image of volume {volume} is attached to {device} and mounted at {at} by someone other than berth; \
         unmount it before staging the volume"
    )]
    ForeignMount { volume: String, device: PathBuf, at: PathBuf },
    /// A volume records a layer of its device stack that its pool does not serve.
    #[error("volume {volume} records a {layer} layer, which pool {pool} does not serve")]
    UnservedLayer { volume: String, layer: &'static str, pool: String },
    /// An encrypted volume staged without its key (only NodeStageVolume brings it).
    #[error("volume {volume} is encrypted ({scheme}): unlocking it needs its key, which NodeStageVolume brings")]
    NoKeyForLayer { volume: String, scheme: crate::crypt::Scheme },
    /// The device under a crypt layer holds something other than a LUKS header.
    #[error(
        "{device} under the crypt layer of volume {volume} holds {found}, not a LUKS2 header; berth formats only \
         devices without any signature"
    )]
    NotLuks { volume: String, device: PathBuf, found: String },
    /// The LUKS header under a crypt layer does not open with the volume's (checked) key:
    /// it is not the header berth wrote for this volume.
    #[error(
        "the LUKS2 header on {device} does not open with the key volume {volume} is recorded under; it is not this \
         volume's header"
    )]
    LuksKeyRefused { volume: String, device: PathBuf },
    /// A volume's device-mapper name is open on another device than the layer below.
    #[error("device-mapper device {name} is open on {found}, not on {expected}; close it (cryptsetup close {name})")]
    MappedElsewhere { name: String, found: PathBuf, expected: PathBuf },
    /// A volume records no layers at all, so there is no device to stage.
    #[error("volume {volume} has no storage layers to stage")]
    NoLayers { volume: String },
    /// Unstaging while the volume's device is still mounted or bound.
    #[error("{device} is still mounted at {}; unpublish it first", join(.mounts))]
    StillMounted { device: PathBuf, mounts: Vec<PathBuf> },

    // Device pools: which disk is a volume's.
    /// The disk a volume's record names is not on this node.
    #[error("volume {volume}'s device {device} is not present on this node")]
    DeviceMissing { volume: String, device: String },
    /// The records of two or more volumes name one disk.
    #[error(
        "the records of volume {volume} and of {} name the same device ({device}); berth neither mounts nor wipes it \
         until an operator removes the wrong record",
        .others.join(", ")
    )]
    DeviceClaimedTwice { volume: String, device: String, others: Vec<String> },
    /// A volume is recorded on a device that the pool's allow-list does not name.
    #[error(
        "volume {volume} is recorded on {path} ({canonical}), which pool {pool}'s allow-list ({}) does not name: \
         berth neither mounts nor wipes a device outside it",
        .patterns.join(", ")
    )]
    NotOnAllowList { volume: String, path: PathBuf, canonical: PathBuf, pool: String, patterns: Vec<String> },
    /// A volume's recorded device path leads to something other than a block device.
    #[error("volume {volume}'s device {path} leads to {canonical}, which is not a block device under /dev")]
    NotABlockDevice { volume: String, path: PathBuf, canonical: PathBuf },
    /// A volume's recorded device path now leads to another disk: what was recorded and
    /// what is there now (a `device::Replaced`, boxed so this enum stays below the pools).
    #[error("{0}")]
    DeviceReplaced(Box<dyn std::error::Error + Send + Sync>),
    /// No listed device is free, blank and large enough for a new volume.
    #[error("device pool {pool} has no free blank device of at least {bytes} bytes")]
    NoBlankDevice { pool: String, bytes: u64 },
    /// A whole-disk volume asked to grow beyond its disk.
    #[error("volume {volume} is the whole device {device} of {size} bytes; it cannot grow to {bytes}")]
    DiskTooSmall { volume: String, device: PathBuf, size: u64, bytes: u64 },

    // NFS pools.
    /// A volume's directory on the export is claimed by another volume.
    #[error(
        "directory {path} is already used by volume {holder}; give the pool a subDir template that tells volumes apart"
    )]
    SubdirTaken { path: PathBuf, holder: String },
    /// A new volume's directory exists on the export and belongs to no volume.
    #[error(
        "directory {path} already exists and belongs to no berth volume; berth never adopts existing data: \
         remove or rename it, or publish it as a static volume"
    )]
    ExistingData { path: PathBuf },
    /// A volume's directory on the export is something else.
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    /// The node's kernel cannot mount NFS.
    #[error("mounting {location}: this node's kernel has no NFS client (no nfs in /proc/filesystems)")]
    NoNfsClient { location: String },
    /// The NFS server cannot be reached now; a retry may succeed.
    #[error("{op} {location}: {reason}")]
    ServerUnreachable { op: &'static str, location: String, reason: String },
    /// The usage of a mounted NFS volume could not be measured (in time).
    #[error("usage of {path} is unknown: {reason}")]
    UsageUnmeasured { path: PathBuf, reason: String },
    /// Long work was asked to stop ([`super::work::Work::stop`]) before it ended.
    #[error("{op} {location}: stopped before it finished")]
    Stopped { op: &'static str, location: String },
    /// A record could not be encoded for the export (a bug).
    #[error("encoding a record: {0}")]
    EncodeRecord(#[source] serde_json::Error),
}

/// Paths for a message, comma-separated.
fn join(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl Error {
    /// Wraps an I/O error with the operation and path it concerns.
    pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io { op, path: path.to_path_buf(), source }
    }

    /// [`Error::NoStaticVolumes`] for the pool `info` describes.
    #[must_use]
    pub fn no_static_volumes(info: &PoolInfo) -> Error {
        Error::NoStaticVolumes { pool: info.name.clone(), kind: info.kind }
    }

    /// True when the error means the disk or quota is full.
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

/// Result of backend operations.
pub type Result<T> = std::result::Result<T, Error>;
