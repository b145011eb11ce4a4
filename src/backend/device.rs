//! Device pools: each volume one whole disk or partition from an allow-list, chosen as
//! the smallest free device that fits. Nothing outside the allow-list is ever touched,
//! and a listed device that already holds any signature is never handed out blank.
//! Deleting a volume wipes the device (signatures, optionally discard or zeroes).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::block::write_whole_file;
use super::{Backend, Capability, Capacity, Condition, Error, Result, Source, StageSource, Usage, blockvol};
use crate::config::{DevicePool as DevicePoolConfig, Wipe};
use crate::mount::{Signature, Syscall};
use crate::progress::{self, Progress};
use crate::state::{AccessKind, Enforced, SnapshotMethod, SnapshotRecord, VolumeRecord};

const CHUNK: usize = 1 << 20;

/// A device pool.
pub struct DevicePool {
    name: String,
    patterns: Vec<String>,
    wipe: Wipe,
    /// Where snapshots of device volumes are kept (a block pool's snapshots directory).
    snapshot_dir: Option<PathBuf>,
    sys: Arc<dyn Syscall>,
    /// Devices handed out, by canonical path, with the volume that holds each.
    allocated: Mutex<BTreeMap<PathBuf, String>>,
}

/// Matches `name` against a pattern with `*` (any run) and `?` (one character).
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

/// Copies `from` to `to` in chunks, reporting bytes done to `progress`.
fn copy_all(from: &mut File, to: &mut File, sparse: bool, progress: &mut Progress) -> std::io::Result<u64> {
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
        total += n as u64;
        progress.update(total);
    }
    Ok(total)
}

impl DevicePool {
    /// Sets up the pool; `existing` lists devices already held by recorded volumes.
    pub fn open(
        config: &DevicePoolConfig,
        sys: Arc<dyn Syscall>,
        snapshot_dir: Option<PathBuf>,
        existing: Vec<(PathBuf, String)>,
    ) -> Result<DevicePool> {
        let pool = DevicePool {
            name: config.name.clone(),
            patterns: config.devices.clone(),
            wipe: config.wipe,
            snapshot_dir,
            sys,
            allocated: Mutex::new(existing.into_iter().collect()),
        };
        let devices = pool.devices()?;
        tracing::info!(pool = %pool.name, devices = devices.len(), wipe = ?pool.wipe, "device pool ready");
        Ok(pool)
    }

    /// Every block device the allow-list names now, canonicalised, with its size.
    pub fn devices(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut found = BTreeMap::new();
        for pattern in &self.patterns {
            let path = Path::new(pattern);
            let names: Vec<PathBuf> = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
                (Some(dir), Some(last)) if last.contains(['*', '?']) => match fs::read_dir(dir) {
                    Ok(entries) => entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(last, n)))
                        .map(|e| e.path())
                        .collect(),
                    Err(_) => Vec::new(),
                },
                _ => vec![path.to_path_buf()],
            };
            for name in names {
                let Ok(canonical) = fs::canonicalize(&name) else { continue };
                let is_block = fs::metadata(&canonical).is_ok_and(|m| m.file_type().is_block_device());
                if !is_block || !canonical.starts_with("/dev") {
                    continue;
                }
                if let Ok(size) = self.sys.device_size(&canonical) {
                    found.insert(canonical, size);
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    fn device_of<'a>(&self, volume: &'a VolumeRecord) -> Result<&'a Path> {
        volume
            .device
            .as_deref()
            .map(Path::new)
            .ok_or_else(|| Error::NotFound(format!("volume {} has no device recorded", volume.id)))
    }

    fn managed<'a>(&self, source: StageSource<'a>) -> Result<&'a VolumeRecord> {
        match source {
            StageSource::Managed(v) => Ok(v),
            StageSource::Static(_) => Err(Error::InvalidArgument("device pools have no static volumes".into())),
        }
    }

    fn snapshot_path(&self, key: &str) -> Result<PathBuf> {
        self.snapshot_dir.as_ref().map(|d| d.join(format!("{key}.img"))).ok_or_else(|| {
            Error::Unimplemented(format!(
                "device pool {} keeps no snapshots: set snapshotPool to a block pool on this node",
                self.name
            ))
        })
    }

    fn write_device(&self, device: &Path, from: &Path) -> Result<()> {
        let mut src = File::open(from).map_err(Error::io("open source", from))?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
            .open(device)
            .map_err(Error::io("open device", device))?;
        let size = src.metadata().ok().map(|m| m.len());
        copy_all(&mut src, &mut dst, false, &mut Progress::new("copy onto device", size))
            .and_then(|_| dst.sync_all())
            .map_err(Error::io("copy onto device", device))?;
        Ok(())
    }
}

impl Backend for DevicePool {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "device"
    }

    fn enforcement(&self) -> Result<Enforced> {
        Ok(Enforced::DeviceSize)
    }

    fn supports_block(&self) -> bool {
        true
    }

    fn formats(&self) -> bool {
        true
    }

    fn capacity(&self) -> Result<Capacity> {
        let devices = self.devices()?;
        let allocated = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let largest_free =
            devices.iter().filter(|(d, _)| !allocated.contains_key(d)).map(|(_, s)| *s).max().unwrap_or(0);
        Ok(Capacity {
            total_bytes: devices.iter().map(|(_, s)| *s).sum(),
            available_bytes: largest_free,
            maximum_volume_bytes: largest_free,
        })
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>) -> Result<()> {
        volume.enforced = Enforced::DeviceSize;
        if volume.device.is_none() {
            let devices = self.devices()?;
            let mut allocated = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((device, _)) = allocated.iter().find(|(_, id)| **id == volume.id) {
                volume.device = Some(device.display().to_string());
            } else {
                let mut free: Vec<_> =
                    devices.iter().filter(|(d, size)| !allocated.contains_key(d) && *size >= volume.capacity).collect();
                free.sort_by_key(|(_, size)| *size);
                let mut chosen = None;
                for (device, size) in free {
                    match self.sys.blkid(device) {
                        Ok(Signature::None) => {
                            chosen = Some((device.clone(), *size));
                            break;
                        }
                        Ok(sig) => {
                            tracing::warn!(device = %device.display(), signature = ?sig, "listed device holds data; not handing it out")
                        }
                        Err(e) => tracing::warn!(device = %device.display(), error = %e, "cannot probe listed device"),
                    }
                }
                let (device, size) = chosen.ok_or_else(|| {
                    Error::Exhausted(format!(
                        "device pool {} has no free blank device of at least {} bytes",
                        self.name, volume.capacity
                    ))
                })?;
                allocated.insert(device.clone(), volume.id.clone());
                volume.device = Some(device.display().to_string());
                volume.capacity = size;
            }
        }
        let device = PathBuf::from(self.device_of(volume)?);
        match source {
            None => Ok(()),
            Some(Source::Snapshot(s)) => self.write_device(&device, &self.snapshot_path(&s.key)?),
            Some(Source::Volume(v)) => {
                let from = PathBuf::from(self.device_of(v)?);
                let freeze = blockvol::filesystem_mount(self.sys.as_ref(), &from)?;
                blockvol::frozen(self.sys.as_ref(), freeze.as_deref(), || self.write_device(&device, &from))
            }
        }
    }

    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()> {
        let Some(device) = volume.device.as_deref().map(PathBuf::from) else {
            return Ok(());
        };
        if device.exists() {
            super::failpoint("device.wipe", &device)?;
            self.sys.wipe_signatures(&device).map_err(Error::io("wipe signatures", &device))?;
            match self.wipe {
                Wipe::Signatures => {}
                Wipe::Discard | Wipe::Zero => {
                    let zero = self.wipe == Wipe::Zero;
                    let total = self.sys.device_size(&device).ok();
                    let what = if zero { "zero device" } else { "discard device" };
                    progress::heartbeat(what, total, || self.sys.clear_device(&device, zero))
                        .map_err(Error::io(what, &device))?
                }
            }
        }
        self.allocated.lock().unwrap_or_else(|e| e.into_inner()).remove(&device);
        tracing::info!(volume.id = %volume.id, device = %device.display(), wipe = ?self.wipe, "device wiped and released");
        Ok(())
    }

    fn expand_volume(&self, volume: &VolumeRecord, bytes: u64) -> Result<bool> {
        let device = self.device_of(volume)?;
        let size = self.sys.device_size(device).map_err(Error::io("device size", device))?;
        if size < bytes {
            return Err(Error::OutOfRange(format!(
                "volume {} is the whole device {} of {size} bytes; it cannot grow to {bytes}",
                volume.id,
                device.display()
            )));
        }
        Ok(true)
    }

    fn node_expand(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<()> {
        if volume.access == AccessKind::Mount {
            let device = self.device_of(volume)?;
            let fs_type = volume.fs_type.as_deref().unwrap_or(super::block::DEFAULT_FS);
            self.sys
                .grow_fs(fs_type, device, volume_path)
                .inspect_err(|_| crate::metrics::record_error("resize"))
                .map_err(Error::io("grow filesystem", volume_path))?;
        }
        Ok(())
    }

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord) -> Result<()> {
        let dest = self.snapshot_path(&snapshot.key)?;
        let device = PathBuf::from(self.device_of(volume)?);
        if !dest.exists() {
            let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
            let freeze = blockvol::filesystem_mount(self.sys.as_ref(), &device)?;
            let size = self.sys.device_size(&device).map_err(Error::io("device size", &device))?;
            blockvol::frozen(self.sys.as_ref(), freeze.as_deref(), || {
                write_whole_file(&dir, &format!("{}.img", snapshot.key), |dst| {
                    let mut src = File::open(&device)?;
                    let mut out = dst.try_clone()?;
                    copy_all(&mut src, &mut out, true, &mut Progress::new("copy device", Some(size)))?;
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

    fn condition(&self, volume: &VolumeRecord) -> Condition {
        match volume.device.as_deref().map(fs::metadata) {
            Some(Ok(m)) if m.file_type().is_block_device() => volume
                .device
                .as_deref()
                .map_or_else(Condition::healthy, |d| blockvol::filesystem_condition(Path::new(d))),
            Some(Ok(_)) => Condition::abnormal(format!("{:?} is not a block device", volume.device)),
            Some(Err(e)) => Condition::abnormal(format!("device {:?} is unavailable: {e}", volume.device)),
            None => Condition::abnormal("no device is recorded for this volume"),
        }
    }

    fn usage(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<Usage> {
        let device = self.device_of(volume)?;
        let size = self.sys.device_size(device).map_err(Error::io("device size", device))?;
        blockvol::usage(self.sys.as_ref(), volume.access == AccessKind::Block, volume_path, size, size)
    }

    fn static_path(&self, _sub_path: &str) -> Result<PathBuf> {
        Err(Error::InvalidArgument(format!(
            "pool {} is a device pool; static volumes by subPath are served by hostpath pools",
            self.name
        )))
    }

    fn stage(&self, source: StageSource<'_>, staging: &Path, capability: &Capability) -> Result<()> {
        let volume = self.managed(source)?;
        let device = self.device_of(volume)?;
        let fs_type = volume.fs_type.as_deref().unwrap_or(super::block::DEFAULT_FS);
        blockvol::stage(self.sys.as_ref(), device, staging, capability, fs_type)
    }

    fn unstage(&self, _source: StageSource<'_>) -> Result<()> {
        Ok(())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path) -> Result<bool> {
        blockvol::is_mounted_at(self.sys.as_ref(), self.device_of(self.managed(source)?)?, path)
    }

    fn mounts(&self, source: StageSource<'_>) -> Result<Vec<PathBuf>> {
        blockvol::mounts(self.sys.as_ref(), self.device_of(self.managed(source)?)?)
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
