//! The kernel's btrfs ioctl interface, mirrored from `linux/btrfs.h` and
//! `linux/btrfs_tree.h`: the argument structures (each size asserted against the C
//! layout), the request numbers, the tree and item constants, and the builder of the
//! fixed-size name buffers the subvolume calls take. Nothing here issues a call.

use std::io;
use std::mem::size_of;

use crate::mount::ioctl::Req;

/// `f_type` reported by `statfs(2)` for btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123683E;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
pub(super) const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
pub(super) const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
pub(super) const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
pub(super) const BTRFS_ROOT_REF_KEY: u32 = 156;
pub(super) const BTRFS_QGROUP_STATUS_KEY: u32 = 240;
pub(super) const BTRFS_QGROUP_INFO_KEY: u32 = 242;
pub(super) const BTRFS_QGROUP_LIMIT_KEY: u32 = 244;
pub(super) const BTRFS_QGROUP_RELATION_KEY: u32 = 246;
/// A qgroup ID is `level << 48 | id`.
pub(super) const BTRFS_QGROUP_LEVEL_SHIFT: u32 = 48;
pub(super) const BTRFS_QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
pub(super) const BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
pub(super) const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// Writing this as a limit value tells the kernel to clear that limit.
pub(super) const BTRFS_QGROUP_CLEAR_VALUE: u64 = u64::MAX;
pub(super) const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
pub(super) const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_NAME_LEN: usize = 255;
const BTRFS_PATH_NAME_MAX: usize = 4087;
pub(super) const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
pub(super) const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
pub(super) const BTRFS_SEARCH_ARGS_BUFSIZE: usize = 4096 - size_of::<SearchKey>();

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
pub(super) struct VolArgs {
    pub(super) fd: i64,
    pub(super) name: [u8; BTRFS_PATH_NAME_MAX + 1],
}
const _: () = assert!(size_of::<VolArgs>() == 4096);

/// `struct btrfs_ioctl_vol_args_v2`; the two unions are flattened to the
/// members used here (the qgroup-inherit union is always zero).
#[repr(C)]
pub(super) struct VolArgsV2 {
    pub(super) fd: i64,
    pub(super) transid: u64,
    pub(super) flags: u64,
    pub(super) unused: [u64; 4],
    pub(super) name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}
const _: () = assert!(size_of::<VolArgsV2>() == 4096);

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
pub(super) struct InoLookupArgs {
    pub(super) treeid: u64,
    pub(super) objectid: u64,
    pub(super) name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
pub(super) struct SearchKey {
    pub(super) tree_id: u64,
    pub(super) min_objectid: u64,
    pub(super) max_objectid: u64,
    pub(super) min_offset: u64,
    pub(super) max_offset: u64,
    pub(super) min_transid: u64,
    pub(super) max_transid: u64,
    pub(super) min_type: u32,
    pub(super) max_type: u32,
    pub(super) nr_items: u32,
    pub(super) unused: [u32; 9],
}
const _: () = assert!(size_of::<SearchKey>() == 104);

/// `struct btrfs_ioctl_search_args`: a key followed by the result buffer, which
/// holds `btrfs_ioctl_search_header` (32 bytes, CPU order) + item data (LE).
#[repr(C)]
pub(super) struct SearchArgs {
    pub(super) key: SearchKey,
    pub(super) buf: [u8; BTRFS_SEARCH_ARGS_BUFSIZE],
}
const _: () = assert!(size_of::<SearchArgs>() == 4096);

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
pub(super) struct QuotaCtlArgs {
    pub(super) cmd: u64,
    pub(super) status: u64,
}
const _: () = assert!(size_of::<QuotaCtlArgs>() == 16);

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
pub(super) struct QgroupLimit {
    pub(super) flags: u64,
    pub(super) max_rfer: u64,
    pub(super) max_excl: u64,
    pub(super) rsv_rfer: u64,
    pub(super) rsv_excl: u64,
}
const _: () = assert!(size_of::<QgroupLimit>() == 40);

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
pub(super) struct QgroupLimitArgs {
    pub(super) qgroupid: u64,
    pub(super) lim: QgroupLimit,
}
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);

/// `struct btrfs_ioctl_qgroup_assign_args`.
#[repr(C)]
pub(super) struct QgroupAssignArgs {
    pub(super) assign: u64,
    pub(super) src: u64,
    pub(super) dst: u64,
}
const _: () = assert!(size_of::<QgroupAssignArgs>() == 24);

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
pub(super) struct QgroupCreateArgs {
    pub(super) create: u64,
    pub(super) qgroupid: u64,
}
const _: () = assert!(size_of::<QgroupCreateArgs>() == 16);

/// `struct btrfs_ioctl_quota_rescan_args`.
#[repr(C)]
#[derive(Default)]
pub(super) struct QuotaRescanArgs {
    pub(super) flags: u64,
    pub(super) progress: u64,
    pub(super) reserved: [u64; 6],
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
pub(super) const BTRFS_IOC_SYNC: Req = io(8);
pub(super) const BTRFS_IOC_SUBVOL_CREATE: Req = iow(14, size_of::<VolArgs>());
pub(super) const BTRFS_IOC_SNAP_DESTROY: Req = iow(15, size_of::<VolArgs>());
pub(super) const BTRFS_IOC_TREE_SEARCH: Req = iowr(17, size_of::<SearchArgs>());
pub(super) const BTRFS_IOC_INO_LOOKUP: Req = iowr(18, size_of::<InoLookupArgs>());
pub(super) const BTRFS_IOC_SNAP_CREATE_V2: Req = iow(23, size_of::<VolArgsV2>());
pub(super) const BTRFS_IOC_SUBVOL_GETFLAGS: Req = ior(25, size_of::<u64>());
pub(super) const BTRFS_IOC_SUBVOL_SETFLAGS: Req = iow(26, size_of::<u64>());
pub(super) const BTRFS_IOC_QUOTA_CTL: Req = iowr(40, size_of::<QuotaCtlArgs>());
pub(super) const BTRFS_IOC_QGROUP_ASSIGN: Req = iow(41, size_of::<QgroupAssignArgs>());
pub(super) const BTRFS_IOC_QGROUP_CREATE: Req = iow(42, size_of::<QgroupCreateArgs>());
// The kernel header declares this one _IOR although userspace passes the limit in.
pub(super) const BTRFS_IOC_QGROUP_LIMIT: Req = ior(43, size_of::<QgroupLimitArgs>());
pub(super) const BTRFS_IOC_QUOTA_RESCAN: Req = iow(44, size_of::<QuotaRescanArgs>());
pub(super) const BTRFS_IOC_QUOTA_RESCAN_WAIT: Req = io(46);

/// Builds a `btrfs_ioctl_vol_args` naming the single path component `name`.
pub(super) fn vol_args(name: &str) -> io::Result<VolArgs> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    fill_name(&mut args.name, name)?;
    Ok(args)
}

/// Copies a validated single path component into the zeroed buffer `dst`,
/// leaving at least one trailing NUL.
pub(super) fn fill_name(dst: &mut [u8], name: &str) -> io::Result<()> {
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
