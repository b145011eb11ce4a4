//! LUKS2 containers through cryptsetup: format, open, close, resize and erase.
//!
//! The key reaches cryptsetup on its standard input only (`--key-file=-` with
//! `--keyfile-size`), never in its arguments, its environment or a file, so no other
//! process on the node can read it from /proc. Every container is
//! `--type luks2 --cipher aes-xts-plain64 --key-size 512`: AES-256 in XTS mode, the
//! dm-crypt default. The keyslot's key derivation is PBKDF2 at its minimum cost
//! ([`PBKDF_ITERATIONS`]): berth's keys are 64 random bytes, not passwords, so there is
//! nothing for a slow KDF to protect against guessing, and a memory-hard one (argon2id,
//! cryptsetup's default, up to 1 GiB) would make every NodeStageVolume compete with the
//! node's pods for memory.
//!
//! Containers are opened with `--disable-keyring`: the volume key is kept in the
//! dm-crypt table (kernel memory) rather than the kernel keyring, so `cryptsetup resize`
//! can grow an open container without asking for the key again (NodeExpandVolume carries
//! no node-stage secret). Root on the running node can read it either way.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::crypt::{KEY_BYTES, Key};

/// Where device-mapper shows the devices it maps.
pub const MAPPER_DIR: &str = "/dev/mapper";

/// The device-mapper control node; present when the kernel has device-mapper.
pub const CONTROL: &str = "/dev/mapper/control";

/// PBKDF2 iterations of a keyslot: cryptsetup's minimum (see the module comment).
pub const PBKDF_ITERATIONS: &str = "1000";

/// What blkid calls a LUKS header.
pub const SIGNATURE: &str = "crypto_LUKS";

/// True when /proc/misc (`misc`) or /proc/devices (`devices`) lists device-mapper:
/// the kernel has it built in or loaded. dm-crypt itself is a device-mapper target the
/// kernel loads on first use, so only device-mapper is required up front.
#[must_use]
pub fn device_mapper_listed(misc: &str, devices: &str) -> bool {
    let names = |text: &str| text.lines().filter_map(|l| l.split_whitespace().nth(1)).any(|n| n == "device-mapper");
    names(misc) || names(devices)
}

/// What this node lacks for device-mapper, from /proc/misc, /proc/devices and whether
/// `/dev/mapper/control` exists; `None` when it has it. The kernel's own lists decide:
/// libdevmapper creates the control node on first use whether or not the kernel has
/// device-mapper.
#[must_use]
pub fn device_mapper_missing(misc: &str, devices: &str, control: bool) -> Option<&'static str> {
    if !device_mapper_listed(misc, devices) {
        return Some(
            "the kernel has no device-mapper (none in /proc/misc or /proc/devices): load dm_mod and dm_crypt, or use a \
             kernel built with CONFIG_DM_CRYPT",
        );
    }
    if !control {
        return Some("the kernel has device-mapper but /dev/mapper/control is missing: give berth the host's /dev");
    }
    None
}

/// Whether this node can open LUKS2 containers; the error says what it lacks.
pub fn support() -> io::Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    if let Some(missing) =
        device_mapper_missing(&read("/proc/misc"), &read("/proc/devices"), Path::new(CONTROL).exists())
    {
        return Err(io::Error::new(io::ErrorKind::Unsupported, missing));
    }
    cryptsetup(&["--version"], None).map(drop)
}

/// Runs cryptsetup with `args`, writing `key` (if any) to its standard input.
/// cryptsetup's exit codes become error kinds: 2 (no keyslot opens with the key)
/// PermissionDenied, 4 (no such device) NotFound, 5 (busy or exists) ResourceBusy.
fn cryptsetup(args: &[&str], key: Option<&Key>) -> io::Result<String> {
    cryptsetup_os(&argv(args, &[]), key)
}

fn cryptsetup_os(args: &[std::ffi::OsString], key: Option<&Key>) -> io::Result<String> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if key.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(io::ErrorKind::NotFound, "cryptsetup is not installed (Debian: cryptsetup-bin)")
            } else {
                io::Error::new(e.kind(), format!("running cryptsetup: {e}"))
            }
        })?;
    if let (Some(key), Some(mut stdin)) = (key, child.stdin.take()) {
        // Dropping stdin closes it: cryptsetup reads exactly --keyfile-size bytes anyway.
        let written = stdin.write_all(key.bytes());
        drop(stdin);
        if let Err(e) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(e.kind(), format!("handing the key to cryptsetup: {e}")));
        }
    }
    let out = child.wait_with_output().map_err(|e| io::Error::new(e.kind(), format!("running cryptsetup: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let kind = match out.status.code() {
        Some(2) => io::ErrorKind::PermissionDenied,
        Some(4) => io::ErrorKind::NotFound,
        Some(5) => io::ErrorKind::ResourceBusy,
        _ => io::ErrorKind::Other,
    };
    let verb = args.first().map_or(String::new(), |a| a.to_string_lossy().into_owned());
    Err(io::Error::new(
        kind,
        format!("cryptsetup {verb} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
    ))
}

/// The key's size for `--keyfile-size`: cryptsetup reads exactly that many bytes.
fn key_size() -> String {
    KEY_BYTES.to_string()
}

/// `words` then `paths`, as cryptsetup's arguments.
fn argv(words: &[&str], paths: &[&std::ffi::OsStr]) -> Vec<std::ffi::OsString> {
    words.iter().map(std::ffi::OsString::from).chain(paths.iter().map(|p| p.to_os_string())).collect()
}

/// `cryptsetup luksFormat`: a LUKS2 header on `device` with one keyslot for `key`.
pub fn format(device: &Path, key: &Key) -> io::Result<()> {
    let size = key_size();
    let words = [
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--hash",
        "sha256",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        PBKDF_ITERATIONS,
        "--key-file=-",
        "--keyfile-size",
        size.as_str(),
    ];
    cryptsetup_os(&argv(&words, &[device.as_os_str()]), Some(key)).map(drop)
}

/// `cryptsetup open`: maps the container on `device` as `/dev/mapper/<name>`.
pub fn open(device: &Path, name: &str, key: &Key) -> io::Result<()> {
    let size = key_size();
    let words = ["open", "--type", "luks2", "--disable-keyring", "--key-file=-", "--keyfile-size", size.as_str()];
    cryptsetup_os(&argv(&words, &[device.as_os_str(), std::ffi::OsStr::new(name)]), Some(key)).map(drop)
}

/// The device under the open mapping `name` (`cryptsetup status`); `None` when it is
/// not open.
pub fn status(name: &str) -> io::Result<Option<PathBuf>> {
    match cryptsetup(&["status", name], None) {
        Ok(text) => parse_status(&text).map(Some).ok_or_else(|| {
            io::Error::other(format!("cryptsetup status {name} names no LUKS2 device under it: {}", text.trim()))
        }),
        // Exit code 4: the mapping is inactive (or was never made).
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `device:` line of `cryptsetup status` output for a LUKS2 mapping.
#[must_use]
pub fn parse_status(text: &str) -> Option<PathBuf> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
    };
    if field("type") != Some("LUKS2") {
        return None;
    }
    field("device").filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// `cryptsetup close`; a mapping that is not open is success.
pub fn close(name: &str) -> io::Result<()> {
    if status(name)?.is_none() {
        return Ok(());
    }
    cryptsetup(&["close", name], None).map(drop)
}

/// `cryptsetup resize`: the open mapping `name` grows to fill its device.
pub fn resize(name: &str) -> io::Result<()> {
    cryptsetup(&["resize", name], None).map(drop)
}

/// `cryptsetup erase`: destroys every keyslot of the LUKS header on `device`, so no key
/// opens it ever again. False when `device` holds no LUKS header.
pub fn erase(device: &Path) -> io::Result<bool> {
    match cryptsetup_os(&argv(&["isLuks"], &[device.as_os_str()]), None) {
        Ok(_) => {}
        // isLuks answers 1 for "not LUKS"; 4 when the device is gone.
        Err(e) if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    }
    cryptsetup_os(&argv(&["erase", "--batch-mode"], &[device.as_os_str()]), None).map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_mapper_is_found_in_either_list() {
        let misc = " 58 network_throughput\n236 device-mapper\n 62 hpet\n";
        let devices = "Character devices:\n  1 mem\n\nBlock devices:\n  7 loop\n253 device-mapper\n";
        assert!(device_mapper_listed(misc, ""));
        assert!(device_mapper_listed("", devices));
        assert!(!device_mapper_listed(" 62 hpet\n", "Block devices:\n  7 loop\n"));
        assert!(!device_mapper_listed("236 device-mapperx\n", ""));

        // A control node alone is no device-mapper: libdevmapper makes it on first use.
        assert!(device_mapper_missing("", "", true).is_some_and(|m| m.contains("no device-mapper")));
        assert!(device_mapper_missing(misc, "", false).is_some_and(|m| m.contains("control is missing")));
        assert_eq!(device_mapper_missing(misc, devices, true), None);
    }

    #[test]
    fn status_names_the_device_under_a_luks2_mapping_only() {
        let open = "/dev/mapper/berth-k1 is active.\n  type:    LUKS2\n  cipher:  aes-xts-plain64\n  keysize: 512 \
                    bits\n  device:  /dev/loop7\n  loop:    /img\n";
        assert_eq!(parse_status(open), Some(PathBuf::from("/dev/loop7")));
        let plain = "/dev/mapper/x is active.\n  type:    PLAIN\n  device:  /dev/sdb\n";
        assert_eq!(parse_status(plain), None, "a mapping that is not LUKS2 is not ours");
        assert_eq!(parse_status("/dev/mapper/x is inactive.\n"), None);
    }
}
