//! Btrfs quota groups: enabling accounting, and the size limit of a volume, which is
//! the referenced-bytes limit of its volume group 1/<id> holding every subvolume made
//! inside the volume (see [`volume_group`]); reading a volume's usage back.

use std::io;
use std::os::fd::BorrowedFd;

use super::search::{read_u64_le, search};
use super::uapi::{
    BTRFS_IOC_QGROUP_ASSIGN, BTRFS_IOC_QGROUP_CREATE, BTRFS_IOC_QGROUP_LIMIT, BTRFS_IOC_QUOTA_CTL,
    BTRFS_IOC_QUOTA_RESCAN, BTRFS_IOC_QUOTA_RESCAN_WAIT, BTRFS_QGROUP_CLEAR_VALUE, BTRFS_QGROUP_INFO_KEY,
    BTRFS_QGROUP_LEVEL_SHIFT, BTRFS_QGROUP_LIMIT_KEY, BTRFS_QGROUP_LIMIT_MAX_RFER, BTRFS_QGROUP_RELATION_KEY,
    BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT, BTRFS_QGROUP_STATUS_FLAG_ON, BTRFS_QGROUP_STATUS_KEY,
    BTRFS_QUOTA_CTL_ENABLE, BTRFS_QUOTA_TREE_OBJECTID, BTRFS_ROOT_REF_KEY, BTRFS_ROOT_TREE_OBJECTID, QgroupAssignArgs,
    QgroupCreateArgs, QgroupLimit, QgroupLimitArgs, QuotaCtlArgs, QuotaRescanArgs,
};
use super::{own_subvolume_id, sync};
use crate::mount::ioctl::ioctl;

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
