//! Loop devices: attach image files (or block devices) to `/dev/loopN`, query,
//! find and detach them through the kernel's ioctl interface. Structures and
//! request numbers mirror `linux/loop.h`.
//!
//! Observed kernel behaviour (6.18, and the same since 2.6): `LOOP_CLR_FD` on a
//! device that is still mounted or open elsewhere does not fail. It returns 0,
//! sets `LO_FLAGS_AUTOCLEAR` and the device silently unbinds at its last close
//! (e.g. the unmount). [`detach`] refuses instead of deferring; see there.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ioctl::{Req, ioctl};

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// Block major number of every loop device (`LOOP_MAJOR`).
const LOOP_MAJOR: u64 = 7;
/// Free devices [`attach`] tries while other attachers race it; [`detach`] waits up
/// to `DETACH_ATTEMPTS * DETACH_PAUSE` for transient openers (udev, blkid).
const ATTACH_ATTEMPTS: usize = 64;
const DETACH_ATTEMPTS: u32 = 10;
const DETACH_PAUSE: Duration = Duration::from_millis(100);

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}
const _: () = assert!(size_of::<LoopInfo64>() == 232);

impl LoopInfo64 {
    fn zeroed() -> Self {
        // SAFETY: the struct is integers and byte arrays only, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

/// `struct loop_config` (the argument of `LOOP_CONFIGURE`).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}
const _: () = assert!(size_of::<LoopConfig>() == 304);

const LOOP_SET_FD: Req = 0x4C00;
const LOOP_CLR_FD: Req = 0x4C01;
const LOOP_SET_STATUS64: Req = 0x4C04;
const LOOP_GET_STATUS64: Req = 0x4C05;
const LOOP_SET_CAPACITY: Req = 0x4C07;
const LOOP_SET_DIRECT_IO: Req = 0x4C08;
const LOOP_SET_BLOCK_SIZE: Req = 0x4C09;
const LOOP_CONFIGURE: Req = 0x4C0A;
const LOOP_CTL_GET_FREE: Req = 0x4C82;
/// `BLKSSZGET` from `linux/fs.h`: `_IO(0x12, 104)`, writes an int.
const BLKSSZGET: Req = nix::request_code_none!(0x12, 104) as Req;

/// A bound loop device and what backs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopStatus {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// `N`.
    pub number: u32,
    /// `st_dev` of the backing file (of its device node when backed by a block device).
    pub backing_dev: u64,
    /// `st_ino` of the backing file.
    pub backing_ino: u64,
    /// `lo_file_name` up to its first NUL: the tag given to [`attach`].
    pub file_name: String,
    pub read_only: bool,
    /// Whether the kernel actually does direct I/O to the backing file.
    pub direct_io: bool,
    /// Whether the device unbinds itself at its last close.
    pub autoclear: bool,
}

fn errno_is(e: &io::Error, errno: libc::c_int) -> bool {
    e.raw_os_error() == Some(errno)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn busy(device: &Path, why: &str) -> io::Error {
    let msg = format!("loop device {} {why}; not detached (EBUSY)", device.display());
    io::Error::new(io::ErrorKind::ResourceBusy, msg)
}

/// `LOOP_CLR_FD`; the device unbinds now or, if others hold it open, at their last close.
fn clr_fd(dev: &File) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD ignores its argument.
    unsafe { ioctl(dev.as_fd(), LOOP_CLR_FD, 0 as libc::c_ulong) }.map(drop)
}

fn dev_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

/// Opens `path` after checking that it is a loop block device (major 7).
fn open_loop(path: &Path, write: bool, exclusive: bool) -> io::Result<File> {
    let meta = fs::metadata(path)?;
    if !meta.file_type().is_block_device() || nix::sys::stat::major(meta.rdev()) != LOOP_MAJOR {
        return Err(invalid(format!("{} is not a loop device", path.display())));
    }
    let flags = if exclusive { libc::O_EXCL } else { 0 };
    OpenOptions::new().read(true).write(write).custom_flags(flags).open(path)
}

/// `LOOP_GET_STATUS64`; `None` when the device is not bound (ENXIO).
fn get_info(dev: BorrowedFd<'_>) -> io::Result<Option<LoopInfo64>> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: `info` is a live `loop_info64` (size asserted), which LOOP_GET_STATUS64 fills.
    match unsafe { ioctl(dev, LOOP_GET_STATUS64, &raw mut info) } {
        Ok(_) => Ok(Some(info)),
        Err(e) if errno_is(&e, libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_status(info: &LoopInfo64) -> LoopStatus {
    let name = info.lo_file_name.split(|&b| b == 0).next().unwrap_or_default();
    LoopStatus {
        device: dev_path(info.lo_number),
        number: info.lo_number,
        backing_dev: info.lo_device,
        backing_ino: info.lo_inode,
        file_name: String::from_utf8_lossy(name).into_owned(),
        read_only: info.lo_flags & LO_FLAGS_READ_ONLY != 0,
        direct_io: info.lo_flags & LO_FLAGS_DIRECT_IO != 0,
        autoclear: info.lo_flags & LO_FLAGS_AUTOCLEAR != 0,
    }
}

/// The tag as a NUL-padded `lo_file_name`.
fn tag_name(tag: &str) -> io::Result<[u8; LO_NAME_SIZE]> {
    let mut name = [0; LO_NAME_SIZE];
    let bytes = tag.as_bytes();
    match name.get_mut(..bytes.len()) {
        Some(slot) if bytes.len() < LO_NAME_SIZE && !bytes.contains(&0) => {
            slot.copy_from_slice(bytes);
            Ok(name)
        }
        _ => Err(invalid(format!("loop tag {tag:?} must be at most {} bytes without NUL", LO_NAME_SIZE - 1))),
    }
}

/// What [`attach`] asks of the kernel.
struct Setup {
    read_only: bool,
    direct_io: bool,
    block_size: u32,
    name: [u8; LO_NAME_SIZE],
}

/// Loop block size: 4096 when direct I/O is wanted and the backing block size
/// (the filesystem's for an image, the logical sector size for a block device)
/// is a power of two up to 4096, so 4096-byte requests stay aligned; else 512.
fn block_size(backing: &File, direct_io: bool) -> io::Result<u32> {
    if !direct_io {
        return Ok(512);
    }
    let bsize = if backing.metadata()?.file_type().is_block_device() {
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int into `sector`.
        unsafe { ioctl(backing.as_fd(), BLKSSZGET, &raw mut sector) }?;
        u64::try_from(sector).unwrap_or(0)
    } else {
        u64::try_from(nix::sys::statfs::fstatfs(backing)?.block_size()).unwrap_or(0)
    };
    Ok(if bsize.is_power_of_two() && bsize <= 4096 { 4096 } else { 512 })
}

/// `LOOP_CONFIGURE`: binds `backing` with flags, block size and name in one call.
fn configure(dev: &File, backing: &File, setup: &Setup, direct_io: bool) -> io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| invalid("bad backing fd".into()))?;
    let ro = if setup.read_only { LO_FLAGS_READ_ONLY } else { 0 };
    let flags = ro | if direct_io { LO_FLAGS_DIRECT_IO } else { 0 };
    let info = LoopInfo64 { lo_flags: flags, lo_file_name: setup.name, ..LoopInfo64::zeroed() };
    let mut config = LoopConfig { fd, block_size: setup.block_size, info, reserved: [0; 8] };
    // SAFETY: `config` is a live `loop_config` (size asserted), which LOOP_CONFIGURE reads.
    unsafe { ioctl(dev.as_fd(), LOOP_CONFIGURE, &raw mut config) }.map(drop)
}

/// Pre-5.8 path: `LOOP_SET_FD` + `LOOP_SET_STATUS64`. Read-only comes from `dev`
/// having been opened read-only; block size and direct I/O are best effort.
fn legacy_configure(dev: &File, backing: &File, setup: &Setup) -> io::Result<()> {
    let fd = libc::c_ulong::try_from(backing.as_raw_fd()).map_err(|_| invalid("bad backing fd".into()))?;
    // SAFETY: LOOP_SET_FD takes the backing descriptor by value.
    unsafe { ioctl(dev.as_fd(), LOOP_SET_FD, fd) }?;
    let mut info = LoopInfo64 { lo_file_name: setup.name, ..LoopInfo64::zeroed() };
    // SAFETY: `info` is a live `loop_info64` (size asserted), which LOOP_SET_STATUS64 reads.
    if let Err(e) = unsafe { ioctl(dev.as_fd(), LOOP_SET_STATUS64, &raw mut info) } {
        let _ = clr_fd(dev);
        return Err(e);
    }
    // Kernels without these (or refusing direct I/O) keep 512-byte buffered I/O.
    if setup.block_size != 512 {
        // SAFETY: LOOP_SET_BLOCK_SIZE takes the size by value.
        let _ = unsafe { ioctl(dev.as_fd(), LOOP_SET_BLOCK_SIZE, libc::c_ulong::from(setup.block_size)) };
    }
    if setup.direct_io {
        // SAFETY: LOOP_SET_DIRECT_IO takes a boolean by value.
        let _ = unsafe { ioctl(dev.as_fd(), LOOP_SET_DIRECT_IO, 1 as libc::c_ulong) };
    }
    Ok(())
}

/// Binds `dev`: `LOOP_CONFIGURE`, again without direct I/O if that is refused
/// (EINVAL), then the legacy ioctls if `LOOP_CONFIGURE` is unknown (EINVAL/ENOTTY).
fn bind(dev: &File, backing: &File, setup: &Setup, legacy: bool) -> io::Result<()> {
    let unknown = |e: &io::Error| errno_is(e, libc::EINVAL) || errno_is(e, libc::ENOTTY);
    let mut result = Err(io::Error::from_raw_os_error(libc::ENOTTY));
    if !legacy {
        result = configure(dev, backing, setup, setup.direct_io);
        if setup.direct_io && result.as_ref().is_err_and(unknown) {
            result = configure(dev, backing, setup, false);
        }
    }
    if result.as_ref().is_err_and(unknown) {
        result = legacy_configure(dev, backing, setup);
    }
    result
}

/// Attaches `backing` (an open image file or block device) to a free loop device
/// and returns its status.
///
/// The device gets `lo_file_name = tag` (at most 63 bytes, else `InvalidInput`) so
/// berth can recognise its own devices, autoclear off, and `LO_FLAGS_READ_ONLY` when
/// `readonly`; a backing not open read-write is refused unless `readonly`. With
/// `direct_io` the kernel is asked for direct I/O and a 4096-byte logical block
/// size (512 when the backing block size does not allow it); where direct I/O is
/// impossible the device works without it (recent kernels drop the flag, older ones
/// answer EINVAL and are asked again): see [`LoopStatus::direct_io`]. The block
/// size does not depend on that verdict: a
/// filesystem made on a 512-byte device may use 512-byte sectors and then cannot
/// mount from a 4096-byte one, so keep `direct_io` fixed per image. Uses
/// `LOOP_CONFIGURE` (5.8+), else `LOOP_SET_FD` + `LOOP_SET_STATUS64`, and takes
/// another device when a concurrent attacher grabs the free one (EBUSY). `/dev`
/// must be the host's devtmpfs, so that new `/dev/loopN` nodes appear.
pub fn attach(backing: &File, tag: &str, readonly: bool, direct_io: bool) -> io::Result<LoopStatus> {
    attach_with(backing, tag, readonly, direct_io, false)
}

fn attach_with(backing: &File, tag: &str, readonly: bool, direct_io: bool, legacy: bool) -> io::Result<LoopStatus> {
    let name = tag_name(tag)?;
    let file_type = backing.metadata()?.file_type();
    if !file_type.is_file() && !file_type.is_block_device() {
        return Err(invalid("loop backing must be a regular file or a block device".into()));
    }
    let access = nix::fcntl::fcntl(backing, nix::fcntl::FcntlArg::F_GETFL)? & libc::O_ACCMODE;
    if !readonly && access != libc::O_RDWR {
        return Err(invalid("loop backing is not open read-write; reopen it or attach read-only".into()));
    }
    let setup = Setup { read_only: readonly, direct_io, block_size: block_size(backing, direct_io)?, name };
    let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE ignores its argument and returns a device number.
        let number = unsafe { ioctl(control.as_fd(), LOOP_CTL_GET_FREE, 0 as libc::c_ulong) }?;
        let number = u32::try_from(number).map_err(|_| invalid("bad loop number".into()))?;
        // ENXIO: removed meanwhile. A missing node means /dev is not the host's devtmpfs.
        let dev = match open_loop(&dev_path(number), !readonly, false) {
            Err(e) if errno_is(&e, libc::ENXIO) => continue,
            other => other?,
        };
        match bind(&dev, backing, &setup, legacy) {
            Ok(()) => {}
            Err(e) if errno_is(&e, libc::EBUSY) => continue,
            Err(e) => return Err(e),
        }
        return match get_info(dev.as_fd()) {
            Ok(Some(info)) => Ok(to_status(&info)),
            other => {
                let _ = clr_fd(&dev);
                Err(other.err().unwrap_or_else(|| io::Error::other("loop device unbound right after attach")))
            }
        };
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, "no free loop device: other processes kept taking them"))
}

/// Status of one loop device (`LOOP_GET_STATUS64`); `Ok(None)` when it is not bound.
pub fn status(device: &Path) -> io::Result<Option<LoopStatus>> {
    let dev = open_loop(device, false, false)?;
    Ok(get_info(dev.as_fd())?.map(|info| to_status(&info)))
}

/// Every bound loop device, by number. Walks `/sys/block/loop*` (whose `loop/`
/// attribute directory exists only while bound) and asks each device itself.
pub fn list() -> io::Result<Vec<LoopStatus>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let (entry, number) = entry.map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))?;
        match number.strip_prefix("loop").map(str::parse::<u32>) {
            Some(Ok(number)) if entry.join("loop").exists() => numbers.push(number),
            _ => {}
        }
    }
    numbers.sort_unstable();
    let mut out = Vec::new();
    for number in numbers {
        match open_loop(&dev_path(number), false, false).and_then(|dev| get_info(dev.as_fd())) {
            Ok(info) => out.extend(info.map(|info| to_status(&info))),
            // Unbound or removed since the sysfs walk.
            Err(e) if errno_is(&e, libc::ENXIO) || e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Bound loop devices whose backing file is `(dev, ino)` (`st_dev`, `st_ino`).
pub fn find_by_backing(dev: u64, ino: u64) -> io::Result<Vec<LoopStatus>> {
    Ok(list()?.into_iter().filter(|s| s.backing_dev == dev && s.backing_ino == ino).collect())
}

/// Detaches `device` (`LOOP_CLR_FD`). Not bound is `Ok`; a path that is missing
/// or not a loop device is an error.
///
/// Fails with an error of kind `ResourceBusy` rather than letting the kernel defer
/// the detach to the last close: at once when the device is mounted or otherwise
/// claimed exclusively (an `O_EXCL` open fails, which covers mounts in every mount
/// namespace, device-mapper and swap), and after about a second of retries when
/// another process merely has it open (the kernel set autoclear instead of
/// unbinding; that is undone). Either way the device stays bound and usable.
pub fn detach(device: &Path) -> io::Result<()> {
    for attempt in 0..DETACH_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(DETACH_PAUSE);
        }
        // Holding the exclusive open also keeps anyone from mounting it meanwhile.
        let dev = match open_loop(device, false, true) {
            Err(e) if errno_is(&e, libc::EBUSY) => return Err(busy(device, "is mounted or claimed")),
            other => other?,
        };
        let Some(before) = get_info(dev.as_fd())? else { return Ok(()) };
        match clr_fd(&dev) {
            Err(e) if errno_is(&e, libc::ENXIO) => return Ok(()),
            other => other?,
        }
        // As sole opener the device is now in rundown (status says ENXIO) and
        // unbinds when `dev` closes; otherwise the kernel only set autoclear.
        let Some(mut after) = get_info(dev.as_fd())? else { return Ok(()) };
        if before.lo_flags & LO_FLAGS_AUTOCLEAR == 0 {
            after.lo_flags &= !LO_FLAGS_AUTOCLEAR;
            // SAFETY: `after` is a live `loop_info64` (size asserted), which LOOP_SET_STATUS64 reads.
            match unsafe { ioctl(dev.as_fd(), LOOP_SET_STATUS64, &raw mut after) } {
                Err(e) if errno_is(&e, libc::ENXIO) => return Ok(()),
                other => other?,
            };
        }
    }
    Err(busy(device, "is open by another process"))
}

/// Re-reads the backing file's size after it grew (`LOOP_SET_CAPACITY`).
pub fn set_capacity(device: &Path) -> io::Result<()> {
    let dev = open_loop(device, false, false)?;
    // SAFETY: LOOP_SET_CAPACITY ignores its argument.
    unsafe { ioctl(dev.as_fd(), LOOP_SET_CAPACITY, 0 as libc::c_ulong) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    use crate::mount::testutil::runnable;

    /// A sparse read-write image of `size` bytes in a temporary directory on a
    /// disk-backed filesystem (not tmpfs).
    fn image(size: u64) -> (tempfile::TempDir, File) {
        let dir = crate::mount::testutil::disk_backed_tempdir("berth-loop-");
        let path = dir.path().join("disk.img");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path).unwrap();
        file.set_len(size).unwrap();
        (dir, file)
    }

    fn tag(test: &str) -> String {
        format!("berth-test-{}-{test}", std::process::id())
    }

    fn dev_size(device: &Path) -> u64 {
        File::open(device).unwrap().seek(SeekFrom::End(0)).unwrap()
    }

    /// Detaches on drop if the device still holds the same backing file (the
    /// number may belong to a parallel test by then); deferred clear as a last resort.
    struct Attached(LoopStatus);
    impl Drop for Attached {
        fn drop(&mut self) {
            let ours = |s: LoopStatus| (s.backing_dev, s.backing_ino) == (self.0.backing_dev, self.0.backing_ino);
            if status(&self.0.device).ok().flatten().is_some_and(ours)
                && detach(&self.0.device).is_err()
                && let Ok(dev) = File::open(&self.0.device)
            {
                let _ = clr_fd(&dev);
            }
        }
    }

    /// `mkfs.ext4` on `device`, mounted under `dir` until drop; None without mkfs.ext4.
    struct Mounted(PathBuf);
    impl Mounted {
        fn ext4(device: &Path, dir: &Path) -> Option<Mounted> {
            let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(device).output().ok()?;
            assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
            let target = dir.join("mnt");
            fs::create_dir(&target).unwrap();
            nix::mount::mount(Some(device), &target, Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
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

    #[test]
    fn refuses_bad_tags_and_read_only_backing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("img"), b"").unwrap();
        let rw = OpenOptions::new().read(true).write(true).open(dir.path().join("img")).unwrap();
        for bad in ["x".repeat(64), "a\0b".to_string()] {
            assert_eq!(attach(&rw, &bad, false, false).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        assert!(tag_name(&"x".repeat(63)).is_ok());
        let ro = File::open(dir.path().join("img")).unwrap();
        assert_eq!(attach(&ro, "t", false, false).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn attach_status_find_grow_detach() {
        let Some(()) = runnable("attach_status_find_grow_detach") else { return };
        let (_dir, img) = image(64 * MIB);
        let meta = img.metadata().unwrap();
        let guard = Attached(attach(&img, &tag("basic"), false, false).unwrap());
        let dev = guard.0.device.clone();
        let st = status(&dev).unwrap().expect("bound");
        assert_eq!((&st, st.file_name.as_str()), (&guard.0, tag("basic").as_str()));
        assert_eq!((st.backing_dev, st.backing_ino), (meta.dev(), meta.ino()));
        assert!(!st.autoclear && !st.read_only && !st.direct_io);
        assert_eq!(find_by_backing(meta.dev(), meta.ino()).unwrap(), vec![st.clone()]);
        let all = list().unwrap();
        assert!(all.contains(&st) && all.iter().all(|s| status(&s.device).unwrap().is_some()));
        assert_eq!(dev_size(&dev), 64 * MIB);
        img.set_len(128 * MIB).unwrap();
        set_capacity(&dev).unwrap();
        assert_eq!(dev_size(&dev), 128 * MIB);
        detach(&dev).unwrap();
        assert_eq!(status(&dev).unwrap(), None);
        detach(&dev).unwrap();
        assert!(find_by_backing(meta.dev(), meta.ino()).unwrap().is_empty());
    }

    #[test]
    fn concurrent_attaches_get_distinct_devices() {
        let Some(()) = runnable("concurrent_attaches_get_distinct_devices") else { return };
        let race = || {
            let (dir, img) = image(MIB);
            (dir, attach(&img, &tag("race"), false, false))
        };
        let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(race)).collect();
        // Guard every device before asserting anything.
        let joined: Vec<_> = threads.into_iter().map(|t| t.join().map(|(dir, st)| (dir, st.map(Attached)))).collect();
        let number = |r: &std::thread::Result<_>| {
            r.as_ref().ok().and_then(|(_, st): &(_, io::Result<Attached>)| st.as_ref().ok()).map(|g| g.0.number)
        };
        let mut numbers: Vec<u32> = joined.iter().map(number).collect::<Option<_>>().expect("every attach succeeds");
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), 8);
    }

    #[test]
    fn direct_io_attach() {
        let Some(()) = runnable("direct_io_attach") else { return };
        let (_dir, img) = image(64 * MIB);
        let guard = Attached(attach(&img, &tag("dio"), false, true).unwrap());
        let fs = nix::sys::statfs::fstatfs(&img).unwrap().filesystem_type();
        let lbs = fs::read_to_string(format!("/sys/block/loop{}/queue/logical_block_size", guard.0.number)).unwrap();
        eprintln!("direct_io_attach: backing {fs:?}: direct I/O {}, block size {}", guard.0.direct_io, lbs.trim());
        if [nix::sys::statfs::EXT4_SUPER_MAGIC, nix::sys::statfs::XFS_SUPER_MAGIC].contains(&fs) {
            assert!(guard.0.direct_io && lbs.trim() == "4096", "ext4/xfs backing should take direct I/O");
        }
        let dev = OpenOptions::new().write(true).open(&guard.0.device).unwrap();
        dev.write_all_at(&[0xA5; 4096], MIB).unwrap();
        dev.sync_all().unwrap();
        let mut back = [0; 4096];
        img.read_exact_at(&mut back, MIB).unwrap();
        assert_eq!(back, [0xA5; 4096]);
    }

    #[test]
    fn read_only_attach_both_paths() {
        let Some(()) = runnable("read_only_attach_both_paths") else { return };
        for legacy in [false, true] {
            let (_dir, img) = image(64 * MIB);
            let guard = Attached(attach_with(&img, &tag("ro"), true, false, legacy).unwrap());
            assert!(guard.0.read_only && !guard.0.autoclear && guard.0.file_name == tag("ro"), "legacy={legacy}");
            let write = OpenOptions::new().write(true).open(&guard.0.device).and_then(|mut d| d.write_all(&[1; 4096]));
            let errno = write.expect_err("write must fail").raw_os_error();
            eprintln!("read_only_attach_both_paths: legacy={legacy}: write refused with errno {errno:?}");
            assert!(matches!(errno, Some(libc::EPERM | libc::EROFS | libc::EACCES)), "legacy={legacy}: {errno:?}");
        }
    }

    #[test]
    fn detach_refuses_mounted_or_open_device() {
        let Some(()) = runnable("detach_refuses_mounted_or_open_device") else { return };
        let (dir, img) = image(64 * MIB);
        let guard = Attached(attach(&img, &tag("busy"), false, false).unwrap());
        let dev = guard.0.device.clone();
        let Some(mounted) = Mounted::ext4(&dev, dir.path()) else {
            return eprintln!("SKIPPED: detach_refuses_mounted_or_open_device: no mkfs.ext4");
        };
        let err = detach(&dev).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        assert!(!status(&dev).unwrap().expect("still bound").autoclear);
        fs::write(mounted.0.join("still-usable"), b"yes").unwrap();
        drop(mounted);
        // Merely held open: the kernel would defer the detach; ours must refuse.
        let holder = File::open(&dev).unwrap();
        assert_eq!(detach(&dev).unwrap_err().kind(), io::ErrorKind::ResourceBusy);
        assert!(!status(&dev).unwrap().expect("still bound").autoclear);
        drop(holder);
        detach(&dev).unwrap();
        assert_eq!(status(&dev).unwrap(), None);
    }
}
