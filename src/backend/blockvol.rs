//! Node-side work shared by the pools whose volumes are block devices (loop-attached
//! images and whole disks): formatting only blank devices, mounting, raw binds, growing,
//! freezing for snapshots, and usage.

use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Capability, Error, RAW_DEVICE_FILE, Result, Usage};
use crate::crypt::Key;
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::ops::{self, Flags};
use crate::mount::{MsFlags, Signature, Syscall};

/// The directory of an fscrypt volume's filesystem that holds the volume's data and that
/// publish binds onto the pod's target: ext4 encrypts directories, never its root.
pub const FSCRYPT_DIR: &str = "volume";

/// Makes `device` available at `staging`: for raw block, bound onto `staging/device`; for
/// a filesystem, formatted if (and only if) blkid finds no signature at all (with the
/// filesystem's fscrypt feature when `encryptable`), mounted, and grown to fill the device
/// (a restored or expanded volume may be larger than its filesystem).
pub fn stage(
    sys: &dyn Syscall,
    device: &Path,
    staging: &Path,
    capability: &Capability,
    fs_type: &str,
    encryptable: bool,
) -> Result<()> {
    let flags = ops::parse_flags(&capability.mount_flags)?;
    let readonly = flags.readonly || capability.mode.read_only();
    if !capability.block && !capability.fs_type.is_empty() && capability.fs_type != fs_type {
        return Err(Error::FsTypeConflict { created: fs_type.to_string(), requested: capability.fs_type.clone() });
    }
    if capability.block {
        let file = staging.join(RAW_DEVICE_FILE);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&file)
            .map_err(Error::io("create device file", &file))?;
        return ops::bind(sys, device, &file, Flags { readonly, extra: MsFlags::empty() })
            .map_err(Error::io("bind device", &file));
    }
    match sys.blkid(device).map_err(Error::io("probe", device))? {
        Signature::None if readonly => {
            return Err(Error::UnformattedReadOnly { device: device.to_path_buf() });
        }
        Signature::None => {
            tracing::info!(device = %device.display(), fs_type, "formatting a blank device");
            super::failpoint("block.mkfs", device)?;
            let total = sys.device_size(device).ok();
            crate::progress::heartbeat("format", total, || sys.mkfs(device, fs_type, encryptable))
                .inspect_err(|_| crate::metrics::record_error("format"))
                .map_err(Error::io("format", device))?;
        }
        Signature::Filesystem(found) if found == fs_type => {}
        Signature::Filesystem(found) => {
            return Err(Error::WrongFilesystem { device: device.to_path_buf(), found, wanted: fs_type.to_string() });
        }
        Signature::PartitionTable(table) => {
            return Err(Error::PartitionTable { device: device.to_path_buf(), table });
        }
    }
    // The host kernel mounts what a pod wrote: no setuid program or device node in it
    // counts on the node (the pod's bind mount inherits both).
    let mut ms = flags.extra | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if readonly {
        ms |= MsFlags::MS_RDONLY;
    } else if sys
        .grow_fs_offline(fs_type, device)
        .inspect_err(|_| crate::metrics::record_error("resize"))
        .map_err(Error::io("grow filesystem", device))?
    {
        tracing::info!(device = %device.display(), fs_type, "grew the filesystem to fill its device");
    }
    // Restored and cloned volumes carry their source's filesystem UUID; xfs refuses a
    // second mount of a UUID unless told not to check.
    let data = (fs_type == "xfs").then_some("nouuid");
    super::failpoint("block.mount", staging)?;
    sys.mount(Some(device), staging, Some(fs_type), ms, data)
        .inspect_err(|_| crate::metrics::record_error("mount"))
        .map_err(Error::io("mount", staging))?;
    // ext4 was grown before mounting; xfs and btrfs grow only while mounted.
    if !readonly
        && fs_type != "ext4"
        && let Err(e) = sys.grow_fs(fs_type, device, staging)
    {
        crate::metrics::record_error("resize");
        let _ = ops::unmount_all(sys, staging);
        return Err(Error::io("grow filesystem", device)(e));
    }
    Ok(())
}

/// Unlocks the fscrypt volume `volume` whose filesystem is mounted at `staging`: adds
/// `key` to the filesystem (where it stays until the filesystem is unmounted at
/// NodeUnstage) and makes sure [`FSCRYPT_DIR`] is encrypted under it, created empty with
/// its policy at the first stage. A directory under another key, or one holding
/// plaintext, is refused.
pub fn unlock_fscrypt(sys: &dyn Syscall, volume: &str, staging: &Path, key: &Key) -> Result<()> {
    super::failpoint("block.fscrypt.add-key", staging)?;
    let id =
        sys.fscrypt_add_key(staging, key).map_err(Error::io("add an encryption key to the filesystem at", staging))?;
    let dir = staging.join(FSCRYPT_DIR);
    match fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create", &dir)(e)),
    }
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir)
        .map_err(Error::io("open", &dir))?;
    super::fscrypt::ensure_policy(sys, volume, &dir, std::os::fd::AsFd::as_fd(&opened), &id)
}

/// What publish binds for `volume` staged as a filesystem at `staging` (see
/// [`super::Node::publish_from`]): its encrypted directory when it is an fscrypt volume.
#[must_use]
pub fn publish_from(source: super::StageSource<'_>, staging: &Path) -> PathBuf {
    match source {
        super::StageSource::Managed(v) if is_fscrypt(v) => staging.join(FSCRYPT_DIR),
        _ => staging.to_path_buf(),
    }
}

/// Whether `volume` is encrypted with fscrypt: its filesystem holds its data in an
/// encrypted directory.
#[must_use]
pub fn is_fscrypt(volume: &crate::state::VolumeRecord) -> bool {
    volume.encryption.as_ref().is_some_and(|e| e.scheme == crate::crypt::Scheme::Fscrypt)
}

/// The block device number of a device node.
fn rdev(device: &Path) -> Option<u64> {
    fs::metadata(device).ok().filter(|m| m.file_type().is_block_device()).map(|m| m.rdev())
}

/// True when `path` is, in `table`, a mount of `device`'s filesystem or a bind of its
/// device node.
pub fn is_mounted_at(table: &[MountEntry], device: &Path, path: &Path) -> Result<bool> {
    let Some(top) = mountinfo::at(table, path).last().copied() else {
        return Ok(false);
    };
    if top.source == device.to_string_lossy() && top.fs_type != "devtmpfs" {
        return Ok(true);
    }
    // A raw bind: the mount shows the /dev filesystem; the node itself names the device.
    let meta = fs::metadata(path).map_err(Error::io("inspect", path))?;
    Ok(meta.file_type().is_block_device() && Some(meta.rdev()) == rdev(device))
}

/// Every mount point of `device` in `table`: its filesystem's mounts and binds of its
/// device node.
#[must_use]
pub fn mounts(table: &[MountEntry], device: &Path) -> Vec<PathBuf> {
    // A bind of a device node shows the node's path inside /dev as its root
    // (`/loop3`, `/mapper/berth-k` for a crypt layer's node where udev does not link it).
    let name = device
        .strip_prefix("/dev")
        .ok()
        .map(|rel| Path::new("/").join(rel))
        .or_else(|| device.file_name().map(|n| Path::new("/").join(n)));
    table
        .iter()
        .filter(|e| {
            (e.source == device.to_string_lossy() && e.fs_type != "devtmpfs")
                || (e.fs_type == "devtmpfs" && Some(&e.root) == name.as_ref())
        })
        .map(|e| e.mount_point.clone())
        .collect()
}

/// Where `device`'s filesystem is mounted (the staging mount), for freezing and growing.
pub fn filesystem_mount(sys: &dyn Syscall, device: &Path) -> Result<Option<PathBuf>> {
    let table = ops::table(sys).map_err(Error::io("read mount table", device))?;
    Ok(filesystem_mount_in(&table, device))
}

/// [`filesystem_mount`] in a mount table the caller read.
#[must_use]
pub fn filesystem_mount_in(table: &[MountEntry], device: &Path) -> Option<PathBuf> {
    table
        .iter()
        .find(|e| e.source == device.to_string_lossy() && e.fs_type != "devtmpfs")
        .map(|e| e.mount_point.clone())
}

/// Errors the kernel counted on the ext4 filesystem of `device` (`/sys/fs/ext4/<dev>/
/// errors_count` under `sysfs`); `None` when the device carries no mounted ext4.
#[must_use]
pub fn ext4_errors(sysfs: &Path, device: &Path) -> Option<u64> {
    let name = fs::canonicalize(device).ok()?.file_name()?.to_owned();
    fs::read_to_string(sysfs.join("fs/ext4").join(name).join("errors_count")).ok()?.trim().parse().ok()
}

/// The condition of a block volume whose storage exists: abnormal when its mounted
/// filesystem has counted errors.
#[must_use]
pub fn filesystem_condition(device: &Path) -> super::Condition {
    match ext4_errors(Path::new("/sys"), device) {
        Some(n) if n > 0 => super::Condition::abnormal(format!(
            "the ext4 filesystem on {} has recorded {n} errors; unmount it and run e2fsck",
            device.display()
        )),
        _ => super::Condition::healthy(),
    }
}

/// Runs `work` with the filesystem at `mount_point` frozen (if any), always thawing after.
pub fn frozen<T>(sys: &dyn Syscall, mount_point: Option<&Path>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(mp) = mount_point else {
        return work();
    };
    sys.freeze(mp).map_err(Error::io("freeze", mp))?;
    let result = work();
    if let Err(e) = sys.thaw(mp) {
        tracing::error!(mount_point = %mp.display(), error = %e, "thawing after a snapshot failed");
        return Err(Error::io("thaw", mp)(e));
    }
    result
}

/// Freezes recorded as intent before they happen, in a directory of berth's state: a crash
/// inside a freeze would otherwise leave the pod's filesystem frozen, its writes hanging,
/// until someone thaws it by hand. The next start thaws every recorded one.
#[derive(Debug, Clone)]
pub struct Freezes {
    dir: PathBuf,
}

impl Freezes {
    #[must_use]
    pub fn new(dir: PathBuf) -> Freezes {
        Freezes { dir }
    }

    fn record_of(&self, mount_point: &Path) -> PathBuf {
        use sha2::{Digest, Sha256};
        self.dir.join(hex::encode(Sha256::digest(mount_point.as_os_str().as_encoded_bytes())))
    }

    /// Thaws every filesystem a crash left frozen, then forgets the records; returns how
    /// many were frozen. Called at start, before anything else touches a pool.
    pub fn thaw_left(&self, sys: &dyn Syscall) -> std::io::Result<usize> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut thawed = 0;
        for entry in entries {
            let record = entry?.path();
            let mount_point = PathBuf::from(std::ffi::OsString::from_vec(fs::read(&record)?));
            match sys.thaw(&mount_point) {
                Ok(()) => {
                    tracing::warn!(mount_point = %mount_point.display(), "thawed a filesystem a crash left frozen");
                    thawed += 1;
                }
                // Not frozen (the crash came before the freeze), or no longer mounted.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
            fs::remove_file(&record)?;
        }
        Ok(thawed)
    }

    /// [`frozen`], with the freeze recorded durably before it happens and forgotten after
    /// the thaw.
    pub fn frozen<T>(
        &self,
        sys: &dyn Syscall,
        mount_point: Option<&Path>,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.all_frozen(sys, mount_point.as_slice(), work)
    }

    /// Runs `work` with every filesystem in `mount_points` frozen at once (a group
    /// snapshot's members): each freeze is recorded durably before it happens, all are
    /// frozen before `work` starts, and every one that was frozen is thawed after it, also
    /// when a later freeze or the work fails. Thawed ones are forgotten; one whose thaw
    /// failed stays recorded for the next start.
    pub fn all_frozen<T, P: AsRef<Path>>(
        &self,
        sys: &dyn Syscall,
        mount_points: &[P],
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut frozen: Vec<(&Path, PathBuf)> = Vec::with_capacity(mount_points.len());
        let mut result = Ok(());
        for mp in mount_points.iter().map(AsRef::as_ref) {
            if frozen.iter().any(|(done, _)| *done == mp) {
                continue;
            }
            match self.freeze_recorded(sys, mp) {
                Ok(record) => frozen.push((mp, record)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let result = result.and_then(|()| match frozen.first() {
            Some((mp, _)) => super::failpoint("block.frozen", mp).and_then(|()| work()),
            None => work(),
        });
        let mut thaw_failed = None;
        for (mp, record) in frozen.iter().rev() {
            match sys.thaw(mp) {
                // Thawed: nothing for the next start to undo.
                Ok(()) => drop(fs::remove_file(record)),
                Err(e) => {
                    tracing::error!(mount_point = %mp.display(), error = %e, "thawing after a copy failed; the next start retries");
                    thaw_failed.get_or_insert(Error::io("thaw", mp)(e));
                }
            }
        }
        match thaw_failed {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// Records the freeze of `mp` durably, then freezes it; the record's path.
    fn freeze_recorded(&self, sys: &dyn Syscall, mp: &Path) -> Result<PathBuf> {
        let record = self.record_of(mp);
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut file = fs::File::create(&record)?;
            std::io::Write::write_all(&mut file, mp.as_os_str().as_encoded_bytes())?;
            file.sync_all()?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(Error::io("record a freeze", &record))?;
        if let Err(e) = sys.freeze(mp) {
            let _ = fs::remove_file(&record);
            return Err(Error::io("freeze", mp)(e));
        }
        Ok(record)
    }
}

/// Usage of a filesystem-mode volume (from its mount) or a raw one (`total`, `allocated`).
pub fn usage(sys: &dyn Syscall, block: bool, volume_path: &Path, total: u64, allocated: u64) -> Result<Usage> {
    if block {
        let used = allocated.min(total);
        return Ok(Usage {
            total_bytes: total,
            used_bytes: used,
            available_bytes: total - used,
            used_inodes: None,
            total_inodes: None,
        });
    }
    let st = sys.statfs(volume_path).map_err(Error::io("statfs", volume_path))?;
    let used_inodes = st.total_inodes.saturating_sub(st.free_inodes);
    Ok(Usage {
        total_bytes: st.total_bytes,
        used_bytes: st.total_bytes.saturating_sub(st.available_bytes),
        available_bytes: st.available_bytes,
        used_inodes: (st.total_inodes > 0).then_some(used_inodes),
        total_inodes: (st.total_inodes > 0).then_some(st.total_inodes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AccessMode;
    use crate::mount::FsStat;
    use crate::mount::fake::{Call, RecordingSyscall};

    fn cap(block: bool, mode: AccessMode) -> Capability {
        Capability { block, fs_type: String::new(), mount_flags: vec![], mode }
    }

    #[test]
    fn mounts_finds_raw_binds_of_nodes_below_dev_by_their_path_in_dev() {
        let table = "30 1 0:5 /loop3 /k/a rw - devtmpfs udev rw\n\
                     31 1 0:5 /mapper/berth-k /k/b rw - devtmpfs udev rw\n\
                     32 1 253:0 / /k/c rw - ext4 /dev/mapper/berth-k rw\n\
                     33 1 0:5 /berth-k /k/d rw - devtmpfs udev rw\n";
        let table = mountinfo::parse(table).expect("parses");
        assert_eq!(mounts(&table, Path::new("/dev/loop3")), [PathBuf::from("/k/a")]);
        assert_eq!(
            mounts(&table, Path::new("/dev/mapper/berth-k")),
            [PathBuf::from("/k/b"), PathBuf::from("/k/c")],
            "a bind of /dev/mapper/berth-k, not of some /dev/berth-k"
        );
    }

    #[test]
    fn formats_only_blank_devices_and_never_reformats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = RecordingSyscall::new(FsStat::default(), "");
        let dev = Path::new("/dev/loop100");
        stage(&fake, dev, dir.path(), &cap(false, AccessMode::SingleNodeWriter), "xfs", false).expect("stage");
        let calls = fake.calls();
        assert_eq!(calls[0], Call::Mkfs { device: dev.into(), fs_type: "xfs".into(), encrypt: false });
        assert!(
            matches!(&calls[2], Call::Mount { fs_type: Some(t), data: Some(d), .. } if t == "xfs" && d == "nouuid")
        );
        assert!(matches!(&calls[1], Call::GrowFsOffline { .. }));
        assert!(matches!(&calls[3], Call::GrowFs { .. }));

        let fake = RecordingSyscall::new(FsStat::default(), "");
        fake.set_signature(dev, Signature::Filesystem("ext4".into()));
        let err = stage(&fake, dev, dir.path(), &cap(false, AccessMode::SingleNodeWriter), "xfs", false)
            .expect_err("mismatch");
        assert!(err.to_string().contains("never reformats"), "{err}");
        fake.set_signature(dev, Signature::PartitionTable("gpt".into()));
        assert!(stage(&fake, dev, dir.path(), &cap(false, AccessMode::SingleNodeWriter), "ext4", false).is_err());
        assert!(fake.calls().is_empty(), "nothing formatted or mounted: {:?}", fake.calls());
    }

    #[test]
    fn failed_formats_mounts_and_growth_count_in_the_errors_metric() {
        let registry = std::sync::Arc::new(crate::metrics::Registry::default());
        let errors = |kind: &str| registry.counters().errors.get(kind).copied().unwrap_or(0);
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = Path::new("/dev/loop100");
        let rw = cap(false, AccessMode::SingleNodeWriter);
        for (op, kind) in [("mkfs", "format"), ("mount", "mount"), ("grow_fs_offline", "resize"), ("grow_fs", "resize")]
        {
            let before = errors(kind);
            let fake = RecordingSyscall::new(FsStat::default(), "");
            fake.fail(op, libc::EIO);
            let staged = crate::metrics::scoped(&registry, || stage(&fake, dev, dir.path(), &rw, "xfs", false));
            assert!(staged.is_err(), "{op}");
            assert_eq!(errors(kind), before + 1, "{op} counts once as {kind}");
        }
    }

    #[test]
    fn ext4_error_counts_come_from_sysfs() {
        let sysfs = tempfile::tempdir().expect("tempdir");
        let dev_dir = tempfile::tempdir().expect("tempdir");
        let device = dev_dir.path().join("loop42");
        fs::write(&device, b"").expect("stand-in device");
        assert_eq!(ext4_errors(sysfs.path(), &device), None, "no ext4 mounted");
        fs::create_dir_all(sysfs.path().join("fs/ext4/loop42")).expect("mkdir");
        fs::write(sysfs.path().join("fs/ext4/loop42/errors_count"), b"3\n").expect("write");
        assert_eq!(ext4_errors(sysfs.path(), &device), Some(3));
    }

    #[test]
    fn a_read_only_stage_of_a_blank_device_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = RecordingSyscall::new(FsStat::default(), "");
        let err = stage(
            &fake,
            Path::new("/dev/loop100"),
            dir.path(),
            &cap(false, AccessMode::SingleNodeReaderOnly),
            "ext4",
            false,
        )
        .expect_err("read-only blank");
        assert!(matches!(err, Error::UnformattedReadOnly { .. }), "{err}");
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn raw_block_binds_the_device_onto_a_file_in_staging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = RecordingSyscall::new(FsStat::default(), "");
        stage(&fake, Path::new("/dev/loop100"), dir.path(), &cap(true, AccessMode::SingleNodeWriter), "ext4", false)
            .expect("stage");
        assert!(dir.path().join(RAW_DEVICE_FILE).is_file());
        assert!(
            matches!(&fake.calls()[0], Call::Mount { source: Some(s), flags, .. } if s == Path::new("/dev/loop100") && *flags == MsFlags::MS_BIND)
        );
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::Mkfs { .. })), "raw volumes are never formatted");
    }
}
