//! NodeGetVolumeStats and NodeExpandVolume: what a mounted volume holds, and making it see
//! its new size.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::paths::io_err;
use super::{Engine, Error, Result};
use crate::backend::{Condition, StageSource, Usage, tree};
use crate::mount::{mountinfo, ops};
use crate::state::{AccessKind, Phase};

impl Engine {
    /// Usage of the volume mounted at `volume_path`, and whether it looks healthy.
    pub fn node_stats(&self, volume_id: &str, volume_path: &Path) -> Result<(Usage, Condition)> {
        // Read first, before any stat: an NFS mount is told apart by the table alone.
        let table = self.mount_table(volume_path)?;
        if let Some(answer) = self.shared_stats(volume_id, volume_path, &table)? {
            return Ok(answer);
        }
        let meta = match ops::probe(volume_path).map_err(io_err("inspect", volume_path))? {
            ops::Probe::Present(m) => m,
            ops::Probe::Missing => {
                return Err(Error::NotMountedHere {
                    volume: volume_id.to_string(),
                    path: volume_path.to_path_buf(),
                    problem: "the path does not exist",
                });
            }
            ops::Probe::Stale => {
                return Ok((
                    Usage::default(),
                    Condition::abnormal(format!(
                        "the mount at {} is stale: its server or daemon does not answer",
                        volume_path.display()
                    )),
                ));
            }
        };
        let raw = self.store.volume(volume_id).is_some_and(|v| v.access == AccessKind::Block);
        // A raw volume's target is a file with the device node bound onto it.
        let device_file = meta.is_file() || meta.file_type().is_block_device();
        if !(meta.is_dir() || raw && device_file) {
            return Err(Error::NotMountedHere {
                volume: volume_id.to_string(),
                path: volume_path.to_path_buf(),
                problem: "the path is not a directory",
            });
        }
        let mounted = !mountinfo::at(&table, volume_path).is_empty();
        let Some(record) = self.store.volume(volume_id).filter(|v| v.phase == Phase::Ready) else {
            // A static volume: measure what is mounted there, without following symlinks,
            // and only when it is a bind of a hostPath pool's directory. Anything else is not
            // a volume of berth's (an unknown ID with /sys, say), and is never walked.
            if !mounted {
                return Err(Error::NotMountedHere {
                    volume: volume_id.to_string(),
                    path: volume_path.to_path_buf(),
                    problem: "nothing is mounted there",
                });
            }
            let real = fs::canonicalize(volume_path).unwrap_or_else(|_| volume_path.to_path_buf());
            let from_a_pool = self.config.pools.iter().filter_map(crate::config::PoolConfig::path).any(|root| {
                mountinfo::binds_of(&table, root).iter().any(|e| e.mount_point == volume_path || e.mount_point == real)
            });
            if !from_a_pool {
                return Err(Error::NotMountedHere {
                    volume: volume_id.to_string(),
                    path: volume_path.to_path_buf(),
                    problem: "no such volume exists on this node, and the path is not a volume of its pools",
                });
            }
            let walked = tree::usage(volume_path).map_err(io_err("measure", volume_path))?;
            let st = self.sys.statfs(volume_path).map_err(io_err("statfs", volume_path))?;
            let usage = Usage {
                total_bytes: st.total_bytes,
                used_bytes: walked.bytes,
                available_bytes: st.available_bytes,
                used_inodes: Some(walked.inodes),
                total_inodes: (st.total_inodes > 0).then_some(walked.inodes + st.free_inodes),
            };
            return Ok((usage, Condition::healthy()));
        };
        let pool = self.pool_of(&record)?;
        let condition = pool.condition(&record);
        if condition.abnormal {
            return Ok((Usage::default(), condition));
        }
        if !mounted {
            return Ok((
                Usage::default(),
                Condition::abnormal(format!("the mount at {} is gone", volume_path.display())),
            ));
        }
        if !pool.is_mounted_at(StageSource::Managed(&record), volume_path, &table)? {
            return Err(Error::NotMountedHere {
                volume: volume_id.to_string(),
                path: volume_path.to_path_buf(),
                problem: "another volume is mounted there",
            });
        }
        Ok((pool.usage(&record, volume_path)?, condition))
    }

    /// Makes the mounted volume see its new size: grows the storage first if the controller
    /// has not (node-only expansion), then lets the backend finish on the node (refresh the
    /// loop device and grow the filesystem; re-apply a directory's limit).
    pub fn node_expand(&self, volume_id: &str, volume_path: &Path, required: u64, limit: u64) -> Result<u64> {
        if fs::symlink_metadata(volume_path).is_err() {
            return Err(Error::NotMountedHere {
                volume: volume_id.to_string(),
                path: volume_path.to_path_buf(),
                problem: "the path does not exist",
            });
        }
        let Some(record) = self.store.volume(volume_id) else {
            return Err(Error::NoVolume { id: volume_id.to_string(), node: self.node_id.clone() });
        };
        let capacity =
            if required > record.capacity { self.expand(volume_id, required, limit)?.0 } else { record.capacity };
        let _guard = self.lock(&[volume_id.to_string()])?;
        let record = self.ready_volume(volume_id)?;
        let pool = self.pool_of(&record)?;
        pool.node_expand(&record, volume_path)?;
        tracing::info!(volume.id = %volume_id, bytes = capacity, volume.path = %volume_path.display(), "volume expanded on the node");
        Ok(capacity)
    }
}
