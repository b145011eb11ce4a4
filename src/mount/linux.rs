//! The real [`Syscall`]: each call opens berth-owned paths without following a final
//! symlink and hands the fd to the ioctl wrappers in `btrfs` and `quota`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use super::{FsStat, ProjectQuotaState, ProjectUsage, QgroupUsage, Syscall, btrfs, quota};

/// Performs the calls on the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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
        nix::mount::mount(source, target, fs_type, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
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
        btrfs::qgroup_limit(open_dir(subvol)?.as_fd(), max_bytes)
    }

    fn btrfs_qgroup_usage(&self, subvol: &Path) -> io::Result<QgroupUsage> {
        let dir = open_dir(subvol)?;
        btrfs::sync(dir.as_fd())?;
        btrfs::qgroup_usage(dir.as_fd())
    }

    fn project_quota_state(&self, mount_point: &Path) -> io::Result<ProjectQuotaState> {
        quota::project_quota_state(open_dir(mount_point)?.as_fd())
    }

    fn set_project_id(&self, dir: &Path, project: u32) -> io::Result<()> {
        quota::set_project_id(open_dir(dir)?.as_fd(), project, true)
    }

    fn set_project_limit(&self, mount_point: &Path, project: u32, bytes: u64) -> io::Result<()> {
        quota::set_project_limit(open_dir(mount_point)?.as_fd(), project, bytes)
    }

    fn project_usage(&self, mount_point: &Path, project: u32) -> io::Result<ProjectUsage> {
        quota::project_usage(open_dir(mount_point)?.as_fd(), project)
    }
}
