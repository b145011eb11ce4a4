//! The one wrapper through which berth issues ioctl(2), for block devices, loop devices,
//! btrfs, project quotas and reflink clones alike.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// An ioctl request number (`c_int` on musl, `c_ulong` on glibc).
pub(super) type Req = libc::Ioctl;

/// Issues `ioctl(fd, req, arg)` and returns its non-negative result, or the errno of -1.
///
/// # Safety
/// `arg` must be what `req` expects: a pointer to a live value of the right layout
/// (writable when the kernel writes through it), or an integer for requests that take
/// their argument by value or ignore it.
pub(super) unsafe fn ioctl<A>(fd: BorrowedFd<'_>, req: Req, arg: A) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is open for the borrow's lifetime; the caller vouches for `arg`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}
