//! What the kernel tells of a block device in sysfs (`/sys/dev/block/MAJ:MIN`): a stable
//! identity that survives the reordering of kernel names at boot, and whether discarded
//! blocks are guaranteed to read back as zeros. Read from a directory so it can be tested
//! on a fixture tree.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Facts about one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockInfo {
    /// A hardware identity that does not change when the device is renamed: its WWN/WWID,
    /// serial number, device-mapper or md UUID, or a loop device's backing file, prefixed
    /// by which it is (`wwid:`, `serial:`, `dm:`, `md:`, `loop:`), and for a partition the
    /// disk's identity with `-partN`. `None` when the kernel exposes none.
    pub serial: Option<String>,
    /// The device promises that discarded blocks read back as zeros
    /// (`queue/discard_zeroes_data`, which kernels since 4.12 always report as 0).
    pub discard_zeroes_data: bool,
    /// The largest write-zeroes command the device accepts (`queue/write_zeroes_max_bytes`):
    /// above 0, BLKZEROOUT is offloaded to the device; at 0 the kernel writes zero pages.
    pub write_zeroes_max_bytes: u64,
}

/// The sysfs directory of the block device node `device` (symbolic links followed).
pub fn dir_of(device: &Path) -> io::Result<PathBuf> {
    let meta = fs::metadata(device)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a block device", device.display())));
    }
    let (major, minor) = (nix::sys::stat::major(meta.rdev()), nix::sys::stat::minor(meta.rdev()));
    Ok(PathBuf::from(format!("/sys/dev/block/{major}:{minor}")))
}

/// Reads [`BlockInfo`] from the sysfs directory `dir` of a disk or partition.
#[must_use]
pub fn block_info_at(dir: &Path) -> BlockInfo {
    let partition = read_trimmed(&dir.join("partition"));
    // A partition's directory sits inside its disk's; the queue and the identity are the disk's.
    let disk = match &partition {
        Some(_) => fs::canonicalize(dir).ok().and_then(|d| d.parent().map(Path::to_path_buf)),
        None => Some(dir.to_path_buf()),
    };
    let Some(disk) = disk else { return BlockInfo::default() };
    let serial = disk_identity(&disk).map(|id| match &partition {
        Some(n) => format!("{id}-part{n}"),
        None => id,
    });
    let queue = disk.join("queue");
    BlockInfo {
        serial,
        discard_zeroes_data: read_trimmed(&queue.join("discard_zeroes_data")).is_some_and(|v| v == "1"),
        write_zeroes_max_bytes: read_trimmed(&queue.join("write_zeroes_max_bytes"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

fn disk_identity(disk: &Path) -> Option<String> {
    const SOURCES: &[(&str, &str)] = &[
        ("wwid", "wwid"),
        ("device/wwid", "wwid"),
        ("serial", "serial"),
        ("device/serial", "serial"),
        ("dm/uuid", "dm"),
        ("md/uuid", "md"),
        ("loop/backing_file", "loop"),
    ];
    SOURCES.iter().find_map(|(file, kind)| read_trimmed(&disk.join(file)).map(|v| format!("{kind}:{v}")))
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn identities_come_from_the_first_source_the_kernel_offers() {
        let root = tempfile::tempdir().expect("tempdir");
        let sda = root.path().join("sda");
        write(&sda, "device/wwid", "naa.5000c500a1b2c3d4\n");
        write(&sda, "device/serial", "ZA1234\n");
        write(&sda, "queue/write_zeroes_max_bytes", "33550336\n");
        write(&sda, "queue/discard_zeroes_data", "0\n");
        write(&sda.join("sda1"), "partition", "1\n");
        let disk = block_info_at(&sda);
        assert_eq!(disk.serial.as_deref(), Some("wwid:naa.5000c500a1b2c3d4"));
        assert_eq!((disk.write_zeroes_max_bytes, disk.discard_zeroes_data), (33_550_336, false));
        let part = block_info_at(&sda.join("sda1"));
        assert_eq!(part.serial.as_deref(), Some("wwid:naa.5000c500a1b2c3d4-part1"));
        assert_eq!(part.write_zeroes_max_bytes, 33_550_336, "a partition shares its disk's queue");

        let vda = root.path().join("vda");
        write(&vda, "serial", "  \n");
        write(&vda, "queue/discard_zeroes_data", "1");
        let virt = block_info_at(&vda);
        assert_eq!((virt.serial, virt.discard_zeroes_data), (None, true), "a blank serial is none");

        let lo = root.path().join("loop3");
        write(&lo, "loop/backing_file", "/srv/disk0.img\n");
        assert_eq!(block_info_at(&lo).serial.as_deref(), Some("loop:/srv/disk0.img"));
        assert_eq!(block_info_at(&root.path().join("missing")), BlockInfo::default());
    }
}
