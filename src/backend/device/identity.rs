//! Which disk a device-pool volume lives on. The kernel's names (/dev/sdb) follow probe
//! order and change between boots, so a record names its device as the pool's allow-list
//! does (a /dev/disk/by-id link) and keeps the disk's hardware identity and size; both are
//! checked before anything mounts or wipes the device. Two records that name one device
//! are refused rather than guessed between.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::state::DeviceIdentity;

/// A device as found now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What the recorded path resolves to now (/dev/sdc).
    pub kernel_name: PathBuf,
    pub serial: Option<String>,
    pub size: u64,
}

/// Why the device found now is not the one recorded, or `None` when it is. The hardware
/// identity must be equal (a disk that had none must still have none); the size must be
/// equal too, except that a disk with the recorded identity may have grown (a SAN LUN
/// resized in place).
pub fn differs(recorded: &DeviceIdentity, now: &Observed) -> Option<String> {
    if recorded.serial != now.serial {
        return Some(format!(
            "its identity is {}, not {}",
            describe_serial(&now.serial),
            describe_serial(&recorded.serial)
        ));
    }
    let grown_in_place = recorded.serial.is_some() && now.size > recorded.size;
    if now.size != recorded.size && !grown_in_place {
        return Some(format!("it holds {} bytes, not {}", now.size, recorded.size));
    }
    None
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

/// Volumes whose records name a device that another record names too (by where the path
/// leads now, or by hardware identity), each with a sentence naming the others.
pub fn conflicts(claims: &[Claim]) -> BTreeMap<String, String> {
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
            let others: Vec<&str> = volumes.iter().copied().filter(|o| o != v).collect();
            out.entry(v.to_string()).or_insert_with(|| {
                format!(
                    "the records of volume {v} and of {} name the same device ({device}); berth neither mounts nor wipes it until an operator removes the wrong record",
                    others.join(", ")
                )
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(serial: Option<&str>, size: u64) -> DeviceIdentity {
        DeviceIdentity { kernel_name: "/dev/sdb".into(), serial: serial.map(str::to_string), size }
    }

    fn now(serial: Option<&str>, size: u64) -> Observed {
        Observed { kernel_name: "/dev/sdc".into(), serial: serial.map(str::to_string), size }
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
        for (rec, seen, want) in cases {
            let got = differs(&rec, &seen);
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
        assert!(found["vol-a"].contains("vol-c") && found["vol-a"].contains("/dev/sdb"), "{}", found["vol-a"]);
        assert!(found["vol-d"].contains("vol-b") && found["vol-d"].contains("wwid:2"), "{}", found["vol-d"]);
        assert!(conflicts(&[claim("x", Some("/dev/sdb"), None), claim("y", Some("/dev/sdc"), None)]).is_empty());
    }
}
