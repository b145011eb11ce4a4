//! A recording [`Syscall`] for tests: it performs nothing, records every call as a typed
//! value, and answers queries from what the test configured.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

use crate::crypt::{Key, KeyId};

use super::{BlockInfo, FsStat, LoopDevice, ProjectQuotaState, ProjectUsage, QgroupUsage, Signature, Syscall};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fs_type: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: PathBuf,
        flags: MntFlags,
    },
    SubvolumeCreate {
        parent: PathBuf,
        name: String,
    },
    Snapshot {
        source: PathBuf,
        dest_parent: PathBuf,
        name: String,
        readonly: bool,
    },
    SubvolumeDelete {
        parent: PathBuf,
        name: String,
    },
    QuotaEnable {
        path: PathBuf,
    },
    QgroupLimit {
        subvol: PathBuf,
        max_bytes: Option<u64>,
    },
    QgroupAdopt {
        subvol: PathBuf,
    },
    QgroupRemove {
        subvol: PathBuf,
    },
    SetProjectId {
        dir: PathBuf,
        project: u32,
    },
    /// [`Syscall::set_project_id_of`], with the path the descriptor was opened at.
    SetProjectIdOf {
        path: PathBuf,
        project: u32,
    },
    SetProjectLimit {
        mount_point: PathBuf,
        project: u32,
        bytes: u64,
    },
    LoopAttach {
        image: PathBuf,
        tag: String,
        readonly: bool,
    },
    LoopDetach {
        device: PathBuf,
    },
    LoopSetCapacity {
        device: PathBuf,
    },
    SetCompression {
        dir: PathBuf,
        algorithm: String,
    },
    Mkfs {
        device: PathBuf,
        fs_type: String,
        encrypt: bool,
    },
    GrowFs {
        fs_type: String,
        device: PathBuf,
        mount_point: PathBuf,
    },
    GrowFsOffline {
        fs_type: String,
        device: PathBuf,
    },
    Freeze {
        mount_point: PathBuf,
    },
    Thaw {
        mount_point: PathBuf,
    },
    WipeSignatures {
        device: PathBuf,
    },
    ZeroRange {
        device: PathBuf,
        offset: u64,
        len: u64,
    },
    DiscardRange {
        device: PathBuf,
        offset: u64,
        len: u64,
    },
    /// [`Syscall::fscrypt_add_key`]: the identifier, never the key.
    AddKey {
        on: PathBuf,
        id: KeyId,
    },
    RemoveKey {
        on: PathBuf,
        id: KeyId,
    },
    /// [`Syscall::fscrypt_set_policy`], with the path the descriptor was opened at.
    SetPolicy {
        path: PathBuf,
        id: KeyId,
    },
    /// [`Syscall::luks_format`]: the device, never the key.
    LuksFormat {
        device: PathBuf,
    },
    /// [`Syscall::luks_open`]: the device and mapping, never the key.
    LuksOpen {
        device: PathBuf,
        name: String,
    },
    LuksClose {
        name: String,
    },
    LuksResize {
        name: String,
    },
    LuksWipe {
        device: PathBuf,
    },
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    mountinfo: String,
    statfs: FsStat,
    project_state: Option<ProjectQuotaState>,
    project_usage: HashMap<u32, ProjectUsage>,
    failures: HashMap<&'static str, i32>,
    loops: Vec<(PathBuf, LoopDevice)>,
    signatures: HashMap<PathBuf, Signature>,
    device_sizes: HashMap<PathBuf, u64>,
    block_infos: HashMap<PathBuf, BlockInfo>,
    /// When set, mount and umount edit `mountinfo` as the kernel would.
    track_mounts: bool,
    /// fscrypt keys added and not removed, and the policies set, by directory.
    keys: std::collections::HashSet<KeyId>,
    policies: HashMap<PathBuf, KeyId>,
    /// The key identifier of each LUKS header written, by device, and the open mappings.
    luks_headers: HashMap<PathBuf, KeyId>,
    luks_open: HashMap<String, PathBuf>,
    next_mount_id: u32,
    /// How many times the mount table was read.
    mountinfo_reads: usize,
}

impl Inner {
    /// For a bind of `source`: the device number and root (`8:1 /volumes/k`), and the
    /// type and source (`ext4 /dev/sdb1`), of the mount that holds it.
    fn host_of(&self, source: &Path) -> Option<(String, String)> {
        let table = super::mountinfo::parse(&self.mountinfo).ok()?;
        let host = super::mountinfo::containing(&table, source)?;
        let inside = source.strip_prefix(&host.mount_point).ok()?;
        let root = if inside.as_os_str().is_empty() { host.root.clone() } else { host.root.join(inside) };
        Some((format!("{}:{} {}", host.major, host.minor, root.display()), format!("{} {}", host.fs_type, host.source)))
    }
}

/// The recording fake. Configure it with the builder methods, then read [`Self::calls`].
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    inner: Mutex<Inner>,
}

impl RecordingSyscall {
    /// A fake whose statfs reports `stat` and whose mount table is `mountinfo`.
    #[must_use]
    pub fn new(stat: FsStat, mountinfo: &str) -> Self {
        let fake = Self::default();
        {
            let mut inner = fake.lock();
            inner.statfs = stat;
            inner.mountinfo = mountinfo.to_string();
        }
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes mount(2) add a line to the mount table and umount(2) remove the topmost one
    /// at its target, so a sequence of node operations sees its own mounts.
    pub fn tracking_mounts(self) -> Self {
        {
            let mut inner = self.lock();
            inner.track_mounts = true;
            inner.next_mount_id = 1000;
        }
        self
    }

    /// Makes project quota queries answer `state`.
    pub fn with_project_quota(self, state: ProjectQuotaState) -> Self {
        self.lock().project_state = Some(state);
        self
    }

    /// Makes the named operation (`"mount"`, `"set_project_limit"`, ...) fail with `errno`.
    /// `"umount"` is a plain unmount; a lazy one (`MNT_DETACH`) is `"umount_detach"`.
    pub fn fail(&self, op: &'static str, errno: i32) {
        self.lock().failures.insert(op, errno);
    }

    /// Lets the named operation succeed again after [`Self::fail`].
    pub fn unfail(&self, op: &'static str) {
        self.lock().failures.remove(op);
    }

    /// The open LUKS mappings, by name, with the device under each.
    pub fn luks_mappings(&self) -> Vec<(String, PathBuf)> {
        let mut open: Vec<_> = self.lock().luks_open.iter().map(|(n, d)| (n.clone(), d.clone())).collect();
        open.sort();
        open
    }

    /// Sets the usage reported for a project.
    pub fn set_project_usage(&self, project: u32, usage: ProjectUsage) {
        self.lock().project_usage.insert(project, usage);
    }

    /// Makes blkid report `signature` on `device`.
    pub fn set_signature(&self, device: &Path, signature: Signature) {
        self.lock().signatures.insert(device.to_path_buf(), signature);
    }

    /// Makes `device` report `bytes` as its size.
    pub fn set_device_size(&self, device: &Path, bytes: u64) {
        self.lock().device_sizes.insert(device.to_path_buf(), bytes);
    }

    /// Makes sysfs report `info` for `device`.
    pub fn set_block_info(&self, device: &Path, info: BlockInfo) {
        self.lock().block_infos.insert(device.to_path_buf(), info);
    }

    /// The fscrypt keys present: added and not removed since.
    pub fn keys_present(&self) -> Vec<KeyId> {
        let mut keys: Vec<KeyId> = self.lock().keys.iter().copied().collect();
        keys.sort();
        keys
    }

    /// How many times the mount table was read so far (reads are not [`Call`]s).
    pub fn mountinfo_reads(&self) -> usize {
        self.lock().mountinfo_reads
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn record(&self, op: &'static str, call: Call) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(errno) = inner.failures.get(op) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        inner.calls.push(call);
        Ok(())
    }

    fn check(&self, op: &'static str) -> io::Result<()> {
        match self.lock().failures.get(op) {
            Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fs_type: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(
            "mount",
            Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fs_type: fs_type.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            },
        )?;
        let mut inner = self.lock();
        if inner.track_mounts && !flags.contains(MsFlags::MS_REMOUNT) {
            inner.next_mount_id += 1;
            let id = inner.next_mount_id;
            let ro = if flags.contains(MsFlags::MS_RDONLY) { "ro" } else { "rw" };
            let (fs, src) = match (fs_type, source) {
                (Some(t), Some(s)) => (t.to_string(), s.display().to_string()),
                _ => ("bind".to_string(), source.map(|s| s.display().to_string()).unwrap_or_default()),
            };
            let target = target.display();
            let line = match source.filter(|_| flags.contains(MsFlags::MS_BIND)).and_then(|s| inner.host_of(s)) {
                // A bind of a path on a mount shows what the kernel shows: that mount's
                // filesystem, source and device number, with the path inside it as root.
                Some(host) => format!("{id} 1 {} {target} {ro} - {} rw\n", host.0, host.1),
                None => format!("{id} 1 0:{id} / {target} {ro} - {fs} {src} rw\n"),
            };
            inner.mountinfo.push_str(&line);
        }
        Ok(())
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        let op = if flags.contains(MntFlags::MNT_DETACH) { "umount_detach" } else { "umount" };
        self.record(op, Call::Umount { target: target.to_path_buf(), flags })?;
        let mut inner = self.lock();
        if inner.track_mounts {
            let target = target.display().to_string();
            let mut lines: Vec<&str> = inner.mountinfo.lines().collect();
            // The mount point is the fifth field (after the root, which a bind may set).
            if let Some(pos) = lines.iter().rposition(|l| l.split(' ').nth(4) == Some(target.as_str())) {
                lines.remove(pos);
            }
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            inner.mountinfo = text;
        }
        Ok(())
    }

    fn mountinfo(&self) -> io::Result<String> {
        self.check("mountinfo")?;
        let mut inner = self.lock();
        inner.mountinfo_reads += 1;
        Ok(inner.mountinfo.clone())
    }

    fn statfs(&self, _path: &Path) -> io::Result<FsStat> {
        self.check("statfs")?;
        Ok(self.lock().statfs)
    }

    fn btrfs_subvolume_create(&self, parent: &Path, name: &str) -> io::Result<()> {
        self.record("btrfs_subvolume_create", Call::SubvolumeCreate { parent: parent.into(), name: name.into() })?;
        std::fs::create_dir(parent.join(name))
    }

    fn btrfs_snapshot(&self, source: &Path, dest_parent: &Path, name: &str, readonly: bool) -> io::Result<()> {
        self.record(
            "btrfs_snapshot",
            Call::Snapshot { source: source.into(), dest_parent: dest_parent.into(), name: name.into(), readonly },
        )?;
        std::fs::create_dir(dest_parent.join(name))
    }

    fn btrfs_subvolume_delete(&self, parent: &Path, name: &str) -> io::Result<()> {
        self.record("btrfs_subvolume_delete", Call::SubvolumeDelete { parent: parent.into(), name: name.into() })?;
        std::fs::remove_dir_all(parent.join(name))
    }

    fn btrfs_is_subvolume(&self, path: &Path) -> io::Result<bool> {
        self.check("btrfs_is_subvolume")?;
        Ok(path.is_dir())
    }

    fn btrfs_quota_enabled(&self, _path: &Path) -> io::Result<bool> {
        self.check("btrfs_quota_enabled")?;
        Ok(self.lock().calls.iter().any(|c| matches!(c, Call::QuotaEnable { .. })))
    }

    fn btrfs_quota_enable(&self, path: &Path) -> io::Result<()> {
        self.record("btrfs_quota_enable", Call::QuotaEnable { path: path.into() })
    }

    fn btrfs_qgroup_limit(&self, subvol: &Path, max_bytes: Option<u64>) -> io::Result<()> {
        self.record("btrfs_qgroup_limit", Call::QgroupLimit { subvol: subvol.into(), max_bytes })
    }

    fn btrfs_qgroup_adopt(&self, subvol: &Path) -> io::Result<Vec<u64>> {
        self.record("btrfs_qgroup_adopt", Call::QgroupAdopt { subvol: subvol.into() }).map(|()| Vec::new())
    }

    fn btrfs_qgroup_remove(&self, subvol: &Path) -> io::Result<()> {
        self.record("btrfs_qgroup_remove", Call::QgroupRemove { subvol: subvol.into() })
    }

    fn btrfs_qgroup_usage(&self, subvol: &Path) -> io::Result<QgroupUsage> {
        self.check("btrfs_qgroup_usage")?;
        let limit = self.lock().calls.iter().rev().find_map(|c| match c {
            Call::QgroupLimit { subvol: s, max_bytes } if s == subvol => Some(*max_bytes),
            _ => None,
        });
        Ok(QgroupUsage { referenced: 0, exclusive: 0, max_referenced: limit.flatten() })
    }

    fn project_quota_state(&self, _mount_point: &Path) -> io::Result<ProjectQuotaState> {
        self.check("project_quota_state")?;
        Ok(self.lock().project_state.unwrap_or(ProjectQuotaState::Unsupported))
    }

    fn set_project_id(&self, dir: &Path, project: u32) -> io::Result<()> {
        self.record("set_project_id", Call::SetProjectId { dir: dir.into(), project })
    }

    fn set_project_id_of(&self, inode: BorrowedFd<'_>, project: u32) -> io::Result<()> {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", inode.as_raw_fd()))?;
        self.record("set_project_id_of", Call::SetProjectIdOf { path, project })
    }

    fn set_project_limit(&self, mount_point: &Path, project: u32, bytes: u64) -> io::Result<()> {
        self.record("set_project_limit", Call::SetProjectLimit { mount_point: mount_point.into(), project, bytes })?;
        let mut inner = self.lock();
        let usage = inner.project_usage.entry(project).or_insert(ProjectUsage {
            used_bytes: 0,
            used_inodes: 0,
            hard_limit_bytes: 0,
        });
        usage.hard_limit_bytes = bytes;
        Ok(())
    }

    fn project_usage(&self, _mount_point: &Path, project: u32) -> io::Result<ProjectUsage> {
        self.check("project_usage")?;
        self.lock().project_usage.get(&project).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn loop_attach(&self, image: &Path, tag: &str, readonly: bool) -> io::Result<LoopDevice> {
        self.record("loop_attach", Call::LoopAttach { image: image.into(), tag: tag.into(), readonly })?;
        let mut inner = self.lock();
        let device = LoopDevice {
            path: PathBuf::from(format!("/dev/loop{}", 100 + inner.loops.len())),
            tag: tag.into(),
            direct_io: true,
        };
        inner.loops.push((image.to_path_buf(), device.clone()));
        Ok(device)
    }

    fn loop_find(&self, image: &Path) -> io::Result<Vec<LoopDevice>> {
        self.check("loop_find")?;
        Ok(self.lock().loops.iter().filter(|(i, _)| i == image).map(|(_, d)| d.clone()).collect())
    }

    fn loop_detach(&self, device: &Path) -> io::Result<()> {
        self.record("loop_detach", Call::LoopDetach { device: device.into() })?;
        self.lock().loops.retain(|(_, d)| d.path != device);
        Ok(())
    }

    fn loop_set_capacity(&self, device: &Path) -> io::Result<()> {
        self.record("loop_set_capacity", Call::LoopSetCapacity { device: device.into() })
    }

    fn blkid(&self, device: &Path) -> io::Result<Signature> {
        self.check("blkid")?;
        Ok(self.lock().signatures.get(device).cloned().unwrap_or(Signature::None))
    }

    fn fs_uuid(&self, device: &Path) -> io::Result<Option<String>> {
        self.check("fs_uuid")?;
        Ok(match self.lock().signatures.get(device) {
            Some(Signature::Filesystem(t)) => Some(format!("fake-uuid-{t}")),
            _ => None,
        })
    }

    fn mkfs(&self, device: &Path, fs_type: &str, encrypt: bool) -> io::Result<()> {
        self.record("mkfs", Call::Mkfs { device: device.into(), fs_type: fs_type.into(), encrypt })?;
        self.lock().signatures.insert(device.to_path_buf(), Signature::Filesystem(fs_type.into()));
        Ok(())
    }

    fn grow_fs(&self, fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()> {
        self.record(
            "grow_fs",
            Call::GrowFs { fs_type: fs_type.into(), device: device.into(), mount_point: mount_point.into() },
        )
    }

    fn grow_fs_offline(&self, fs_type: &str, device: &Path) -> io::Result<bool> {
        self.record("grow_fs_offline", Call::GrowFsOffline { fs_type: fs_type.into(), device: device.into() })?;
        Ok(false)
    }

    fn device_size(&self, device: &Path) -> io::Result<u64> {
        self.check("device_size")?;
        self.lock().device_sizes.get(device).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn freeze(&self, mount_point: &Path) -> io::Result<()> {
        self.record("freeze", Call::Freeze { mount_point: mount_point.into() })
    }

    fn thaw(&self, mount_point: &Path) -> io::Result<()> {
        self.record("thaw", Call::Thaw { mount_point: mount_point.into() })
    }

    fn wipe_signatures(&self, device: &Path) -> io::Result<()> {
        self.record("wipe_signatures", Call::WipeSignatures { device: device.into() })?;
        self.lock().signatures.remove(device);
        Ok(())
    }

    fn block_info(&self, device: &Path) -> io::Result<BlockInfo> {
        self.check("block_info")?;
        Ok(self.lock().block_infos.get(device).cloned().unwrap_or_default())
    }

    fn zero_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()> {
        self.record("zero_range", Call::ZeroRange { device: device.into(), offset, len })
    }

    fn discard_range(&self, device: &Path, offset: u64, len: u64) -> io::Result<()> {
        self.record("discard_range", Call::DiscardRange { device: device.into(), offset, len })
    }

    fn fscrypt_add_key(&self, on: &Path, key: &Key) -> io::Result<KeyId> {
        let id = crate::crypt::key_id(key);
        self.record("fscrypt_add_key", Call::AddKey { on: on.into(), id })?;
        self.lock().keys.insert(id);
        Ok(id)
    }

    fn fscrypt_remove_key(&self, on: &Path, id: &KeyId) -> io::Result<u32> {
        self.record("fscrypt_remove_key", Call::RemoveKey { on: on.into(), id: *id })?;
        if self.lock().keys.remove(id) { Ok(0) } else { Err(io::Error::from_raw_os_error(libc::ENOKEY)) }
    }

    fn fscrypt_set_policy(&self, dir: BorrowedFd<'_>, id: &KeyId) -> io::Result<()> {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        if !self.lock().keys.contains(id) {
            return Err(io::Error::from_raw_os_error(libc::ENOKEY));
        }
        self.record("fscrypt_set_policy", Call::SetPolicy { path: path.clone(), id: *id })?;
        self.lock().policies.insert(path, *id);
        Ok(())
    }

    fn fscrypt_policy_key(&self, dir: BorrowedFd<'_>) -> io::Result<Option<KeyId>> {
        self.check("fscrypt_policy_key")?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        Ok(self.lock().policies.get(&path).copied())
    }

    fn luks_support(&self) -> io::Result<()> {
        self.check("luks_support")
    }

    fn btrfs_set_compression(&self, dir: &Path, algorithm: &str) -> io::Result<()> {
        self.record("btrfs_set_compression", Call::SetCompression { dir: dir.into(), algorithm: algorithm.into() })
    }

    fn ext4_encryption_support(&self) -> io::Result<()> {
        self.check("ext4_encryption_support")
    }

    /// Writes the header the fake's blkid reports afterwards, remembering which key opens it.
    fn luks_format(&self, device: &Path, key: &Key) -> io::Result<()> {
        self.record("luks_format", Call::LuksFormat { device: device.into() })?;
        let mut inner = self.lock();
        inner.signatures.insert(device.to_path_buf(), Signature::Filesystem(super::luks::SIGNATURE.into()));
        inner.luks_headers.insert(device.to_path_buf(), crate::crypt::key_id(key));
        Ok(())
    }

    /// Opens only a header [`Self::luks_format`] wrote, and only with its key.
    fn luks_open(&self, device: &Path, name: &str, key: &Key) -> io::Result<()> {
        self.check("luks_open")?;
        {
            let inner = self.lock();
            match inner.luks_headers.get(device) {
                None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a LUKS device")),
                Some(id) if *id != crate::crypt::key_id(key) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "no key available with this passphrase",
                    ));
                }
                Some(_) => {}
            }
            if inner.luks_open.contains_key(name) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        self.record("luks_open", Call::LuksOpen { device: device.into(), name: name.into() })?;
        self.lock().luks_open.insert(name.to_string(), device.to_path_buf());
        Ok(())
    }

    fn luks_status(&self, name: &str) -> io::Result<Option<PathBuf>> {
        self.check("luks_status")?;
        Ok(self.lock().luks_open.get(name).cloned())
    }

    fn luks_close(&self, name: &str) -> io::Result<()> {
        if !self.lock().luks_open.contains_key(name) {
            return Ok(());
        }
        self.record("luks_close", Call::LuksClose { name: name.into() })?;
        self.lock().luks_open.remove(name);
        Ok(())
    }

    fn luks_resize(&self, name: &str) -> io::Result<()> {
        self.record("luks_resize", Call::LuksResize { name: name.into() })
    }

    fn luks_wipe(&self, device: &Path) -> io::Result<bool> {
        if !self.lock().luks_headers.contains_key(device) {
            self.check("luks_wipe")?;
            return Ok(false);
        }
        self.record("luks_wipe", Call::LuksWipe { device: device.into() })?;
        self.lock().luks_headers.remove(device);
        Ok(true)
    }
}
