//! Every call that reaches the kernel to mount, unmount, create subvolumes or set quotas
//! goes through [`Syscall`], so the orchestration above it can be tested with the
//! recording [`fake::RecordingSyscall`] without root, and run for real with [`LinuxSyscall`].
//!
//! Paths given to these calls are berth-owned locations (pool directories, kubelet
//! targets); content inside user volumes is handled by fd-based code in `backend::tree`.

pub mod blockdev;
pub mod btrfs;
pub mod fake;
pub mod fscrypt;
mod ioctl;
mod linux;
pub mod loopdev;
pub mod luks;
pub mod mountinfo;
pub mod ops;
pub mod quota;
pub mod sysfs;
#[cfg(test)]
mod testutil;
pub mod tools;

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

pub use linux::LinuxSyscall;
pub use nix::mount::{MntFlags, MsFlags};
pub use quota::ProjectQuotaState;
pub use sysfs::BlockInfo;
pub use tools::Signature;

/// Filesystem facts from statfs(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStat {
    /// The superblock magic (`f_type`).
    pub magic: i64,
    pub total_bytes: u64,
    /// Bytes available to new data (`f_bavail`).
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

/// The filesystems berth treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Btrfs,
    Xfs,
    Ext4,
    Other(i64),
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsKind::Btrfs => f.write_str("btrfs"),
            FsKind::Xfs => f.write_str("xfs"),
            FsKind::Ext4 => f.write_str("ext4"),
            FsKind::Other(magic) => write!(f, "a filesystem with magic {magic:#x}"),
        }
    }
}

impl FsStat {
    /// Which filesystem the magic names.
    #[must_use]
    pub fn kind(&self) -> FsKind {
        match self.magic {
            btrfs::BTRFS_SUPER_MAGIC => FsKind::Btrfs,
            0x5846_5342 => FsKind::Xfs,
            0xEF53 => FsKind::Ext4,
            other => FsKind::Other(other),
        }
    }
}

/// Quota usage of one btrfs subvolume.
pub use btrfs::QgroupUsage;
/// Quota usage of one xfs/ext4 project.
pub use quota::ProjectUsage;

/// The kernel operations berth performs. Implementations must be `Send + Sync`: RPCs call
/// them from blocking worker threads.
pub trait Syscall: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fs_type: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// The text of /proc/self/mountinfo.
    fn mountinfo(&self) -> io::Result<String>;
    /// statfs(2) of a path.
    fn statfs(&self, path: &Path) -> io::Result<FsStat>;
    /// Creates subvolume `parent/name`.
    fn btrfs_subvolume_create(&self, parent: &Path, name: &str) -> io::Result<()>;
    /// Snapshots subvolume `source` as `dest_parent/name`.
    fn btrfs_snapshot(&self, source: &Path, dest_parent: &Path, name: &str, readonly: bool) -> io::Result<()>;
    /// Deletes subvolume `parent/name`.
    fn btrfs_subvolume_delete(&self, parent: &Path, name: &str) -> io::Result<()>;
    /// True when `path` is the root of a btrfs subvolume.
    fn btrfs_is_subvolume(&self, path: &Path) -> io::Result<bool>;
    /// True when quotas (qgroups) are enabled on the filesystem holding `path`.
    fn btrfs_quota_enabled(&self, path: &Path) -> io::Result<bool>;
    /// Enables qgroups on the filesystem holding `path`.
    fn btrfs_quota_enable(&self, path: &Path) -> io::Result<()>;
    /// Sets (or with `None` clears) the size limit of the volume whose subvolume is
    /// `subvol`: a qgroup holding that subvolume and every subvolume below it.
    fn btrfs_qgroup_limit(&self, subvol: &Path, max_bytes: Option<u64>) -> io::Result<()>;
    /// Makes the subvolumes made below the volume subvolume `subvol` since the last call
    /// count toward its limit; returns their IDs.
    fn btrfs_qgroup_adopt(&self, subvol: &Path) -> io::Result<Vec<u64>>;
    /// Removes the quota group of the volume subvolume `subvol` (before it is deleted).
    fn btrfs_qgroup_remove(&self, subvol: &Path) -> io::Result<()>;
    /// Usage and limit of a volume subvolume's qgroup, as of the last committed transaction.
    fn btrfs_qgroup_usage(&self, subvol: &Path) -> io::Result<QgroupUsage>;
    /// Whether project quotas are enforced on the filesystem mounted at `mount_point`.
    fn project_quota_state(&self, mount_point: &Path) -> io::Result<ProjectQuotaState>;
    /// Gives directory `dir` a project ID that its new children inherit.
    fn set_project_id(&self, dir: &Path, project: u32) -> io::Result<()>;
    /// Gives the open directory or regular file `inode` a project ID, for content copied
    /// into a volume (found by an fd-based walk, so never named by a path here).
    fn set_project_id_of(&self, inode: BorrowedFd<'_>, project: u32) -> io::Result<()>;
    /// Sets the hard block limit of a project.
    fn set_project_limit(&self, mount_point: &Path, project: u32, bytes: u64) -> io::Result<()>;
    /// Usage and limit of a project.
    fn project_usage(&self, mount_point: &Path, project: u32) -> io::Result<ProjectUsage>;
    /// Attaches an image file to a free loop device whose name field is `tag`.
    fn loop_attach(&self, image: &Path, tag: &str, readonly: bool) -> io::Result<LoopDevice>;
    /// Loop devices backed by `image`, matched by device and inode (not by path).
    fn loop_find(&self, image: &Path) -> io::Result<Vec<LoopDevice>>;
    /// Detaches a loop device.
    fn loop_detach(&self, device: &Path) -> io::Result<()>;
    /// Makes a loop device pick up its backing file's new size.
    fn loop_set_capacity(&self, device: &Path) -> io::Result<()>;
    /// What signature, if any, a device holds.
    fn blkid(&self, device: &Path) -> io::Result<Signature>;
    /// The UUID of the filesystem on a device, `None` when it holds none.
    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>>;
    /// Formats a device; `encrypt` turns on the filesystem's fscrypt feature (ext4 only).
    fn mkfs(&self, device: &Path, fs_type: &str, encrypt: bool) -> io::Result<()>;
    /// Grows a mounted filesystem to fill its device.
    fn grow_fs(&self, fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()>;
    /// Grows an unmounted filesystem to fill its device when it is smaller; true if it grew.
    fn grow_fs_offline(&self, fs_type: &str, device: &Path) -> io::Result<bool>;
    /// Size of a block device in bytes.
    fn device_size(&self, device: &Path) -> io::Result<u64>;
    /// Freezes the filesystem mounted at `mount_point` (FIFREEZE).
    fn freeze(&self, mount_point: &Path) -> io::Result<()>;
    /// Thaws it (FITHAW).
    fn thaw(&self, mount_point: &Path) -> io::Result<()>;
    /// Erases every signature from a device.
    fn wipe_signatures(&self, device: &Path) -> io::Result<()>;
    /// What sysfs tells of a block device: its hardware identity and how it clears blocks.
    fn block_info(&self, device: &Path) -> io::Result<BlockInfo>;
    /// Makes `len` bytes at `offset` of a device read back as zeros (BLKZEROOUT); the
    /// device is opened exclusively, so a mounted one is refused (EBUSY).
    fn zero_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()>;
    /// Discards `len` bytes at `offset` of a device (BLKDISCARD), opened exclusively.
    fn discard_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()>;
    /// Adds an fscrypt master key to the filesystem holding `on`; returns its identifier.
    fn fscrypt_add_key(&self, on: &Path, key: &crate::crypt::Key) -> io::Result<crate::crypt::KeyId>;
    /// Removes berth's claim on key `id` from the filesystem holding `on` (ENOKEY when it
    /// is not there); returns the kernel's removal status flags.
    fn fscrypt_remove_key(&self, on: &Path, id: &crate::crypt::KeyId) -> io::Result<u32>;
    /// Gives the open, empty directory `dir` a v2 encryption policy under key `id`.
    fn fscrypt_set_policy(&self, dir: BorrowedFd<'_>, id: &crate::crypt::KeyId) -> io::Result<()>;
    /// The key of the open directory `dir`'s policy; `None` when it is not encrypted.
    /// EOPNOTSUPP or ENOTTY: the filesystem cannot encrypt.
    fn fscrypt_policy_key(&self, dir: BorrowedFd<'_>) -> io::Result<Option<crate::crypt::KeyId>>;
    /// Whether this node can open LUKS2 containers (cryptsetup installed, device-mapper
    /// in the kernel); the error says what it lacks.
    fn luks_support(&self) -> io::Result<()>;
    /// Sets the btrfs `compression` property of `dir` (zstd, lzo, zlib, or none): what
    /// is written below it from now on is compressed so, or never compressed.
    fn btrfs_set_compression(&self, dir: &Path, algorithm: &str) -> io::Result<()>;
    /// Whether this kernel's ext4 can encrypt directories (fscrypt); the error says why not.
    fn ext4_encryption_support(&self) -> io::Result<()>;
    /// Writes a LUKS2 header on `device` with one keyslot that `key` opens.
    fn luks_format(&self, device: &Path, key: &crate::crypt::Key) -> io::Result<()>;
    /// Opens the LUKS2 container on `device` as `/dev/mapper/<name>`; PermissionDenied
    /// when no keyslot opens with `key`.
    fn luks_open(&self, device: &Path, name: &str, key: &crate::crypt::Key) -> io::Result<()>;
    /// The device under the open LUKS2 mapping `name`; `None` when it is not open.
    fn luks_status(&self, name: &str) -> io::Result<Option<std::path::PathBuf>>;
    /// Closes the mapping `name`; one not open is success.
    fn luks_close(&self, name: &str) -> io::Result<()>;
    /// Grows the open mapping `name` to fill the device under it.
    fn luks_resize(&self, name: &str) -> io::Result<()>;
    /// Destroys every keyslot of the LUKS header on `device` (an image file or a
    /// disk); false when it holds no LUKS header.
    fn luks_wipe(&self, device: &Path) -> io::Result<bool>;
}

/// A loop device berth found or attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub path: std::path::PathBuf,
    /// The name field berth set at attach; devices without berth's tag are never detached.
    pub tag: String,
    pub direct_io: bool,
}

/// The name-field prefix of every loop device berth attaches.
pub const LOOP_TAG_PREFIX: &str = "berth:";
