//! The pool registry: one place that turns a pool's configuration into its backend. A new
//! pool type adds its backend module, one arm here and its variant of
//! [`crate::config::PoolConfig`]; nothing else names pool types.

use std::sync::Arc;

use super::Pool;
use super::block::BlockPool;
use super::blockvol::Freezes;
use super::device::{DevicePool, Holdings};
use super::hostpath::HostPath;
use super::nfs::NfsPool;
use crate::config::{Config, PoolConfig};
use crate::mount::Syscall;
use crate::state::Store;

/// What opening a pool may need besides its own configuration.
pub struct Context<'a> {
    /// Every pool's configuration: a device pool keeps its snapshots in a block pool's
    /// directory.
    pub config: &'a Config,
    /// The records: a device pool refuses two records that name one device, and records
    /// from before identities are adopted.
    pub store: &'a Store,
    pub sys: &'a Arc<dyn Syscall>,
    /// The freezes of every pool that freezes filesystems for its copies.
    pub freezes: &'a Freezes,
    /// The devices every device pool holds: a disk two pools list is handed out once.
    pub held: &'a Holdings,
    /// The highest project ID recorded: new IDs of every hostPath pool never collide with it.
    pub max_project: Option<u32>,
}

/// Opens the pool `pool` describes.
pub fn open(pool: &PoolConfig, cx: &Context<'_>) -> Result<Pool, String> {
    let failed = |e: super::Error| format!("pool {}: {e}", pool.name());
    Ok(match pool {
        PoolConfig::Hostpath(hp) => {
            Pool::local(Arc::new(HostPath::open(hp, Arc::clone(cx.sys), cx.max_project).map_err(failed)?))
        }
        PoolConfig::Block(bp) => {
            Pool::local(Arc::new(BlockPool::open(bp, Arc::clone(cx.sys), cx.freezes.clone()).map_err(failed)?))
        }
        PoolConfig::Device(dp) => {
            let snapshot_dir = dp.snapshot_pool.as_ref().and_then(|name| {
                cx.config.pools.iter().find_map(|p| match p {
                    PoolConfig::Block(b) if &b.name == name => Some(BlockPool::snapshots_dir(b)),
                    _ => None,
                })
            });
            let device_pool =
                |name: &str| cx.config.pools.iter().any(|p| matches!(p, PoolConfig::Device(d) if d.name == name));
            let recorded = cx.store.volumes_where(|v| v.device.is_some() && device_pool(&v.pool));
            let opened = DevicePool::open(dp, Arc::clone(cx.sys), snapshot_dir, &recorded, cx.held.clone())
                .map_err(failed)?
                .with_freezes(cx.freezes.clone());
            // Records from before identities name the kernel's name: record the identity
            // now, while that name still leads to the volume's disk.
            for v in cx.store.volumes_where(|v| v.pool == dp.name && v.device_identity.is_none()) {
                let mut v = Arc::unwrap_or_clone(v);
                if opened.adopt(&mut v)
                    && let Err(e) = cx.store.put_volume(&v)
                {
                    tracing::warn!(volume.id = %v.id, error = %e, "recording a device identity");
                }
            }
            Pool::local(Arc::new(opened))
        }
        PoolConfig::Nfs(np) => Pool::shared(Arc::new(NfsPool::open(np, Arc::clone(cx.sys)).map_err(failed)?)),
    })
}
