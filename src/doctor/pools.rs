//! The checks of each pool: its path and filesystem, capacity enforcement (hostPath),
//! reflinks (hostPath and block), and the disks a device pool's allow-list matches.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Check;
use super::checks::Host;
use crate::backend::tree::{self, Reflink};
use crate::config::{BlockPool, DevicePool, Enforcement, HostPathPool, Wipe};
use crate::mount::{FsKind, ProjectQuotaState, mountinfo, ops};

/// A human name for a filesystem magic number.
fn fs_name(kind: FsKind) -> String {
    match kind {
        FsKind::Btrfs => "btrfs".into(),
        FsKind::Xfs => "xfs".into(),
        FsKind::Ext4 => "ext4".into(),
        FsKind::Other(0x0102_1994) => "tmpfs".into(),
        FsKind::Other(0x794c_7630) => "overlayfs".into(),
        FsKind::Other(0x6969) => "nfs".into(),
        FsKind::Other(0x2fc1_2fc1) => "zfs".into(),
        FsKind::Other(0xF2F5_2010) => "f2fs".into(),
        FsKind::Other(0x6573_5546) => "fuse".into(),
        FsKind::Other(magic) => format!("filesystem {magic:#x}"),
    }
}

/// The pool's directory exists: the first check of a pool with a path, which the others
/// need (`Err` ends the pool's checks).
fn pool_path(s: &str, root: &Path, create: bool) -> Result<Check, Check> {
    match fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => Err(Check::ok(
            s,
            "path",
            format!("{} is missing; berth's next start makes it (createPath: true)", root.display()),
        )),
        Ok(m) if m.is_dir() => Ok(Check::ok(s, "path", format!("{} is a directory", root.display()))),
        Ok(_) => Err(Check::fail(
            s,
            "path",
            format!("{} is not a directory (other checks of this pool skipped)", root.display()),
            "point the pool's path at a directory",
        )),
        Err(e) => Err(Check::fail(
            s,
            "path",
            format!("{}: {e} (other checks of this pool skipped)", root.display()),
            format!(
                "mount the pool's disk at {0}, or create it (mkdir -p {0}) if it belongs on the filesystem above it; \
                 berth does not make it unless the pool sets createPath: true",
                root.display()
            ),
        )),
    }
}

type FsFacts = (Check, FsKind, Option<mountinfo::MountEntry>);

/// The filesystem holding a pool's directory, and the mount it belongs to.
fn pool_filesystem(host: &Host, s: &str, root: &Path) -> Result<FsFacts, Check> {
    let stat = host.sys.statfs(root).map_err(|e| {
        Check::fail(s, "filesystem", format!("statfs {}: {e}", root.display()), "check the pool's disk")
    })?;
    let kind = stat.kind();
    let table = ops::table(host.sys.as_ref()).unwrap_or_default();
    let mount = fs::canonicalize(root).ok().and_then(|real| mountinfo::containing(&table, &real).cloned());
    let on =
        mount.as_ref().map(|m| format!(" ({} mounted at {})", m.source, m.mount_point.display())).unwrap_or_default();
    let check = Check::ok(s, "filesystem", format!("{}{on}, {} bytes free", fs_name(kind), stat.available_bytes));
    Ok((check, kind, mount))
}

/// Whether the pool's directory is the filesystem the pool was made on.
fn identity(s: &str, name: &str, root: &Path, recorded: usize) -> Check {
    use crate::backend::identity::{Found, MARKER, inspect};
    match inspect(name, root, recorded) {
        Found::Marked => Check::ok(s, "identity", format!("{} names this pool", root.join(MARKER).display())),
        Found::Unmarked => Check::ok(s, "identity", format!("not marked yet; berth's next start writes {MARKER}")),
        Found::Wrong(reason) => Check::fail(
            s,
            "identity",
            reason,
            format!("mount the pool's own filesystem at {}; until then the pool answers UNAVAILABLE", root.display()),
        ),
    }
}

/// Checks one hostPath pool: its path, filesystem, capacity enforcement, reflinks and
/// identity.
pub fn hostpath(host: &Host, pool: &HostPathPool, recorded: usize) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let mut out = Vec::new();
    match pool_path(s, &pool.path, pool.create_path) {
        Ok(c) => out.push(c),
        Err(c) => return vec![c],
    }
    match pool_filesystem(host, s, &pool.path) {
        Ok((check, kind, mount)) => {
            out.push(check);
            out.push(enforcement(host, pool, kind, mount.as_ref()));
            out.push(reflink(s, &pool.path, kind, true));
            out.push(encryption(host, s, &pool.path));
        }
        Err(c) => out.push(c),
    }
    out.push(identity(s, &pool.name, &pool.path, recorded));
    out
}

/// Whether this node can encrypt a block or device pool's volumes (StorageClass
/// parameter `encryption`): luks2 needs cryptsetup and device-mapper, fscrypt an ext4
/// that can encrypt (for volumes mounted as ext4). A node that cannot is fine: such
/// volumes are refused at CreateVolume.
fn block_encryption(host: &Host, s: &str) -> Check {
    let detail = match (host.sys.luks_support(), host.sys.ext4_encryption_support()) {
        (Ok(()), Ok(())) => "luks2 and fscrypt: volumes of StorageClasses with encryption: luks2, or fscrypt with \
                             fsType ext4, can be made here"
            .to_string(),
        (Ok(()), Err(e)) => format!(
            "luks2: volumes of StorageClasses with encryption: luks2 can be made here; fscrypt ones are refused ({e})"
        ),
        (Err(e), Ok(())) => format!(
            "fscrypt: volumes of StorageClasses with encryption: fscrypt and fsType ext4 can be made here; luks2 ones \
             are refused ({e})"
        ),
        (Err(luks), Err(fscrypt)) => {
            format!("none (luks2: {luks}; fscrypt: {fscrypt}): volumes asking for encryption are refused here")
        }
    };
    Check::ok(s, "encryption", detail)
}

/// Whether this kernel and the pool's filesystem can encrypt its volumes (StorageClass
/// parameter `encryption: fscrypt`). A pool that cannot is fine: such volumes are refused
/// there at CreateVolume, never stored in plaintext.
fn encryption(host: &Host, s: &str, root: &Path) -> Check {
    use std::os::fd::AsFd;
    let probe = fs::File::open(root).and_then(|dir| host.sys.fscrypt_policy_key(dir.as_fd()));
    match probe {
        Ok(_) => {
            Check::ok(s, "encryption", "fscrypt: volumes of StorageClasses with encryption: fscrypt can be made here")
        }
        Err(e) if crate::mount::fscrypt::unsupported(&e) => Check::ok(
            s,
            "encryption",
            format!(
                "none ({e}): volumes asking for encryption are refused here; ext4 gains it with tune2fs -O encrypt"
            ),
        ),
        Err(e) => Check::warn(
            s,
            "encryption",
            format!("cannot tell whether {} can encrypt: {e}", root.display()),
            "check that berth can open the pool directory",
        ),
    }
}

/// Checks one block pool: its path, filesystem and reflinks (images are cloned for
/// snapshots and restores where the filesystem can). Loop devices and mkfs are machine checks.
pub fn block(host: &Host, pool: &BlockPool, recorded: usize) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let mut out = Vec::new();
    match pool_path(s, &pool.path, pool.create_path) {
        Ok(c) => out.push(c),
        Err(c) => return vec![c],
    }
    match pool_filesystem(host, s, &pool.path) {
        Ok((check, kind, _)) => {
            out.push(check);
            out.push(reflink(s, &pool.path, kind, false));
            out.push(block_encryption(host, s));
        }
        Err(c) => out.push(c),
    }
    out.push(identity(s, &pool.name, &pool.path, recorded));
    out
}

/// Checks one device pool: which block devices its allow-list names on this machine (with
/// the identity berth records for each), whether it names them by stable links, and what
/// DeleteVolume leaves on a released disk.
pub fn device(host: &Host, pool: &DevicePool) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let found = crate::backend::device::DevicePool::open(
        pool,
        Arc::clone(&host.sys),
        None,
        &[],
        crate::backend::device::Holdings::default(),
    )
    .and_then(|p| p.devices());
    let devices = match found {
        Ok(devices) if !devices.is_empty() => {
            let names: Vec<String> = devices
                .iter()
                .map(|d| {
                    let serial = host.sys.block_info(&d.canonical).ok().and_then(|i| i.serial);
                    format!(
                        "{} -> {} ({} bytes, identity {})",
                        d.name.display(),
                        d.canonical.display(),
                        d.size,
                        serial.as_deref().unwrap_or("none")
                    )
                })
                .collect();
            Check::ok(s, "devices", format!("{} device(s): {}", devices.len(), names.join(", ")))
        }
        Ok(_) => Check::warn(
            s,
            "devices",
            format!(
                "no block device on this node matches {}: the pool cannot create volumes here",
                pool.devices.join(", ")
            ),
            "attach the disks, or fix the pool's devices patterns (ls -l /dev/disk/by-id)",
        ),
        Err(e) => Check::fail(s, "devices", format!("listing devices: {e}"), "run berth doctor as root"),
    };
    const STABLE: [&str; 3] = ["/dev/disk/", "/dev/mapper/", "/dev/md/"];
    let unstable: Vec<&str> =
        pool.devices.iter().map(String::as_str).filter(|d| !STABLE.iter().any(|p| d.starts_with(p))).collect();
    let names = if unstable.is_empty() {
        Check::ok(s, "device names", "every entry is a stable link (/dev/disk/..., /dev/mapper/..., /dev/md/...)")
    } else {
        Check::warn(
            s,
            "device names",
            format!(
                "{} name disks by the kernel's names, which a reboot may give to other disks; berth then refuses those volumes until the list is fixed",
                unstable.join(", ")
            ),
            "list the disks by /dev/disk/by-id links",
        )
    };
    let wipe = match pool.wipe {
        Wipe::Zero => Check::ok(s, "wipe", "zero: DeleteVolume zeroes a released disk before another volume gets it"),
        Wipe::Discard => Check::ok(
            s,
            "wipe",
            "discard: DeleteVolume discards a released disk, and zeroes it unless the disk promises zeros after a discard",
        ),
        Wipe::Signatures => Check::warn(
            s,
            "wipe",
            "signatures: DeleteVolume erases only signatures; the next volume on a disk can read the last one's data",
            "remove wipe: signatures (the default is zero) unless every disk stays with one tenant",
        ),
    };
    vec![devices, names, wipe, block_encryption(host, s)]
}

fn enforcement(host: &Host, pool: &HostPathPool, kind: FsKind, mount: Option<&mountinfo::MountEntry>) -> Check {
    let s = format!("pool {}", pool.name);
    const C: &str = "capacity enforcement";
    if pool.capacity_enforcement == Enforcement::None {
        return Check::ok(&s, C, "not wanted (capacityEnforcement: none)");
    }
    // What cannot be enforced: a warning under `auto` (sizes are only recorded), a failure
    // under `required` (every CreateVolume will be refused).
    let unenforceable = |reason: String, fix: &str| {
        if pool.capacity_enforcement == Enforcement::Required {
            Check::fail(&s, C, format!("{reason}: capacityEnforcement is required, so volumes cannot be created"), fix)
        } else {
            Check::warn(&s, C, format!("{reason}: volume sizes will be recorded, not enforced"), fix)
        }
    };
    match kind {
        FsKind::Btrfs => match host.sys.btrfs_quota_enabled(&pool.path) {
            Ok(true) => Check::ok(&s, C, "btrfs qgroups are enabled"),
            Ok(false) => Check::warn(
                &s,
                C,
                "btrfs qgroups are off; berth serve enables them when it starts",
                format!("to enable them now: btrfs quota enable {}", pool.path.display()),
            ),
            Err(e) => Check::warn(&s, C, format!("cannot query btrfs qgroups: {e}"), "run berth doctor as root"),
        },
        FsKind::Xfs | FsKind::Ext4 => {
            let name = fs_name(kind);
            if !host.kernel_quota {
                return unenforceable(
                    "the kernel has no quota support (CONFIG_QUOTA, quotactl_fd)".into(),
                    "use a kernel built with CONFIG_QUOTA (5.14 or newer), or a btrfs pool",
                );
            }
            let Some(mount) = mount else {
                return unenforceable(format!("no mount holds {}", pool.path.display()), "check /proc/self/mountinfo");
            };
            let fix = if kind == FsKind::Xfs {
                format!(
                    "mount {} with -o prjquota (in /etc/fstab; xfs needs a fresh mount, not a remount)",
                    mount.source
                )
            } else {
                format!(
                    "on the unmounted filesystem: tune2fs -O project,quota {}; then mount it with -o prjquota",
                    mount.source
                )
            };
            if !["prjquota", "pquota", "pqnoenforce"].iter().any(|o| mount.has_super_option(o)) {
                return unenforceable(
                    format!("{name} at {} is not mounted with prjquota", mount.mount_point.display()),
                    &fix,
                );
            }
            match host.sys.project_quota_state(&mount.mount_point) {
                Ok(ProjectQuotaState::Enforced) => {
                    Check::ok(&s, C, format!("project quotas are enforced on {}", mount.mount_point.display()))
                }
                Ok(state) => {
                    unenforceable(format!("project quota on {} is {state:?}", mount.mount_point.display()), &fix)
                }
                Err(e) => unenforceable(
                    format!("project quota on {} cannot be queried: {e}", mount.mount_point.display()),
                    "run berth doctor as root",
                ),
            }
        }
        FsKind::Other(_) => unenforceable(
            format!("{} has no per-directory quota", fs_name(kind)),
            "put the pool on btrfs, or on xfs/ext4 mounted with project quotas",
        ),
    }
}

/// Removes the probe files however the probe ends.
struct Probe(Vec<PathBuf>);

impl Drop for Probe {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn create_new(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes a small file into the pool and clones it with FICLONE: proves the pool is
/// writable and tells whether snapshots and clones will be instant. `subvolumes` is true
/// for pools that snapshot btrfs subvolumes instead of cloning files.
fn reflink(subject: &str, root: &Path, kind: FsKind, subvolumes: bool) -> Check {
    const C: &str = "reflink";
    let stem = format!(".berth-doctor-{}", std::process::id());
    let (a, b) = (root.join(format!("{stem}-a")), root.join(format!("{stem}-b")));
    let mut probe = Probe(Vec::new());
    let result = (|| -> io::Result<bool> {
        let src = create_new(&a)?;
        probe.0.push(a.clone());
        std::io::Write::write_all(&mut &src, &[0x5a; 64 << 10])?;
        src.sync_all()?;
        let dst = create_new(&b)?;
        probe.0.push(b.clone());
        let (_, cloned) = tree::copy_file_data(src.as_fd(), dst.as_fd(), Reflink::Auto)?;
        Ok(cloned)
    })();
    drop(probe);
    match (result, kind) {
        (Err(e), _) => Check::fail(
            subject,
            C,
            format!("cannot write into {}: {e}", root.display()),
            "make the pool path writable by root (a read-only or full filesystem?)",
        ),
        (Ok(_), FsKind::Btrfs) if subvolumes => {
            Check::ok(subject, C, "snapshots and clones are btrfs snapshots (instant)")
        }
        (Ok(true), _) => Check::ok(subject, C, "FICLONE works: snapshots and clones are reflink copies (instant)"),
        (Ok(false), _) => Check::warn(
            subject,
            C,
            format!(
                "{} cannot clone files: snapshots and clones are full copies (slow for large volumes)",
                fs_name(kind)
            ),
            "for instant snapshots use btrfs, or xfs made with reflink=1 (the default of recent xfsprogs)",
        ),
    }
}
