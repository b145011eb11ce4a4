//! How a hostPath pool enforces volume sizes: which mechanism its filesystem offers (btrfs
//! quota groups, xfs/ext4 project quotas, or none, with the reason), what a new volume
//! gets under the pool's policy, and setting a volume's limit.

use std::path::{Path, PathBuf};

use super::HostPath;
use crate::backend::{Error, Result};
use crate::config::Enforcement;
use crate::mount::ops;
use crate::mount::{FsKind, ProjectQuotaState, Syscall, mountinfo};
use crate::state::{Enforced, VolumeRecord};

/// How this pool's filesystem lets berth enforce sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    Btrfs { qgroups: bool },
    Project { mount_point: PathBuf },
    Plain { reason: String },
}

/// How the filesystem at `root` lets berth enforce sizes; on btrfs, quotas are enabled
/// unless the policy is `none`.
pub(super) fn detect_mode(sys: &dyn Syscall, root: &Path, policy: Enforcement) -> Result<Mode> {
    let stat = sys.statfs(root).map_err(Error::io("statfs", root))?;
    match stat.kind() {
        FsKind::Btrfs => {
            let mut qgroups = sys.btrfs_quota_enabled(root).unwrap_or(false);
            if !qgroups && policy != Enforcement::None {
                match sys.btrfs_quota_enable(root) {
                    Ok(()) => {
                        tracing::info!(path = %root.display(), "enabled btrfs quotas (qgroups) to enforce volume sizes");
                        qgroups = true;
                    }
                    Err(e) => tracing::warn!(path = %root.display(), error = %e, "cannot enable btrfs quotas"),
                }
            }
            Ok(Mode::Btrfs { qgroups })
        }
        kind @ (FsKind::Xfs | FsKind::Ext4) => {
            let table = ops::table(sys).map_err(Error::io("read mount table", root))?;
            let Some(host) = mountinfo::containing(&table, root) else {
                return Ok(Mode::Plain { reason: format!("no mount holds {}", root.display()) });
            };
            let prj = ["prjquota", "pquota", "pqnoenforce"].iter().any(|o| host.has_super_option(o));
            if !prj {
                return Ok(Mode::Plain {
                    reason: format!("{kind} at {} is not mounted with prjquota", host.mount_point.display()),
                });
            }
            match sys.project_quota_state(&host.mount_point) {
                Ok(ProjectQuotaState::Enforced) => Ok(Mode::Project { mount_point: host.mount_point.clone() }),
                Ok(state) => {
                    Ok(Mode::Plain { reason: format!("project quota on {} is {state:?}", host.mount_point.display()) })
                }
                Err(e) => Ok(Mode::Plain {
                    reason: format!("project quota on {} cannot be queried: {e}", host.mount_point.display()),
                }),
            }
        }
        FsKind::Other(magic) => {
            Ok(Mode::Plain { reason: format!("filesystem type {magic:#x} has no per-directory quota") })
        }
    }
}

impl HostPath {
    /// How new volumes' sizes will be enforced, or [`Error::Unenforceable`] when the pool
    /// requires enforcement and its filesystem cannot.
    pub(super) fn enforced(&self) -> Result<Enforced> {
        let (enforced, reason) = match (&self.mode, self.policy) {
            (_, Enforcement::None) => (Enforced::None, String::new()),
            (Mode::Btrfs { qgroups: true }, _) => (Enforced::BtrfsQgroup, String::new()),
            (Mode::Btrfs { qgroups: false }, _) => {
                (Enforced::None, "btrfs quotas (qgroups) could not be enabled".to_string())
            }
            (Mode::Project { .. }, _) => (Enforced::ProjectQuota, String::new()),
            (Mode::Plain { reason }, _) => (Enforced::None, reason.clone()),
        };
        if enforced == Enforced::None && self.policy == Enforcement::Required {
            return Err(Error::Unenforceable { pool: self.info.name.clone(), reason });
        }
        Ok(enforced)
    }

    /// Sets a volume's size limit; a failure counts in the `quota` errors metric.
    pub(super) fn apply_limit(&self, volume: &VolumeRecord, bytes: u64) -> Result<()> {
        self.set_limit(volume, bytes).inspect_err(|_| crate::metrics::record_error("quota"))
    }

    fn set_limit(&self, volume: &VolumeRecord, bytes: u64) -> Result<()> {
        let dir = self.volume_dir(&volume.key);
        match (volume.enforced, &self.mode) {
            (Enforced::BtrfsQgroup, _) => {
                self.sys.btrfs_qgroup_limit(&dir, Some(bytes)).map_err(Error::io("set qgroup limit", &dir))
            }
            (Enforced::ProjectQuota, Mode::Project { mount_point }) => {
                let project = volume.project_id.ok_or_else(|| Error::NoProjectId { volume: volume.id.clone() })?;
                self.sys.set_project_limit(mount_point, project, bytes).map_err(Error::io("set project quota", &dir))
            }
            (Enforced::ProjectQuota, _) => Err(Error::ProjectQuotasGone { volume: volume.id.clone() }),
            (Enforced::None | Enforced::DeviceSize, _) => Ok(()),
        }
    }
}
