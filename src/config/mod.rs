//! berth's configuration file: where state lives and which pools it serves.
//!
//! ```yaml
//! stateDir: /var/lib/berth
//! pools:
//!   - name: default
//!     type: hostpath
//!     path: /var/lib/berth/pools/default
//!     capacityEnforcement: auto
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids;
use crate::units::Bytes;

pub mod mount_options;
mod nfs;
pub mod template;

pub use nfs::{Export, NfsPool, Permissions, Server};

/// The configuration used when `berth serve` gets no `--config`: one hostPath pool on the
/// node's own disk, so a plain Linux machine runs berth as root with no setup.
pub const EMBEDDED_DEFAULT: &str = "\
stateDir: /var/lib/berth
pools:
  - name: default
    type: hostpath
    path: /var/lib/berth/pools/default
    capacityEnforcement: auto
    createPath: true
";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Directory holding berth's crash-safe records of volumes and snapshots.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Size of a volume whose request names no capacity.
    #[serde(default = "default_volume_size")]
    pub default_volume_size: Bytes,
    /// Reported to the scheduler in NodeGetInfo; 0 means no limit.
    #[serde(default)]
    pub max_volumes_per_node: u64,
    /// The storage pools this driver serves.
    pub pools: Vec<PoolConfig>,
    /// How long, in milliseconds, a call that starts or finds a background copy (an NFS
    /// snapshot, restore or clone) waits for it before answering "still in progress": a
    /// small copy answers done at once, a long one never holds a call longer than this.
    #[serde(default = "default_copy_wait_ms")]
    pub copy_wait_ms: u64,
}

/// See [`Config::copy_wait_ms`].
pub const DEFAULT_COPY_WAIT_MS: u64 = 2000;

fn default_copy_wait_ms() -> u64 {
    DEFAULT_COPY_WAIT_MS
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/berth")
}

fn default_volume_size() -> Bytes {
    Bytes(1 << 30)
}

/// One pool, selected per StorageClass with the `pool` parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PoolConfig {
    /// A directory per volume under `path`.
    Hostpath(HostPathPool),
    /// A sparse image file per volume under `path`, attached through a loop device.
    Block(BlockPool),
    /// A whole disk or partition per volume, from an allow-list.
    Device(DevicePool),
    /// A subdirectory of an existing NFS export per volume (shared by every node).
    Nfs(NfsPool),
}

impl PoolConfig {
    /// The pool's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            PoolConfig::Hostpath(p) => &p.name,
            PoolConfig::Block(p) => &p.name,
            PoolConfig::Device(p) => &p.name,
            PoolConfig::Nfs(p) => &p.name,
        }
    }

    /// True for pools whose storage is on one node's disks (provisioned per node).
    #[must_use]
    pub fn node_local(&self) -> bool {
        match self {
            PoolConfig::Hostpath(_) | PoolConfig::Block(_) | PoolConfig::Device(_) => true,
            PoolConfig::Nfs(_) => false,
        }
    }

    /// Whether the pool serves inline ephemeral volumes: only where its configuration
    /// says so, and never from device pools (a whole disk for a pod's scratch space).
    #[must_use]
    pub fn ephemeral(&self) -> bool {
        match self {
            PoolConfig::Hostpath(p) => p.ephemeral,
            PoolConfig::Block(p) => p.ephemeral,
            PoolConfig::Nfs(p) => p.ephemeral,
            PoolConfig::Device(_) => false,
        }
    }

    /// The directory the pool keeps its data in (device pools have none).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        match self {
            PoolConfig::Hostpath(p) => Some(&p.path),
            PoolConfig::Block(p) => Some(&p.path),
            PoolConfig::Device(_) | PoolConfig::Nfs(_) => None,
        }
    }

    /// Whether berth may make the pool's directory when it is missing. Off unless the
    /// pool says `createPath: true`: a pool's directory is usually the mount point of a
    /// data disk, and a disk that is not mounted yet must not become a pool on the root
    /// disk. The embedded default configuration sets it, so a plain machine needs no setup.
    #[must_use]
    pub fn creates_path(&self) -> bool {
        match self {
            PoolConfig::Hostpath(p) => p.create_path,
            PoolConfig::Block(p) => p.create_path,
            PoolConfig::Device(_) | PoolConfig::Nfs(_) => false,
        }
    }
}

/// A hostPath pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathPool {
    pub name: String,
    /// The directory under which each volume gets its own directory or subvolume.
    pub path: PathBuf,
    /// Whether volume sizes must be enforced by the filesystem.
    #[serde(default)]
    pub capacity_enforcement: Enforcement,
    /// Whether pods may ask for inline ephemeral volumes in this pool (off unless set).
    #[serde(default)]
    pub ephemeral: bool,
    /// Whether berth makes `path` when it is missing (see [`PoolConfig::creates_path`]).
    #[serde(default)]
    pub create_path: bool,
}

/// A block pool: each volume a sparse image file attached through a loop device.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockPool {
    pub name: String,
    /// The directory holding `volumes/<key>.img` and `snapshots/<key>.img`.
    pub path: PathBuf,
    /// Allocate every image's blocks up front (fallocate), so the pool is never overcommitted.
    #[serde(default)]
    pub preallocate: bool,
    /// Whether pods may ask for inline ephemeral volumes in this pool (off unless set).
    #[serde(default)]
    pub ephemeral: bool,
    /// Whether berth makes `path` when it is missing (see [`PoolConfig::creates_path`]).
    #[serde(default)]
    pub create_path: bool,
}

/// A device pool: each volume one whole disk or partition from `devices`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevicePool {
    pub name: String,
    /// Absolute device paths under /dev; the last component may hold `*` and `?` wildcards
    /// (`/dev/disk/by-id/nvme-*`). Nothing outside this list is ever touched.
    pub devices: Vec<String>,
    /// What DeleteVolume does to a device before it is reused (default `zero`).
    #[serde(default)]
    pub wipe: Wipe,
    /// A block pool on this node to keep snapshots of device volumes in.
    #[serde(default)]
    pub snapshot_pool: Option<String>,
}

/// What DeleteVolume does with an NFS volume's directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Remove it and everything in it.
    #[default]
    Delete,
    /// Leave it in place.
    Retain,
    /// Rename it to `archived-<name>-<timestamp>`.
    Archive,
}

/// How a released device is cleaned before another volume gets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wipe {
    /// Erase signatures, then make every block read back as zeros (BLKZEROOUT, done by the
    /// device itself where it offers write-zeroes). Nothing of the last tenant is readable.
    #[default]
    Zero,
    /// Erase signatures and discard every block (frees flash); then zero as well unless
    /// the device promises that discarded blocks read back as zeros.
    Discard,
    /// Erase only filesystem, RAID and partition-table signatures: fast, but the next
    /// volume on the device can read the last one's data. An explicit opt-in.
    Signatures,
}

/// How strictly a pool enforces volume sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Enforce where the filesystem can (btrfs qgroups, project quotas), else record only.
    #[default]
    Auto,
    /// Refuse to create volumes whose size cannot be enforced.
    Required,
    /// Never set limits.
    None,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config {origin}: {source}")]
    Parse { origin: String, source: serde_yaml_ng::Error },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, "<embedded default>"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Config::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(text)
            .map_err(|source| ConfigError::Parse { origin: origin.to_string(), source })?;
        config.validate().map_err(|message| ConfigError::Invalid { origin: origin.to_string(), message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.state_dir.is_absolute() {
            return Err(format!("stateDir {} must be an absolute path", self.state_dir.display()));
        }
        if self.pools.is_empty() {
            return Err("at least one pool is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for pool in &self.pools {
            let name = pool.name();
            if !ids::valid_pool_name(name) {
                return Err(format!(
                    "pool name {name:?} must be 1-40 lowercase letters, digits or '-', not starting or ending with '-'"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("pool name {name:?} is used twice"));
            }
            if let Some(path) = pool.path()
                && (!path.is_absolute() || path.components().count() < 2)
            {
                return Err(format!("pool {name:?}: path {} must be an absolute path below /", path.display()));
            }
            if let PoolConfig::Device(d) = pool {
                if d.devices.is_empty() {
                    return Err(format!("pool {name:?}: devices must list at least one device"));
                }
                for dev in &d.devices {
                    let ok = dev.starts_with("/dev/")
                        && !dev.split('/').any(|c| c == ".." || c == ".")
                        && !dev.contains("//")
                        && !dev.rsplit_once('/').is_some_and(|(dir, _)| dir.contains(['*', '?', '[']));
                    if !ok {
                        return Err(format!(
                            "pool {name:?}: device {dev:?} must be an absolute path under /dev/ with wildcards only in its last component"
                        ));
                    }
                }
                if let Some(snap) = &d.snapshot_pool
                    && !self.pools.iter().any(|p| matches!(p, PoolConfig::Block(b) if &b.name == snap))
                {
                    return Err(format!("pool {name:?}: snapshotPool {snap:?} must name a block pool"));
                }
            }
        }
        self.check_roots(Path::to_path_buf)
    }

    /// Fails when one pool's path is inside another's, or the state directory is inside a
    /// pool (or a pool inside berth's records), with each path as `resolve` gives it: as
    /// written when the file is loaded, with symbolic links followed at start and by
    /// `berth doctor`. A pod that can write under a pool must reach nothing but its own
    /// volume: a static volume of an outer pool would otherwise publish an inner pool's
    /// volumes, or berth's own records.
    pub fn check_roots(&self, resolve: impl Fn(&Path) -> PathBuf) -> Result<(), String> {
        let state = resolve(&self.state_dir);
        let roots: Vec<(&str, PathBuf)> =
            self.pools.iter().filter_map(|p| p.path().map(|path| (p.name(), resolve(path)))).collect();
        for (i, (name, path)) in roots.iter().enumerate() {
            for (other, other_path) in &roots[i + 1..] {
                if path.starts_with(other_path) || other_path.starts_with(path) {
                    return Err(format!(
                        "pools {name:?} ({}) and {other:?} ({}) overlap: one pool's path must not be inside another's",
                        path.display(),
                        other_path.display()
                    ));
                }
            }
            if state.starts_with(path) {
                return Err(format!(
                    "stateDir {} is inside pool {name:?} ({}): pods could reach berth's records",
                    state.display(),
                    path.display()
                ));
            }
            if path.starts_with(state.join("state")) {
                return Err(format!("pool {name:?}: path {} must not be inside the state directory", path.display()));
            }
        }
        Ok(())
    }

    /// [`Config::check_roots`] on the paths as they are on this machine: the longest
    /// existing part of each resolved, symbolic links followed.
    pub fn check_resolved_roots(&self) -> Result<(), String> {
        self.check_roots(resolve_existing)
    }

    /// The pool a request names, or the only pool when it names none.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(PoolConfig::name)
    }
}

/// `path` with its longest existing ancestor canonicalized and the rest appended.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = at.canonicalize() {
            return missing.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::load(None).expect("embedded default parses");
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].name(), "default");
        assert_eq!(config.pools[0].path(), Some(Path::new("/var/lib/berth/pools/default")));
        assert_eq!(config.state_dir, Path::new("/var/lib/berth"));
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let cases = [
            ("pools: []", "at least one pool"),
            ("pools: [{name: a, type: hostpath, path: /x, colour: red}]", "unknown field `colour`"),
            ("pools: [{name: a, type: tape, path: /x}]", "unknown variant `tape`"),
            ("pools: [{name: A, type: hostpath, path: /x}]", "pool name \"A\""),
            ("pools: [{name: a, type: hostpath, path: x}]", "absolute path"),
            ("pools: [{name: a, type: hostpath, path: /}]", "absolute path below /"),
            ("pools: [{name: a, type: hostpath, path: /x}, {name: a, type: hostpath, path: /y}]", "used twice"),
            ("stateDir: rel\npools: [{name: a, type: hostpath, path: /x}]", "stateDir"),
            ("pools: [{name: a, type: hostpath, path: /x, capacityEnforcement: always}]", "unknown variant `always`"),
            ("pools: [{name: d, type: device, devices: []}]", "at least one device"),
            ("pools: [{name: d, type: device, devices: [/etc/passwd]}]", "under /dev/"),
            ("pools: [{name: d, type: device, devices: [/dev/../etc/x]}]", "under /dev/"),
            ("pools: [{name: d, type: device, devices: ['/dev/*/sda']}]", "last component"),
            ("pools: [{name: d, type: device, devices: [/dev/sdb], snapshotPool: nope}]", "must name a block pool"),
            ("pools: [{name: d, type: device, devices: [/dev/sdb], wipe: shred}]", "unknown variant `shred`"),
            ("pools: [{name: b, type: block, path: /x, thin: true}]", "unknown field `thin`"),
            ("pools: [{name: n, type: nfs, export: /x}]", "missing field `server`"),
            ("pools: [{name: n, type: nfs, server: s, export: x}]", "export"),
            ("pools: [{name: n, type: nfs, server: s, export: /x/../y}]", "export"),
            ("pools: [{name: n, type: nfs, server: 's,x', export: /x}]", "server"),
            ("pools: [{name: n, type: nfs, server: s, export: /x, mountOptions: [bogus]}]", "not allowed"),
            ("pools: [{name: n, type: nfs, server: s, export: /x, subDir: '../${pv.metadata.name}'}]", "subDir"),
            ("pools: [{name: n, type: nfs, server: s, export: /x, permissions: '999'}]", "permissions"),
            ("pools: [{name: n, type: nfs, server: s, export: /x, onDelete: shred}]", "unknown variant `shred`"),
            ("pools: [{name: a, type: hostpath, path: /x}, {name: b, type: block, path: /x/inner}]", "overlap"),
            ("pools: [{name: a, type: hostpath, path: /x/inner}, {name: b, type: hostpath, path: /x}]", "overlap"),
            ("pools: [{name: a, type: hostpath, path: /x}, {name: b, type: hostpath, path: /x}]", "overlap"),
            ("stateDir: /x/berth\npools: [{name: a, type: hostpath, path: /x}]", "inside pool \"a\""),
            ("stateDir: /x\npools: [{name: a, type: hostpath, path: /x}]", "inside pool \"a\""),
            ("stateDir: /x\npools: [{name: a, type: hostpath, path: /x/state/p}]", "inside the state directory"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "test").expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn roots_are_compared_by_components_and_through_symbolic_links() {
        let ok = Config::parse(
            "pools: [{name: a, type: hostpath, path: /x/a}, {name: b, type: hostpath, path: /x/ab}]",
            "t",
        );
        assert!(ok.is_ok(), "/x/ab is not inside /x/a");
        let dir = tempfile::tempdir().expect("tempdir");
        let outer = dir.path().join("outer");
        std::fs::create_dir_all(outer.join("real")).expect("mkdir");
        std::os::unix::fs::symlink(outer.join("real"), dir.path().join("link")).expect("symlink");
        let text = format!(
            "stateDir: {0}/state-dir\npools:\n  - {{name: a, type: hostpath, path: {0}/outer}}\n  - {{name: b, type: hostpath, path: {0}/link/b}}\n",
            dir.path().display()
        );
        let config = Config::parse(&text, "t").expect("apart as written");
        let err = config.check_resolved_roots().expect_err("one inside the other on disk");
        assert!(err.contains("overlap"), "{err}");
    }

    #[test]
    fn reads_block_and_device_pools() {
        let config = Config::parse(
            "pools:\n  - {name: img, type: block, path: /srv/img, preallocate: true}\n  - {name: disks, type: device, devices: ['/dev/disk/by-id/nvme-*'], wipe: discard, snapshotPool: img}",
            "test",
        )
        .expect("valid");
        let PoolConfig::Block(b) = &config.pools[0] else { panic!("block") };
        assert!(b.preallocate);
        let PoolConfig::Device(d) = &config.pools[1] else { panic!("device") };
        assert_eq!((d.wipe, d.snapshot_pool.as_deref()), (Wipe::Discard, Some("img")));
    }

    #[test]
    fn reads_nfs_pools() {
        let config = Config::parse(
            "pools:\n  - {name: shared, type: nfs, server: nfs.example.com, export: /exports/k8s, mountOptions: [nfsvers=4.2], onDelete: archive, permissions: \"0770\", subDir: '${pvc.metadata.namespace}/${pvc.metadata.name}'}",
            "test",
        )
        .expect("valid");
        let PoolConfig::Nfs(n) = &config.pools[0] else { panic!("nfs") };
        assert_eq!(
            (n.on_delete, n.permissions, config.pools[0].node_local()),
            (OnDelete::Archive, Permissions(0o770), false)
        );
        let defaults = Config::parse("pools: [{name: n, type: nfs, server: '[::1]', export: /x}]", "t").expect("valid");
        let PoolConfig::Nfs(n) = &defaults.pools[0] else { panic!("nfs") };
        assert_eq!(
            (&n.sub_dir, n.permissions, n.on_delete),
            (&template::Template::default(), Permissions(0o777), OnDelete::Delete)
        );
    }

    #[test]
    fn reads_sizes_and_enforcement() {
        let config = Config::parse(
            "defaultVolumeSize: 2Gi\npools: [{name: a, type: hostpath, path: /x, capacityEnforcement: required}]",
            "test",
        )
        .expect("valid");
        assert_eq!(config.default_volume_size, Bytes(2 << 30));
        let PoolConfig::Hostpath(pool) = &config.pools[0] else { panic!("hostpath") };
        assert_eq!(pool.capacity_enforcement, Enforcement::Required);
    }
}
