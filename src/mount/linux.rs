//! The real [`Syscall`]: each call opens berth-owned paths without following a final
//! symlink and hands the fd to the ioctl wrappers in `btrfs` and `quota`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use std::os::unix::fs::MetadataExt;

use super::{
    BlockInfo, FsStat, LoopDevice, ProjectQuotaState, ProjectUsage, QgroupUsage, Signature, Syscall, blockdev, btrfs,
    fscrypt, loopdev, luks, quota, sysfs, tools,
};

/// Performs the calls on the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A volume's subvolume and its parent directory: qgroup calls are issued on the parent,
/// outside the volume's limit (see [`btrfs::qgroup_limit`]).
fn open_subvolume_and_parent(subvol: &Path) -> io::Result<(File, File)> {
    let parent = subvol
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no parent", subvol.display())))?;
    Ok((open_dir(subvol)?, open_dir(parent)?))
}

/// Opens a block device for writing with O_EXCL, which the kernel refuses (EBUSY) while
/// the device is mounted or otherwise claimed.
fn open_exclusive(device: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_CLOEXEC | libc::O_EXCL).open(device)
}

impl LinuxSyscall {
    /// What quota commands for the filesystem at `mount_point` (open as `dir`) act on:
    /// the directory, or on kernels before 5.14 the block device the mount table names.
    fn quota_target<'a>(&self, dir: &'a File, mount_point: &Path) -> io::Result<quota::Target<'a>> {
        quota::Target::new(dir.as_fd(), || quota::device_of(&self.mountinfo()?, mount_point))
    }
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fs_type: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        // The target, and the source of a bind, are opened once without following a
        // symbolic link in any component, and mounted through /proc/self/fd: a directory
        // on the way swapped for a symlink after berth checked the path (a pod may be able
        // to write a kubelet directory's parent) cannot send the mount elsewhere, or show a
        // host directory in the pod. A source that is already an fd (a pool directory
        // opened beneath its root) is used as it is.
        let unfollowed = |role: &str, path: &Path| {
            crate::safepath::open_unfollowed(path).map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "mount {role} {} has a symbolic link on its path that was not there when it was checked",
                        path.display()
                    ),
                ),
                _ => e,
            })
        };
        let target_fd = unfollowed("target", target)?;
        let source_fd = match source {
            Some(s) if flags.contains(MsFlags::MS_BIND) && !s.starts_with("/proc/self/fd") => {
                Some(unfollowed("source", s)?)
            }
            _ => None,
        };
        let at = crate::safepath::proc_fd_path(&target_fd);
        let from = source_fd.as_ref().map(crate::safepath::proc_fd_path);
        nix::mount::mount(from.as_deref().or(source), &at, fs_type, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn mountinfo(&self) -> io::Result<String> {
        use std::io::Read;
        // /proc reports no size: room for a few hundred mounts up front, instead of
        // growing the buffer a read at a time.
        let mut text = String::with_capacity(32 << 10);
        std::fs::File::open("/proc/self/mountinfo")?.read_to_string(&mut text)?;
        Ok(text)
    }

    fn statfs(&self, path: &Path) -> io::Result<FsStat> {
        let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
        let block = u64::try_from(st.block_size()).unwrap_or(0);
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok(FsStat {
            magic: st.filesystem_type().0 as i64,
            total_bytes: (st.blocks() as u64).saturating_mul(block),
            available_bytes: (st.blocks_available() as u64).saturating_mul(block),
            total_inodes: st.files() as u64,
            free_inodes: st.files_free() as u64,
        })
    }

    fn btrfs_subvolume_create(&self, parent: &Path, name: &str) -> io::Result<()> {
        btrfs::subvolume_create(open_dir(parent)?.as_fd(), name)
    }

    fn btrfs_snapshot(&self, source: &Path, dest_parent: &Path, name: &str, readonly: bool) -> io::Result<()> {
        let source = open_dir(source)?;
        btrfs::snapshot_create(source.as_fd(), open_dir(dest_parent)?.as_fd(), name, readonly)
    }

    fn btrfs_subvolume_delete(&self, parent: &Path, name: &str) -> io::Result<()> {
        btrfs::subvolume_delete(open_dir(parent)?.as_fd(), name)
    }

    fn btrfs_is_subvolume(&self, path: &Path) -> io::Result<bool> {
        btrfs::is_subvolume(open_dir(path)?.as_fd())
    }

    fn btrfs_quota_enabled(&self, path: &Path) -> io::Result<bool> {
        btrfs::quota_enabled(open_dir(path)?.as_fd())
    }

    fn btrfs_quota_enable(&self, path: &Path) -> io::Result<()> {
        btrfs::quota_enable(open_dir(path)?.as_fd())
    }

    fn btrfs_qgroup_limit(&self, subvol: &Path, max_bytes: Option<u64>) -> io::Result<()> {
        let (subvol, ctl) = open_subvolume_and_parent(subvol)?;
        btrfs::qgroup_limit(subvol.as_fd(), ctl.as_fd(), max_bytes)
    }

    fn btrfs_qgroup_adopt(&self, subvol: &Path) -> io::Result<Vec<u64>> {
        let (subvol, ctl) = open_subvolume_and_parent(subvol)?;
        btrfs::qgroup_adopt(subvol.as_fd(), ctl.as_fd())
    }

    fn btrfs_qgroup_remove(&self, subvol: &Path) -> io::Result<()> {
        let (subvol, ctl) = open_subvolume_and_parent(subvol)?;
        btrfs::qgroup_remove(subvol.as_fd(), ctl.as_fd())
    }

    fn btrfs_qgroup_usage(&self, subvol: &Path) -> io::Result<QgroupUsage> {
        btrfs::qgroup_usage(open_dir(subvol)?.as_fd())
    }

    fn project_quota_state(&self, mount_point: &Path) -> io::Result<ProjectQuotaState> {
        let dir = open_dir(mount_point)?;
        quota::project_quota_state(&self.quota_target(&dir, mount_point)?)
    }

    fn set_project_id(&self, dir: &Path, project: u32) -> io::Result<()> {
        quota::set_project_id(open_dir(dir)?.as_fd(), project, true)
    }

    fn set_project_id_of(&self, inode: BorrowedFd<'_>, project: u32) -> io::Result<()> {
        quota::set_project_id(inode, project, true)
    }

    fn set_project_limit(&self, mount_point: &Path, project: u32, bytes: u64) -> io::Result<()> {
        let dir = open_dir(mount_point)?;
        quota::set_project_limit(&self.quota_target(&dir, mount_point)?, project, bytes)
    }

    fn project_usage(&self, mount_point: &Path, project: u32) -> io::Result<ProjectUsage> {
        let dir = open_dir(mount_point)?;
        quota::project_usage(&self.quota_target(&dir, mount_point)?, project)
    }

    fn loop_attach(&self, image: &Path, tag: &str, readonly: bool) -> io::Result<LoopDevice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(image)?;
        // Direct I/O avoids caching every block twice (loop device and backing file); the
        // loop layer falls back to buffered I/O where the backing filesystem refuses it.
        let status = loopdev::attach(&file, tag, readonly, true)?;
        Ok(LoopDevice { path: status.device, tag: status.file_name, direct_io: status.direct_io })
    }

    fn loop_find(&self, image: &Path) -> io::Result<Vec<LoopDevice>> {
        let meta = std::fs::symlink_metadata(image)?;
        Ok(loopdev::find_by_backing(meta.dev(), meta.ino())?
            .into_iter()
            .map(|s| LoopDevice { path: s.device, tag: s.file_name, direct_io: s.direct_io })
            .collect())
    }

    fn loop_detach(&self, device: &Path) -> io::Result<()> {
        loopdev::detach(device)
    }

    fn loop_set_capacity(&self, device: &Path) -> io::Result<()> {
        loopdev::set_capacity(device)
    }

    fn blkid(&self, device: &Path) -> io::Result<Signature> {
        tools::blkid(device)
    }

    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>> {
        tools::fs_uuid(device)
    }

    fn mkfs(&self, device: &Path, fs_type: &str, encrypt: bool) -> io::Result<()> {
        tools::mkfs(device, fs_type, encrypt)
    }

    fn grow_fs(&self, fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()> {
        if fs_type != "ext4" {
            return tools::grow(fs_type, device, mount_point);
        }
        // ext4 grows through its mount root directly: resize2fs locates the mount itself
        // and is misled when a restored clone with the same UUID is mounted elsewhere.
        let root = open_dir(mount_point)?;
        #[allow(clippy::useless_conversion)] // c_ulong is u64 here but not on every target
        let block = u64::from(nix::sys::statvfs::fstatvfs(&root).map_err(io::Error::from)?.block_size());
        let bytes = blockdev::size(File::open(device)?.as_fd())?;
        if block == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        blockdev::ext4_resize(root.as_fd(), bytes / block).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this process lacks; \
                     run the node plugin privileged, or unstage and stage again to grow it offline",
                )
            } else {
                e
            }
        })
    }

    fn grow_fs_offline(&self, fs_type: &str, device: &Path) -> io::Result<bool> {
        match fs_type {
            "ext4" => tools::grow_ext4_offline(device),
            // xfs and btrfs only grow while mounted, which needs no extra capability.
            _ => Ok(false),
        }
    }

    fn device_size(&self, device: &Path) -> io::Result<u64> {
        let file = File::open(device)?;
        blockdev::size(file.as_fd())
    }

    fn freeze(&self, mount_point: &Path) -> io::Result<()> {
        blockdev::freeze(open_dir(mount_point)?.as_fd())
    }

    fn thaw(&self, mount_point: &Path) -> io::Result<()> {
        blockdev::thaw(open_dir(mount_point)?.as_fd())
    }

    fn wipe_signatures(&self, device: &Path) -> io::Result<()> {
        tools::wipe_signatures(device)
    }

    fn block_info(&self, device: &Path) -> io::Result<BlockInfo> {
        Ok(sysfs::block_info_at(&sysfs::dir_of(device)?))
    }

    fn zero_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()> {
        blockdev::zero_out(open_exclusive(device)?.as_fd(), offset, len)
    }

    fn discard_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()> {
        blockdev::discard(open_exclusive(device)?.as_fd(), offset, len)
    }

    fn fscrypt_add_key(&self, on: &Path, key: &crate::crypt::Key) -> io::Result<crate::crypt::KeyId> {
        fscrypt::add_key(open_dir(on)?.as_fd(), key)
    }

    fn fscrypt_remove_key(&self, on: &Path, id: &crate::crypt::KeyId) -> io::Result<u32> {
        fscrypt::remove_key(open_dir(on)?.as_fd(), id)
    }

    fn fscrypt_set_policy(&self, dir: BorrowedFd<'_>, id: &crate::crypt::KeyId) -> io::Result<()> {
        fscrypt::set_policy(dir, id)
    }

    fn fscrypt_policy_key(&self, dir: BorrowedFd<'_>) -> io::Result<Option<crate::crypt::KeyId>> {
        fscrypt::policy_key(dir)
    }

    fn luks_support(&self) -> io::Result<()> {
        luks::support()
    }

    fn btrfs_set_compression(&self, dir: &Path, algorithm: &str) -> io::Result<()> {
        btrfs::set_compression(open_dir(dir)?.as_fd(), algorithm)
    }

    fn ext4_encryption_support(&self) -> io::Result<()> {
        fscrypt::ext4_support()
    }

    fn luks_format(&self, device: &Path, key: &crate::crypt::Key) -> io::Result<()> {
        luks::format(device, key)
    }

    fn luks_open(&self, device: &Path, name: &str, key: &crate::crypt::Key) -> io::Result<()> {
        luks::open(device, name, key)
    }

    fn luks_status(&self, name: &str) -> io::Result<Option<std::path::PathBuf>> {
        luks::status(name)
    }

    fn luks_close(&self, name: &str) -> io::Result<()> {
        luks::close(name)
    }

    fn luks_resize(&self, name: &str) -> io::Result<()> {
        luks::resize(name)
    }

    fn luks_wipe(&self, device: &Path) -> io::Result<bool> {
        luks::erase(device)
    }
}
