//! The individual checks of `berth doctor`. Each returns verdicts with the facts found and,
//! for every warn or fail, what to do.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Check, Verdict};
use crate::backend::tree::{self, Reflink};
use crate::config::{BlockPool, Config, DevicePool, Enforcement, HostPathPool, PoolConfig};
use crate::mount::{FsKind, ProjectQuotaState, Syscall, mountinfo, ops};

/// Where the doctor looks at the machine; tests point the paths at fixtures.
pub struct Host {
    pub sys: Arc<dyn Syscall>,
    /// `/proc/filesystems`.
    pub proc_filesystems: PathBuf,
    /// `/dev/loop-control`.
    pub loop_control: PathBuf,
    /// Directories searched for tools: `PATH`, then the usual sbin directories.
    pub search_path: Vec<PathBuf>,
    /// Whether the kernel has quota support (see [`crate::mount::quota::kernel_has_quota`]).
    pub kernel_quota: bool,
    /// Whether the doctor runs as root.
    pub root: bool,
}

impl Host {
    /// This machine.
    pub fn real(sys: Arc<dyn Syscall>) -> Host {
        let mut search_path: Vec<PathBuf> =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        for dir in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
            if !search_path.iter().any(|p| p == Path::new(dir)) {
                search_path.push(PathBuf::from(dir));
            }
        }
        Host {
            sys,
            proc_filesystems: PathBuf::from("/proc/filesystems"),
            loop_control: PathBuf::from("/dev/loop-control"),
            search_path,
            kernel_quota: crate::mount::quota::kernel_has_quota(),
            root: nix::unistd::geteuid().is_root(),
        }
    }

    fn find_tool(&self, name: &str) -> Option<PathBuf> {
        self.search_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    }
}

/// The tools berth runs to format and grow block volumes of each filesystem type, and the
/// package that has them.
const FS_TOOLS: [(&str, &[&str], &str); 3] = [
    ("ext4", &["mkfs.ext4", "resize2fs", "e2fsck"], "e2fsprogs"),
    ("xfs", &["mkfs.xfs", "xfs_growfs"], "xfsprogs"),
    ("btrfs", &["mkfs.btrfs", "btrfs"], "btrfs-progs"),
];

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Checks a directory berth writes into, which it creates when missing.
fn writable_dir(subject: &str, check: &'static str, dir: &Path) -> Check {
    match existing_ancestor(dir) {
        Some(d) if d == dir && writable(d) => Check::ok(subject, check, format!("{} is writable", dir.display())),
        Some(d) if writable(d) => Check::ok(
            subject,
            check,
            format!("{} will be created (in {}, which is writable)", dir.display(), d.display()),
        ),
        Some(d) => Check::fail(
            subject,
            check,
            format!("{} is not writable", d.display()),
            format!("run berth as root, or make {} writable (a read-only filesystem?)", d.display()),
        ),
        None => {
            Check::fail(subject, check, format!("no directory above {} exists", dir.display()), "use an absolute path")
        }
    }
}

/// What the configured pools need from the machine; a missing need is a fail, anything
/// else missing only a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Block pools attach their images through loop devices.
    pub loop_devices: bool,
    /// Block and device pools format volumes (ext4 unless a request names another type)
    /// and probe devices with blkid before formatting.
    pub formats: bool,
    /// Device pools wipe released devices with wipefs.
    pub wipefs: bool,
    /// NFS pools mount NFS (no NFS pool type exists yet).
    pub nfs: bool,
}

impl Needs {
    /// The needs of every pool in `config`.
    pub fn of(config: Option<&Config>) -> Needs {
        let mut needs = Needs::default();
        for pool in config.map(|c| c.pools.as_slice()).unwrap_or_default() {
            match pool {
                PoolConfig::Hostpath(_) => {}
                PoolConfig::Block(_) => {
                    needs.loop_devices = true;
                    needs.formats = true;
                }
                PoolConfig::Device(_) => {
                    needs.formats = true;
                    needs.wipefs = true;
                }
            }
        }
        needs
    }
}

/// Checks about the machine as a whole; `needs` says which missing pieces are failures.
pub fn machine(host: &Host, config: Option<&Config>, needs: Needs) -> Vec<Check> {
    const M: &str = "machine";
    let need = |needed: bool, check: &'static str, detail: String, fix: &str| {
        if needed {
            Check::fail(M, check, detail, fix)
        } else {
            Check::warn(M, check, format!("{detail} (no configured pool needs it)"), fix)
        }
    };
    let mut out = Vec::new();
    out.push(if host.root {
        Check::ok(M, "root", "running as root")
    } else {
        Check::warn(
            M,
            "root",
            "not running as root: berth serve needs root (CAP_SYS_ADMIN) to mount, and some checks below cannot see everything",
            "run berth doctor as root",
        )
    });
    if let Some(config) = config {
        out.push(writable_dir(M, "state directory", &config.state_dir));
    }
    out.push(match fs::symlink_metadata(&host.loop_control) {
        Ok(m) if m.file_type().is_char_device() => {
            Check::ok(M, "loop devices", format!("{} is present", host.loop_control.display()))
        }
        _ => need(
            needs.loop_devices,
            "loop devices",
            format!("{} is missing: block pools cannot attach their images", host.loop_control.display()),
            "modprobe loop; in a container, mount the host's /dev",
        ),
    });
    let mut device_tools = vec!["blkid"];
    if needs.wipefs {
        device_tools.push("wipefs");
    }
    let missing: Vec<&str> = device_tools.iter().copied().filter(|t| host.find_tool(t).is_none()).collect();
    out.push(if missing.is_empty() {
        Check::ok(M, "device tools", format!("{} found", device_tools.join(", ")))
    } else {
        need(
            needs.formats,
            "device tools",
            format!("{} not found: berth cannot check that a device is blank before formatting it", missing.join(", ")),
            "install util-linux",
        )
    });
    for (fs_type, tools, package) in FS_TOOLS {
        let missing: Vec<&str> = tools.iter().copied().filter(|t| host.find_tool(t).is_none()).collect();
        let check = match fs_type {
            "ext4" => "ext4 tools",
            "xfs" => "xfs tools",
            _ => "btrfs tools",
        };
        out.push(if missing.is_empty() {
            Check::ok(M, check, format!("{} found", tools.join(", ")))
        } else {
            let detail =
                format!("{} not found: block volumes cannot be formatted or grown as {fs_type}", missing.join(", "));
            let fix = format!("install {package} (apt-get install {package} / dnf install {package})");
            // Volumes are ext4 unless a request asks for another type.
            need(needs.formats && fs_type == crate::backend::block::DEFAULT_FS, check, detail, &fix)
        });
    }
    let filesystems = fs::read_to_string(&host.proc_filesystems).unwrap_or_default();
    let nfs = filesystems.lines().any(|l| matches!(l.split_whitespace().last(), Some("nfs" | "nfs4")));
    out.push(if nfs {
        Check::ok(M, "kernel nfs", format!("{} lists nfs", host.proc_filesystems.display()))
    } else {
        need(
            needs.nfs,
            "kernel nfs",
            format!("{} does not list nfs or nfs4: NFS volumes cannot be mounted", host.proc_filesystems.display()),
            "modprobe nfs (install nfs-common / nfs-utils for the module and helpers)",
        )
    });
    out
}

/// The kubelet directory exists and is on a shared mount, so the mounts berth makes under
/// it reach the kubelet and the pods.
pub fn kubelet(host: &Host, dir: &Path) -> Vec<Check> {
    const K: &str = "kubelet";
    let real = match fs::canonicalize(dir) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => {
            return vec![Check::fail(
                K,
                "directory",
                format!("{} is not a directory", p.display()),
                "pass --kubelet-dir with the kubelet's --root-dir",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                K,
                "directory",
                format!("{}: {e}", dir.display()),
                "pass --kubelet-dir with the kubelet's --root-dir, or run the doctor on a Kubernetes node (in berth's container, mount that directory from the host)",
            )];
        }
    };
    let mut out = vec![Check::ok(K, "directory", format!("{} exists", dir.display()))];
    let table = match ops::table(host.sys.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::fail(
                K,
                "mount propagation",
                format!("cannot read the mount table: {e}"),
                "run on Linux with /proc mounted",
            ));
            return out;
        }
    };
    out.push(match mountinfo::containing(&table, &real) {
        Some(m) if m.is_shared() => Check::ok(
            K,
            "mount propagation",
            format!("{} is on mount {} ({})", dir.display(), m.mount_point.display(), m.optional_fields.join(" ")),
        ),
        Some(m) => Check::fail(
            K,
            "mount propagation",
            format!(
                "{} is on mount {}, which is not shared ({}): the kubelet and pods would not see berth's mounts",
                dir.display(),
                m.mount_point.display(),
                if m.optional_fields.is_empty() { "private".to_string() } else { m.optional_fields.join(" ") }
            ),
            "on the host: mount --make-rshared / (systemd's default); in berth's container: mount the kubelet directory with mountPropagation: Bidirectional",
        ),
        None => Check::fail(K, "mount propagation", format!("no mount holds {}", real.display()), "check /proc/self/mountinfo"),
    });
    out
}

/// The socket can be created where `berth serve` will listen.
pub fn socket(endpoint: &str) -> Check {
    const S: &str = "socket";
    const C: &str = "path";
    let path = match crate::server::socket_path(endpoint) {
        Ok(p) => p,
        Err(e) => return Check::fail(S, C, e.to_string(), "pass --endpoint unix:///absolute/path.sock"),
    };
    // sun_path holds 108 bytes with the terminating NUL.
    let len = path.as_os_str().len();
    if len > 107 {
        return Check::fail(
            S,
            C,
            format!("{} is {len} bytes; a unix socket path may have at most 107", path.display()),
            "choose a shorter --endpoint",
        );
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => Check::warn(
                S,
                C,
                format!(
                    "a process already listens on {} (berth running?); berth serve would replace it",
                    path.display()
                ),
                "stop the other server, or choose another --endpoint",
            ),
            Err(_) => Check::ok(S, C, format!("{} is a stale socket; berth serve replaces it", path.display())),
        },
        Ok(_) => Check::fail(
            S,
            C,
            format!("{} exists and is not a socket; berth serve refuses to remove it", path.display()),
            "remove it, or choose another --endpoint",
        ),
        Err(_) => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let mut check = writable_dir(S, C, parent);
            if check.verdict == Verdict::Ok {
                check.detail = format!("{} can be created: {}", path.display(), check.detail);
            }
            check
        }
    }
}

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
fn pool_path(s: &str, root: &Path) -> Result<Check, Check> {
    match fs::metadata(root) {
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
                "mount the pool's disk at {0}, or create it (mkdir -p {0}) if it belongs on the filesystem above it",
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

/// Checks one hostPath pool: its path, filesystem, capacity enforcement and reflinks.
pub fn hostpath(host: &Host, pool: &HostPathPool) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let mut out = Vec::new();
    match pool_path(s, &pool.path) {
        Ok(c) => out.push(c),
        Err(c) => return vec![c],
    }
    match pool_filesystem(host, s, &pool.path) {
        Ok((check, kind, mount)) => {
            out.push(check);
            out.push(enforcement(host, pool, kind, mount.as_ref()));
            out.push(reflink(s, &pool.path, kind, true));
        }
        Err(c) => out.push(c),
    }
    out
}

/// Checks one block pool: its path, filesystem and reflinks (images are cloned for
/// snapshots and restores where the filesystem can). Loop devices and mkfs are machine checks.
pub fn block(host: &Host, pool: &BlockPool) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let mut out = Vec::new();
    match pool_path(s, &pool.path) {
        Ok(c) => out.push(c),
        Err(c) => return vec![c],
    }
    match pool_filesystem(host, s, &pool.path) {
        Ok((check, kind, _)) => {
            out.push(check);
            out.push(reflink(s, &pool.path, kind, false));
        }
        Err(c) => out.push(c),
    }
    out
}

/// Checks one device pool: which block devices its allow-list names on this machine.
pub fn device(host: &Host, pool: &DevicePool) -> Vec<Check> {
    let subject = format!("pool {}", pool.name);
    let s = subject.as_str();
    let found = crate::backend::device::DevicePool::open(pool, Arc::clone(&host.sys), None, Vec::new())
        .and_then(|p| p.devices());
    vec![match found {
        Ok(devices) if !devices.is_empty() => {
            let names: Vec<String> =
                devices.iter().map(|(p, size)| format!("{} ({size} bytes)", p.display())).collect();
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
    }]
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
