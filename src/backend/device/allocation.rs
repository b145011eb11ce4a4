//! Which disks a device pool has and which are free: the allow-list's patterns, the
//! block devices they name now, the disks every device pool's records hold, and the choice
//! of a new volume's disk (the smallest blank one that fits and no record names).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::DevicePool;
use crate::backend::{Capacity, Error, Result};
use crate::mount::Signature;
use crate::state::{DeviceIdentity, VolumeRecord};

/// The devices the records of every device pool name, by volume ID, shared by the pools
/// of one process: a disk that two pools' allow-lists both match is handed out once.
#[derive(Debug, Clone, Default)]
pub struct Holdings(Arc<Mutex<BTreeMap<String, Held>>>);

impl Holdings {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A device a record names.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) path: PathBuf,
    pub(super) serial: Option<String>,
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

impl DevicePool {
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

    /// The pool's space as the scheduler should see it: every listed disk, and the largest
    /// one a volume could get.
    pub(super) fn free_space(&self) -> Result<Capacity> {
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

    /// Chooses the smallest blank device that fits, which no record names, holds it for
    /// `volume`, and records its allow-list path, hardware identity and size in the
    /// volume; [`Error::NoBlankDevice`] when there is none.
    pub(super) fn choose(&self, volume: &mut VolumeRecord) -> Result<bool> {
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
