//! Copying one regular file's data: a reflink clone where the filesystem can, else a
//! sparse copy that skips holes.

use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use super::{fstat, is};
use crate::mount::blockdev;

/// Whether [`copy_tree`](super::copy_tree) / [`copy_file_data`] may share extents with
/// the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reflink {
    /// Try `FICLONE` per regular file, fall back to a sparse copy when unsupported.
    Auto,
    /// Always copy the data.
    Never,
}

/// Copies one regular file's data sparsely (SEEK_DATA/SEEK_HOLE, ftruncate to size),
/// trying `FICLONE` first when `reflink` is [`Reflink::Auto`]; returns (bytes, cloned).
/// `dst` must be open for writing and should be empty; `src`'s file offset may move.
pub fn copy_file_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, reflink: Reflink) -> io::Result<(u64, bool)> {
    copy_data(src, dst, reflink, &mut |_| {})
}

pub(super) fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    reflink: Reflink,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, bool)> {
    copy_file_data_from(src, dst, reflink, 0, progress)
}

/// [`copy_file_data`] continuing at byte `from` (`dst` already holds the source's data
/// before it: a copy an interrupted process made in this boot), reporting the bytes
/// copied so far, `from` included, to `progress`.
pub fn copy_file_data_from(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    reflink: Reflink,
    from: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, bool)> {
    let size = fstat(src)?.stx_size;
    if reflink == Reflink::Auto && size > 0 && from == 0 {
        match blockdev::clone_file(src, dst) {
            Ok(()) => {
                progress(size);
                return Ok((size, true));
            }
            Err(e) if !is(&e, &[libc::EOPNOTSUPP, libc::EXDEV, libc::EINVAL, libc::ENOTTY]) => return Err(e),
            Err(_) => {} // this filesystem cannot share extents: copy
        }
    }
    let seek = |off: u64, w: Whence| match lseek(src, off as libc::off_t, w) {
        Ok(p) => Ok(Some(p as u64)),
        Err(Errno::ENXIO) => Ok(None), // no data at or after `off`
        Err(Errno::EINVAL) if matches!(w, Whence::SeekData) => Ok(Some(off)), // unsupported
        Err(Errno::EINVAL) => Ok(Some(size)),
        Err(e) => Err(io::Error::from(e)),
    };
    let (sf, df) = (File::from(src.try_clone_to_owned()?), File::from(dst.try_clone_to_owned()?));
    let mut buf = vec![0u8; size.clamp(1, 1 << 20) as usize];
    let (mut off, mut done) = (from.min(size), from.min(size));
    'data: while off < size {
        let Some(data) = seek(off, Whence::SeekData)?.filter(|&d| d < size) else {
            break;
        };
        off = seek(data, Whence::SeekHole)?.unwrap_or(size).clamp(data + 1, size);
        let mut pos = data;
        while pos < off {
            let want = (off - pos).min(buf.len() as u64) as usize;
            let n = match sf.read_at(&mut buf[..want], pos) {
                Ok(0) => break 'data, // the file shrank under us
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            df.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            done += n as u64;
            progress(done);
        }
    }
    df.set_len(size)?;
    Ok((done, false))
}
