//! hostPath pools: a directory per volume under the pool path.
//!
//! Layout: `<path>/volumes/<key>` and `<path>/snapshots/<key>`. On btrfs each volume is a
//! subvolume with a qgroup limit and snapshots are read-only btrfs snapshots; on xfs/ext4
//! mounted with project quotas each volume gets a project ID and a hard block limit;
//! elsewhere sizes are recorded but not enforced, and snapshots are reflink copies where
//! the filesystem can clone, else full copies.
//!
//! `enforcement` chooses and sets the size limits; `nested` deals with the subvolumes pods
//! make inside btrfs volumes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tree::{self, Reflink};
use super::{
    Capability, Capacity, Condition, Controller, Error, Node, PoolInfo, PoolKind, Result, Source, StageSource, Usage,
    Work,
};
use crate::config::{Enforcement, HostPathPool};
use crate::mount::Syscall;
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::ops;
use crate::progress::Progress;
use crate::safepath;
use crate::state::{AccessKind, Enforced, SnapshotMethod, SnapshotRecord, VolumeRecord};
use enforcement::{Mode, detect_mode};
use nested::{NestedWatch, adopt_nested, nested_subvolumes, refuse_nested};

mod encryption;
mod enforcement;
mod nested;

const VOLUMES: &str = "volumes";
const SNAPSHOTS: &str = "snapshots";
/// Directory walks for usage are reused for this long: longer than the kubelet's period
/// for volume stats (1 minute by default), so each walk serves at least one period's
/// calls, not one call each.
const USAGE_TTL: Duration = Duration::from_secs(90);
/// First project ID berth hands out; low IDs are left to administrators.
pub const FIRST_PROJECT_ID: u32 = 100_000;

/// A hostPath pool.
pub struct HostPath {
    info: PoolInfo,
    root: PathBuf,
    policy: Enforcement,
    mode: Mode,
    sys: Arc<dyn Syscall>,
    next_project: AtomicU32,
    usage_cache: Mutex<HashMap<PathBuf, (Instant, tree::Usage)>>,
    /// One gate per volume directory being walked (see [`HostPath::walk_usage`]).
    walks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// On btrfs with quotas: adds subvolumes pods make to their volume's quota group.
    _nested: Option<NestedWatch>,
}

impl HostPath {
    /// Prepares the pool directory and detects how sizes can be enforced. `max_project` is
    /// the highest project ID already recorded, so new IDs never collide with old ones.
    pub fn open(config: &HostPathPool, sys: Arc<dyn Syscall>, max_project: Option<u32>) -> Result<HostPath> {
        let root = config.path.clone();
        for dir in [root.clone(), root.join(VOLUMES), root.join(SNAPSHOTS)] {
            fs::create_dir_all(&dir).map_err(Error::io("create pool directory", &dir))?;
        }
        let mode = detect_mode(sys.as_ref(), &root, config.capacity_enforcement)?;
        tracing::info!(pool = %config.name, path = %root.display(), mode = ?mode, "hostpath pool ready");
        let next = max_project.map_or(FIRST_PROJECT_ID, |m| m.saturating_add(1).max(FIRST_PROJECT_ID));
        let nested = match mode {
            Mode::Btrfs { qgroups: true } => Some(
                NestedWatch::start(Arc::clone(&sys), root.join(VOLUMES), config.name.clone())
                    .map_err(Error::io("start the nested-subvolume watch", &root))?,
            ),
            _ => None,
        };
        Ok(HostPath {
            info: PoolInfo::directories(&config.name, PoolKind::Hostpath),
            root,
            policy: config.capacity_enforcement,
            mode,
            sys,
            next_project: AtomicU32::new(next),
            usage_cache: Mutex::new(HashMap::new()),
            walks: Mutex::new(HashMap::new()),
            _nested: nested,
        })
    }

    fn volume_dir(&self, key: &str) -> PathBuf {
        self.root.join(VOLUMES).join(key)
    }

    fn snapshot_dir(&self, key: &str) -> PathBuf {
        self.root.join(SNAPSHOTS).join(key)
    }

    /// The directory holding a volume's data.
    fn data_dir(&self, source: StageSource<'_>) -> PathBuf {
        match source {
            StageSource::Managed(v) => self.volume_dir(&v.key),
            StageSource::Static(rel) => self.root.join(rel),
        }
    }

    fn is_btrfs(&self) -> bool {
        matches!(self.mode, Mode::Btrfs { .. })
    }

    /// The root of a copy made from encrypted `volume` (or into it) gets the volume's
    /// policy before anything is copied in.
    fn prepare_copy(
        &self,
        volume: &VolumeRecord,
        dest: &Path,
        root: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<()> {
        match encryption::key_of(volume) {
            Some(id) => self.ensure_policy(&volume.id, dest, root, &id).map_err(std::io::Error::other),
            None => Ok(()),
        }
    }

    /// The usage of the tree at `dir`, walked at most once per [`USAGE_TTL`]. Only walks of
    /// the same directory wait for each other: the cache's lock is never held during one,
    /// so a huge volume slows its own stats, not every volume's.
    fn walk_usage(&self, dir: &Path) -> Result<tree::Usage> {
        let cached = || {
            let cache = self.usage_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.get(dir).filter(|(at, _)| at.elapsed() < USAGE_TTL).map(|(_, usage)| usage.clone())
        };
        if let Some(usage) = cached() {
            return Ok(usage);
        }
        let gate = {
            let mut gates = self.walks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(gates.entry(dir.to_path_buf()).or_default())
        };
        let _walking = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another caller may have walked it while this one waited.
        if let Some(usage) = cached() {
            return Ok(usage);
        }
        super::failpoint("hostpath.walk", dir)?;
        let usage = tree::usage(dir).map_err(Error::io("measure", dir))?;
        let mut cache = self.usage_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(dir.to_path_buf(), (Instant::now(), usage.clone()));
        Ok(usage)
    }

    /// Creates the volume's directory: empty, or with the source's content.
    fn populate(&self, volume: &VolumeRecord, source: Option<Source<'_>>) -> Result<()> {
        let parent = self.root.join(VOLUMES);
        let dir = self.volume_dir(&volume.key);
        if !dir.exists() {
            self.make(volume, source, &parent, &dir)?;
        }
        // Also after a crash between the mkdir and here: the mode is part of the volume.
        if source.is_none() {
            super::failpoint("hostpath.chmod", &dir)?;
            // World-writable like a fresh emptyDir, so pods that run as any user can write;
            // kubelet's fsGroup handling narrows it when the pod asks.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                .map_err(Error::io("chmod volume directory", &dir))?;
        }
        Ok(())
    }

    /// Makes the volume's directory, empty or as a copy of `source`. A copy is renamed
    /// into place only when whole, so an existing directory is never a partial copy.
    fn make(&self, volume: &VolumeRecord, source: Option<Source<'_>>, parent: &Path, dir: &Path) -> Result<()> {
        let from = match source {
            None => None,
            Some(Source::Snapshot(s)) => Some(self.snapshot_dir(&s.key)),
            Some(Source::Volume(v)) => Some(self.volume_dir(&v.key)),
        };
        super::failpoint("hostpath.create", dir)?;
        match (from, self.is_btrfs()) {
            (None, true) => {
                self.sys.btrfs_subvolume_create(parent, &volume.key).map_err(Error::io("create subvolume", dir))?;
            }
            (None, false) => fs::create_dir(dir).map_err(Error::io("create volume directory", dir))?,
            (Some(from), true) => {
                if let Some(Source::Volume(v)) = source {
                    refuse_nested(self.sys.as_ref(), v, &from)?;
                }
                self.sys
                    .btrfs_snapshot(&from, parent, &volume.key, false)
                    .map_err(Error::io("snapshot into volume", dir))?;
            }
            (Some(from), false) => {
                let mut progress = Progress::new("copy into volume", tree::usage(&from).ok().map(|u| u.bytes));
                let stats = tree::copy_tree_prepared(
                    &from,
                    parent,
                    &volume.key,
                    Reflink::Auto,
                    &|root| self.prepare_copy(volume, dir, root),
                    &mut |done| {
                        progress.update(done);
                        let _ = crate::failpoint::hit("hostpath.copy");
                    },
                )
                .map_err(Error::io("copy into volume", dir))?;
                tracing::info!(volume.id = %volume.id, bytes = stats.bytes, reflinked = stats.reflinked, "volume populated from source");
            }
        }
        Ok(())
    }
}

impl Controller for HostPath {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn check_writable(&self) -> Result<()> {
        super::writable(&self.info.name, &self.root)
    }

    fn enforcement(&self) -> Result<Enforced> {
        self.enforced()
    }

    fn capacity(&self) -> Result<Capacity> {
        let stat = self.sys.statfs(&self.root).map_err(Error::io("statfs", &self.root))?;
        Ok(Capacity {
            total_bytes: stat.total_bytes,
            available_bytes: stat.available_bytes,
            maximum_volume_bytes: stat.available_bytes,
        })
    }

    /// Nothing to choose ahead: a volume's storage is named by its key.
    fn reserve(&self, _volume: &mut VolumeRecord) -> Result<bool> {
        Ok(false)
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>, _work: &Work) -> Result<()> {
        volume.enforced = self.enforcement()?;
        if volume.enforced == Enforced::ProjectQuota && volume.project_id.is_none() {
            volume.project_id = Some(self.next_project.fetch_add(1, Ordering::SeqCst));
        }
        self.populate(volume, source)?;
        let dir = self.volume_dir(&volume.key);
        if source.is_none()
            && let Some(id) = encryption::key_of(volume)
        {
            let fd = safepath::open_dir_beneath(&self.root, &Path::new(VOLUMES).join(&volume.key))
                .map_err(Error::io("open volume directory", &dir))?;
            self.ensure_policy(&volume.id, &dir, std::os::fd::AsFd::as_fd(&fd), &id)?;
        }
        super::failpoint("hostpath.quota.set", &dir)?;
        if let Some(project) = volume.project_id {
            self.sys.set_project_id(&dir, project).map_err(Error::io("set project ID", &dir))?;
            if source.is_some() {
                tree::for_each_inode(&dir, &mut |fd| self.sys.set_project_id_of(fd, project))
                    .map_err(Error::io("set project ID of copied files", &dir))?;
            }
        }
        self.apply_limit(volume, volume.capacity)
    }

    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()> {
        let parent = self.root.join(VOLUMES);
        let dir = self.volume_dir(&volume.key);
        if !dir.exists() {
            return Ok(());
        }
        super::failpoint("hostpath.delete", &dir)?;
        if self.is_btrfs() && self.sys.btrfs_is_subvolume(&dir).unwrap_or(false) {
            if self.mode == (Mode::Btrfs { qgroups: true }) {
                self.sys.btrfs_qgroup_remove(&dir).map_err(Error::io("remove the volume's quota group", &dir))?;
            }
            // Subvolumes a pod made inside go first, deepest first: a subvolume that holds
            // one cannot be deleted.
            for nested in
                nested_subvolumes(self.sys.as_ref(), &dir).map_err(Error::io("find nested subvolumes", &dir))?
            {
                let (Some(at), Some(name)) = (nested.parent(), nested.file_name().and_then(|n| n.to_str())) else {
                    continue;
                };
                self.sys.btrfs_subvolume_delete(at, name).map_err(Error::io("delete nested subvolume", &nested))?;
            }
            self.sys.btrfs_subvolume_delete(&parent, &volume.key).map_err(Error::io("delete subvolume", &dir))?;
        } else {
            tree::remove_tree(&parent, &volume.key).map_err(Error::io("remove volume directory", &dir))?;
        }
        if let (Some(project), Mode::Project { mount_point }) = (volume.project_id, &self.mode) {
            // A limit of zero means "no limit": the project ID is free for nothing else.
            self.sys.set_project_limit(mount_point, project, 0).map_err(Error::io("clear project quota", &dir))?;
        }
        self.usage_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&dir);
        self.walks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&dir);
        Ok(())
    }

    fn expand_volume(&self, volume: &VolumeRecord, bytes: u64) -> Result<bool> {
        self.apply_limit(volume, bytes).map(|()| false)
    }

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord, _work: &Work) -> Result<()> {
        let source = self.volume_dir(&volume.key);
        let parent = self.root.join(SNAPSHOTS);
        let dest = self.snapshot_dir(&snapshot.key);
        super::failpoint("hostpath.snapshot", &dest)?;
        if self.is_btrfs() {
            if !dest.exists() {
                refuse_nested(self.sys.as_ref(), volume, &source)?;
                self.sys
                    .btrfs_snapshot(&source, &parent, &snapshot.key, true)
                    .map_err(Error::io("create btrfs snapshot", &dest))?;
            }
            snapshot.method = Some(SnapshotMethod::BtrfsSnapshot);
            snapshot.size = match volume.enforced {
                Enforced::BtrfsQgroup => self.sys.btrfs_qgroup_usage(&source).map_or(0, |u| u.referenced),
                _ => tree::usage(&dest).map_or(0, |u| u.bytes),
            };
            return Ok(());
        }
        if !dest.exists() {
            let mut progress = Progress::new("copy snapshot", tree::usage(&source).ok().map(|u| u.bytes));
            let stats = tree::copy_tree_prepared(
                &source,
                &parent,
                &snapshot.key,
                Reflink::Auto,
                &|root| self.prepare_copy(volume, &dest, root),
                &mut |done| {
                    progress.update(done);
                    let _ = crate::failpoint::hit("hostpath.snapshot.copy");
                },
            )
            .map_err(Error::io("copy snapshot", &dest))?;
            snapshot.method = Some(if stats.reflinked > 0 { SnapshotMethod::Reflink } else { SnapshotMethod::Copy });
            // The space a restore needs: what the copy allocated, not the files' logical
            // sizes (a cloned sparse file of 1 TiB holding one byte needs one block).
            snapshot.size = tree::usage(&dest).map_or(stats.bytes, |u| u.bytes);
        } else if snapshot.method.is_none() {
            snapshot.method = Some(SnapshotMethod::Copy);
            snapshot.size = tree::usage(&dest).map_or(0, |u| u.bytes);
        }
        Ok(())
    }

    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let parent = self.root.join(SNAPSHOTS);
        let dir = self.snapshot_dir(&snapshot.key);
        if !dir.exists() {
            return Ok(());
        }
        if self.is_btrfs() && self.sys.btrfs_is_subvolume(&dir).unwrap_or(false) {
            self.sys.btrfs_subvolume_delete(&parent, &snapshot.key).map_err(Error::io("delete btrfs snapshot", &dir))
        } else {
            tree::remove_tree(&parent, &snapshot.key).map_err(Error::io("remove snapshot", &dir))
        }
    }

    fn snapshot_content(&self, snapshot: &SnapshotRecord) -> Option<super::Content> {
        Some(super::Content::Tree(self.snapshot_dir(&snapshot.key)))
    }

    fn volume_content(&self, volume: &VolumeRecord) -> Option<super::Content> {
        Some(super::Content::Tree(self.volume_dir(&volume.key)))
    }

    /// The record's own fields say everything a node needs.
    fn volume_context(&self, _volume: &VolumeRecord) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn condition(&self, volume: &VolumeRecord) -> Condition {
        let dir = self.volume_dir(&volume.key);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Condition::healthy(),
            Ok(_) => Condition::abnormal(format!("{} is not a directory", dir.display())),
            Err(e) => Condition::abnormal(format!("volume directory {} is unavailable: {e}", dir.display())),
        }
    }

    fn unaccounted(&self, known: &HashSet<String>) -> Vec<PathBuf> {
        let mut found = super::unaccounted_in(&self.root.join(VOLUMES), "", known);
        found.extend(super::unaccounted_in(&self.root.join(SNAPSHOTS), "", known));
        found
    }

    /// fscrypt, where the pool's filesystem can.
    fn check_encryption(&self, scheme: crate::crypt::Scheme, _: AccessKind, _: Option<&str>) -> Result<()> {
        match self.scheme()? {
            offered if offered == scheme => Ok(()),
            offered => Err(Error::CannotEncrypt {
                pool: self.info.name.clone(),
                reason: format!("it encrypts with {offered}, not {scheme}"),
            }),
        }
    }

    /// Idle when nothing binds the volume's directory. A bound one cannot be held still:
    /// freezing it means freezing the pool's whole filesystem, on which btrfs cannot
    /// snapshot and nothing can reflink.
    fn quiesce(&self, volume: &VolumeRecord, table: &[MountEntry]) -> Result<super::Quiesce> {
        Ok(match mountinfo::binds_of(table, &self.volume_dir(&volume.key)).first() {
            None => super::Quiesce::Idle,
            Some(bind) => super::Quiesce::Cannot(format!(
                "it is mounted at {}, and a directory volume cannot be frozen apart from its pool's whole filesystem, on which {} cannot work; stop its writers first, or keep the group's volumes in a block pool, whose filesystems berth freezes",
                bind.mount_point.display(),
                if self.is_btrfs() { "btrfs snapshots" } else { "reflink copies" }
            )),
        })
    }

    /// fscrypt keys belong to the pool's filesystem.
    fn keyring(&self) -> Option<&dyn super::Keyring> {
        Some(self)
    }

    /// btrfs compresses per directory; other filesystems offer nothing to change.
    fn mutable_keys(&self) -> &'static [&'static str] {
        if self.is_btrfs() { &[super::mutable::COMPRESSION] } else { &[] }
    }

    /// Sets the volume directory's compression property: files written from now on
    /// inherit it (existing data keeps how it was written).
    fn apply_mutable(&self, volume: &VolumeRecord) -> Result<()> {
        let Some(algorithm) = volume.mutable.get(super::mutable::COMPRESSION) else { return Ok(()) };
        let dir = self.volume_dir(&volume.key);
        super::failpoint("hostpath.compression", &dir)?;
        self.sys.btrfs_set_compression(&dir, algorithm).map_err(Error::io("set the compression of", &dir))
    }
}

impl Node for HostPath {
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<crate::mount::ops::Flags, String> {
        super::bind_mount_flags(flags)
    }

    fn static_path(&self, sub_path: &str) -> Result<PathBuf> {
        let rel = safepath::relative("subPath", sub_path)?;
        if let Some(first) = rel.components().next()
            && (first.as_os_str() == VOLUMES || first.as_os_str() == SNAPSHOTS)
        {
            return Err(Error::ManagedSubPath { sub_path: sub_path.to_string() });
        }
        Ok(rel)
    }

    /// The key is in the filesystem already (the engine added it through the keyring).
    fn stage(
        &self,
        source: StageSource<'_>,
        staging: &Path,
        capability: &Capability,
        _key: Option<&crate::crypt::Key>,
    ) -> Result<()> {
        let mut flags = ops::parse_flags(&capability.mount_flags)?;
        flags.readonly |= capability.mode.read_only();
        let rel = match source {
            StageSource::Managed(v) => Path::new(VOLUMES).join(&v.key),
            StageSource::Static(rel) => rel.to_path_buf(),
        };
        let fd = safepath::open_dir_beneath(&self.root, &rel).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NoVolumeDirectory { path: self.root.join(&rel) },
            Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR) => {
                Error::NotPlainDirectory { pool: self.info.name.clone(), path: rel.clone() }
            }
            _ => Error::Io { op: "open volume directory", path: self.root.join(&rel), source: e },
        })?;
        let read_only_fs =
            nix::sys::statvfs::fstatvfs(&fd).is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
        if read_only_fs && !flags.readonly {
            return Err(Error::ReadWriteStageOfReadOnlyPool { pool: self.info.name.clone() });
        }
        if let StageSource::Managed(v) = source
            && let Some(id) = encryption::key_of(v)
        {
            self.ensure_policy(&v.id, &self.root.join(&rel), std::os::fd::AsFd::as_fd(&fd), &id)?;
        }
        ops::bind(self.sys.as_ref(), &safepath::proc_fd_path(&fd), staging, flags)
            .map_err(Error::io("bind mount", staging))
    }

    /// Staging records nothing new: the record names the storage.
    fn note_staged(&self, _volume: &VolumeRecord) -> Result<Option<VolumeRecord>> {
        Ok(None)
    }

    fn unstage(&self, _source: StageSource<'_>) -> Result<()> {
        Ok(())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path, table: &[MountEntry]) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        if mountinfo::at(table, path).is_empty() {
            return Ok(false);
        }
        let want = self.data_dir(source);
        let (a, b) = match (fs::metadata(path), fs::symlink_metadata(&want)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Ok(false),
        };
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }

    fn mounts(&self, source: StageSource<'_>, table: &[MountEntry]) -> Result<Vec<PathBuf>> {
        let dir = self.data_dir(source);
        Ok(mountinfo::binds_of(table, &dir).into_iter().map(|m| m.mount_point.clone()).collect())
    }

    fn node_expand(&self, volume: &VolumeRecord, _volume_path: &Path) -> Result<()> {
        // The limit belongs to the directory, not the mount: re-applying it is all there is.
        self.apply_limit(volume, volume.capacity)
    }

    fn usage(&self, volume: &VolumeRecord, _volume_path: &Path) -> Result<Usage> {
        let dir = self.volume_dir(&volume.key);
        let fs_stat = self.sys.statfs(&dir).map_err(Error::io("statfs", &dir))?;
        // Where the filesystem keeps the count it is read, never walked: a pod's million
        // files cost nothing. Only plain directories are walked.
        let (total, used, inodes) = match (volume.enforced, &self.mode) {
            (Enforced::BtrfsQgroup, _) => {
                adopt_nested(self.sys.as_ref(), &self.info.name, &dir);
                // As of the last committed transaction (btrfs commits every 30 s by
                // default); no filesystem-wide sync per call. btrfs allocates inodes as it
                // goes and counts none per subvolume: no inode usage is reported.
                let q = self.sys.btrfs_qgroup_usage(&dir).map_err(Error::io("read qgroup usage", &dir))?;
                (q.max_referenced.unwrap_or(volume.capacity), q.referenced, None)
            }
            (Enforced::ProjectQuota, Mode::Project { mount_point }) => {
                let project = volume.project_id.unwrap_or_default();
                let p = self.sys.project_usage(mount_point, project).map_err(Error::io("read project quota", &dir))?;
                let total = if p.hard_limit_bytes > 0 { p.hard_limit_bytes } else { volume.capacity };
                (total, p.used_bytes, Some(p.used_inodes))
            }
            _ => {
                let walked = self.walk_usage(&dir)?;
                (volume.capacity, walked.bytes, Some(walked.inodes))
            }
        };
        let available = total.saturating_sub(used).min(fs_stat.available_bytes);
        Ok(Usage {
            total_bytes: total,
            used_bytes: used,
            available_bytes: available,
            used_inodes: inodes,
            total_inodes: inodes.filter(|_| fs_stat.total_inodes > 0).map(|used| used + fs_stat.free_inodes),
        })
    }
}

#[cfg(test)]
mod tests;
