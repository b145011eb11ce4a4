//! Mount operations built on [`Syscall`]: bind mounts with a read-only second step,
//! unmounts that treat "not mounted" as success, and the mount-flag allow-list.

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use super::Syscall;
use super::mountinfo::{self, MountEntry};

/// A mount flag from a request that berth does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mount flag {0:?} is not allowed; allowed flags: {ALLOWED}")]
pub struct FlagError(pub String);

const ALLOWED: &str =
    "ro, rw, defaults, nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime, lazytime, sync, dirsync";

/// Flags parsed from a capability's mount_flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub readonly: bool,
    pub extra: MsFlags,
}

impl Default for Flags {
    fn default() -> Self {
        Flags { readonly: false, extra: MsFlags::empty() }
    }
}

/// Translates mount flags through the allow-list. Anything else, including flags that
/// carry values (`a=b`) or several options in one string (`a,b`), is refused.
pub fn parse_flags<S: AsRef<str>>(flags: &[S]) -> Result<Flags, FlagError> {
    let mut out = Flags::default();
    for flag in flags {
        let flag = flag.as_ref();
        let bits = match flag {
            "ro" => {
                out.readonly = true;
                MsFlags::empty()
            }
            "rw" | "defaults" => MsFlags::empty(),
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "lazytime" => MsFlags::MS_LAZYTIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            other => return Err(FlagError(other.escape_debug().to_string())),
        };
        out.extra |= bits;
    }
    Ok(out)
}

/// Reads and parses the mount table.
pub fn table(sys: &dyn Syscall) -> io::Result<Vec<MountEntry>> {
    let text = sys.mountinfo()?;
    mountinfo::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// True when something is mounted exactly at `path`.
pub fn is_mount_point(sys: &dyn Syscall, path: &Path) -> io::Result<bool> {
    Ok(!mountinfo::at(&table(sys)?, path).is_empty())
}

/// Bind-mounts `source` on `target`. Read-only and the extra flags are applied by a
/// second, remounting step (a plain bind ignores them); if that fails the bind is undone.
/// A failure counts in the `mount` errors metric.
pub fn bind(sys: &dyn Syscall, source: &Path, target: &Path, flags: Flags) -> io::Result<()> {
    bind_twice(sys, source, target, flags).inspect_err(|_| crate::metrics::record_error("mount"))
}

fn bind_twice(sys: &dyn Syscall, source: &Path, target: &Path, flags: Flags) -> io::Result<()> {
    sys.mount(Some(source), target, None, MsFlags::MS_BIND, None)?;
    if flags.readonly || !flags.extra.is_empty() {
        let mut remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags.extra;
        if flags.readonly {
            remount |= MsFlags::MS_RDONLY;
        }
        if let Err(e) = sys.mount(None, target, None, remount, None) {
            let _ = sys.umount(target, MntFlags::MNT_DETACH);
            return Err(e);
        }
    }
    Ok(())
}

/// What a path looks like, asked without risking a hang.
#[derive(Debug)]
pub enum Probe {
    Missing,
    /// A mount whose server or daemon is gone: the kernel answered ESTALE, ENOTCONN or
    /// EIO, or did not answer within the time limit (a hard NFS mount of a dead server).
    Stale,
    Present(std::fs::Metadata),
}

/// How long berth waits for the kernel to describe a path before calling it stale.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// lstat(2) on a worker thread with a time limit: a mount whose server is gone can block
/// the calling thread forever, and an RPC must still answer. A thread stuck in the kernel
/// is left behind; it wakes when the mount is detached.
pub fn probe(path: &Path) -> io::Result<Probe> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::Builder::new().name("berth-probe".into()).spawn(move || {
        let _ = tx.send(std::fs::symlink_metadata(&owned));
    })?;
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(meta)) => Ok(Probe::Present(meta)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Missing),
        Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOTCONN | libc::EIO)) => Ok(Probe::Stale),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(Probe::Stale),
    }
}

/// Detaches every mount stacked at `target` without touching the filesystems (lazy
/// unmount), for mounts whose server is gone. A failure counts in the `unmount` errors
/// metric.
pub fn detach_all(sys: &dyn Syscall, target: &Path) -> io::Result<()> {
    detach_stack(sys, target).inspect_err(|_| crate::metrics::record_error("unmount"))
}

fn detach_stack(sys: &dyn Syscall, target: &Path) -> io::Result<()> {
    for _ in 0..64 {
        if mountinfo::at(&table(sys)?, target).is_empty() {
            return Ok(());
        }
        match sys.umount(target, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("{} is still mounted after 64 detaches", target.display())))
}

/// Unmounts every mount stacked at `target`. Not mounted (or not existing) is success; a
/// mount whose server or daemon is gone (ESTALE, ENOTCONN, EIO) is detached lazily so the
/// call never hangs on it. A failure counts in the `unmount` errors metric.
pub fn unmount_all(sys: &dyn Syscall, target: &Path) -> io::Result<()> {
    unmount_stack(sys, target).inspect_err(|_| crate::metrics::record_error("unmount"))
}

fn unmount_stack(sys: &dyn Syscall, target: &Path) -> io::Result<()> {
    for _ in 0..64 {
        if mountinfo::at(&table(sys)?, target).is_empty() {
            return Ok(());
        }
        match sys.umount(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOENT) => return Ok(()),
                Some(libc::ESTALE | libc::ENOTCONN | libc::EIO) => {
                    sys.umount(target, MntFlags::MNT_DETACH)?;
                }
                _ => return Err(e),
            },
        }
    }
    Err(io::Error::other(format!("{} is still mounted after 64 unmounts", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::FsStat;
    use crate::mount::fake::{Call, RecordingSyscall};

    #[test]
    fn flags_go_through_the_allow_list() {
        let flags = parse_flags(&["ro", "nosuid", "noatime"]).expect("allowed");
        assert!(flags.readonly);
        assert_eq!(flags.extra, MsFlags::MS_NOSUID | MsFlags::MS_NOATIME);
        for bad in ["remount", "bind", "uid=0", "nosuid,exec", "context=x", "", "ro\n"] {
            assert!(parse_flags(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn readonly_bind_is_two_steps() {
        let fake = RecordingSyscall::new(FsStat::default(), "");
        bind(&fake, Path::new("/src"), Path::new("/dst"), Flags { readonly: true, extra: MsFlags::MS_NODEV })
            .expect("bind");
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert!(matches!(&calls[0], Call::Mount { flags, .. } if *flags == MsFlags::MS_BIND));
        assert!(matches!(&calls[1], Call::Mount { source: None, flags, .. }
            if *flags == MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV));
    }

    #[test]
    fn failed_remount_undoes_the_bind() {
        let fake = RecordingSyscall::new(FsStat::default(), "");
        fake.fail("mount", libc::EPERM);
        assert!(
            bind(&fake, Path::new("/s"), Path::new("/d"), Flags { readonly: true, extra: MsFlags::empty() }).is_err()
        );
    }

    #[test]
    fn failures_count_in_the_errors_metric() {
        let registry = std::sync::Arc::new(crate::metrics::Registry::default());
        let errors = |kind: &str| registry.counters().errors.get(kind).copied().unwrap_or(0);
        let fake = RecordingSyscall::new(FsStat::default(), "1 0 0:1 / /d rw - tmpfs t rw\n");
        fake.fail("mount", libc::EPERM);
        fake.fail("umount", libc::EBUSY);
        crate::metrics::scoped(&registry, || {
            assert!(bind(&fake, Path::new("/s"), Path::new("/d"), Flags::default()).is_err());
            assert!(unmount_all(&fake, Path::new("/d")).is_err());
        });
        assert_eq!((errors("mount"), errors("unmount")), (1, 1));
    }

    #[test]
    fn unmounting_nothing_succeeds_without_a_call() {
        let fake = RecordingSyscall::new(FsStat::default(), "1 0 0:1 / / rw - tmpfs t rw\n");
        unmount_all(&fake, Path::new("/not/mounted")).expect("idempotent");
        assert!(fake.calls().is_empty());
    }
}
