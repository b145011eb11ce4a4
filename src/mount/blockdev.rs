//! Block-device and filesystem ioctls: device size, discard and zeroing of
//! ranges, filesystem freeze/thaw and reflink clones. Request numbers mirror
//! `linux/fs.h`; every function works on descriptors the caller opened.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::ioctl::{Req, ioctl};

// Declared `_IOR(0x12, 114, size_t)`: the number encodes sizeof(size_t), but the
// kernel always writes a u64.
const BLKGETSIZE64: Req = nix::request_code_read!(0x12, 114, size_of::<usize>()) as Req;
const BLKDISCARD: Req = nix::request_code_none!(0x12, 119) as Req;
const BLKZEROOUT: Req = nix::request_code_none!(0x12, 127) as Req;
const FIFREEZE: Req = nix::request_code_readwrite!(b'X', 119, size_of::<libc::c_int>()) as Req;
const FITHAW: Req = nix::request_code_readwrite!(b'X', 120, size_of::<libc::c_int>()) as Req;
const FICLONE: Req = nix::request_code_write!(0x94, 9, size_of::<libc::c_int>()) as Req;
const EXT4_IOC_RESIZE_FS: Req = nix::request_code_write!(b'f', 16, size_of::<u64>()) as Req;
// The values `linux/fs.h` yields on x86_64 and aarch64 (Ioctl is c_int on musl, c_ulong on glibc).
#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_pointer_width = "64"))]
const _: () = assert!(
    BLKGETSIZE64 as u32 == 0x8008_1272
        && BLKDISCARD as u32 == 0x1277
        && BLKZEROOUT as u32 == 0x127F
        && FIFREEZE as u32 == 0xC004_5877
        && FITHAW as u32 == 0xC004_5878
        && FICLONE as u32 == 0x4004_9409
);

/// The `uint64_t[2]` (start, length) range BLKDISCARD and BLKZEROOUT read.
#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}
const _: () = assert!(size_of::<Range>() == 16);

/// Size in bytes of the block device `dev` (`BLKGETSIZE64`).
pub fn size(dev: BorrowedFd<'_>) -> io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `bytes`.
    unsafe { ioctl(dev, BLKGETSIZE64, &raw mut bytes) }?;
    Ok(bytes)
}

fn range_ioctl(dev: BorrowedFd<'_>, req: Req, offset: u64, len: u64) -> io::Result<()> {
    if offset.checked_add(len).is_none() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "block range overflows"));
    }
    let mut range = Range { start: offset, len };
    // SAFETY: `range` is a live `uint64_t[2]` (size asserted), which `req` reads.
    unsafe { ioctl(dev, req, &raw mut range) }.map(drop)
}

/// Discards (unmaps) `len` bytes at `offset` (`BLKDISCARD`). `dev` must be open for
/// writing (else EBADF) and not mounted; offset and length must be multiples of
/// the logical sector size (else EINVAL). EOPNOTSUPP when the device cannot
/// discard, e.g. a loop device whose backing filesystem cannot punch holes.
pub fn discard(dev: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    range_ioctl(dev, BLKDISCARD, offset, len)
}

/// Makes `len` bytes at `offset` read back as zeros (`BLKZEROOUT`), with the
/// cheapest method the device offers (write-zeroes, else writing zero pages).
/// Same requirements as [`discard`].
pub fn zero_out(dev: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    range_ioctl(dev, BLKZEROOUT, offset, len)
}

/// Refuses a descriptor that is not the root directory of a filesystem mounted
/// apart from its parent directory: `FIFREEZE` freezes the whole filesystem
/// holding the descriptor, so a bind-mounted host directory would freeze the
/// node's root filesystem.
fn check_mount_root(dir: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::stat::{FileStat, SFlag, fstat, fstatat};
    let me: FileStat = fstat(dir)?;
    let parent = fstatat(dir, "..", nix::fcntl::AtFlags::empty())?;
    let is_dir = SFlag::from_bits_truncate(me.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if is_dir && me.st_dev != parent.st_dev {
        return Ok(());
    }
    let msg = "not the root directory of a separately mounted filesystem; refusing to freeze its parent filesystem";
    Err(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// Freezes the filesystem mounted at `mount_point`, a directory descriptor of the
/// mount root (`FIFREEZE`): writers block until [`thaw`]. Refuses (InvalidInput)
/// a directory on the same device as its parent, so a bind-mounted subdirectory
/// cannot freeze the filesystem around it. EBUSY when already frozen, EOPNOTSUPP
/// when the filesystem cannot freeze. Prefer [`with_frozen`].
pub fn freeze(mount_point: BorrowedFd<'_>) -> io::Result<()> {
    check_mount_root(mount_point)?;
    // SAFETY: FIFREEZE ignores its argument.
    unsafe { ioctl(mount_point, FIFREEZE, 0 as libc::c_ulong) }.map(drop)
}

/// Thaws a filesystem frozen with [`freeze`] (`FITHAW`); EINVAL when not frozen.
pub fn thaw(mount_point: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FITHAW ignores its argument.
    unsafe { ioctl(mount_point, FITHAW, 0 as libc::c_ulong) }.map(drop)
}

/// Grows the mounted ext4 filesystem whose root is `mount_point` to `blocks` filesystem
/// blocks (`EXT4_IOC_RESIZE_FS`). The same size is a no-op; a smaller one is EINVAL.
pub fn ext4_resize(mount_point: BorrowedFd<'_>, blocks: u64) -> io::Result<()> {
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 through the pointer, which outlives the call.
    unsafe { ioctl(mount_point, EXT4_IOC_RESIZE_FS, &raw const blocks) }.map(drop)
}

/// Makes `dst` share all of `src`'s extents (`FICLONE`, a reflink copy): `dst`
/// (open for writing) gets `src`'s contents and size. EXDEV across filesystems,
/// EOPNOTSUPP where the filesystem cannot share extents (ext4, xfs without reflink).
pub fn clone_file(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    let src = libc::c_ulong::try_from(src.as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad source descriptor"))?;
    // SAFETY: FICLONE takes the source descriptor by value.
    unsafe { ioctl(dst, FICLONE, src) }.map(drop)
}

/// Whether `path` is a block device. Follows symlinks, including the final one,
/// because `/dev/disk/by-id/*` and friends are symlinks to the device nodes; a
/// dangling or missing path is an error (NotFound), not `false`.
pub fn is_block_device(path: &Path) -> io::Result<bool> {
    Ok(fs::metadata(path)?.file_type().is_block_device())
}

/// Thaws on drop, so a failing or panicking critical section cannot leave the
/// filesystem frozen (unless the process aborts).
struct ThawGuard(Option<File>);

impl ThawGuard {
    fn thaw(mut self) -> io::Result<()> {
        self.0.take().map_or(Ok(()), |dir| thaw(dir.as_fd()))
    }
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = thaw(dir.as_fd());
        }
    }
}

/// Runs `f` with the filesystem mounted at `mount_point` frozen, thawing
/// afterwards even if `f` fails or panics. `f` must not write to that filesystem
/// (it would block forever). Returns `f`'s error first, else a thaw error.
/// A filesystem someone else froze is not touched (EBUSY).
pub fn with_frozen<T>(mount_point: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let dir = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(mount_point)?;
    freeze(dir.as_fd())?;
    let guard = ThawGuard(Some(dir));
    let out = f();
    let thawed = guard.thaw();
    let value = out?;
    thawed.map(|()| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    use crate::mount::testutil::runnable;

    /// A temporary directory on a disk-backed filesystem (not tmpfs) holding a
    /// sparse `disk.img` of `size` bytes.
    fn image(size: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = crate::mount::testutil::disk_backed_tempdir("berth-blk-");
        let path = dir.path().join("disk.img");
        File::create(&path).and_then(|f| f.set_len(size)).unwrap();
        (dir, path)
    }

    /// A loop device (set up with util-linux `losetup`), detached on drop.
    struct Loop(PathBuf);
    impl Loop {
        fn attach(image: &Path) -> Loop {
            let out = Command::new("losetup").args(["--find", "--show"]).arg(image).output().expect("losetup");
            assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
            Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    /// A fresh filesystem on `device` mounted under `dir` until drop; None without `mkfs`.
    struct Mounted(PathBuf);
    impl Mounted {
        fn new(fstype: &str, mkfs_args: &[&str], device: &Path, dir: &Path) -> Option<Mounted> {
            let out = Command::new(format!("mkfs.{fstype}")).args(mkfs_args).arg(device).output().ok()?;
            assert!(out.status.success(), "mkfs.{fstype}: {}", String::from_utf8_lossy(&out.stderr));
            let target = dir.join("mnt");
            fs::create_dir(&target).unwrap();
            nix::mount::mount(Some(device), &target, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
            Some(Mounted(target))
        }
    }
    impl Drop for Mounted {
        fn drop(&mut self) {
            if nix::mount::umount(&self.0).is_err() {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn size_zero_out_discard() {
        let Some(()) = runnable("size_zero_out_discard") else { return };
        let (_dir, img) = image(64 * MIB);
        fs::OpenOptions::new().write(true).open(&img).unwrap().write_all_at(&vec![0xFF; 2 << 20], 0).unwrap();
        let lo = Loop::attach(&img);
        let dev = OpenOptions::new().read(true).write(true).open(&lo.0).unwrap();
        assert_eq!(size(dev.as_fd()).unwrap(), 64 * MIB);
        zero_out(dev.as_fd(), 0, MIB).unwrap();
        let mut buf = vec![1; MIB as usize];
        dev.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        match discard(dev.as_fd(), MIB, MIB) {
            Ok(()) => eprintln!("size_zero_out_discard: discard supported"),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => eprintln!("size_zero_out_discard: discard: {e}"),
            Err(e) => panic!("discard: {e}"),
        }
        assert_eq!(errno(zero_out(dev.as_fd(), 1, 512)), Some(libc::EINVAL));
        assert_eq!(zero_out(dev.as_fd(), u64::MAX, 2).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(errno(size(File::open(&img).unwrap().as_fd())), Some(libc::ENOTTY));
    }

    #[test]
    fn freeze_blocks_writers_until_thaw() {
        let Some(()) = runnable("freeze_blocks_writers_until_thaw") else { return };
        let (dir, img) = image(64 * MIB);
        let lo = Loop::attach(&img);
        let Some(mnt) = Mounted::new("ext4", &["-q", "-F"], &lo.0, dir.path()) else {
            return eprintln!("SKIPPED: freeze_blocks_writers_until_thaw: no mkfs.ext4");
        };
        let root = File::open(&mnt.0).unwrap();
        let mut file = File::create(mnt.0.join("f")).unwrap();
        fs::create_dir(mnt.0.join("sub")).unwrap();
        let sub = File::open(mnt.0.join("sub")).unwrap();
        assert_eq!(freeze(sub.as_fd()).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        freeze(root.as_fd()).unwrap();
        let frozen = ThawGuard(Some(root.try_clone().unwrap()));
        assert_eq!(errno(freeze(root.as_fd())), Some(libc::EBUSY));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(io::Write::write_all(&mut file, b"x").map_err(|e| e.to_string())));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "write finished on a frozen filesystem");
        frozen.thaw().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("write still blocked after thaw"), Ok(()));
        assert_eq!(errno(thaw(root.as_fd())), Some(libc::EINVAL), "thawing twice");
    }

    #[test]
    fn with_frozen_always_thaws() {
        let Some(()) = runnable("with_frozen_always_thaws") else { return };
        let (dir, img) = image(64 * MIB);
        let lo = Loop::attach(&img);
        let Some(mnt) = Mounted::new("ext4", &["-q", "-F"], &lo.0, dir.path()) else {
            return eprintln!("SKIPPED: with_frozen_always_thaws: no mkfs.ext4");
        };
        let root = File::open(&mnt.0).unwrap();
        let not_frozen = || errno(thaw(root.as_fd())) == Some(libc::EINVAL);
        assert_eq!(with_frozen(&mnt.0, || Ok(errno(freeze(root.as_fd())))).unwrap(), Some(libc::EBUSY));
        assert!(not_frozen());
        let err = with_frozen(&mnt.0, || Err::<(), _>(io::Error::other("boom"))).unwrap_err();
        assert!(err.to_string() == "boom" && not_frozen());
        let panicked = std::panic::catch_unwind(|| with_frozen(&mnt.0, || -> io::Result<()> { panic!("inside") }));
        assert!(panicked.is_err() && not_frozen());
        fs::create_dir(mnt.0.join("sub")).unwrap();
        let err = with_frozen(&mnt.0.join("sub"), || Ok(())).unwrap_err();
        assert!(err.kind() == io::ErrorKind::InvalidInput && not_frozen());
    }

    #[test]
    fn clone_file_on_xfs_reflink() {
        let Some(()) = runnable("clone_file_on_xfs_reflink") else { return };
        let (dir, img) = image(512 * MIB); // mkfs.xfs refuses filesystems under 300 MiB
        let lo = Loop::attach(&img);
        let Some(mnt) = Mounted::new("xfs", &["-q", "-f", "-m", "reflink=1"], &lo.0, dir.path()) else {
            return eprintln!("SKIPPED: clone_file_on_xfs_reflink: no mkfs.xfs (apt-get install xfsprogs)");
        };
        let data: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
        fs::write(mnt.0.join("src"), &data).unwrap();
        let src = File::open(mnt.0.join("src")).unwrap();
        let dst = File::create(mnt.0.join("dst")).unwrap();
        clone_file(src.as_fd(), dst.as_fd()).unwrap();
        assert_eq!(fs::read(mnt.0.join("dst")).unwrap(), data);
        let elsewhere = File::create(dir.path().join("elsewhere")).unwrap();
        assert_eq!(errno(clone_file(src.as_fd(), elsewhere.as_fd())), Some(libc::EXDEV));
    }

    #[test]
    fn is_block_device_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        assert!(!is_block_device(&dir.path().join("file")).unwrap());
        assert!(!is_block_device(Path::new("/dev/null")).unwrap());
        assert_eq!(is_block_device(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling")).unwrap();
        assert_eq!(is_block_device(&dir.path().join("dangling")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let is_blk = |p: &PathBuf| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_block_device());
        let Some(blk) = fs::read_dir("/dev").unwrap().flatten().map(|e| e.path()).find(is_blk) else {
            return eprintln!("SKIPPED: is_block_device_follows_symlinks (symlink part): no block device in /dev");
        };
        std::os::unix::fs::symlink(&blk, dir.path().join("by-id")).unwrap();
        assert!(is_block_device(&blk).unwrap() && is_block_device(&dir.path().join("by-id")).unwrap());
    }
}
