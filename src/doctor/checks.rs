//! The machine-wide checks of `berth doctor` (tools, devices, kubelet directory, socket).
//! Each returns verdicts with the facts found and, for every warn or fail, what to do.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Check, Verdict};
use crate::config::{Config, PoolConfig};
use crate::mount::{Syscall, mountinfo, ops};

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

/// Whether berth's records load as its next start would load them.
fn records(subject: &str, state_dir: &Path) -> Check {
    match crate::state::read_records(state_dir) {
        Ok((volumes, snapshots)) => Check::ok(
            subject,
            "records",
            format!("{} volume and {} snapshot records load", volumes.len(), snapshots.len()),
        ),
        Err(e) => Check::fail(
            subject,
            "records",
            e.to_string(),
            format!(
                "stop berth, then either restore {0}/state/records and {0}/state/journal from a backup taken \
                 together, or run `berth salvage` with the same --config: it keeps a copy of the damaged files, \
                 keeps every record that still checks and names each change it cannot (docs/operations.md, \
                 Damaged records)",
                state_dir.display()
            ),
        ),
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
    /// NFS pools mount NFS on the nodes.
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
                PoolConfig::Nfs(_) => needs.nfs = true,
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
        out.push(records(M, &config.state_dir));
        out.push(match config.check_resolved_roots() {
            Ok(()) => Check::ok(M, "roots", "no pool is inside another or holds the state directory"),
            Err(e) => Check::fail(
                M,
                "roots",
                e,
                "give each pool, and the state directory, a path outside every other (symbolic links followed)",
            ),
        });
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
            need(needs.formats && fs_type == crate::backend::DEFAULT_FS, check, detail, &fix)
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
