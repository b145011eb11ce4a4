//! Copies between a device pool's disks and snapshot images, in chunks, with the source's
//! filesystem frozen while it is mounted: a clone or a restore onto a new volume's disk,
//! and a snapshot into an image file (sparse where the disk holds zeros).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::DevicePool;
use crate::backend::image::write_whole_file;
use crate::backend::{Error, Result, Source, blockvol};
use crate::progress::Progress;
use crate::state::VolumeRecord;

const CHUNK: usize = 1 << 20;

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
    /// Runs `work` with the filesystem at `mount_point` frozen, recorded first when the
    /// pool has somewhere to record it.
    fn frozen<T>(&self, mount_point: Option<&Path>, work: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.freezes {
            Some(freezes) => freezes.frozen(self.sys.as_ref(), mount_point, work),
            None => blockvol::frozen(self.sys.as_ref(), mount_point, work),
        }
    }

    /// Copies `source` (a snapshot's image, or another volume's disk, frozen while its
    /// filesystem is mounted) onto `device`.
    pub(super) fn fill(&self, device: &Path, source: Source<'_>) -> Result<()> {
        match source {
            Source::Snapshot(s) => self.write_device(device, &self.snapshot_path(&s.key)?),
            Source::Volume(v) => {
                let from = self.present(v)?;
                let freeze = self.stack(v)?.filesystem_mount(self.sys.as_ref())?;
                self.frozen(freeze.as_deref(), || self.write_device(device, &from))
            }
        }
    }

    /// Copies `volume`'s disk into the snapshot image `dest` (named `<key>.img`), frozen
    /// while its filesystem is mounted; the image is renamed into place only when whole.
    /// `held_still`: the caller froze the volume's filesystem already (a group snapshot).
    pub(super) fn copy_to_image(&self, volume: &VolumeRecord, dest: &Path, key: &str, held_still: bool) -> Result<()> {
        let device = self.present(volume)?;
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        let freeze = if held_still { None } else { self.stack(volume)?.filesystem_mount(self.sys.as_ref())? };
        let size = self.sys.device_size(&device).map_err(Error::io("device size", &device))?;
        self.frozen(freeze.as_deref(), || {
            write_whole_file(&dir, &format!("{key}.img"), |dst| {
                let mut src = File::open(&device)?;
                let mut out = dst.try_clone()?;
                copy_all(&mut src, &mut out, true, &mut Progress::new("copy device", Some(size)), None)?;
                dst.set_len(size)
            })
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
        copy_all(&mut src, &mut dst, false, &mut Progress::new("copy onto device", size), Some("device.copy"))
            .and_then(|_| dst.sync_all())
            .map_err(Error::io("copy onto device", device))?;
        Ok(())
    }
}
