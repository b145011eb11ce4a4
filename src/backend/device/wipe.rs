//! Clearing a released device so the next tenant reads nothing of the last. The default
//! zeroes every block (BLKZEROOUT, which the device does itself where it offers a
//! write-zeroes command); discarding alone is trusted only where the device promises that
//! discarded blocks read back as zeros. Erasing signatures alone is an explicit opt-in.

use std::path::Path;

use super::super::{Error, Result};
use crate::config::Wipe;
use crate::mount::Syscall;
use crate::progress::Progress;

/// How much one ioctl clears: small enough for steady progress lines on large disks.
pub const CHUNK: u64 = 1 << 30;

/// Wipes `device` (already verified as the volume's own) the way `how` says.
pub fn wipe(sys: &dyn Syscall, device: &Path, how: Wipe) -> Result<()> {
    super::super::failpoint("device.wipe", device)?;
    sys.wipe_signatures(device).map_err(Error::io("wipe signatures", device))?;
    let size = sys.device_size(device).map_err(Error::io("device size", device))?;
    match how {
        Wipe::Signatures => Ok(()),
        Wipe::Zero => {
            let info = sys.block_info(device).unwrap_or_default();
            let method = if info.write_zeroes_max_bytes > 0 { "write-zeroes offload" } else { "writing zero pages" };
            tracing::info!(device = %device.display(), bytes = size, method, "zeroing the released device");
            clear(sys, device, size, Clear::Zero)
        }
        Wipe::Discard => {
            let info = sys.block_info(device).unwrap_or_default();
            match clear(sys, device, size, Clear::Discard) {
                Ok(()) if info.discard_zeroes_data => {
                    tracing::info!(device = %device.display(), bytes = size, "discarded the released device; it reads back zeros");
                    return Ok(());
                }
                Ok(()) => {}
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::info!(device = %device.display(), "the device cannot discard");
                }
                Err(e) => return Err(e),
            }
            // Most devices may return old data (or anything) for discarded blocks.
            tracing::info!(device = %device.display(), bytes = size, "the device does not promise zeros after a discard; zeroing it");
            clear(sys, device, size, Clear::Zero)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clear {
    Zero,
    Discard,
}

/// Clears all `size` bytes in [`CHUNK`]s, logging progress.
fn clear(sys: &dyn Syscall, device: &Path, size: u64, how: Clear) -> Result<()> {
    let what = match how {
        Clear::Zero => "zero device",
        Clear::Discard => "discard device",
    };
    let mut progress = Progress::new(what, Some(size));
    let mut offset = 0;
    while offset < size {
        let len = CHUNK.min(size - offset);
        match how {
            Clear::Zero => sys.zero_range(device, offset, len),
            Clear::Discard => sys.discard_range(device, offset, len),
        }
        .map_err(Error::io(what, device))?;
        offset += len;
        progress.update(offset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::fake::{Call, RecordingSyscall};
    use crate::mount::{BlockInfo, FsStat};

    fn fake(size: u64, info: BlockInfo) -> (RecordingSyscall, &'static Path) {
        let dev = Path::new("/dev/fake-disk");
        let sys = RecordingSyscall::new(FsStat::default(), "");
        sys.set_device_size(dev, size);
        sys.set_block_info(dev, info);
        (sys, dev)
    }

    fn clears(sys: &RecordingSyscall) -> Vec<(&'static str, u64, u64)> {
        sys.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::ZeroRange { offset, len, .. } => Some(("zero", offset, len)),
                Call::DiscardRange { offset, len, .. } => Some(("discard", offset, len)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_default_zeroes_every_byte_in_chunks() {
        assert_eq!(Wipe::default(), Wipe::Zero);
        let size = 2 * CHUNK + 4096;
        let (sys, dev) = fake(size, BlockInfo::default());
        wipe(&sys, dev, Wipe::default()).expect("wipe");
        assert_eq!(sys.calls()[0], Call::WipeSignatures { device: dev.into() });
        assert_eq!(clears(&sys), vec![("zero", 0, CHUNK), ("zero", CHUNK, CHUNK), ("zero", 2 * CHUNK, 4096)]);
    }

    #[test]
    fn discard_alone_only_where_the_device_promises_zeros() {
        let (sys, dev) = fake(4096, BlockInfo { discard_zeroes_data: true, ..Default::default() });
        wipe(&sys, dev, Wipe::Discard).expect("wipe");
        assert_eq!(clears(&sys), vec![("discard", 0, 4096)]);

        let (sys, dev) = fake(4096, BlockInfo { write_zeroes_max_bytes: 1 << 20, ..Default::default() });
        wipe(&sys, dev, Wipe::Discard).expect("wipe");
        assert_eq!(clears(&sys), vec![("discard", 0, 4096), ("zero", 0, 4096)]);

        let (sys, dev) = fake(4096, BlockInfo::default());
        sys.fail("discard_range", libc::EOPNOTSUPP);
        wipe(&sys, dev, Wipe::Discard).expect("a device that cannot discard is zeroed");
        assert_eq!(clears(&sys), vec![("zero", 0, 4096)]);

        let (sys, dev) = fake(4096, BlockInfo::default());
        wipe(&sys, dev, Wipe::Signatures).expect("wipe");
        assert!(clears(&sys).is_empty(), "signatures only, as opted in");
    }

    #[test]
    fn a_failed_zeroing_is_an_error_naming_the_device() {
        let (sys, dev) = fake(4096, BlockInfo::default());
        sys.fail("zero_range", libc::EBUSY);
        let err = wipe(&sys, dev, Wipe::Zero).expect_err("busy");
        assert!(err.to_string().contains("zero device /dev/fake-disk"), "{err}");
    }
}
