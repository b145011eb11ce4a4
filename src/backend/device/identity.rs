//! Which disk a device-pool volume lives on. The kernel's names (/dev/sdb) follow probe
//! order and change between boots, so a record names its device as the pool's allow-list
//! does (a /dev/disk/by-id link) and keeps the disk's hardware identity and size; both are
//! checked before anything mounts or wipes the device. Two records that name one device
//! are refused rather than guessed between.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{Device, DevicePool, Held, glob_match};
use crate::backend::{Error, Result};
use crate::state::{DeviceIdentity, Phase, VolumeRecord};

/// A device as found now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What the recorded path resolves to now (/dev/sdc).
    pub kernel_name: PathBuf,
    pub serial: Option<String>,
    pub size: u64,
    /// Read only when a filesystem UUID was recorded.
    pub fs_uuid: Option<String>,
}

/// How the device found now differs from the one recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Another hardware identity (or one where none was, or none where one was).
    Identity { now: Option<String>, recorded: Option<String> },
    /// Another filesystem UUID, or none where one was recorded.
    FsUuid { now: Option<String>, recorded: String },
    /// Another size, not explained by a disk of the recorded identity grown in place.
    Size { now: u64, recorded: u64 },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Identity { now, recorded } => {
                write!(f, "its identity is {}, not {}", describe_serial(now), describe_serial(recorded))
            }
            Mismatch::FsUuid { now, recorded } => {
                write!(
                    f,
                    "its filesystem UUID is {}, not {recorded}",
                    now.as_deref().unwrap_or("absent (no filesystem)")
                )
            }
            Mismatch::Size { now, recorded } => write!(f, "it holds {now} bytes, not {recorded}"),
        }
    }
}

/// How the device found now differs from the one recorded, or `None` when it is the one.
/// The hardware identity must be equal (a disk that had none must still have none); the
/// size must be equal too, except that a disk with the recorded identity may have grown
/// (a SAN LUN resized in place).
pub fn differs(recorded: &DeviceIdentity, now: &Observed) -> Option<Mismatch> {
    if recorded.serial != now.serial {
        return Some(Mismatch::Identity { now: now.serial.clone(), recorded: recorded.serial.clone() });
    }
    if let Some(uuid) = &recorded.fs_uuid
        && recorded.fs_uuid != now.fs_uuid
    {
        return Some(Mismatch::FsUuid { now: now.fs_uuid.clone(), recorded: uuid.clone() });
    }
    let grown_in_place = recorded.serial.is_some() && now.size > recorded.size;
    if now.size != recorded.size && !grown_in_place {
        return Some(Mismatch::Size { now: now.size, recorded: recorded.size });
    }
    None
}

/// A volume's recorded device path now leads to another disk: what was recorded, what the
/// path leads to, how they differ, and where the recorded disk is now.
#[derive(Debug)]
pub struct Replaced {
    pub volume: String,
    /// The recorded path, as the allow-list names it.
    pub path: PathBuf,
    pub recorded: DeviceIdentity,
    /// The device the path leads to now.
    pub found: PathBuf,
    pub mismatch: Mismatch,
    /// The recorded disk, found by its hardware identity among the devices the allow-list
    /// names; `None` when it is not among them.
    pub moved_to: Option<Device>,
}

impl std::error::Error for Replaced {}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, recorded) = (self.path.display(), &self.recorded);
        write!(
            f,
            "volume {} was created on {path} ({}, identity {}, {} bytes), but {path} now leads to {}, another device: {}. \
             berth neither mounts nor wipes it. ",
            self.volume,
            recorded.kernel_name,
            describe_serial(&recorded.serial),
            recorded.size,
            self.found.display(),
            self.mismatch,
        )?;
        match &self.moved_to {
            Some(d) => write!(
                f,
                "The recorded disk is now {} ({}); fix the link, or the pool's allow-list, and retry.",
                d.canonical.display(),
                d.name.display()
            ),
            None => f.write_str("The recorded disk is not among the devices the allow-list names on this node."),
        }
    }
}

/// How a message names a hardware identity.
pub fn describe_serial(serial: &Option<String>) -> String {
    serial.as_deref().map_or_else(|| "none (the kernel exposes no serial or WWN)".to_string(), str::to_string)
}

/// What one record says about its device, for [`conflicts`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub volume: String,
    /// The recorded path resolved now, when it resolves.
    pub resolved: Option<PathBuf>,
    pub serial: Option<String>,
}

/// A device that the records of other volumes name too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Where the records' paths lead now, or the hardware identity they share.
    pub device: String,
    /// The other volumes whose records name it.
    pub others: Vec<String>,
}

impl Conflict {
    /// The error that refuses `volume`'s device.
    pub fn error(&self, volume: &str) -> Error {
        Error::DeviceClaimedTwice {
            volume: volume.to_string(),
            device: self.device.clone(),
            others: self.others.clone(),
        }
    }
}

/// Volumes whose records name a device that another record names too (by where the path
/// leads now, or by hardware identity), each with the device and the other volumes.
pub fn conflicts(claims: &[Claim]) -> BTreeMap<String, Conflict> {
    let mut by_device: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for claim in claims {
        if let Some(dev) = &claim.resolved {
            by_device.entry(dev.display().to_string()).or_default().push(&claim.volume);
        }
        if let Some(serial) = &claim.serial {
            by_device.entry(serial.clone()).or_default().push(&claim.volume);
        }
    }
    let mut out = BTreeMap::new();
    for (device, mut volumes) in by_device {
        volumes.sort_unstable();
        volumes.dedup();
        if volumes.len() < 2 {
            continue;
        }
        for v in &volumes {
            let others = volumes.iter().filter(|o| *o != v).map(|o| (*o).to_string()).collect();
            out.entry(v.to_string()).or_insert_with(|| Conflict { device: device.clone(), others });
        }
    }
    out
}

impl DevicePool {
    /// True when the allow-list names `path` (as written, or through a wildcard).
    pub(super) fn allows(&self, path: &Path) -> bool {
        self.patterns.iter().any(|pattern| {
            let pattern = Path::new(pattern);
            match (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) {
                (Some(dir), Some(last)) if last.contains(['*', '?']) => {
                    path.parent() == Some(dir)
                        && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| glob_match(last, n))
                }
                _ => path == pattern,
            }
        })
    }

    /// The volume that holds `device` (whose hardware identity is `serial`), if any.
    pub(super) fn holder(
        &self,
        held: &BTreeMap<String, Held>,
        device: &Device,
        serial: &Option<String>,
    ) -> Option<String> {
        held.iter()
            .find(|(_, h)| {
                fs::canonicalize(&h.path).is_ok_and(|c| c == device.canonical)
                    || (h.serial.is_some() && h.serial == *serial)
            })
            .map(|(id, _)| id.clone())
    }

    pub(super) fn serial(&self, device: &Path) -> Option<String> {
        self.sys.block_info(device).ok().and_then(|i| i.serial)
    }

    /// The device node holding `volume` now, after checking that the record is the only
    /// one naming it, that the allow-list still names it, and that the device the
    /// recorded path leads to is the disk recorded (identity and size): `None` when the
    /// path leads nowhere (the disk is gone). Anything else is an error that says which
    /// check failed, and nothing may be mounted or wiped.
    pub(super) fn locate(&self, volume: &VolumeRecord) -> Result<Option<PathBuf>> {
        let path = self.device_of(volume)?;
        if let Some(conflict) = self.conflicts.get(&volume.id) {
            return Err(conflict.error(&volume.id));
        }
        let canonical = match fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("resolve device", path)(e)),
        };
        // The allow-list is a set of devices: the recorded path may be named by it, or (a
        // record from before identities, holding the kernel's name) lead to a device it names.
        if !self.allows(path) && !self.devices()?.iter().any(|d| d.canonical == canonical) {
            return Err(Error::NotOnAllowList {
                volume: volume.id.clone(),
                path: path.to_path_buf(),
                canonical,
                pool: self.info.name.clone(),
                patterns: self.patterns.clone(),
            });
        }
        if !canonical.starts_with("/dev") || !fs::metadata(&canonical).is_ok_and(|m| m.file_type().is_block_device()) {
            return Err(Error::NotABlockDevice { volume: volume.id.clone(), path: path.to_path_buf(), canonical });
        }
        let Some(recorded) = &volume.device_identity else {
            // Recorded before identities were: only the path can be checked.
            return Ok(Some(canonical));
        };
        let fs_uuid = match recorded.fs_uuid {
            Some(_) => self.sys.fs_uuid(&canonical).map_err(Error::io("probe", &canonical))?,
            None => None,
        };
        // A wipe interrupted by a crash may have erased the filesystem already: a volume
        // being deleted may have none (but not another one).
        let fs_uuid = match fs_uuid {
            None if volume.phase == Phase::Deleting => recorded.fs_uuid.clone(),
            other => other,
        };
        let now = Observed {
            size: self.sys.device_size(&canonical).map_err(Error::io("device size", &canonical))?,
            serial: self.serial(&canonical),
            kernel_name: canonical,
            fs_uuid,
        };
        match differs(recorded, &now) {
            None => Ok(Some(now.kernel_name)),
            Some(mismatch) => Err(Error::DeviceReplaced(Box::new(Replaced {
                volume: volume.id.clone(),
                path: path.to_path_buf(),
                recorded: recorded.clone(),
                found: now.kernel_name,
                mismatch,
                moved_to: self.whereabouts(recorded),
            }))),
        }
    }

    /// Fills in the allow-list path and the identity of a volume recorded before berth
    /// kept identities (its record holds the kernel's name), when that name still leads to
    /// a device the allow-list names; true when the record changed and must be written.
    pub fn adopt(&self, volume: &mut VolumeRecord) -> bool {
        if volume.device_identity.is_some() {
            return false;
        }
        let Ok(Some(canonical)) = self.locate(volume) else { return false };
        let Some(device) = self.devices().ok().and_then(|d| d.into_iter().find(|d| d.canonical == canonical)) else {
            return false;
        };
        let serial = self.serial(&canonical);
        self.held.lock().insert(volume.id.clone(), Held { path: device.name.clone(), serial: serial.clone() });
        volume.device = Some(device.name.display().to_string());
        volume.device_identity = Some(DeviceIdentity {
            kernel_name: canonical.display().to_string(),
            serial,
            size: device.size,
            fs_uuid: None,
        });
        tracing::info!(volume.id = %volume.id, device = %device.name.display(), kernel.name = %canonical.display(), "recorded the identity of a device recorded by its kernel name");
        true
    }

    /// Where the disk `recorded` describes is now, among the devices the allow-list names.
    fn whereabouts(&self, recorded: &DeviceIdentity) -> Option<Device> {
        recorded.serial.as_ref().and_then(|serial| {
            self.devices().ok()?.into_iter().find(|d| self.serial(&d.canonical).as_ref() == Some(serial))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(serial: Option<&str>, size: u64) -> DeviceIdentity {
        DeviceIdentity { kernel_name: "/dev/sdb".into(), serial: serial.map(str::to_string), size, fs_uuid: None }
    }

    fn now(serial: Option<&str>, size: u64) -> Observed {
        Observed { kernel_name: "/dev/sdc".into(), serial: serial.map(str::to_string), size, fs_uuid: None }
    }

    #[test]
    fn a_device_is_the_recorded_one_only_with_the_same_identity_and_size() {
        let cases = [
            (recorded(Some("wwid:a"), 100), now(Some("wwid:a"), 100), None),
            (recorded(Some("wwid:a"), 100), now(Some("wwid:a"), 200), None),
            (recorded(Some("wwid:a"), 100), now(Some("wwid:a"), 50), Some("holds 50 bytes, not 100")),
            (recorded(Some("wwid:a"), 100), now(Some("wwid:b"), 100), Some("identity is wwid:b, not wwid:a")),
            (recorded(Some("wwid:a"), 100), now(None, 100), Some("identity is none")),
            (recorded(None, 100), now(Some("wwid:b"), 100), Some("identity is wwid:b")),
            (recorded(None, 100), now(None, 100), None),
            (recorded(None, 100), now(None, 200), Some("holds 200 bytes, not 100")),
        ];
        let signed = |uuid: Option<&str>| DeviceIdentity { fs_uuid: uuid.map(str::to_string), ..recorded(None, 100) };
        let seen = |uuid: Option<&str>| Observed { fs_uuid: uuid.map(str::to_string), ..now(None, 100) };
        let cases = cases.into_iter().chain([
            (signed(Some("u1")), seen(Some("u1")), None),
            (signed(Some("u1")), seen(Some("u2")), Some("filesystem UUID is u2, not u1")),
            (signed(Some("u1")), seen(None), Some("filesystem UUID is absent")),
            (signed(None), seen(Some("u2")), None),
        ]);
        for (rec, seen, want) in cases {
            let got = differs(&rec, &seen).map(|m| m.to_string());
            match want {
                None => assert_eq!(got, None, "{rec:?} vs {seen:?}"),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{rec:?} vs {seen:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn two_records_naming_one_device_are_both_refused() {
        let claim = |v: &str, dev: Option<&str>, serial: Option<&str>| Claim {
            volume: v.into(),
            resolved: dev.map(PathBuf::from),
            serial: serial.map(str::to_string),
        };
        let found = conflicts(&[
            claim("vol-a", Some("/dev/sdb"), Some("wwid:1")),
            claim("vol-b", Some("/dev/sdc"), Some("wwid:2")),
            claim("vol-c", Some("/dev/sdb"), Some("wwid:3")),
            claim("vol-d", None, Some("wwid:2")),
            claim("vol-e", None, None),
            claim("vol-a", Some("/dev/sdb"), Some("wwid:1")),
        ]);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["vol-a", "vol-b", "vol-c", "vol-d"]);
        assert_eq!(found["vol-a"], Conflict { device: "/dev/sdb".into(), others: vec!["vol-c".into()] });
        assert_eq!(found["vol-d"], Conflict { device: "wwid:2".into(), others: vec!["vol-b".into()] });
        let message = found["vol-a"].error("vol-a").to_string();
        assert!(message.contains("vol-c") && message.contains("same device (/dev/sdb)"), "{message}");
        assert!(conflicts(&[claim("x", Some("/dev/sdb"), None), claim("y", Some("/dev/sdc"), None)]).is_empty());
    }
}
