//! Helpers shared by the loop-device and block-device unit tests.

use std::path::Path;

/// `Some` when a loop-device test can run here; otherwise prints why not.
pub fn runnable(test: &str) -> Option<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let reason = if unsafe { libc::geteuid() } != 0 {
        "not root"
    } else if !Path::new("/dev/loop-control").exists() {
        "no /dev/loop-control"
    } else {
        return Some(());
    };
    eprintln!("SKIPPED: {test}: {reason}");
    None
}

/// A temporary directory on a disk-backed filesystem (not tmpfs), named with `prefix`.
pub fn disk_backed_tempdir(prefix: &str) -> tempfile::TempDir {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    let on_disk = |d: &&str| statfs(*d).is_ok_and(|s| s.filesystem_type() != TMPFS_MAGIC);
    let base = ["/var/tmp", "/tmp"].into_iter().find(on_disk).expect("no disk-backed temp directory");
    tempfile::Builder::new().prefix(prefix).tempdir_in(base).expect("tempdir")
}
