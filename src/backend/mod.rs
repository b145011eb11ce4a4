//! Storage backends, one module per pool type, behind one trait. Backends know nothing of
//! gRPC: they take records and paths and return [`Error`], which the engine maps to codes.

pub mod block;
pub mod blockvol;
pub mod crypt;
pub mod device;
mod error;
pub mod fscrypt;
pub mod hostpath;
pub mod identity;
mod image;
pub mod mutable;
pub mod nfs;
pub mod registry;
pub mod stack;
pub mod tree;
pub mod work;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mount::mountinfo::MountEntry;
use crate::state::{AccessKind, Enforced, SnapshotRecord, VolumeRecord};

pub use error::{Error, Result};
pub use work::{Stop, Work};

/// How a volume may be accessed, from a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl std::fmt::Display for AccessMode {
    /// The CSI name, and the Kubernetes access mode that asks for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessMode::SingleNodeWriter => "SINGLE_NODE_WRITER (ReadWriteOnce)",
            AccessMode::SingleNodeReaderOnly => "SINGLE_NODE_READER_ONLY",
            AccessMode::MultiNodeReaderOnly => "MULTI_NODE_READER_ONLY (ReadOnlyMany)",
            AccessMode::MultiNodeSingleWriter => "MULTI_NODE_SINGLE_WRITER",
            AccessMode::MultiNodeMultiWriter => "MULTI_NODE_MULTI_WRITER (ReadWriteMany)",
            AccessMode::SingleNodeSingleWriter => "SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod)",
            AccessMode::SingleNodeMultiWriter => "SINGLE_NODE_MULTI_WRITER (ReadWriteOnce)",
        })
    }
}

impl AccessMode {
    /// True for modes that allow more than one node.
    #[must_use]
    pub fn multi_node(self) -> bool {
        matches!(
            self,
            AccessMode::MultiNodeReaderOnly | AccessMode::MultiNodeSingleWriter | AccessMode::MultiNodeMultiWriter
        )
    }

    /// True for modes that never write.
    #[must_use]
    pub fn read_only(self) -> bool {
        matches!(self, AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly)
    }
}

/// A volume capability, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub block: bool,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
    pub mode: AccessMode,
}

/// Filesystem types a capability may name (an allow-list; a hostPath volume ignores which).
pub const FS_TYPES: &[&str] = &["", "ext4", "xfs", "btrfs"];

/// The filesystem a formatting pool gives a volume when neither the capability nor the
/// StorageClass names one.
pub const DEFAULT_FS: &str = "ext4";

/// The pool types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Hostpath,
    Block,
    Device,
    Nfs,
}

impl PoolKind {
    /// The name configuration and messages use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Hostpath => "hostpath",
            PoolKind::Block => "block",
            PoolKind::Device => "device",
            PoolKind::Nfs => "nfs",
        }
    }
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pool is, as data: the engine decides placement, access modes and filesystems
/// from this, never from the pool's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub kind: PoolKind,
    /// The pool's storage is on one node's disks; false when every node reaches it
    /// (multi-node access modes, no topology, one central controller).
    pub node_local: bool,
    /// The pool serves raw block volumes.
    pub raw_block: bool,
    /// Filesystem types a capability may name.
    pub fs_types: &'static [&'static str],
    /// The filesystem a Filesystem-mode volume gets when no one names one; `None` when
    /// the pool does not format its volumes (directories).
    pub default_fs: Option<&'static str>,
    /// A volume's growth takes nothing from the pool's free space (a whole disk is what
    /// it is: growing past it is OUT_OF_RANGE, not a full pool).
    pub grows_within_device: bool,
    /// Copies (snapshots, restores, clones) can take long, so the engine runs them in the
    /// background and answers their calls within a bounded time (NFS: every byte crosses
    /// the network).
    pub background_copies: bool,
    /// The pool holds snapshot copies only (see [`crate::archive`]): no volume is made
    /// in it, and a node does not announce itself to it.
    pub copies_only: bool,
}

impl PoolInfo {
    /// A node-local pool of directories on a filesystem.
    #[must_use]
    pub fn directories(name: &str, kind: PoolKind) -> PoolInfo {
        PoolInfo {
            name: name.to_string(),
            kind,
            node_local: true,
            raw_block: false,
            fs_types: FS_TYPES,
            default_fs: None,
            grows_within_device: false,
            background_copies: false,
            copies_only: false,
        }
    }

    /// A node-local pool of volumes that are block devices, formatted unless raw.
    #[must_use]
    pub fn devices(name: &str, kind: PoolKind) -> PoolInfo {
        PoolInfo { raw_block: true, default_fs: Some(DEFAULT_FS), ..PoolInfo::directories(name, kind) }
    }

    /// Whether the pool formats volumes (so `fs_type` chooses the filesystem).
    #[must_use]
    pub fn formats(&self) -> bool {
        self.default_fs.is_some()
    }
}

/// [`Error::ReadOnlyPool`] when the filesystem holding pool `name` at `root` is read-only.
pub fn writable(name: &str, root: &Path) -> Result<()> {
    match nix::sys::statvfs::statvfs(root) {
        Ok(st) if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) => {
            Err(Error::ReadOnlyPool { pool: name.to_string(), root: root.to_path_buf() })
        }
        _ => Ok(()),
    }
}

/// A fault point inside a backend operation on `path` (see [`crate::failpoint`]).
pub(crate) fn failpoint(name: &'static str, path: &Path) -> Result<()> {
    crate::failpoint::hit(name).map_err(Error::io(name, path))
}

/// Space in a pool as the scheduler should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub maximum_volume_bytes: u64,
}

/// Bytes and inodes a volume uses, as far as the backend can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub used_inodes: Option<u64>,
    pub total_inodes: Option<u64>,
}

/// Whether a volume's storage looks healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub abnormal: bool,
    pub message: String,
}

impl Condition {
    #[must_use]
    pub fn healthy() -> Condition {
        Condition { abnormal: false, message: "volume is healthy".into() }
    }

    pub fn abnormal(message: impl Into<String>) -> Condition {
        Condition { abnormal: true, message: message.into() }
    }
}

/// What NodeStageVolume makes visible at the staging path.
#[derive(Debug, Clone, Copy)]
pub enum StageSource<'a> {
    /// A volume berth created.
    Managed(&'a VolumeRecord),
    /// An administrator's directory inside the pool (static PV), already validated.
    Static(&'a Path),
}

/// A volume's or snapshot's content as a file system sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory tree (hostPath).
    Tree(PathBuf),
    /// An image file holding a filesystem or a raw device's bytes (block).
    Image(PathBuf),
}

impl Content {
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Content::Tree(p) | Content::Image(p) => p,
        }
    }
}

/// Content to create a volume from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Snapshot(&'a SnapshotRecord),
    Volume(&'a VolumeRecord),
}

/// The name of the file inside a raw block volume's staging directory onto which the
/// device node is bind-mounted; publish binds it onward to the pod's target file.
pub const RAW_DEVICE_FILE: &str = "device";

/// How a group snapshot holds one member still while the group is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quiesce {
    /// Nothing on this node mounts or binds the volume: nothing can write to it.
    Idle,
    /// Its filesystem is mounted here: frozen (FIFREEZE) at this mount point, writes
    /// block until the thaw, and everything acknowledged before is on the device.
    Freeze(PathBuf),
    /// In use, and the pool has no way to hold its writers still: why, for the message.
    Cannot(String),
}

/// The controller side of a pool: what CreateVolume, DeleteVolume, snapshots, expansion,
/// capacity and listing need. Every method is the pool's own statement; none has a default.
pub trait Controller: Send + Sync {
    /// What the pool is.
    fn info(&self) -> &PoolInfo;
    /// [`Error::ReadOnlyPool`] when the pool cannot take changes now (its filesystem is
    /// read-only): checked before an operation records its intent, so it changes nothing.
    fn check_writable(&self) -> Result<()>;
    /// How new volumes' sizes will be enforced, or why they cannot be when required.
    fn enforcement(&self) -> Result<Enforced>;
    /// Free space for new volumes.
    fn capacity(&self) -> Result<Capacity>;
    /// Chooses, before any side effect, what a new volume will occupy (a device pool's
    /// disk) and fills it into the record, so the engine records the choice with the
    /// intent before anything is written; false when there is nothing new to record.
    fn reserve(&self, volume: &mut VolumeRecord) -> Result<bool>;
    /// Creates storage for `volume` (empty, or from `source`); fills in backend fields.
    /// Must finish its own half-done work when called again for the same record.
    /// A copy from `source` checks `work` between the units it can abandon and reports
    /// its progress there.
    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>, work: &Work) -> Result<()>;
    /// Removes a volume's storage; storage already gone is success.
    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()>;
    /// Grows a volume's storage to `bytes`; true when NodeExpandVolume must finish the job.
    fn expand_volume(&self, volume: &VolumeRecord, bytes: u64) -> Result<bool>;
    /// Takes a snapshot of `volume`, filling in the method and size.
    /// A copy checks `work` between the units it can abandon and reports its progress there.
    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord, work: &Work) -> Result<()>;
    /// Removes a snapshot's storage; already gone is success.
    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()>;
    /// What the pool adds to a volume's context for its node calls.
    fn volume_context(&self, volume: &VolumeRecord) -> BTreeMap<String, String>;
    /// Whether the storage exists and looks sound.
    fn condition(&self, volume: &VolumeRecord) -> Condition;
    /// Storage in the pool that none of the `known` keys names (reported at start).
    fn unaccounted(&self, known: &HashSet<String>) -> Vec<PathBuf>;
    /// Whether this pool can encrypt a new volume of `access` (with filesystem `fs_type`,
    /// for block and device volumes) with `scheme`, or [`Error::CannotEncrypt`] saying why
    /// not (asked before a volume is recorded). The pool encrypts what a record's
    /// `encryption` names: at creation, in copies and at stage.
    fn check_encryption(&self, scheme: crate::crypt::Scheme, access: AccessKind, fs_type: Option<&str>) -> Result<()>;
    /// Where the keys of the pool's volumes go when they belong to its filesystem rather
    /// than to each volume (fscrypt); `None` when each volume's key goes to its own stage
    /// ([`Node::stage`]: LUKS2) or the pool does not encrypt.
    fn keyring(&self) -> Option<&dyn Keyring>;
    /// How a group snapshot can hold `volume` still while every member is taken, so that
    /// all of them show one point in time ([`Quiesce`]). Asked for every member before
    /// anything is recorded, with the mount table the engine read once for the group.
    fn quiesce(&self, volume: &VolumeRecord, table: &[crate::mount::mountinfo::MountEntry]) -> Result<Quiesce>;
    /// The [`mutable`] parameters users may change on this pool's live volumes.
    /// Where a copy leaving the node reads a snapshot's content whole (see
    /// [`crate::archive`]); `None` when the pool keeps none it can hand out.
    fn snapshot_content(&self, _snapshot: &SnapshotRecord) -> Option<Content> {
        None
    }

    /// Where a restore of such a copy writes a new volume's content, once
    /// [`Controller::create_volume`] made the volume empty; `None` when it cannot.
    fn volume_content(&self, _volume: &VolumeRecord) -> Option<Content> {
        None
    }

    fn mutable_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Makes the storage of `volume` follow its record's `mutable` parameters (idempotent:
    /// a start after a crash may apply them again).
    fn apply_mutable(&self, _volume: &VolumeRecord) -> Result<()> {
        Ok(())
    }
}

/// The keys of a pool whose filesystem holds them (fscrypt): the engine adds a volume's
/// key before it reads or writes the volume and decides when it may go (a key belongs
/// to the whole filesystem, and several volumes may share it).
pub trait Keyring: Send + Sync {
    /// Makes `key` available to the pool's volumes; returns the identifier the kernel
    /// derived from it.
    fn add_key(&self, key: &crate::crypt::Key) -> Result<crate::crypt::KeyId>;
    /// Takes key `id` away: the volumes under it become unreadable. A key that is not
    /// there is success. True when files under it were still open (they stay readable
    /// until closed).
    fn remove_key(&self, id: &crate::crypt::KeyId) -> Result<bool>;
    /// Whether any of `volumes` (this pool's) is mounted or bound anywhere now: their key
    /// must stay. One look at the mount table for them all.
    fn any_mounted(&self, volumes: &[std::sync::Arc<VolumeRecord>]) -> Result<bool>;
}

/// The node side of a pool: what NodeStageVolume, NodePublishVolume, NodeExpandVolume
/// and NodeGetVolumeStats need.
pub trait Node: Send + Sync {
    /// Validates a capability's mount flags into what a bind mount applies.
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String>;
    /// Validates a static volume's subpath and returns it as a relative path in the pool.
    fn static_path(&self, sub_path: &str) -> Result<PathBuf>;
    /// Makes the volume available at `staging` (an empty directory that is not a mount):
    /// a mounted filesystem, or for raw block the device bound at `staging/device`.
    /// `key` is an encrypted volume's key, already checked against its record; a pool
    /// without a [`Controller::keyring`] opens the volume's own encryption with it.
    fn stage(
        &self,
        source: StageSource<'_>,
        staging: &Path,
        capability: &Capability,
        key: Option<&crate::crypt::Key>,
    ) -> Result<()>;
    /// What staging put on the volume's storage (a device's filesystem UUID): the record
    /// to write when it has something new to say, else `None`.
    fn note_staged(&self, volume: &VolumeRecord) -> Result<Option<VolumeRecord>>;
    /// Releases what staging held once the engine has unmounted it (loop devices).
    fn unstage(&self, source: StageSource<'_>) -> Result<()>;
    /// True when what `table` shows mounted at `path` is this volume's storage. `table` is
    /// the mount table as the caller read it ([`crate::mount::ops::table`]): one read
    /// serves every check of a call, and a call that mounts reads it again.
    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path, table: &[MountEntry]) -> Result<bool>;
    /// Every mount point where `table` shows this volume's storage mounted or bound.
    fn mounts(&self, source: StageSource<'_>, table: &[MountEntry]) -> Result<Vec<PathBuf>>;
    /// Node side of expansion: make the mounted volume at `volume_path` see its new size.
    fn node_expand(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<()>;
    /// Usage of a volume mounted (or, for raw block, bound) at `volume_path`.
    fn usage(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<Usage>;
    /// Finishes the stage of a volume whose storage is already mounted at `staging` (a
    /// retry, or a replay after a crash between the mount and the stage's last step):
    /// an fscrypt block volume's key and encrypted directory (see
    /// [`blockvol::unlock_fscrypt`]). Nothing for other pools.
    fn finish_stage(&self, _source: StageSource<'_>, _staging: &Path, _key: Option<&crate::crypt::Key>) -> Result<()> {
        Ok(())
    }
    /// What NodePublishVolume binds onto a pod's target for a volume staged as a
    /// filesystem at `staging`: the staging mount itself, unless the volume's data lives
    /// in a directory of it (an fscrypt block volume, see [`blockvol::FSCRYPT_DIR`]).
    fn publish_from(&self, _source: StageSource<'_>, staging: &Path) -> PathBuf {
        staging.to_path_buf()
    }
}

/// Both sides of a pool: what the registry opens and the engine holds.
pub trait Backend: Controller + Node {}

impl<T: Controller + Node> Backend for T {}

impl dyn Backend + '_ {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.info().name
    }
}

/// A pool every node reaches (NFS): it keeps its own records on the storage, which are
/// the truth a controller's local store caches, and knows which nodes use it.
pub trait Shared: Send + Sync {
    /// Writes a volume record where the pool keeps its durable truth (before the local store).
    fn persist_volume(&self, volume: &VolumeRecord) -> Result<()>;
    /// Removes what [`Shared::persist_volume`] wrote.
    fn forget_volume(&self, volume: &VolumeRecord) -> Result<()>;
    /// Writes a snapshot record where the pool keeps its durable truth.
    fn persist_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()>;
    /// Removes what [`Shared::persist_snapshot`] wrote.
    fn forget_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()>;
    /// Every record the pool keeps itself, to rebuild a controller's cache.
    fn stored_records(&self) -> Result<(Vec<VolumeRecord>, Vec<SnapshotRecord>)>;
    /// Announces, in the background, that this node can use the pool's volumes.
    fn register_node(self: Arc<Self>, node: &str);
    /// Whether `node` announced itself with [`Shared::register_node`].
    fn knows_node(&self, node: &str) -> Result<bool>;
    /// Why `node` is not known, as far as the pool can tell, for the NOT_FOUND message.
    fn unknown_node(&self, node: &str) -> String;
    /// The directory a volume context names (a volume of this pool unknown to this
    /// process, or a static volume), relative to the pool; `None` when the context names
    /// none of this pool's storage.
    fn context_path(&self, context: &BTreeMap<String, String>) -> Result<Option<PathBuf>>;
    /// Usage of a volume of this pool mounted at `volume_path` that this process holds no
    /// record of.
    fn unrecorded_usage(&self, volume_path: &Path) -> Result<Usage>;

    /// Opens this pool's store of snapshot copies (see [`crate::archive`]) on a
    /// connection of its own: copies, restores and drills run long and must not hold up
    /// the pool's other calls.
    fn archive(&self) -> std::result::Result<Box<dyn crate::archive::store::ChunkStore>, crate::archive::Error>;
}

/// An open pool, as the engine holds it: its backend, and for a pool every node reaches,
/// the part that keeps records on the storage. It dereferences to the backend.
#[derive(Clone)]
pub struct Pool {
    backend: Arc<dyn Backend>,
    shared: Option<Arc<dyn Shared>>,
}

impl Pool {
    /// A pool on one node's disks.
    pub fn local(backend: Arc<dyn Backend>) -> Pool {
        debug_assert!(backend.info().node_local, "a pool every node reaches keeps its records: use Pool::shared");
        Pool { backend, shared: None }
    }

    /// A pool every node reaches, which keeps its own records.
    pub fn shared<T: Backend + Shared + 'static>(backend: Arc<T>) -> Pool {
        debug_assert!(!backend.info().node_local, "a node-local pool keeps no shared records");
        Pool { backend: Arc::clone(&backend) as Arc<dyn Backend>, shared: Some(backend) }
    }

    /// The record-keeping part of a pool every node reaches; `None` for node-local pools.
    #[must_use]
    pub fn records(&self) -> Option<&Arc<dyn Shared>> {
        self.shared.as_ref()
    }
}

impl AsRef<dyn Backend> for Pool {
    fn as_ref(&self) -> &(dyn Backend + 'static) {
        self.backend.as_ref()
    }
}

impl std::ops::Deref for Pool {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

/// [`Node::parse_mount_flags`] for pools whose volumes take the generic bind flags.
pub fn bind_mount_flags(flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String> {
    crate::mount::ops::parse_flags(flags).map_err(|e| e.to_string())
}

/// Entries of `dir` whose key (the name without `suffix`) is not in `known`, including
/// leftover partial copies.
#[must_use]
pub fn unaccounted_in(dir: &Path, suffix: &str, known: &HashSet<String>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(suffix).unwrap_or(&name);
            !known.contains(key)
        })
        .map(|e| e.path())
        .collect()
}

/// What publish binds onto the target: the staging directory, or for raw block volumes
/// the device file inside it.
#[must_use]
pub fn publish_source(staging: &Path, block: bool) -> PathBuf {
    if block { staging.join(RAW_DEVICE_FILE) } else { staging.to_path_buf() }
}
