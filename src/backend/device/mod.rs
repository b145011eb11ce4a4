//! Device pools: each volume one whole disk or partition from an allow-list, chosen as
//! the smallest free device that fits. Nothing outside the allow-list is ever touched,
//! and a listed device that already holds any signature is never handed out blank. A
//! volume's record names its device by the allow-list's path and the disk's hardware
//! identity ([`identity`]), checked before every mount and wipe. Deleting a volume
//! wipes the device ([`wipe`]: zeros by default).
//!
//! `allocation` lists the disks and chooses a new volume's; `copy` clones, restores and
//! snapshots whole disks.

mod allocation;
mod copy;
mod identity;
pub mod wipe;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crypt::{self, CryptLayer};
use super::stack::{self, Stack};
use super::{
    Capability, Capacity, Condition, Controller, Error, Node, PoolInfo, PoolKind, Result, Source, StageSource, Usage,
    Work, blockvol,
};
use crate::config::{DevicePool as DevicePoolConfig, Wipe};
use crate::crypt::{Key, Scheme};
use crate::mount::Syscall;
use crate::mount::mountinfo::MountEntry;
use crate::state::{AccessKind, Enforced, Layer, Phase, SnapshotMethod, SnapshotRecord, VolumeRecord};
use allocation::Held;
pub use allocation::{Device, Holdings, glob_match};
use identity::{Claim, Conflict};
pub use identity::{Mismatch, Replaced};

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

impl DevicePool {
    /// Records the freezes of its copies in `freezes` from now on.
    #[must_use]
    pub fn with_freezes(mut self, freezes: blockvol::Freezes) -> DevicePool {
        self.freezes = Some(freezes);
        self
    }

    /// Sets up the pool. `recorded` lists every volume record of every device pool that
    /// names a device: this pool's own join `held` (shared by every device pool) and are
    /// never handed out again, and records that name one device (by where their paths lead
    /// now, or by hardware identity) are reported and refused.
    pub fn open(
        config: &DevicePoolConfig,
        sys: Arc<dyn Syscall>,
        snapshot_dir: Option<PathBuf>,
        recorded: &[Arc<VolumeRecord>],
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
        held.lock().extend(recorded.iter().filter(|v| v.pool == config.name).filter_map(|v| {
            let path = PathBuf::from(v.device.as_deref()?);
            let serial = v.device_identity.as_ref().and_then(|i| i.serial.clone());
            Some((v.id.clone(), Held { path, serial }))
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

    /// The device stack of `volume`: its disk, and the crypt layer on top for an
    /// encrypted volume.
    fn stack<'a>(&'a self, volume: &'a VolumeRecord) -> Result<Stack<'a>> {
        self.stack_with(volume, None)
    }

    /// [`DevicePool::stack`] with the volume's key, which opening its crypt layer needs.
    fn stack_with<'a>(&'a self, volume: &'a VolumeRecord, key: Option<&'a Key>) -> Result<Stack<'a>> {
        Stack::of(volume, &[Layer::Disk], |layer| match layer {
            Layer::Disk => Some(Box::new(DiskLayer { pool: self, volume }) as Box<dyn stack::Ops>),
            Layer::Crypt => Some(Box::new(CryptLayer { sys: self.sys.as_ref(), volume, key }) as Box<dyn stack::Ops>),
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
        self.free_space()
    }

    /// Chooses the volume's disk now ([`DevicePool::choose`]), unless its record names one.
    fn reserve(&self, volume: &mut VolumeRecord) -> Result<bool> {
        if volume.device.is_some() {
            return Ok(false);
        }
        self.choose(volume)
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>, _work: &Work) -> Result<()> {
        volume.enforced = Enforced::DeviceSize;
        volume.layers = crypt::layers(Layer::Disk, volume);
        self.reserve(volume)?;
        let device = self.present(volume)?;
        let Some(source) = source else { return Ok(()) };
        self.fill(&device, source)?;
        // The copy brought a filesystem: its UUID is the disk's signature from now on.
        if let Some(noted) = self.note_staged(volume)? {
            *volume = noted;
        }
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
            // A wipe that erases only signatures would leave the keyslots: they go first.
            self.stack(volume)?.close()?;
            crypt::wipe_header(self.sys.as_ref(), &volume.id, crypt::is_luks(volume.encryption.as_ref()), &device)?;
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

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord, work: &Work) -> Result<()> {
        let dest = self.snapshot_path(&snapshot.key)?;
        if !dest.exists() {
            self.copy_to_image(volume, &dest, &snapshot.key, work.is_held_still())?;
        }
        snapshot.method = Some(SnapshotMethod::Copy);
        snapshot.size = fs::metadata(&dest).map_err(Error::io("stat snapshot", &dest))?.len();
        Ok(())
    }

    /// A snapshot is an image of the whole disk in the snapshot pool: a copy reads it as a
    /// block volume's image, and it restores into a block pool anywhere.
    fn snapshot_content(&self, snapshot: &SnapshotRecord) -> Option<super::Content> {
        self.snapshot_path(&snapshot.key).ok().map(super::Content::Image)
    }

    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let path = self.snapshot_path(&snapshot.key)?;
        if path.exists() {
            crypt::wipe_header(self.sys.as_ref(), &snapshot.id, crypt::is_luks(snapshot.encryption.as_ref()), &path)?;
        }
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

    /// LUKS2, where this node has cryptsetup and device-mapper.
    fn check_encryption(&self, scheme: Scheme, access: AccessKind, fs_type: Option<&str>) -> Result<()> {
        crypt::check(self.sys.as_ref(), &self.info.name, scheme, access, fs_type)
    }

    fn quiesce(&self, volume: &VolumeRecord, table: &[MountEntry]) -> Result<super::Quiesce> {
        self.stack(volume)?.quiesce(table)
    }

    /// Each volume's key goes to its crypt layer at stage.
    fn keyring(&self) -> Option<&dyn super::Keyring> {
        None
    }
}

impl Node for DevicePool {
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String> {
        super::bind_mount_flags(flags)
    }

    fn static_path(&self, _sub_path: &str) -> Result<PathBuf> {
        Err(Error::no_static_volumes(&self.info))
    }

    fn stage(&self, source: StageSource<'_>, staging: &Path, capability: &Capability, key: Option<&Key>) -> Result<()> {
        // Opening the disk layer checks the disk is present and is the recorded one.
        self.stack_with(self.managed(source)?, key)?.stage(self.sys.as_ref(), staging, capability, key)
    }

    /// Records the UUID of the filesystem on a filesystem volume's disk, once there is one.
    fn note_staged(&self, volume: &VolumeRecord) -> Result<Option<VolumeRecord>> {
        if volume.access != AccessKind::Mount || volume.device_identity.as_ref().is_none_or(|i| i.fs_uuid.is_some()) {
            return Ok(None);
        }
        let device = self.present(volume)?;
        let Some(uuid) = self.sys.fs_uuid(&device).map_err(Error::io("probe", &device))? else {
            return Ok(None);
        };
        let mut noted = volume.clone();
        let Some(identity) = noted.device_identity.as_mut() else { return Ok(None) };
        tracing::info!(volume.id = %volume.id, fs.uuid = %uuid, "recorded the filesystem UUID of a device volume");
        identity.fs_uuid = Some(uuid);
        Ok(Some(noted))
    }

    fn unstage(&self, source: StageSource<'_>) -> Result<()> {
        self.stack(self.managed(source)?)?.unstage(self.sys.as_ref())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path, table: &[MountEntry]) -> Result<bool> {
        self.stack(self.managed(source)?)?.is_mounted_at(table, path)
    }

    fn mounts(&self, source: StageSource<'_>, table: &[MountEntry]) -> Result<Vec<PathBuf>> {
        self.stack(self.managed(source)?)?.mounts(table)
    }

    fn node_expand(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<()> {
        self.present(volume)?;
        self.stack(volume)?.expand(self.sys.as_ref(), volume_path)
    }

    fn publish_from(&self, source: StageSource<'_>, staging: &Path) -> PathBuf {
        blockvol::publish_from(source, staging)
    }

    fn finish_stage(&self, source: StageSource<'_>, staging: &Path, key: Option<&Key>) -> Result<()> {
        self.stack(self.managed(source)?)?.unlock(self.sys.as_ref(), staging, key)
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
