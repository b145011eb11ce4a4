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

/// The configuration used when `berth serve` gets no `--config`: one hostPath pool on the
/// node's own disk, so a plain Linux machine runs berth as root with no setup.
pub const EMBEDDED_DEFAULT: &str = "\
stateDir: /var/lib/berth
pools:
  - name: default
    type: hostpath
    path: /var/lib/berth/pools/default
    capacityEnforcement: auto
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
}

impl PoolConfig {
    /// The pool's name.
    pub fn name(&self) -> &str {
        match self {
            PoolConfig::Hostpath(p) => &p.name,
        }
    }

    /// True for pools whose storage is on one node's disks (provisioned per node).
    pub fn node_local(&self) -> bool {
        match self {
            PoolConfig::Hostpath(_) => true,
        }
    }

    /// The directory the pool keeps its data in.
    pub fn path(&self) -> &Path {
        match self {
            PoolConfig::Hostpath(p) => &p.path,
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
            let path = pool.path();
            if !path.is_absolute() || path.components().count() < 2 {
                return Err(format!("pool {name:?}: path {} must be an absolute path below /", path.display()));
            }
            if path.starts_with(self.state_dir.join("state")) {
                return Err(format!("pool {name:?}: path must not be inside the state directory"));
            }
        }
        Ok(())
    }

    /// The pool a request names, or the only pool when it names none.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(PoolConfig::name)
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
        assert_eq!(config.pools[0].path(), Path::new("/var/lib/berth/pools/default"));
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
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "test").expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn reads_sizes_and_enforcement() {
        let config = Config::parse(
            "defaultVolumeSize: 2Gi\npools: [{name: a, type: hostpath, path: /x, capacityEnforcement: required}]",
            "test",
        )
        .expect("valid");
        assert_eq!(config.default_volume_size, Bytes(2 << 30));
        let PoolConfig::Hostpath(pool) = &config.pools[0];
        assert_eq!(pool.capacity_enforcement, Enforcement::Required);
    }
}
