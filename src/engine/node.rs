//! Node operations: staging and publishing volumes with bind mounts, inline ephemeral
//! volumes, usage statistics and node-side expansion.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Capability, Engine, Error, Result};
use crate::backend::{self, Backend, Condition, RAW_DEVICE_FILE, StageSource, Usage, tree};
use crate::ids::{self, Kind};
use crate::mount::{mountinfo, ops};
use crate::state::{self, AccessKind, Enforced, Phase, VolumeRecord};
use crate::units::Bytes;

/// The volume context key the kubelet sets for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// A validated NodeStageVolume request.
#[derive(Debug, Clone)]
pub struct NodeStage {
    pub volume_id: String,
    pub staging: PathBuf,
    pub capability: Capability,
    pub context: BTreeMap<String, String>,
}

/// A validated NodePublishVolume request.
#[derive(Debug, Clone)]
pub struct NodePublish {
    pub volume_id: String,
    pub staging: Option<PathBuf>,
    pub target: PathBuf,
    pub capability: Capability,
    pub readonly: bool,
    pub context: BTreeMap<String, String>,
}

enum Resolved {
    Managed(Arc<dyn Backend>, Box<VolumeRecord>),
    Static(Arc<dyn Backend>, PathBuf),
}

impl Resolved {
    fn parts(&self) -> (&Arc<dyn Backend>, StageSource<'_>) {
        match self {
            Resolved::Managed(pool, record) => (pool, StageSource::Managed(record)),
            Resolved::Static(pool, rel) => (pool, StageSource::Static(rel)),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Backend(backend::Error::Io { op, path: path.to_path_buf(), source })
}

/// Makes sure `path` is a directory berth may mount on: creates it when missing (its parent
/// must exist), refuses symlinks and non-directories, and refuses a directory that holds
/// files but is not a mount point, so a request can never hide existing data (`/etc`, a
/// home directory) under a volume.
fn prepare_dir(engine: &Engine, field: &str, path: &Path) -> Result<CreatedDir> {
    let existing = CreatedDir { path: None, dir: true };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::InvalidArgument(format!(
            "{field} {} is a symlink; berth does not mount through symlinks",
            path.display()
        ))),
        Ok(m) if m.is_dir() => {
            if ops::is_mount_point(engine.sys.as_ref(), path).map_err(io_err("read mount table", path))? {
                return Ok(existing);
            }
            // A raw block volume's device file left by a reboot is berth's own; anything
            // else means the directory holds someone's data.
            let mut entries = fs::read_dir(path)
                .map_err(io_err("list", path))?
                .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != RAW_DEVICE_FILE));
            if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{field} {} is a non-empty directory that is not a mount point; berth mounts only on empty directories",
                    path.display()
                )));
            }
            Ok(existing)
        }
        Ok(_) => Err(Error::InvalidArgument(format!("{field} {} exists and is not a directory", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
            Ok(()) => Ok(CreatedDir { path: Some(path.to_path_buf()), dir: true }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("the parent directory of {field} {} does not exist", path.display())))
            }
            Err(e) => Err(io_err("create directory", path)(e)),
        },
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Makes sure `path` is a file berth may bind a raw device onto: creates it when missing
/// (its parent must exist), refuses symlinks and directories.
fn prepare_file(field: &str, path: &Path) -> Result<CreatedDir> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::InvalidArgument(format!(
            "{field} {} is a symlink; berth does not mount through symlinks",
            path.display()
        ))),
        Ok(m) if m.is_dir() => Err(Error::InvalidArgument(format!(
            "{field} {} is a directory; a raw block volume is published onto a file",
            path.display()
        ))),
        Ok(_) => Ok(CreatedDir { path: None, dir: false }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(_) => Ok(CreatedDir { path: Some(path.to_path_buf()), dir: false }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(Error::NotFound(format!("the parent directory of {field} {} does not exist", path.display())))
                }
                Err(e) => Err(io_err("create file", path)(e)),
            }
        }
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// A directory (or file) berth created for a mount; removed again if the call fails
/// before mounting, so a failed call leaves the CO's paths exactly as they were.
#[must_use]
struct CreatedDir {
    path: Option<PathBuf>,
    dir: bool,
}

impl CreatedDir {
    /// The mount succeeded: the directory stays.
    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = if self.dir { fs::remove_dir(&path) } else { fs::remove_file(&path) }
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a directory created for a failed call");
        }
    }
}

/// Unmounts whatever is at `path` and removes what berth created there. Absent is success.
/// Mount-ness comes from the mount table first: a stat of a dead hard NFS mount would hang.
fn tear_down(engine: &Engine, field: &str, path: &Path) -> Result<()> {
    if ops::is_mount_point(engine.sys.as_ref(), path).map_err(io_err("read mount table", path))? {
        match ops::probe(path).map_err(io_err("inspect", path))? {
            ops::Probe::Stale => {
                tracing::warn!(path = %path.display(), "the mount is stale (server or daemon gone); detaching it");
                ops::detach_all(engine.sys.as_ref(), path).map_err(io_err("detach stale mount", path))?;
            }
            _ => ops::unmount_all(engine.sys.as_ref(), path).map_err(io_err("unmount", path))?,
        }
    }
    // Nothing is mounted here any more: what remains is the directory (or file) itself.
    let meta = match ops::probe(path).map_err(io_err("inspect", path))? {
        ops::Probe::Present(m) => m,
        ops::Probe::Missing => return Ok(()),
        ops::Probe::Stale => {
            ops::detach_all(engine.sys.as_ref(), path).map_err(io_err("detach stale mount", path))?;
            return remove_path(path, true);
        }
    };
    if meta.file_type().is_symlink() {
        return Err(Error::InvalidArgument(format!(
            "{field} {} is a symlink; berth does not unmount through symlinks",
            path.display()
        )));
    }
    remove_path(path, meta.is_dir())
}

fn remove_path(path: &Path, dir: bool) -> Result<()> {
    let result = if dir { fs::remove_dir(path) } else { fs::remove_file(path) };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Data written into the bare directory while nothing was mounted: keep it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(path = %path.display(), "left a non-empty directory in place after unmounting");
            Ok(())
        }
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

impl Engine {
    fn resolve(&self, id: &str, context: &BTreeMap<String, String>) -> Result<Resolved> {
        if let Some(record) = self.store.volume(id).filter(|v| v.phase == Phase::Ready) {
            let pool = Arc::clone(self.pools.get(&record.pool).ok_or_else(|| {
                self.missing_pool(
                    &record.pool,
                    Error::FailedPrecondition(format!(
                        "volume {id} is in pool {} which is no longer configured",
                        record.pool
                    )),
                )
            })?);
            return Ok(Resolved::Managed(pool, Box::new(record)));
        }
        if let Some(sub_path) = context.get("subPath") {
            let pool = Arc::clone(self.select_pool(context.get("pool").map(String::as_str))?);
            let rel = pool.static_path(sub_path)?;
            return Ok(Resolved::Static(pool, rel));
        }
        if let Some((pool, rel)) = self.resolve_shared(id, context)? {
            return Ok(Resolved::Static(pool, rel));
        }
        Err(Error::NotFound(format!("volume {id} does not exist on node {}", self.node_id)))
    }

    /// A raw block volume holds whatever its pod wrote: staged or published with a
    /// filesystem capability, the node would mount (or format) it. FAILED_PRECONDITION.
    fn check_access_type(id: &str, source: StageSource<'_>, capability: &Capability) -> Result<()> {
        match source {
            StageSource::Managed(record) if record.access == AccessKind::Block && !capability.block => {
                Err(Error::FailedPrecondition(format!(
                    "volume {id} is a raw block volume: it cannot be staged or published with a mount capability"
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_node_capability(&self, pool: &dyn Backend, capability: &Capability) -> Result<ops::Flags> {
        use super::volumes::{Unfit, unfit};
        match unfit(pool, capability) {
            Some(Unfit::AccessMode(m) | Unfit::RawBlock(m)) => Err(Error::FailedPrecondition(m)),
            Some(Unfit::Filesystem(m) | Unfit::MountFlags(m)) => Err(Error::InvalidArgument(m)),
            None => pool.parse_mount_flags(&capability.mount_flags).map_err(Error::InvalidArgument),
        }
    }

    /// Mounts the volume at the staging path. Already staged there: success; something
    /// else mounted there: ALREADY_EXISTS. A bare directory left by a reboot is remounted.
    pub fn node_stage(&self, req: &NodeStage) -> Result<()> {
        let _guard = self.lock(std::slice::from_ref(&req.volume_id))?;
        let resolved = self.resolve(&req.volume_id, &req.context)?;
        let (pool, source) = resolved.parts();
        Self::check_access_type(&req.volume_id, source, &req.capability)?;
        self.check_node_capability(pool.as_ref(), &req.capability)?;
        self.clear_stale_mount(&req.staging)?;
        let created = prepare_dir(self, "staging_target_path", &req.staging)?;
        let staged_at = backend::publish_source(&req.staging, req.capability.block);
        if ops::is_mount_point(self.sys.as_ref(), &staged_at).map_err(io_err("read mount table", &staged_at))? {
            if pool.is_mounted_at(source, &staged_at)? {
                return Ok(());
            }
            return Err(Error::AlreadyExists(format!(
                "another volume is mounted at staging path {}",
                staged_at.display()
            )));
        }
        super::failpoint("node.stage.mount")?;
        pool.stage(source, &req.staging, &req.capability)?;
        created.keep();
        if let StageSource::Managed(record) = source {
            self.note_staged(pool.as_ref(), record);
        }
        tracing::info!(volume.id = %req.volume_id, staging.path = %req.staging.display(), "volume staged");
        Ok(())
    }

    /// Records what staging put on a volume's storage (a device's filesystem UUID, checked
    /// before later stages and wipes). The volume is staged either way: a failure is
    /// logged, and the next stage records it.
    fn note_staged(&self, pool: &dyn Backend, record: &VolumeRecord) {
        let mut record = record.clone();
        match pool.note_staged(&mut record) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.put_volume(&record) {
                    tracing::warn!(volume.id = %record.id, error = %e, "recording what staging wrote");
                }
            }
            Err(e) => tracing::warn!(volume.id = %record.id, error = %e, "reading what staging wrote"),
        }
    }

    /// Unmounts the staging path and removes it. Idempotent, also for paths never mounted.
    pub fn node_unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        let _guard = self.lock(&[volume_id.to_string()])?;
        super::failpoint("node.unstage.unmount")?;
        let raw = staging.join(RAW_DEVICE_FILE);
        // Bound, the file shows the device node; unbound, the empty file berth created.
        if fs::symlink_metadata(&raw).is_ok_and(|m| !m.is_dir() && !m.file_type().is_symlink()) {
            tear_down(self, "staging device file", &raw)?;
        }
        tear_down(self, "staging_target_path", staging)?;
        if let Some(record) = self.store.volume(volume_id).filter(|v| !v.ephemeral)
            && let Some(pool) = self.pools.get(&record.pool)
        {
            pool.unstage(StageSource::Managed(&record))?;
        }
        tracing::info!(volume.id = %volume_id, staging.path = %staging.display(), "volume unstaged");
        Ok(())
    }

    /// Bind-mounts the staged volume at the target (read-only as a second step when asked).
    pub fn node_publish(&self, req: &NodePublish) -> Result<()> {
        let _guard = self.lock(std::slice::from_ref(&req.volume_id))?;
        if req.context.get(EPHEMERAL_KEY).is_some_and(|v| v == "true") {
            return self.publish_ephemeral(req);
        }
        let resolved = self.resolve(&req.volume_id, &req.context)?;
        let (pool, source) = resolved.parts();
        Self::check_access_type(&req.volume_id, source, &req.capability)?;
        let mut flags = self.check_node_capability(pool.as_ref(), &req.capability)?;
        flags.readonly |= req.readonly || req.capability.mode.read_only();
        let staging = req.staging.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "staging_target_path is required: berth stages volumes before publishing them".into(),
            )
        })?;
        let staged_at = backend::publish_source(staging, req.capability.block);
        if !pool.is_mounted_at(source, &staged_at)? {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is not staged at {}; call NodeStageVolume first",
                req.volume_id,
                staging.display()
            )));
        }
        self.clear_stale_mount(&req.target)?;
        let created = if req.capability.block {
            prepare_file("target_path", &req.target)?
        } else {
            prepare_dir(self, "target_path", &req.target)?
        };
        if ops::is_mount_point(self.sys.as_ref(), &req.target).map_err(io_err("read mount table", &req.target))? {
            return self.check_existing_publish(pool.as_ref(), source, &req.target, flags.readonly);
        }
        // A single-writer publish elsewhere, still mounted, bars every other publish: the
        // mode a request names is the requester's word, not the volume's.
        if let StageSource::Managed(record) = source
            && let Some(held) = record.single_writer.as_deref().filter(|held| *held != req.target)
            && pool.is_mounted_at(source, held)?
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is published for a single writer (ReadWriteOncePod) at {}",
                req.volume_id,
                held.display()
            )));
        }
        if req.capability.mode == super::AccessMode::SingleNodeSingleWriter {
            let others: Vec<_> = pool
                .mounts(source)?
                .into_iter()
                .filter(|m| m != staging && *m != staged_at && *m != req.target)
                .map(|m| m.display().to_string())
                .collect();
            if !others.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} allows a single writer and is already published at {}",
                    req.volume_id,
                    others.join(", ")
                )));
            }
            // Recorded before the mount: a claim whose target is not mounted bars nothing.
            if let StageSource::Managed(record) = source
                && record.single_writer.as_deref() != Some(req.target.as_path())
            {
                let mut claimed = record.clone();
                claimed.single_writer = Some(req.target.clone());
                self.put_volume(&claimed)?;
            }
        }
        super::failpoint("node.publish.bind")?;
        ops::bind(self.sys.as_ref(), &staged_at, &req.target, flags).map_err(io_err("bind mount", &req.target))?;
        created.keep();
        tracing::info!(volume.id = %req.volume_id, target.path = %req.target.display(), readonly = flags.readonly, "volume published");
        Ok(())
    }

    fn check_existing_publish(
        &self,
        pool: &dyn Backend,
        source: StageSource<'_>,
        target: &Path,
        readonly: bool,
    ) -> Result<()> {
        if !pool.is_mounted_at(source, target)? {
            return Err(Error::AlreadyExists(format!("another filesystem is mounted at target {}", target.display())));
        }
        let table = ops::table(self.sys.as_ref()).map_err(io_err("read mount table", target))?;
        let mounted_ro = mountinfo::at(&table, target).last().is_some_and(|m| m.read_only());
        if mounted_ro != readonly {
            return Err(Error::AlreadyExists(format!(
                "volume is already published at {} with readonly={mounted_ro}",
                target.display()
            )));
        }
        Ok(())
    }

    /// Unmounts the target and removes it; for an ephemeral volume also deletes its data.
    pub fn node_unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        let _guard = self.lock(&[volume_id.to_string()])?;
        super::failpoint("node.unpublish.unmount")?;
        tear_down(self, "target_path", target)?;
        if let Some(mut record) = self.store.volume(volume_id).filter(|v| v.single_writer.as_deref() == Some(target)) {
            record.single_writer = None;
            self.put_volume(&record)?;
        }
        if let Some(record) = self.store.volume(volume_id).filter(|v| v.ephemeral) {
            let pool = Arc::clone(self.pools.get(&record.pool).ok_or_else(|| {
                self.missing_pool(
                    &record.pool,
                    Error::FailedPrecondition(format!(
                        "ephemeral volume {volume_id} is in pool {} which is gone",
                        record.pool
                    )),
                )
            })?);
            let mut deleting = record;
            self.delete_volume_storage(pool.as_ref(), &mut deleting)?;
            tracing::info!(volume.id = %volume_id, "ephemeral volume deleted");
        }
        tracing::info!(volume.id = %volume_id, target.path = %target.display(), "volume unpublished");
        Ok(())
    }

    /// Creates (once) and mounts an inline ephemeral volume; it lives until unpublish.
    fn publish_ephemeral(&self, req: &NodePublish) -> Result<()> {
        for key in req.context.keys() {
            if !matches!(key.as_str(), "pool" | "size") && !key.starts_with("csi.storage.k8s.io/") {
                return Err(Error::InvalidArgument(format!(
                    "unknown volume attribute {key:?} for an ephemeral volume; berth accepts \"pool\" and \"size\""
                )));
            }
        }
        let pool = Arc::clone(self.select_pool(req.context.get("pool").map(String::as_str))?);
        let size = match req.context.get("size") {
            Some(text) => {
                text.parse::<Bytes>().map_err(|e| Error::InvalidArgument(format!("volume attribute size: {e}")))?.0
            }
            None => self.config.default_volume_size.0,
        };
        let allowed = self.config.pools.iter().any(|p| p.name() == pool.name() && p.ephemeral());
        if !allowed {
            return Err(Error::FailedPrecondition(format!(
                "pool {} does not serve inline ephemeral volumes; its configuration must say `ephemeral: true` \
                 (device pools never do)",
                pool.name()
            )));
        }
        let mut flags = self.check_node_capability(pool.as_ref(), &req.capability)?;
        flags.readonly |= req.readonly || req.capability.mode.read_only();
        if self.store.volume(&req.volume_id).is_none() {
            let room = pool.capacity()?;
            if size > room.maximum_volume_bytes.min(room.available_bytes) {
                return Err(Error::ResourceExhausted(format!(
                    "pool {} has {} bytes free; an ephemeral volume of {size} bytes does not fit",
                    pool.name(),
                    room.available_bytes
                )));
            }
        }
        let record = match self.store.volume(&req.volume_id) {
            // Never a persistent volume: that would skip its staging and single-writer checks.
            Some(r) if !r.ephemeral => {
                return Err(Error::AlreadyExists(format!(
                    "volume {} exists and is not an ephemeral volume; publish it without {EPHEMERAL_KEY}",
                    r.id
                )));
            }
            Some(r) if r.phase == Phase::Ready => r,
            existing => {
                let fresh = existing.is_none();
                let mut record = existing.unwrap_or_else(|| VolumeRecord {
                    id: req.volume_id.clone(),
                    name: req.volume_id.clone(),
                    pool: pool.name().to_string(),
                    key: ids::mint(Kind::Volume, pool.name()).1,
                    node: self.node_id.clone(),
                    capacity: size,
                    phase: Phase::Creating,
                    access: AccessKind::Mount,
                    enforced: Enforced::None,
                    project_id: None,
                    source: None,
                    published: BTreeMap::new(),
                    ephemeral: true,
                    fs_type: None,
                    device: None,
                    device_identity: None,
                    parameters: BTreeMap::new(),
                    single_writer: None,
                    created_unix_ms: state::now_ms(),
                });
                if fresh {
                    self.begin_volume(&record)?;
                }
                self.build_volume(pool.as_ref(), &mut record, None, 0)?;
                record
            }
        };
        let source = StageSource::Managed(&record);
        let created = prepare_dir(self, "target_path", &req.target)?;
        if ops::is_mount_point(self.sys.as_ref(), &req.target).map_err(io_err("read mount table", &req.target))? {
            return self.check_existing_publish(pool.as_ref(), source, &req.target, flags.readonly);
        }
        let mut capability = req.capability.clone();
        if flags.readonly {
            capability.mount_flags.push("ro".into());
        }
        pool.stage(source, &req.target, &capability)?;
        created.keep();
        tracing::info!(volume.id = %req.volume_id, target.path = %req.target.display(), "ephemeral volume published");
        Ok(())
    }

    /// Usage of the volume mounted at `volume_path`, and whether it looks healthy.
    pub fn node_stats(&self, volume_id: &str, volume_path: &Path) -> Result<(Usage, Condition)> {
        if let Some(answer) = self.shared_stats(volume_id, volume_path)? {
            return Ok(answer);
        }
        let meta = match ops::probe(volume_path).map_err(io_err("inspect", volume_path))? {
            ops::Probe::Present(m) => m,
            ops::Probe::Missing => {
                return Err(Error::NotFound(format!("volume path {} does not exist", volume_path.display())));
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
            return Err(Error::NotFound(format!("volume path {} is not a directory", volume_path.display())));
        }
        let mounted =
            ops::is_mount_point(self.sys.as_ref(), volume_path).map_err(io_err("read mount table", volume_path))?;
        let Some(record) = self.store.volume(volume_id).filter(|v| v.phase == Phase::Ready) else {
            // A static volume: measure what is mounted there, without following symlinks,
            // and only when it is a bind of a hostPath pool's directory. Anything else is not
            // a volume of berth's (an unknown ID with /sys, say), and is never walked.
            if !mounted {
                return Err(Error::NotFound(format!("volume {volume_id} is not mounted at {}", volume_path.display())));
            }
            let table = ops::table(self.sys.as_ref()).map_err(io_err("read mount table", volume_path))?;
            let real = fs::canonicalize(volume_path).unwrap_or_else(|_| volume_path.to_path_buf());
            let from_a_pool = self.config.pools.iter().filter_map(crate::config::PoolConfig::path).any(|root| {
                mountinfo::binds_of(&table, root).iter().any(|e| e.mount_point == volume_path || e.mount_point == real)
            });
            if !from_a_pool {
                return Err(Error::NotFound(format!(
                    "volume {volume_id} does not exist on node {}, and {} is not a volume of its pools",
                    self.node_id,
                    volume_path.display()
                )));
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
        let pool = Arc::clone(self.pools.get(&record.pool).ok_or_else(|| {
            self.missing_pool(
                &record.pool,
                Error::FailedPrecondition(format!(
                    "volume {volume_id} is in pool {} which is no longer configured",
                    record.pool
                )),
            )
        })?);
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
        if !pool.is_mounted_at(StageSource::Managed(&record), volume_path)? {
            return Err(Error::NotFound(format!(
                "volume {volume_id} is not what is mounted at {}",
                volume_path.display()
            )));
        }
        Ok((pool.usage(&record, volume_path)?, condition))
    }

    /// Makes the mounted volume see its new size: grows the storage first if the controller
    /// has not (node-only expansion), then lets the backend finish on the node (refresh the
    /// loop device and grow the filesystem; re-apply a directory's limit).
    pub fn node_expand(&self, volume_id: &str, volume_path: &Path, required: u64, limit: u64) -> Result<u64> {
        if fs::symlink_metadata(volume_path).is_err() {
            return Err(Error::NotFound(format!("volume path {} does not exist", volume_path.display())));
        }
        let Some(record) = self.store.volume(volume_id) else {
            return Err(Error::NotFound(format!("volume {volume_id} does not exist on node {}", self.node_id)));
        };
        let capacity =
            if required > record.capacity { self.expand(volume_id, required, limit)?.0 } else { record.capacity };
        let _guard = self.lock(&[volume_id.to_string()])?;
        let record = self.ready_volume(volume_id)?;
        let pool = Arc::clone(self.pools.get(&record.pool).ok_or_else(|| {
            self.missing_pool(
                &record.pool,
                Error::FailedPrecondition(format!(
                    "volume {volume_id} is in pool {} which is no longer configured",
                    record.pool
                )),
            )
        })?);
        pool.node_expand(&record, volume_path)?;
        tracing::info!(volume.id = %volume_id, bytes = capacity, volume.path = %volume_path.display(), "volume expanded on the node");
        Ok(capacity)
    }
}
