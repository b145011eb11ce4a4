//! Reading btrfs's internal trees (the root tree's subvolume back references, the
//! quota tree's qgroup items) with `BTRFS_IOC_TREE_SEARCH`: one loop that pages through
//! the kernel's result buffer and returns each matching item's key offset and data.

use std::io;
use std::os::fd::BorrowedFd;

use super::uapi::{BTRFS_IOC_TREE_SEARCH, BTRFS_SEARCH_ARGS_BUFSIZE, SearchArgs, SearchKey};
use crate::mount::ioctl::ioctl;

/// Reads the little-endian `u64` at byte `at` of an item's data.
pub(super) fn read_u64_le(data: &[u8], at: usize) -> io::Result<u64> {
    data.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short btrfs item"))
}

/// Returns every item of tree `tree_id` with key `(objectid, item_type, offset)` for an
/// offset in `min_offset..=max_offset`, as `(offset, data)` in key order.
/// `ENOENT` error: no such tree (for the quota tree: quotas are off).
pub(super) fn search(
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
