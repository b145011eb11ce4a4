//! The filesystem tools berth runs: blkid, mkfs, the grow commands and wipefs. Programs are
//! chosen from fixed tables by filesystem type (never from request text), run directly
//! without a shell, and their stderr becomes part of the error.

use std::io;
use std::path::Path;
use std::process::Command;

/// What blkid finds on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// Nothing at all: the only state in which berth formats a device.
    None,
    /// A filesystem (or swap, RAID, LVM member...) of this type.
    Filesystem(String),
    /// A partition table of this type.
    PartitionTable(String),
}

/// Runs `program` with `args` and returns its stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&std::ffi::OsStr]) -> io::Result<String> {
    let out = Command::new(program).args(args).env("LC_ALL", "C").output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, format!("{program} is not installed"))
        } else {
            io::Error::new(e.kind(), format!("running {program}: {e}"))
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!("{program} failed ({}): {}", out.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `blkid -p -o export` of `device` (low-level probing, no cache): `None` when it finds
/// nothing.
fn blkid_export(device: &Path) -> io::Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running blkid: {e}")))?;
    match out.status.code() {
        // 2: nothing was found.
        Some(2) => Ok(None),
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        _ => Err(io::Error::other(format!(
            "blkid {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Probes a device for any signature with `blkid -p`.
pub fn blkid(device: &Path) -> io::Result<Signature> {
    Ok(blkid_export(device)?.map_or(Signature::None, |text| parse_blkid(&text)))
}

/// The UUID of the filesystem on `device` (`blkid -p`), or `None` when it holds none.
pub fn fs_uuid(device: &Path) -> io::Result<Option<String>> {
    Ok(blkid_export(device)?.and_then(|text| parse_uuid(&text)))
}

/// The filesystem `UUID` in `blkid -o export` output (not a partition table's `PTUUID`).
pub fn parse_uuid(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("UUID=")).filter(|v| !v.is_empty()).map(str::to_string)
}

/// Reads `blkid -o export` output.
#[must_use]
pub fn parse_blkid(text: &str) -> Signature {
    let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
    if let Some(t) = value("TYPE") {
        return Signature::Filesystem(t.to_string());
    }
    if let Some(t) = value("PTTYPE") {
        return Signature::PartitionTable(t.to_string());
    }
    // blkid found something it could not name (e.g. only a PART_ENTRY): not empty.
    Signature::PartitionTable("unknown".to_string())
}

/// Formats `device` with `fs_type` (ext4, xfs or btrfs); `encrypt` formats ext4 with its
/// `encrypt` feature, which fscrypt needs (xfs and btrfs have none).
pub fn mkfs(device: &Path, fs_type: &str, encrypt: bool) -> io::Result<()> {
    let (program, flags): (&str, &[&str]) = match (fs_type, encrypt) {
        // No discard pass: a fresh image is sparse and a wiped device was discarded already.
        ("ext4", false) => ("mkfs.ext4", &["-q", "-F", "-E", "nodiscard"]),
        ("ext4", true) => ("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", "-O", "encrypt"]),
        ("xfs", false) => ("mkfs.xfs", &["-q", "-f", "-K"]),
        ("btrfs", false) => ("mkfs.btrfs", &["-q", "-f", "-K"]),
        (other, true) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} cannot be encrypted with fscrypt"),
            ));
        }
        (other, false) => return Err(unsupported(other)),
    };
    let mut args: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    args.push(device.as_os_str());
    run(program, &args).map(|_| ())
}

/// Grows the filesystem on `device`, mounted at `mount_point`, to fill the device.
pub fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()> {
    let os = std::ffi::OsStr::new;
    match fs_type {
        "ext4" => run("resize2fs", &[device.as_os_str()]).map(|_| ()),
        "xfs" => run("xfs_growfs", &[os("-d"), mount_point.as_os_str()]).map(|_| ()),
        "btrfs" => run("btrfs", &[os("filesystem"), os("resize"), os("max"), mount_point.as_os_str()]).map(|_| ()),
        other => Err(unsupported(other)),
    }
}

/// Bytes covered by the ext4 filesystem whose superblock is `superblock` (the 1024 bytes
/// at offset 1024 of the device); `None` when it is not ext4.
#[must_use]
pub fn ext4_bytes(superblock: &[u8]) -> Option<u64> {
    let u32_at = |off: usize| superblock.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let magic = superblock.get(0x38..0x3a).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    if magic != 0xEF53 {
        return None;
    }
    let lo = u64::from(u32_at(0x4)?);
    let log_block = u32_at(0x18)?;
    let incompat = u32_at(0x60)?;
    // INCOMPAT_64BIT: the high half of the block count is valid.
    let hi = if incompat & 0x80 != 0 { u64::from(u32_at(0x150)?) } else { 0 };
    let block = 1024u64.checked_shl(log_block)?;
    ((hi << 32) | lo).checked_mul(block)
}

/// Grows an unmounted ext4 filesystem to fill its device when it is smaller (a restored
/// or expanded volume): e2fsck first, as resize2fs requires, then resize2fs. Needs no
/// special capability, unlike online growth. Returns whether it grew.
pub fn grow_ext4_offline(device: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut dev = std::fs::File::open(device)?;
    let mut sb = [0u8; 1024];
    dev.seek(SeekFrom::Start(1024))?;
    dev.read_exact(&mut sb)?;
    let device_bytes = dev.seek(SeekFrom::End(0))?;
    let Some(fs_bytes) = ext4_bytes(&sb) else {
        return Ok(false);
    };
    // Less than one 64 KiB step short: nothing worth growing.
    if fs_bytes + (64 << 10) > device_bytes {
        return Ok(false);
    }
    let out = Command::new("e2fsck").args(["-f", "-p"]).arg(device).env("LC_ALL", "C").output()?;
    // 0: clean; 1: errors corrected. Anything else needs a person.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(io::Error::other(format!(
            "e2fsck {} before growing failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    run("resize2fs", &[device.as_os_str()])?;
    Ok(true)
}

/// Erases every signature (filesystem, RAID, partition tables) from a device.
pub fn wipe_signatures(device: &Path) -> io::Result<()> {
    run("wipefs", &[std::ffi::OsStr::new("--all"), device.as_os_str()]).map(|_| ())
}

fn unsupported(fs_type: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("filesystem type {fs_type:?} is not one of ext4, xfs, btrfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_output_is_classified() {
        assert_eq!(parse_blkid("DEVNAME=/dev/loop0\nUUID=x\nTYPE=ext4\n"), Signature::Filesystem("ext4".into()));
        assert_eq!(parse_blkid("DEVNAME=/dev/loop0\nPTUUID=x\nPTTYPE=gpt\n"), Signature::PartitionTable("gpt".into()));
        assert_eq!(parse_blkid("DEVNAME=/dev/loop0\nPART_ENTRY_TYPE=x\n"), Signature::PartitionTable("unknown".into()));
        assert_eq!(parse_uuid("DEVNAME=/dev/loop0\nUUID=1b2c\nTYPE=ext4\n").as_deref(), Some("1b2c"));
        assert_eq!(parse_uuid("DEVNAME=/dev/loop0\nPTUUID=x\nPTTYPE=gpt\n"), None);
    }

    #[test]
    fn ext4_superblocks_give_the_filesystem_size() {
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x4..0x8].copy_from_slice(&16384u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(ext4_bytes(&sb), Some(64 << 20));
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext4_bytes(&sb), Some(((1u64 << 32) + 16384) * 4096));
        sb[0x38] = 0;
        assert_eq!(ext4_bytes(&sb), None);
        assert_eq!(ext4_bytes(&[0u8; 10]), None);
    }

    #[test]
    fn only_known_filesystems_are_formatted() {
        for bad in ["ext4;id", "ntfs", "", "../xfs"] {
            assert_eq!(
                mkfs(Path::new("/dev/null"), bad, false).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
            assert_eq!(
                mkfs(Path::new("/dev/null"), bad, true).unwrap_err().kind(),
                io::ErrorKind::Unsupported,
                "{bad}"
            );
            assert_eq!(
                grow(bad, Path::new("/dev/null"), Path::new("/")).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }
}
