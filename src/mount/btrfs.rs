//! Btrfs subvolumes, snapshots and qgroups through the kernel's ioctl interface.
//! Every function takes a directory descriptor the caller opened with
//! `O_DIRECTORY | O_NOFOLLOW`; no path is resolved here. Structures and request
//! numbers mirror `linux/btrfs.h` and `linux/btrfs_tree.h`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::ioctl::{Req, ioctl};

/// `f_type` reported by `statfs(2)` for btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123683E;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_ROOT_REF_KEY: u32 = 156;
const BTRFS_QGROUP_STATUS_KEY: u32 = 240;
const BTRFS_QGROUP_INFO_KEY: u32 = 242;
const BTRFS_QGROUP_LIMIT_KEY: u32 = 244;
const BTRFS_QGROUP_RELATION_KEY: u32 = 246;
/// A qgroup ID is `level << 48 | id`.
const BTRFS_QGROUP_LEVEL_SHIFT: u32 = 48;
const BTRFS_QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
const BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// Writing this as a limit value tells the kernel to clear that limit.
const BTRFS_QGROUP_CLEAR_VALUE: u64 = u64::MAX;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_NAME_LEN: usize = 255;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
const BTRFS_SEARCH_ARGS_BUFSIZE: usize = 4096 - size_of::<SearchKey>();

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}
const _: () = assert!(size_of::<VolArgs>() == 4096);

/// `struct btrfs_ioctl_vol_args_v2`; the two unions are flattened to the
/// members used here (the qgroup-inherit union is always zero).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}
const _: () = assert!(size_of::<VolArgsV2>() == 4096);

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: [u32; 9],
}
const _: () = assert!(size_of::<SearchKey>() == 104);

/// `struct btrfs_ioctl_search_args`: a key followed by the result buffer, which
/// holds `btrfs_ioctl_search_header` (32 bytes, CPU order) + item data (LE).
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; BTRFS_SEARCH_ARGS_BUFSIZE],
}
const _: () = assert!(size_of::<SearchArgs>() == 4096);

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}
const _: () = assert!(size_of::<QuotaCtlArgs>() == 16);

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}
const _: () = assert!(size_of::<QgroupLimit>() == 40);

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);

/// `struct btrfs_ioctl_qgroup_assign_args`.
#[repr(C)]
struct QgroupAssignArgs {
    assign: u64,
    src: u64,
    dst: u64,
}
const _: () = assert!(size_of::<QgroupAssignArgs>() == 24);

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}
const _: () = assert!(size_of::<QgroupCreateArgs>() == 16);

/// `struct btrfs_ioctl_quota_rescan_args`.
#[repr(C)]
#[derive(Default)]
struct QuotaRescanArgs {
    flags: u64,
    progress: u64,
    reserved: [u64; 6],
}
const _: () = assert!(size_of::<QuotaRescanArgs>() == 64);

const fn io(nr: u8) -> Req {
    nix::request_code_none!(BTRFS_IOCTL_MAGIC, nr) as Req
}
const fn ior(nr: u8, size: usize) -> Req {
    nix::request_code_read!(BTRFS_IOCTL_MAGIC, nr, size) as Req
}
const fn iow(nr: u8, size: usize) -> Req {
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, nr, size) as Req
}
const fn iowr(nr: u8, size: usize) -> Req {
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, nr, size) as Req
}
const BTRFS_IOC_SYNC: Req = io(8);
const BTRFS_IOC_SUBVOL_CREATE: Req = iow(14, size_of::<VolArgs>());
const BTRFS_IOC_SNAP_DESTROY: Req = iow(15, size_of::<VolArgs>());
const BTRFS_IOC_TREE_SEARCH: Req = iowr(17, size_of::<SearchArgs>());
const BTRFS_IOC_INO_LOOKUP: Req = iowr(18, size_of::<InoLookupArgs>());
const BTRFS_IOC_SNAP_CREATE_V2: Req = iow(23, size_of::<VolArgsV2>());
const BTRFS_IOC_SUBVOL_GETFLAGS: Req = ior(25, size_of::<u64>());
const BTRFS_IOC_SUBVOL_SETFLAGS: Req = iow(26, size_of::<u64>());
const BTRFS_IOC_QUOTA_CTL: Req = iowr(40, size_of::<QuotaCtlArgs>());
const BTRFS_IOC_QGROUP_ASSIGN: Req = iow(41, size_of::<QgroupAssignArgs>());
const BTRFS_IOC_QGROUP_CREATE: Req = iow(42, size_of::<QgroupCreateArgs>());
// The kernel header declares this one _IOR although userspace passes the limit in.
const BTRFS_IOC_QGROUP_LIMIT: Req = ior(43, size_of::<QgroupLimitArgs>());
const BTRFS_IOC_QUOTA_RESCAN: Req = iow(44, size_of::<QuotaRescanArgs>());
const BTRFS_IOC_QUOTA_RESCAN_WAIT: Req = io(46);

/// Builds a `btrfs_ioctl_vol_args` naming the single path component `name`.
fn vol_args(name: &str) -> io::Result<VolArgs> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    fill_name(&mut args.name, name)?;
    Ok(args)
}

/// Copies a validated single path component into the zeroed buffer `dst`,
/// leaving at least one trailing NUL.
fn fill_name(dst: &mut [u8], name: &str) -> io::Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= BTRFS_NAME_LEN
        && b.len() < dst.len()
        && !matches!(name, "." | "..")
        && !b.iter().any(|&c| c == b'/' || c == 0);
    match dst.get_mut(..b.len()) {
        Some(slot) if ok => {
            slot.copy_from_slice(b);
            Ok(())
        }
        _ => {
            let msg = format!("invalid btrfs subvolume name {name:?}");
            Err(io::Error::new(io::ErrorKind::InvalidInput, msg))
        }
    }
}

fn read_u64_le(data: &[u8], at: usize) -> io::Result<u64> {
    data.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short btrfs item"))
}

/// Returns every item of tree `tree_id` with key `(objectid, item_type, offset)` for an
/// offset in `min_offset..=max_offset`, as `(offset, data)` in key order.
/// `ENOENT` error: no such tree (for the quota tree: quotas are off).
fn search(
    fd: BorrowedFd<'_>,
    tree_id: u64,
    objectid: u64,
    item_type: u32,
    min_offset: u64,
    max_offset: u64,
) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad btrfs search result");
    let mut found = Vec::new();
    let mut from = min_offset;
    loop {
        let mut args = SearchArgs {
            key: SearchKey {
                tree_id,
                min_objectid: objectid,
                max_objectid: objectid,
                min_type: item_type,
                max_type: item_type,
                min_offset: from,
                max_offset,
                max_transid: u64::MAX,
                // As many as fit; the kernel says how many it returned.
                nr_items: u32::MAX,
                ..SearchKey::default()
            },
            buf: [0; BTRFS_SEARCH_ARGS_BUFSIZE],
        };
        // SAFETY: `args` is a live `btrfs_ioctl_search_args` (size asserted above)
        // and BTRFS_IOC_TREE_SEARCH reads and writes exactly that structure.
        unsafe { ioctl(fd, BTRFS_IOC_TREE_SEARCH, &raw mut args) }?;
        if args.key.nr_items == 0 {
            return Ok(found);
        }
        // Each item: btrfs_ioctl_search_header (transid, objectid, offset: u64; type,
        // len: u32; CPU order), then `len` bytes of item data.
        let mut at = 0usize;
        let mut last = from;
        for _ in 0..args.key.nr_items {
            let header = args.buf.get(at..at + 32).ok_or_else(bad)?;
            let field = |range: std::ops::Range<usize>| header.get(range).ok_or_else(bad);
            last = u64::from_ne_bytes(field(16..24)?.try_into().map_err(|_| bad())?);
            let len = u32::from_ne_bytes(field(28..32)?.try_into().map_err(|_| bad())?) as usize;
            let data = args.buf.get(at + 32..at + 32 + len).ok_or_else(bad)?;
            found.push((last, data.to_vec()));
            at += 32 + len;
        }
        if last >= max_offset {
            return Ok(found);
        }
        from = last + 1;
    }
}

/// Returns the data of the quota-tree item with key `(0, item_type, offset)`.
/// `Ok(None)`: no such item; `ENOENT` error: no quota tree (quotas are off).
fn quota_tree_item(fd: BorrowedFd<'_>, item_type: u32, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let items = search(fd, BTRFS_QUOTA_TREE_OBJECTID, 0, item_type, offset, offset)?;
    Ok(items.into_iter().next().map(|(_, data)| data))
}

/// Reads the flags of the quota status item; 0 when quotas are off.
fn quota_status_flags(fd: BorrowedFd<'_>) -> io::Result<u64> {
    match quota_tree_item(fd, BTRFS_QGROUP_STATUS_KEY, 0) {
        // btrfs_qgroup_status_item: version, generation, flags, ...
        Ok(Some(item)) => read_u64_le(&item, 16),
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(0),
    }
}

/// Returns the subvolume id of `fd`, which must be a subvolume root: a plain
/// directory would otherwise silently stand for its enclosing subvolume.
fn own_subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    if !is_subvolume(fd)? {
        let msg = "descriptor is not the root of a btrfs subvolume";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    subvolume_id(fd)
}

/// Reports whether the filesystem holding `fd` is btrfs (by `fstatfs` magic).
pub fn is_btrfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    // Compare the low 32 bits: f_type is signed on some targets.
    Ok(st.filesystem_type().0 as i64 as u32 == BTRFS_SUPER_MAGIC as u32)
}

/// Reports whether `fd` is the root directory of a btrfs subvolume (btrfs and inode 256).
pub fn is_subvolume(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !is_btrfs(fd)? {
        return Ok(false);
    }
    let st = nix::sys::stat::fstat(fd)?;
    let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
    Ok(is_dir && st.st_ino as u64 == BTRFS_FIRST_FREE_OBJECTID)
}

/// Returns the id of the subvolume that contains `fd` (its own id when `fd` is a subvolume root).
pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args =
        InoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; BTRFS_INO_LOOKUP_PATH_MAX] };
    // SAFETY: `args` is a live `btrfs_ioctl_ino_lookup_args` (size asserted)
    // and BTRFS_IOC_INO_LOOKUP reads and writes exactly that structure.
    unsafe { ioctl(fd, BTRFS_IOC_INO_LOOKUP, &raw mut args) }?;
    Ok(args.treeid)
}

/// Creates an empty subvolume called `name` inside the directory `parent`.
pub fn subvolume_create(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut args = vol_args(name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args` (size asserted) with a
    // NUL-terminated name; BTRFS_IOC_SUBVOL_CREATE only reads it.
    unsafe { ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, &raw mut args) }.map(drop)
}

/// Snapshots the subvolume `source` as `name` inside `dest_parent`, read-only if asked.
pub fn snapshot_create(
    source: BorrowedFd<'_>,
    dest_parent: BorrowedFd<'_>,
    name: &str,
    readonly: bool,
) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args_v2` (size asserted) whose
    // qgroup-inherit pointer is null; `source` stays open for the call.
    unsafe { ioctl(dest_parent, BTRFS_IOC_SNAP_CREATE_V2, &raw mut args) }.map(drop)
}

/// Deletes the subvolume or snapshot `name` inside `parent` (read-only ones too, given CAP_SYS_ADMIN).
pub fn subvolume_delete(parent: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut args = vol_args(name)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args` (size asserted) with a
    // NUL-terminated name; BTRFS_IOC_SNAP_DESTROY only reads it.
    unsafe { ioctl(parent, BTRFS_IOC_SNAP_DESTROY, &raw mut args) }.map(drop)
}

/// Sets or clears the read-only flag of the subvolume whose root is `fd`.
pub fn set_readonly(fd: BorrowedFd<'_>, readonly: bool) -> io::Result<()> {
    let mut flags: u64 = 0;
    // SAFETY: BTRFS_IOC_SUBVOL_GETFLAGS writes one u64 into `flags`.
    unsafe { ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, &raw mut flags) }?;
    let mut wanted = flags & !BTRFS_SUBVOL_RDONLY;
    if readonly {
        wanted |= BTRFS_SUBVOL_RDONLY;
    }
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: BTRFS_IOC_SUBVOL_SETFLAGS reads one u64 from `wanted`.
    unsafe { ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, &raw mut wanted) }.map(drop)
}

/// Reports whether qgroups are enabled on the filesystem of `fd` (needs CAP_SYS_ADMIN).
pub fn quota_enabled(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(quota_status_flags(fd)? & BTRFS_QGROUP_STATUS_FLAG_ON != 0)
}

/// Blocks until any running qgroup rescan on the filesystem of `fd` has finished.
fn rescan_wait(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: BTRFS_IOC_QUOTA_RESCAN_WAIT is an _IO request with no argument.
    unsafe { ioctl(fd, BTRFS_IOC_QUOTA_RESCAN_WAIT, std::ptr::null_mut::<libc::c_void>()) }.map(drop)
}

/// Enables (full) qgroup accounting if it is off, then waits for the accounting
/// rescan so usage numbers and limits are trustworthy; idempotent.
pub fn quota_enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    if !quota_enabled(fd)? {
        let mut args = QuotaCtlArgs { cmd: BTRFS_QUOTA_CTL_ENABLE, status: 0 };
        // SAFETY: `args` is a live `btrfs_ioctl_quota_ctl_args` (size asserted),
        // which BTRFS_IOC_QUOTA_CTL reads and writes.
        unsafe { ioctl(fd, BTRFS_IOC_QUOTA_CTL, &raw mut args) }?;
    }
    // Enabling starts a rescan; until it ends usage reads 0 and limits are loose.
    rescan_wait(fd)?;
    rescan_if_inconsistent(fd)?;
    rescan_wait(fd)
}

/// The quota group of the volume whose subvolume is `id`: qgroup 1/<id>, which holds the
/// subvolume's own qgroup 0/<id> and those of every subvolume made below it. Subvolume
/// creation needs no privilege and a new subvolume's qgroup 0/<new> belongs to no
/// group, so a limit on 0/<id> alone would not bound what a pod stores in one.
const fn volume_group(id: u64) -> u64 {
    (1 << BTRFS_QGROUP_LEVEL_SHIFT) | id
}

/// Sets (`None`: removes) the referenced-bytes limit of qgroup `qgroupid`.
fn set_limit(fd: BorrowedFd<'_>, qgroupid: u64, max_referenced: Option<u64>) -> io::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid,
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: max_referenced.unwrap_or(BTRFS_QGROUP_CLEAR_VALUE),
            ..QgroupLimit::default()
        },
    };
    // SAFETY: `args` is a live `btrfs_ioctl_qgroup_limit_args` (size asserted)
    // that BTRFS_IOC_QGROUP_LIMIT reads.
    unsafe { ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &raw mut args) }.map(drop)
}

/// The referenced-bytes limit of qgroup `qgroupid`, if it has one.
fn limit_of(fd: BorrowedFd<'_>, qgroupid: u64) -> io::Result<Option<u64>> {
    // btrfs_qgroup_limit_item: flags, max_rfer, max_excl, rsv_rfer, rsv_excl.
    match quota_tree_item(fd, BTRFS_QGROUP_LIMIT_KEY, qgroupid)? {
        Some(lim) if read_u64_le(&lim, 0)? & BTRFS_QGROUP_LIMIT_MAX_RFER != 0 => Ok(Some(read_u64_le(&lim, 8)?)),
        _ => Ok(None),
    }
}

fn qgroup_exists(fd: BorrowedFd<'_>, qgroupid: u64) -> io::Result<bool> {
    Ok(quota_tree_item(fd, BTRFS_QGROUP_INFO_KEY, qgroupid)?.is_some())
}

/// Creates (`create`) or removes qgroup `qgroupid`.
fn qgroup_create(fd: BorrowedFd<'_>, qgroupid: u64, create: bool) -> io::Result<()> {
    let mut args = QgroupCreateArgs { create: u64::from(create), qgroupid };
    // SAFETY: `args` is a live `btrfs_ioctl_qgroup_create_args` (size asserted)
    // that BTRFS_IOC_QGROUP_CREATE reads.
    unsafe { ioctl(fd, BTRFS_IOC_QGROUP_CREATE, &raw mut args) }.map(drop)
}

/// Makes qgroup `member` a member of qgroup `group` (`assign`) or no longer one.
fn qgroup_assign(fd: BorrowedFd<'_>, member: u64, group: u64, assign: bool) -> io::Result<()> {
    let mut args = QgroupAssignArgs { assign: u64::from(assign), src: member, dst: group };
    // SAFETY: `args` is a live `btrfs_ioctl_qgroup_assign_args` (size asserted)
    // that BTRFS_IOC_QGROUP_ASSIGN reads. A positive return (accounting needs a
    // rescan) is not an error; the status flags say so and the caller rescans.
    unsafe { ioctl(fd, BTRFS_IOC_QGROUP_ASSIGN, &raw mut args) }.map(drop)
}

/// The qgroups that are members of qgroup `group` (relation items are stored both ways;
/// the ones keyed by the group name its members).
fn members(fd: BorrowedFd<'_>, group: u64) -> io::Result<Vec<u64>> {
    let below = group & !((1 << BTRFS_QGROUP_LEVEL_SHIFT) - 1);
    let items = search(fd, BTRFS_QUOTA_TREE_OBJECTID, group, BTRFS_QGROUP_RELATION_KEY, 0, below.saturating_sub(1))?;
    Ok(items.into_iter().map(|(member, _)| member).collect())
}

/// The IDs of the subvolumes below subvolume `id` (its children, theirs, and so on),
/// from the root tree's back references: no directory is read, so none can hide one.
fn subvolumes_below(fd: BorrowedFd<'_>, id: u64) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    let mut pending = vec![id];
    while let Some(parent) = pending.pop() {
        for (child, _) in search(fd, BTRFS_ROOT_TREE_OBJECTID, parent, BTRFS_ROOT_REF_KEY, 0, u64::MAX)? {
            found.push(child);
            pending.push(child);
        }
    }
    Ok(found)
}

/// Starts a qgroup rescan if the accounting is marked inconsistent (as assigning a
/// qgroup that shares extents leaves it); limits tighten again as it proceeds.
fn rescan_if_inconsistent(fd: BorrowedFd<'_>) -> io::Result<()> {
    if quota_status_flags(fd)? & BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT == 0 {
        return Ok(());
    }
    let mut args = QuotaRescanArgs::default();
    // SAFETY: `args` is a live, zeroed `btrfs_ioctl_quota_rescan_args`
    // (size asserted) that BTRFS_IOC_QUOTA_RESCAN only reads.
    match unsafe { ioctl(fd, BTRFS_IOC_QUOTA_RESCAN, &raw mut args) } {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(()),
    }
}

/// Adds to the volume group of subvolume `id` every subvolume below it (and the
/// subvolume itself) that is not a member yet; returns the subvolume IDs it added.
fn adopt(fd: BorrowedFd<'_>, id: u64) -> io::Result<Vec<u64>> {
    let group = volume_group(id);
    let current = members(fd, group)?;
    let mut added = Vec::new();
    for sub in std::iter::once(id).chain(subvolumes_below(fd, id)?) {
        if current.contains(&sub) {
            continue;
        }
        match qgroup_assign(fd, sub, group, true) {
            Ok(()) => added.push(sub),
            // Deleted since it was listed, or assigned by a concurrent call.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EEXIST)) => {}
            Err(e) => return Err(e),
        }
    }
    if !added.is_empty() {
        rescan_if_inconsistent(fd)?;
        // Usage is read from the quota tree as last committed: commit now, so the data
        // of the subvolumes just added shows in the volume's usage at once.
        sync(fd)?;
    }
    Ok(added)
}

/// Sets (or with `None` removes) the size limit of the volume whose subvolume is
/// `subvol`: the referenced-bytes limit of its volume group (see [`volume_group`]),
/// made first with every subvolume below as a member. A limit an earlier berth set on
/// the subvolume's own qgroup is moved there.
///
/// The qgroup calls here are issued on `ctl`, a directory of the same filesystem outside
/// the volume (its parent): each starts a transaction charged to the subvolume of the
/// descriptor it is issued on, and a full volume would refuse that with EDQUOT.
pub fn qgroup_limit(subvol: BorrowedFd<'_>, ctl: BorrowedFd<'_>, max_referenced: Option<u64>) -> io::Result<()> {
    let id = own_subvolume_id(subvol)?;
    let group = volume_group(id);
    if !qgroup_exists(ctl, group)? {
        match qgroup_create(ctl, group, true) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    adopt(ctl, id)?;
    set_limit(ctl, group, max_referenced)?;
    if limit_of(ctl, id)?.is_some() {
        set_limit(ctl, id, None)?;
    }
    Ok(())
}

/// Makes every subvolume below the volume subvolume `subvol` count toward its limit;
/// returns the IDs of those that did not yet. A volume limited the way an earlier berth
/// did it (on its own qgroup only) gets its volume group now; one without a limit is
/// left alone.
pub fn qgroup_adopt(subvol: BorrowedFd<'_>, ctl: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    let id = own_subvolume_id(subvol)?;
    if qgroup_exists(ctl, volume_group(id))? {
        return adopt(ctl, id);
    }
    match limit_of(ctl, id)? {
        Some(max) => {
            qgroup_limit(subvol, ctl, Some(max))?;
            Ok(subvolumes_below(ctl, id)?)
        }
        None => Ok(Vec::new()),
    }
}

/// Removes the volume group of the volume subvolume `subvol` (its members first: a
/// group with members cannot be removed); idempotent. Call it before deleting the
/// subvolume, so no group outlives its volume.
pub fn qgroup_remove(subvol: BorrowedFd<'_>, ctl: BorrowedFd<'_>) -> io::Result<()> {
    let id = own_subvolume_id(subvol)?;
    let group = volume_group(id);
    match qgroup_exists(ctl, group) {
        Ok(true) => {}
        // ENOENT: quotas are off, so there is no group.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => return Ok(()),
    }
    for member in members(ctl, group)? {
        match qgroup_assign(ctl, member, group, false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    match qgroup_create(ctl, group, false) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Usage and limit of a volume's qgroup, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QgroupUsage {
    /// Bytes referenced by the volume, shared extents included.
    pub referenced: u64,
    /// Bytes referenced only by the volume (freed if it is deleted).
    pub exclusive: u64,
    /// The referenced-bytes limit, if any.
    pub max_referenced: Option<u64>,
}

/// Reads the volume group of the subvolume `subvol` (or, for a volume without one, its
/// own qgroup 0/<id>) from the quota tree (needs CAP_SYS_ADMIN); the numbers are those
/// of the last committed transaction ([`sync`] commits one).
pub fn qgroup_usage(subvol: BorrowedFd<'_>) -> io::Result<QgroupUsage> {
    let id = own_subvolume_id(subvol)?;
    let group = volume_group(id);
    // ENOENT (kind NotFound) from the search means quotas are not enabled.
    let (qgroupid, info) = match quota_tree_item(subvol, BTRFS_QGROUP_INFO_KEY, group)? {
        Some(info) => (group, info),
        None => (
            id,
            quota_tree_item(subvol, BTRFS_QGROUP_INFO_KEY, id)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no btrfs qgroup 0/{id}")))?,
        ),
    };
    // btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr.
    let (referenced, exclusive) = (read_u64_le(&info, 8)?, read_u64_le(&info, 24)?);
    Ok(QgroupUsage { referenced, exclusive, max_referenced: limit_of(subvol, qgroupid)? })
}

/// Flushes delalloc and commits the current transaction of the filesystem of `fd`.
pub fn sync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: BTRFS_IOC_SYNC is an _IO request with no argument.
    unsafe { ioctl(fd, BTRFS_IOC_SYNC, std::ptr::null_mut::<libc::c_void>()) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn ioctl_numbers_match_uapi() {
        let expected: [(Req, u32); 14] = [
            (BTRFS_IOC_SYNC, 0x9408),
            (BTRFS_IOC_SUBVOL_CREATE, 0x5000_940e),
            (BTRFS_IOC_SNAP_DESTROY, 0x5000_940f),
            (BTRFS_IOC_TREE_SEARCH, 0xd000_9411),
            (BTRFS_IOC_INO_LOOKUP, 0xd000_9412),
            (BTRFS_IOC_SNAP_CREATE_V2, 0x5000_9417),
            (BTRFS_IOC_SUBVOL_GETFLAGS, 0x8008_9419),
            (BTRFS_IOC_SUBVOL_SETFLAGS, 0x4008_941a),
            (BTRFS_IOC_QUOTA_CTL, 0xc010_9428),
            (BTRFS_IOC_QGROUP_ASSIGN, 0x4018_9429),
            (BTRFS_IOC_QGROUP_CREATE, 0x4010_942a),
            (BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b),
            (BTRFS_IOC_QUOTA_RESCAN, 0x4040_942c),
            (BTRFS_IOC_QUOTA_RESCAN_WAIT, 0x942e),
        ];
        for (got, want) in expected {
            assert_eq!(got, Req::from(want), "{want:#x}");
        }
    }

    #[test]
    fn name_validation() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"x".repeat(256)] {
            let err = vol_args(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(io::ErrorKind::InvalidInput), "{bad:?}");
        }
        assert!(vol_args(&"x".repeat(255)).is_ok());
        assert!(fill_name(&mut [0u8; 16], &"x".repeat(16)).is_err()); // keeps a NUL
        let name = vol_args("pvc-1").map(|a| a.name[..6].to_vec()).ok();
        assert_eq!(name.as_deref(), Some(&b"pvc-1\0"[..]));
    }
}
