//! Applying an operation to every directory and regular file of a user volume (for
//! example a project ID after a copy), without following symlinks or leaving the
//! filesystem. Iterative, so deep trees cannot overflow the stack.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn open_at(dir: BorrowedFd<'_>, name: &CString, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a valid open fd for the duration of the call and `name` is a
    // NUL-terminated string; openat returns a new fd or -1.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, nix::dir::Type)>> {
    let dup = nix::unistd::dup(dir).map_err(io::Error::from)?;
    let mut listing = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut out = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if let Some(kind) = entry.file_type() {
            out.push((name.to_owned(), kind));
        }
    }
    Ok(out)
}

/// Calls `op` with an fd of `root` and of every directory and regular file beneath it.
/// Symlinks and special files are skipped; mount points inside the tree are not entered.
pub fn for_each_inode(root: &Path, op: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>) -> io::Result<()> {
    let path = CString::new(root.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cwd = unsafe_cwd();
    let top = open_at(cwd, &path, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let dev = nix::sys::stat::fstat(top.as_fd()).map_err(io::Error::from)?.st_dev;
    op(top.as_fd())?;
    let mut stack = vec![top];
    while let Some(dir) = stack.pop() {
        for (name, kind) in entries(dir.as_fd())? {
            match kind {
                nix::dir::Type::Directory => {
                    let child = open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)?;
                    if nix::sys::stat::fstat(child.as_fd()).map_err(io::Error::from)?.st_dev != dev {
                        continue;
                    }
                    op(child.as_fd())?;
                    stack.push(child);
                }
                nix::dir::Type::File => match open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK) {
                    Ok(file) => op(file.as_fd())?,
                    // Replaced by a symlink since it was listed: skip it.
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
                    Err(e) => return Err(e),
                },
                _ => {}
            }
        }
    }
    Ok(())
}

fn unsafe_cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel interprets as the working directory; it is
    // never closed, so borrowing it for 'static is sound.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_dirs_and_files_but_not_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), b"x").expect("write");
        std::fs::write(dir.path().join("g"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc", dir.path().join("a/link")).expect("symlink");
        let mut count = 0;
        for_each_inode(dir.path(), &mut |_| {
            count += 1;
            Ok(())
        })
        .expect("walk");
        assert_eq!(count, 5, "root, a, a/b, a/b/f, g");
    }
}
