//! Device pools: each volume one whole disk or partition from an allow-list, chosen as
//! the smallest free device that fits. Nothing outside the allow-list is ever touched,
//! and a listed device that already holds any signature is never handed out blank. A
//! volume's record names its device by the allow-list's path and the disk's hardware
//! identity ([`identity`]), checked before every mount and wipe. Deleting a volume
//! wipes the device ([`wipe`]: zeros by default).

mod identity;
pub mod wipe;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::image::write_whole_file;
use super::stack::{self, Stack};
use super::{
    Capability, Capacity, Condition, Controller, Error, Node, PoolInfo, PoolKind, Result, Source, StageSource, Usage,
    blockvol,
};
use crate::config::{DevicePool as DevicePoolConfig, Wipe};
use crate::mount::{Signature, Syscall};
use crate::progress::Progress;
use crate::state::{AccessKind, DeviceIdentity, Enforced, Layer, Phase, SnapshotMethod, SnapshotRecord, VolumeRecord};
use identity::{Claim, Conflict};
pub use identity::{Mismatch, Replaced};

const CHUNK: usize = 1 << 20;

/// A device pool.
pub struct DevicePool {
    info: PoolInfo,
    patterns: Vec<String>,
    wipe: Wipe,
    /// Where snapshots of device volumes are kept (a block pool's snapshots directory).
    snapshot_dir: Option<PathBuf>,
    sys: Arc<dyn Syscall>,
    /// The device each volume's record names, by volume ID: never handed out again.
    held: Holdings,
    /// Volumes whose records name a device another record names too, with why: neither
    /// is mounted or wiped until an operator removes the wrong record.
    conflicts: BTreeMap<String, Conflict>,
    /// Where the freezes of copies from mounted volumes are recorded first, so a crash
    /// never leaves a filesystem frozen (see [`blockvol::Freezes`]).
    freezes: Option<blockvol::Freezes>,
}

/// The devices the records of every device pool name, by volume ID, shared by the pools
/// of one process: a disk that two pools' allow-lists both match is handed out once.
#[derive(Debug, Clone, Default)]
pub struct Holdings(Arc<Mutex<BTreeMap<String, Held>>>);

impl Holdings {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A device a record names.
#[derive(Debug, Clone)]
struct Held {
    path: PathBuf,
    serial: Option<String>,
}

/// A block device the allow-list names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The path as the allow-list names it (a /dev/disk/by-id link, or /dev/sdb).
    pub name: PathBuf,
    /// The kernel's name it leads to now.
    pub canonical: PathBuf,
    pub size: u64,
}

/// Matches `name` against a pattern with `*` (any run) and `?` (one character).
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Copies `from` to `to` in chunks, reporting bytes done to `progress`; `midway` names a
/// fault point passed after the first chunk.
fn copy_all(
    from: &mut File,
    to: &mut File,
    sparse: bool,
    progress: &mut Progress,
    midway: Option<&'static str>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if sparse && buf[..n].iter().all(|b| *b == 0) {
            // Leave a hole in the image; the final length is set by the caller.
            to.seek(SeekFrom::Current(i64::try_from(n).unwrap_or(i64::MAX)))?;
        } else {
            to.write_all(&buf[..n])?;
        }
        if total == 0
            && let Some(point) = midway
        {
            crate::failpoint::hit(point)?;
        }
        total += n as u64;
        progress.update(total);
    }
    Ok(total)
}

impl DevicePool {
    /// Sets up the pool. `recorded` lists every volume record of every device pool that
    /// names a device: this pool's own join `held` (shared by every device pool) and are
    /// never handed out again, and records that name one device (by where their paths lead
    /// now, or by hardware identity) are reported and refused.
    /// Records the freezes of its copies in `freezes` from now on.
    #[must_use]
    pub fn with_freezes(mut self, freezes: blockvol::Freezes) -> DevicePool {
        self.freezes = Some(freezes);
        self
    }

    /// Runs `work` with the filesystem at `mount_point` frozen, recorded first when the
    /// pool has somewhere to record it.
    fn frozen<T>(&self, mount_point: Option<&Path>, work: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.freezes {
            Some(freezes) => freezes.frozen(self.sys.as_ref(), mount_point, work),
            None => blockvol::frozen(self.sys.as_ref(), mount_point, work),
        }
    }

    pub fn open(
        config: &DevicePoolConfig,
        sys: Arc<dyn Syscall>,
        snapshot_dir: Option<PathBuf>,
        recorded: Vec<VolumeRecord>,
        held: Holdings,
    ) -> Result<DevicePool> {
        let claims: Vec<Claim> = recorded
            .iter()
            .filter_map(|v| {
                let path = v.device.as_deref()?;
                Some(Claim {
                    volume: v.id.clone(),
                    resolved: fs::canonicalize(path).ok(),
                    serial: v.device_identity.as_ref().and_then(|i| i.serial.clone()),
                })
            })
            .collect();
        let conflicts: BTreeMap<String, Conflict> = identity::conflicts(&claims)
            .into_iter()
            .filter(|(id, _)| recorded.iter().any(|v| &v.id == id && v.pool == config.name))
            .collect();
        for (volume, conflict) in &conflicts {
            tracing::error!(pool = %config.name, volume.id = %volume, "{}", conflict.error(volume));
        }
        held.lock().extend(recorded.into_iter().filter(|v| v.pool == config.name).filter_map(|v| {
            let path = PathBuf::from(v.device.as_deref()?);
            Some((v.id, Held { path, serial: v.device_identity.and_then(|i| i.serial) }))
        }));
        let pool = DevicePool {
            info: PoolInfo { grows_within_device: true, ..PoolInfo::devices(&config.name, PoolKind::Device) },
            patterns: config.devices.clone(),
            wipe: config.wipe,
            snapshot_dir,
            sys,
            held,
            conflicts,
            freezes: None,
        };
        let devices = pool.devices()?;
        tracing::info!(pool = %pool.info.name, devices = devices.len(), wipe = ?pool.wipe, "device pool ready");
        if pool.wipe == Wipe::Signatures {
            tracing::warn!(pool = %pool.info.name, "wipe: signatures erases only signatures: the next volume on a device can read what the last one wrote");
        }
        Ok(pool)
    }

    /// Every block device the allow-list names now, once each (by the first name in
    /// sorted order that leads to it), with its size.
    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut found: BTreeMap<PathBuf, Device> = BTreeMap::new();
        for pattern in &self.patterns {
            let path = Path::new(pattern);
            let mut names: Vec<PathBuf> = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
                (Some(dir), Some(last)) if last.contains(['*', '?']) => match fs::read_dir(dir) {
                    Ok(entries) => entries
                        .filter_map(std::result::Result::ok)
                        .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(last, n)))
                        .map(|e| e.path())
                        .collect(),
                    Err(_) => Vec::new(),
                },
                _ => vec![path.to_path_buf()],
            };
            names.sort();
            for name in names {
                let Ok(canonical) = fs::canonicalize(&name) else { continue };
                let is_block = fs::metadata(&canonical).is_ok_and(|m| m.file_type().is_block_device());
                if !is_block || !canonical.starts_with("/dev") || found.contains_key(&canonical) {
                    continue;
                }
                if let Ok(size) = self.sys.device_size(&canonical) {
                    found.insert(canonical.clone(), Device { name, canonical, size });
                }
            }
        }
        Ok(found.into_values().collect())
    }

    fn device_of<'a>(&self, volume: &'a VolumeRecord) -> Result<&'a Path> {
        volume.device.as_deref().map(Path::new).ok_or_else(|| Error::NoDeviceRecorded { volume: volume.id.clone() })
    }

    /// [`DevicePool::locate`] for work that needs the device present.
    fn present(&self, volume: &VolumeRecord) -> Result<PathBuf> {
        self.locate(volume)?.ok_or_else(|| Error::DeviceMissing {
            volume: volume.id.clone(),
            device: volume.device.clone().unwrap_or_default(),
        })
    }

    /// The device stack of `volume`: its disk.
    fn stack<'a>(&'a self, volume: &'a VolumeRecord) -> Result<Stack<'a>> {
        Stack::of(volume, &[Layer::Disk], |layer| match layer {
            Layer::Disk => Some(Box::new(DiskLayer { pool: self, volume }) as Box<dyn stack::Ops>),
            Layer::Loop => None,
        })
    }

    fn managed<'a>(&self, source: StageSource<'a>) -> Result<&'a VolumeRecord> {
        match source {
            StageSource::Managed(v) => Ok(v),
            StageSource::Static(_) => Err(Error::no_static_volumes(&self.info)),
        }
    }

    fn snapshot_path(&self, key: &str) -> Result<PathBuf> {
        self.snapshot_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.img")))
            .ok_or_else(|| Error::NoSnapshots { pool: self.info.name.clone() })
    }

    fn write_device(&self, device: &Path, from: &Path) -> Result<()> {
        let mut src = File::open(from).map_err(Error::io("open source", from))?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
            .open(device)
            .map_err(Error::io("open device", device))?;
        let size = src.metadata().ok().map(|m| m.len());
        copy_all(&mut src, &mut dst, false, &mut Progress::new("copy onto device", size), Some("device.copy"))
            .and_then(|_| dst.sync_all())
            .map_err(Error::io("copy onto device", device))?;
        Ok(())
    }
}

impl Controller for DevicePool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    /// A volume is a whole disk: there is no pool filesystem to go read-only.
    fn check_writable(&self) -> Result<()> {
        Ok(())
    }

    fn enforcement(&self) -> Result<Enforced> {
        Ok(Enforced::DeviceSize)
    }

    fn capacity(&self) -> Result<Capacity> {
        let devices = self.devices()?;
        let held = self.held.lock();
        // Only disks a volume could get: held by no record and blank (a listed disk that
        // holds data is never handed out, so it is no capacity for the scheduler).
        let largest_free = devices
            .iter()
            .filter(|d| self.holder(&held, d, &self.serial(&d.canonical)).is_none())
            .filter(|d| matches!(self.sys.blkid(&d.canonical), Ok(Signature::None)))
            .map(|d| d.size)
            .max()
            .unwrap_or(0);
        Ok(Capacity {
            total_bytes: devices.iter().map(|d| d.size).sum(),
            available_bytes: largest_free,
            maximum_volume_bytes: largest_free,
        })
    }

    /// Chooses the smallest blank device that fits, which no record names, and records
    /// its allow-list path, hardware identity and size in the volume.
    fn reserve(&self, volume: &mut VolumeRecord) -> Result<bool> {
        if volume.device.is_some() {
            return Ok(false);
        }
        let devices = self.devices()?;
        let mut held = self.held.lock();
        let mut free: Vec<(&Device, Option<String>)> = devices
            .iter()
            .filter(|d| d.size >= volume.capacity)
            .map(|d| (d, self.serial(&d.canonical)))
            .filter(|(d, serial)| self.holder(&held, d, serial).is_none())
            .collect();
        free.sort_by_key(|(d, _)| d.size);
        let mut chosen = None;
        for (device, serial) in free {
            match self.sys.blkid(&device.canonical) {
                Ok(Signature::None) => {
                    chosen = Some((device, serial));
                    break;
                }
                Ok(sig) => {
                    tracing::warn!(device = %device.name.display(), signature = ?sig, "listed device holds data; not handing it out");
                }
                Err(e) => tracing::warn!(device = %device.name.display(), error = %e, "cannot probe listed device"),
            }
        }
        let (device, serial) =
            chosen.ok_or_else(|| Error::NoBlankDevice { pool: self.info.name.clone(), bytes: volume.capacity })?;
        held.insert(volume.id.clone(), Held { path: device.name.clone(), serial: serial.clone() });
        volume.device = Some(device.name.display().to_string());
        volume.device_identity = Some(DeviceIdentity {
            kernel_name: device.canonical.display().to_string(),
            serial,
            size: device.size,
            fs_uuid: None,
        });
        volume.capacity = device.size;
        tracing::info!(volume.id = %volume.id, device = %device.name.display(), kernel.name = %device.canonical.display(), "device chosen");
        Ok(true)
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>) -> Result<()> {
        volume.enforced = Enforced::DeviceSize;
        volume.layers = vec![Layer::Disk];
        self.reserve(volume)?;
        let device = self.present(volume)?;
        match source {
            None => return Ok(()),
            Some(Source::Snapshot(s)) => self.write_device(&device, &self.snapshot_path(&s.key)?)?,
            Some(Source::Volume(v)) => {
                let from = self.present(v)?;
                let freeze = self.stack(v)?.filesystem_mount(self.sys.as_ref())?;
                self.frozen(freeze.as_deref(), || self.write_device(&device, &from))?;
            }
        }
        // The copy brought a filesystem: its UUID is the disk's signature from now on.
        self.note_staged(volume)?;
        Ok(())
    }

    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()> {
        if volume.device.is_none() {
            return Ok(());
        }
        // A disk that is gone holds nothing to wipe here; one that is not the recorded
        // disk is refused inside `locate`.
        // An empty volume whose creation is rolled back was never written: berth formats
        // only at stage, after creation. Erasing signatures is enough, even for large disks.
        let untouched = volume.phase == Phase::Creating && volume.source.is_none();
        if let Some(device) = self.locate(volume)? {
            wipe::wipe(self.sys.as_ref(), &device, if untouched { Wipe::Signatures } else { self.wipe })?;
        }
        self.held.lock().remove(&volume.id);
        tracing::info!(volume.id = %volume.id, device = volume.device.as_deref().unwrap_or_default(), wipe = ?self.wipe, "device wiped and released");
        Ok(())
    }

    fn expand_volume(&self, volume: &VolumeRecord, bytes: u64) -> Result<bool> {
        let device = self.present(volume)?;
        let size = self.sys.device_size(&device).map_err(Error::io("device size", &device))?;
        if size < bytes {
            return Err(Error::DiskTooSmall { volume: volume.id.clone(), device, size, bytes });
        }
        Ok(true)
    }

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord) -> Result<()> {
        let dest = self.snapshot_path(&snapshot.key)?;
        if !dest.exists() {
            let device = self.present(volume)?;
            let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
            let freeze = self.stack(volume)?.filesystem_mount(self.sys.as_ref())?;
            let size = self.sys.device_size(&device).map_err(Error::io("device size", &device))?;
            self.frozen(freeze.as_deref(), || {
                write_whole_file(&dir, &format!("{}.img", snapshot.key), |dst| {
                    let mut src = File::open(&device)?;
                    let mut out = dst.try_clone()?;
                    copy_all(&mut src, &mut out, true, &mut Progress::new("copy device", Some(size)), None)?;
                    dst.set_len(size)
                })
            })?;
        }
        snapshot.method = Some(SnapshotMethod::Copy);
        snapshot.size = fs::metadata(&dest).map_err(Error::io("stat snapshot", &dest))?.len();
        Ok(())
    }

    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let path = self.snapshot_path(&snapshot.key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove snapshot", &path)(e)),
        }
    }

    /// The record's own fields say everything a node needs.
    fn volume_context(&self, _volume: &VolumeRecord) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn condition(&self, volume: &VolumeRecord) -> Condition {
        match self.locate(volume) {
            Ok(Some(device)) => blockvol::filesystem_condition(&device),
            Ok(None) => Condition::abnormal(format!(
                "device {} is not present on this node",
                volume.device.as_deref().unwrap_or_default()
            )),
            Err(e) => Condition::abnormal(e.to_string()),
        }
    }

    /// The disks are the allow-list's; snapshots are in a block pool's directory, which
    /// that pool reports.
    fn unaccounted(&self, _known: &HashSet<String>) -> Vec<PathBuf> {
        Vec::new()
    }
}

impl Node for DevicePool {
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String> {
        super::bind_mount_flags(flags)
    }

    fn static_path(&self, _sub_path: &str) -> Result<PathBuf> {
        Err(Error::no_static_volumes(&self.info))
    }

    fn stage(&self, source: StageSource<'_>, staging: &Path, capability: &Capability) -> Result<()> {
        let volume = self.managed(source)?;
        self.present(volume)?;
        self.stack(volume)?.stage(self.sys.as_ref(), staging, capability)
    }

    /// Records the UUID of the filesystem on a filesystem volume's disk, once there is one.
    fn note_staged(&self, volume: &mut VolumeRecord) -> Result<bool> {
        if volume.access != AccessKind::Mount || volume.device_identity.as_ref().is_none_or(|i| i.fs_uuid.is_some()) {
            return Ok(false);
        }
        let device = self.present(volume)?;
        let uuid = self.sys.fs_uuid(&device).map_err(Error::io("probe", &device))?;
        match (uuid, volume.device_identity.as_mut()) {
            (Some(uuid), Some(identity)) => {
                tracing::info!(volume.id = %volume.id, fs.uuid = %uuid, "recorded the filesystem UUID of a device volume");
                identity.fs_uuid = Some(uuid);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn unstage(&self, source: StageSource<'_>) -> Result<()> {
        self.stack(self.managed(source)?)?.unstage(self.sys.as_ref())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path) -> Result<bool> {
        self.stack(self.managed(source)?)?.is_mounted_at(self.sys.as_ref(), path)
    }

    fn mounts(&self, source: StageSource<'_>) -> Result<Vec<PathBuf>> {
        self.stack(self.managed(source)?)?.mounts(self.sys.as_ref())
    }

    fn node_expand(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<()> {
        self.present(volume)?;
        self.stack(volume)?.expand(self.sys.as_ref(), volume_path)
    }

    fn usage(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<Usage> {
        let device = self.present(volume)?;
        let size = self.sys.device_size(&device).map_err(Error::io("device size", &device))?;
        self.stack(volume)?.usage(self.sys.as_ref(), volume_path, size, size)
    }
}

/// The disk layer: a device pool volume's whole disk, found only after its identity
/// checks ([`DevicePool::locate`]). It is always the bottom of its stack, opens nothing
/// and closes nothing: the disk is there or it is not.
struct DiskLayer<'a> {
    pool: &'a DevicePool,
    volume: &'a VolumeRecord,
}

impl stack::Ops for DiskLayer<'_> {
    fn find(&self, _below: Option<&Path>) -> Result<Option<PathBuf>> {
        self.pool.locate(self.volume)
    }

    fn open(&self, _below: Option<&Path>) -> Result<PathBuf> {
        self.pool.present(self.volume)
    }

    fn close(&self, _device: &Path) -> Result<()> {
        Ok(())
    }

    /// A disk is the size it is: expansion checked that it is large enough.
    fn grow(&self, _device: &Path) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_device_names() {
        assert!(glob_match("nvme-*", "nvme-Samsung_SSD_1"));
        assert!(glob_match("loop?", "loop7"));
        assert!(!glob_match("loop?", "loop17"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("sd*", "nvme0n1"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
    }
}
