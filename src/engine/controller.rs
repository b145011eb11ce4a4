//! Controller operations: volumes and snapshots as records plus backend storage.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Capability, DEFAULT_PAGE, Engine, Error, FS_TYPES, Result};
use crate::backend::{Backend, Capacity, Condition, Source};
use crate::ids::{self, Kind};
use crate::state::{self, AccessKind, ContentSource, Enforced, Phase, SnapshotRecord, VolumeRecord};

/// StorageClass parameters berth reads; the provisioner's own keys are accepted too.
const POOL_PARAMETER: &str = "pool";
const CO_PREFIX: &str = "csi.storage.k8s.io/";
const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";

/// A validated CreateVolume request.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    pub name: String,
    pub required_bytes: u64,
    pub limit_bytes: u64,
    pub capabilities: Vec<Capability>,
    pub parameters: BTreeMap<String, String>,
    pub source: Option<ContentSource>,
    /// Node IDs the requisite topology allows; `None` when the request sets no requisite.
    pub allowed_nodes: Option<Vec<String>>,
}

/// One ListVolumes entry.
#[derive(Debug, Clone)]
pub struct ListedVolume {
    pub volume: VolumeRecord,
    pub condition: Condition,
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: String,
}

/// A GetCapacity request.
#[derive(Debug, Clone, Default)]
pub struct CapacityQuery {
    pub parameters: BTreeMap<String, String>,
    /// The node the CO asks about, if it named one.
    pub node: Option<String>,
    pub capabilities: Vec<Capability>,
}

/// Checks StorageClass parameters and returns the pool they name, if any.
pub fn check_parameters(parameters: &BTreeMap<String, String>) -> Result<Option<&str>> {
    for key in parameters.keys() {
        if key != POOL_PARAMETER && !key.starts_with(CO_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "unknown parameter {key:?}; berth accepts \"pool\" and the csi.storage.k8s.io/ keys"
            )));
        }
    }
    Ok(parameters.get(POOL_PARAMETER).map(String::as_str))
}

/// Why `pool` cannot serve `capability`, if it cannot.
pub(super) fn unsupported(pool: &dyn Backend, capability: &Capability) -> Option<String> {
    if capability.mode.multi_node() && pool.node_local() {
        return Some(format!(
            "access mode {} needs several nodes, but {} pool {} is local to one node",
            capability.mode,
            pool.kind(),
            pool.name()
        ));
    }
    if capability.block && !pool.supports_block() {
        return Some(format!("{} pool {} serves filesystem volumes only, not raw block", pool.kind(), pool.name()));
    }
    if !pool.fs_types().contains(&capability.fs_type.as_str()) {
        return Some(format!(
            "filesystem type {:?} is not one of {}",
            capability.fs_type,
            pool.fs_types().iter().filter(|t| !t.is_empty()).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Err(e) = pool.parse_mount_flags(&capability.mount_flags) {
        return Some(e);
    }
    None
}

/// The filesystem a Filesystem-mode volume of a formatting pool gets: the capability's
/// fs_type, else the StorageClass's `csi.storage.k8s.io/fstype`, else ext4.
fn choose_fs_type(pool: &dyn Backend, req: &CreateVolume, access: AccessKind) -> Result<Option<String>> {
    if !pool.formats() || access == AccessKind::Block {
        return Ok(None);
    }
    let from_capability = req.capabilities.iter().map(|c| c.fs_type.as_str()).find(|t| !t.is_empty());
    let from_parameter = req.parameters.get(FSTYPE_PARAMETER).map(String::as_str).filter(|t| !t.is_empty());
    let chosen = from_capability.or(from_parameter).unwrap_or(crate::backend::block::DEFAULT_FS);
    if chosen.is_empty() || !FS_TYPES.contains(&chosen) {
        return Err(Error::InvalidArgument(format!("filesystem type {chosen:?} is not one of ext4, xfs, btrfs")));
    }
    Ok(Some(chosen.to_string()))
}

fn volume_size(req: &CreateVolume, default: u64) -> Result<u64> {
    if req.limit_bytes > 0 && req.required_bytes > req.limit_bytes {
        return Err(Error::OutOfRange(format!(
            "required_bytes {} exceeds limit_bytes {}",
            req.required_bytes, req.limit_bytes
        )));
    }
    Ok(match (req.required_bytes, req.limit_bytes) {
        (0, 0) => default,
        (0, limit) => default.min(limit),
        (required, _) => required,
    })
}

/// The smallest filesystem mkfs makes of a type: xfs refuses below 300 MiB (xfsprogs 5.19
/// on), mkfs.btrfs below about 109 MiB.
fn smallest_filesystem(fs_type: &str) -> Option<u64> {
    match fs_type {
        "xfs" => Some(300 << 20),
        "btrfs" => Some(128 << 20),
        _ => None,
    }
}

/// `size`, raised to the smallest filesystem of `fs_type` when it is below it (a volume
/// larger than asked is allowed up to `limit_bytes`), or OUT_OF_RANGE when the limit does
/// not allow that much.
fn fit_filesystem(size: u64, fs_type: Option<&str>, limit_bytes: u64) -> Result<u64> {
    let Some((fs, min)) = fs_type.and_then(|fs| smallest_filesystem(fs).map(|min| (fs, min))) else {
        return Ok(size);
    };
    if size >= min {
        return Ok(size);
    }
    if limit_bytes > 0 && limit_bytes < min {
        return Err(Error::OutOfRange(format!(
            "an {fs} filesystem needs at least {min} bytes, more than limit_bytes {limit_bytes}"
        )));
    }
    Ok(min)
}

impl Engine {
    /// Creates a volume, or returns the one this name already created. Same name with an
    /// incompatible request is ALREADY_EXISTS; a missing source NOT_FOUND; no room here
    /// RESOURCE_EXHAUSTED.
    pub fn create_volume(&self, req: CreateVolume) -> Result<VolumeRecord> {
        let pool_name = check_parameters(&req.parameters)?;
        let pool = Arc::clone(self.select_pool(pool_name)?);
        pool.check_writable()?;
        self.ensure_synced(Some(pool.name()))?;
        if req.capabilities.is_empty() {
            return Err(Error::InvalidArgument("volume_capabilities is required".into()));
        }
        for cap in &req.capabilities {
            if let Some(reason) = unsupported(pool.as_ref(), cap) {
                return Err(Error::InvalidArgument(reason));
            }
        }
        let size = volume_size(&req, self.config.default_volume_size.0)?;
        let access = if req.capabilities.iter().any(|c| c.block) { AccessKind::Block } else { AccessKind::Mount };
        let fs_type = choose_fs_type(pool.as_ref(), &req, access)?;
        let size = fit_filesystem(size, fs_type.as_deref(), req.limit_bytes)?;
        // A shared pool's volumes are reachable from every node: any topology fits.
        if let Some(allowed) = &req.allowed_nodes
            && pool.node_local()
            && !allowed.contains(&self.node_id)
        {
            return Err(Error::ResourceExhausted(format!(
                "node {} holds pool {}, but the requisite topology allows only: {}",
                self.node_id,
                pool.name(),
                allowed.join(", ")
            )));
        }
        // The source is held shared for the whole copy: deleting it waits (ABORTED) until
        // no copy reads it, so a clone never ends up with part of its source.
        let source_id = match &req.source {
            Some(ContentSource::Snapshot(id) | ContentSource::Volume(id)) => vec![id.as_str()],
            None => Vec::new(),
        };
        let _guard = self.lock_reading(&[format!("volume-name:{}", req.name)], &source_id)?;

        let existing = self.store.volume_by_name(&req.name);
        if let Some(v) = &existing {
            let fits = v.capacity >= req.required_bytes && (req.limit_bytes == 0 || v.capacity <= req.limit_bytes);
            if v.pool != pool.name() || !fits || v.source != req.source || v.access != access || v.fs_type != fs_type {
                return Err(Error::AlreadyExists(format!(
                    "volume name {:?} is already used by {} (pool {}, {} bytes, source {:?}) which this request does not match",
                    req.name, v.id, v.pool, v.capacity, v.source
                )));
            }
            match v.phase {
                Phase::Ready => return Ok(v.clone()),
                Phase::Deleting => return Err(Error::Aborted(format!("volume {} is being deleted", v.id))),
                Phase::Creating => tracing::info!(volume.id = %v.id, "finishing an interrupted CreateVolume"),
            }
        }

        // Resolve the content source; keep the records alive while the backend reads them.
        let (snapshot, source_volume) = match &req.source {
            None => (None, None),
            Some(ContentSource::Snapshot(id)) => {
                let s = self.store.snapshot(id).filter(|s| s.phase == Phase::Ready).ok_or_else(|| {
                    Error::NotFound(format!("source snapshot {id} does not exist on node {}", self.node_id))
                })?;
                if s.pool != pool.name() {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot {id} is in pool {}; it can only be restored into that pool, not {}",
                        s.pool,
                        pool.name()
                    )));
                }
                if size < s.size {
                    return Err(Error::OutOfRange(format!(
                        "snapshot {id} holds {} bytes; {size} bytes cannot hold it",
                        s.size
                    )));
                }
                (Some(s), None)
            }
            Some(ContentSource::Volume(id)) => {
                let v = self.store.volume(id).filter(|v| v.phase == Phase::Ready).ok_or_else(|| {
                    Error::NotFound(format!("source volume {id} does not exist on node {}", self.node_id))
                })?;
                if v.pool != pool.name() {
                    return Err(Error::InvalidArgument(format!(
                        "volume {id} is in pool {}; it can only be cloned within that pool, not into {}",
                        v.pool,
                        pool.name()
                    )));
                }
                if size < v.capacity {
                    return Err(Error::OutOfRange(format!(
                        "clone of {id} needs at least its {} bytes; {size} requested",
                        v.capacity
                    )));
                }
                (None, Some(v))
            }
        };
        let source = match (&snapshot, &source_volume) {
            (Some(s), _) => Some(Source::Snapshot(s)),
            (_, Some(v)) => Some(Source::Volume(v)),
            _ => None,
        };

        let mut record = match existing {
            Some(v) => v,
            None => {
                // Refuse before any side effect what cannot succeed.
                pool.enforcement()?;
                let room = pool.capacity()?;
                if size > room.available_bytes {
                    return Err(Error::ResourceExhausted(format!(
                        "pool {} on node {} has {} bytes free; {size} requested",
                        pool.name(),
                        self.node_id,
                        room.available_bytes
                    )));
                }
                let (id, key) = ids::mint(Kind::Volume, pool.name());
                let record = VolumeRecord {
                    id,
                    name: req.name.clone(),
                    pool: pool.name().to_string(),
                    key,
                    node: if pool.node_local() { self.node_id.clone() } else { String::new() },
                    capacity: size,
                    phase: Phase::Creating,
                    access,
                    enforced: Enforced::None,
                    project_id: None,
                    source: req.source.clone(),
                    published: BTreeMap::new(),
                    ephemeral: false,
                    fs_type: fs_type.clone(),
                    device: None,
                    device_identity: None,
                    parameters: req
                        .parameters
                        .iter()
                        .filter(|(k, _)| !k.contains("secret"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    single_writer: None,
                    created_unix_ms: state::now_ms(),
                };
                self.put_volume(&record)?;
                record
            }
        };
        super::failpoint("volume.create.after-intent")?;
        // What the volume will occupy (a device pool's disk) is recorded before anything
        // is written to it, so a crash mid-write leaves a record that names the disk.
        match pool.reserve(&mut record) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.put_volume(&record) {
                    self.roll_back(pool.as_ref(), &record);
                    return Err(e);
                }
                super::failpoint("volume.create.after-reserve")?;
            }
            Err(e) => {
                self.roll_back(pool.as_ref(), &record);
                return Err(e.into());
            }
        }
        if let Err(e) = pool.create_volume(&mut record, source) {
            self.roll_back(pool.as_ref(), &record);
            return Err(e.into());
        }
        super::failpoint("volume.create.before-ready")?;
        if req.limit_bytes > 0 && record.capacity > req.limit_bytes {
            self.roll_back(pool.as_ref(), &record);
            return Err(Error::OutOfRange(format!(
                "pool {} can only offer {} bytes, more than limit_bytes {}",
                pool.name(),
                record.capacity,
                req.limit_bytes
            )));
        }
        record.phase = Phase::Ready;
        self.put_volume(&record)?;
        tracing::info!(volume.id = %record.id, volume.name = %record.name, bytes = record.capacity, enforced = record.enforced.as_str(), "volume created");
        Ok(record)
    }

    /// Undoes a failed creation so the failure is final and leaves nothing behind; if the
    /// undo fails too, the intent record stays for a retry to finish.
    fn roll_back(&self, pool: &dyn Backend, record: &VolumeRecord) {
        match pool.delete_volume(record) {
            Ok(()) => {
                if let Err(e) = self.remove_volume_record(record) {
                    tracing::error!(volume.id = %record.id, error = %e, "removing the record of a failed volume");
                }
            }
            Err(e) => {
                tracing::error!(volume.id = %record.id, error = %e, "rolling back a failed volume; a retry will finish it")
            }
        }
    }

    /// Records a volume: first where its pool keeps its durable truth (an NFS export),
    /// then in the local store.
    pub(super) fn put_volume(&self, record: &VolumeRecord) -> Result<()> {
        if let Some(pool) = self.pools.get(&record.pool) {
            pool.persist_volume(record)?;
        }
        self.store.put_volume(record).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    fn put_snapshot(&self, record: &SnapshotRecord) -> Result<()> {
        if let Some(pool) = self.pools.get(&record.pool) {
            pool.persist_snapshot(record)?;
        }
        self.store.put_snapshot(record).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    /// Forgets a volume in its pool's own records and in the local store.
    pub(super) fn remove_volume_record(&self, record: &VolumeRecord) -> Result<()> {
        if let Some(pool) = self.pools.get(&record.pool) {
            pool.forget_volume(record)?;
        }
        self.store.remove_volume(&record.id).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    fn remove_snapshot_record(&self, record: &SnapshotRecord) -> Result<()> {
        if let Some(pool) = self.pools.get(&record.pool) {
            pool.forget_snapshot(record)?;
        }
        self.store.remove_snapshot(&record.id).map_err(|source| Error::State { id: record.id.clone(), source })
    }

    /// Deletes a volume; unknown IDs are already gone. A volume still published or mounted
    /// is FAILED_PRECONDITION and left untouched.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        // Also exclusive on what copies from it read: never deleted under a clone.
        let _guard = self.lock(&[id.to_string(), crate::locks::reading(id)])?;
        let Some(mut record) = self.store.volume(id) else {
            return Ok(());
        };
        let pool = Arc::clone(self.pool(&record.pool)?);
        pool.check_writable()?;
        if !record.published.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published to node(s) {}; unpublish it first",
                record.published.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mounts = pool.mounts(crate::backend::StageSource::Managed(&record))?;
        if !mounts.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still mounted at {}; unpublish and unstage it first",
                mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        record.phase = Phase::Deleting;
        self.put_volume(&record)?;
        super::failpoint("volume.delete.after-intent")?;
        pool.delete_volume(&record)?;
        super::failpoint("volume.delete.before-forget")?;
        self.remove_volume_record(&record)?;
        tracing::info!(volume.id = %id, "volume deleted");
        Ok(())
    }

    fn known_node(&self, node: &str) -> bool {
        node == self.node_id || !self.store.volumes_where(|v| v.node == node).is_empty()
    }

    /// Records that `node` may use the volume. Unknown volume or node: NOT_FOUND; another
    /// node than the one holding a node-local volume: FAILED_PRECONDITION naming the owner;
    /// already published there with another readonly flag: ALREADY_EXISTS.
    pub fn controller_publish(
        &self,
        id: &str,
        node: &str,
        capability: &Capability,
        readonly: bool,
        context: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        let _guard = self.lock(&[id.to_string()])?;
        // A static volume an administrator made on a shared pool (server, export, subDir in
        // its attributes): berth keeps no record of it, so attaching it checks only that
        // the attributes are valid and the node is one that mounts the pool. Handles berth
        // minted never take this path: a deleted volume stays NOT_FOUND.
        if self.store.volume(id).is_none()
            && ids::parse(Kind::Volume, id).is_none()
            && !context.is_empty()
            && let Some((pool, _)) = self.resolve_shared(id, context)?
        {
            if !pool.knows_node(node)? {
                return Err(Error::NotFound(format!("node {node:?} has not registered with pool {}", pool.name())));
            }
            if let Some(reason) = unsupported(pool.as_ref(), capability) {
                return Err(Error::InvalidArgument(reason));
            }
            return Ok(());
        }
        let mut record = self.ready_volume(id)?;
        if record.node.is_empty() {
            return self.publish_shared(record, node, capability, readonly);
        }
        if node != record.node {
            if !self.known_node(node) {
                return Err(Error::NotFound(format!("node {node:?} is not known to berth")));
            }
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is local to node {} and cannot be published to node {node}",
                record.node
            )));
        }
        let pool = Arc::clone(self.pool(&record.pool)?);
        if let Some(reason) = unsupported(pool.as_ref(), capability) {
            return Err(Error::InvalidArgument(reason));
        }
        match record.published.get(node) {
            Some(&was) if was == readonly => return Ok(()),
            Some(&was) => {
                return Err(Error::AlreadyExists(format!(
                    "volume {id} is already published to node {node} with readonly={was}"
                )));
            }
            None => {}
        }
        record.published.insert(node.to_string(), readonly);
        self.put_volume(&record)
    }

    /// Forgets that `node` (or every node, when empty) may use the volume. Idempotent.
    pub fn controller_unpublish(&self, id: &str, node: &str) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        let _guard = self.lock(&[id.to_string()])?;
        let Some(mut record) = self.store.volume(id) else {
            return Ok(());
        };
        let before = record.published.len();
        if node.is_empty() {
            record.published.clear();
        } else {
            record.published.remove(node);
        }
        if record.published.len() != before {
            self.put_volume(&record)?;
        }
        Ok(())
    }

    pub(super) fn ready_volume(&self, id: &str) -> Result<VolumeRecord> {
        self.store
            .volume(id)
            .filter(|v| v.phase != Phase::Deleting)
            .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist on node {}", self.node_id)))
    }

    /// Whether every capability (and the parameters, if given) fit the volume.
    pub fn validate_capabilities(
        &self,
        id: &str,
        capabilities: &[Capability],
        parameters: &BTreeMap<String, String>,
    ) -> Result<std::result::Result<(), String>> {
        self.sync_for_id(Kind::Volume, id)?;
        let record = self.ready_volume(id)?;
        if capabilities.is_empty() {
            return Err(Error::InvalidArgument("volume_capabilities is required".into()));
        }
        let pool = self.pool(&record.pool)?;
        if let Some(name) = check_parameters(parameters)?
            && name != record.pool
        {
            return Ok(Err(format!("volume {id} is in pool {}, not {name}", record.pool)));
        }
        for cap in capabilities {
            if let Some(reason) = unsupported(pool.as_ref(), cap) {
                return Ok(Err(reason));
            }
            if cap.block != (record.access == AccessKind::Block) {
                return Ok(Err(format!("volume {id} was created for {:?} access", record.access)));
            }
            if let Some(fs) = &record.fs_type
                && !cap.fs_type.is_empty()
                && &cap.fs_type != fs
            {
                return Ok(Err(format!("volume {id} holds a {fs} filesystem, not {}", cap.fs_type)));
            }
        }
        Ok(Ok(()))
    }

    /// A page of volumes after `token`. A token berth did not hand out is ABORTED.
    pub fn list_volumes(&self, max_entries: usize, token: &str) -> Result<Page<ListedVolume>> {
        self.ensure_synced(None)?;
        let after = if token.is_empty() {
            None
        } else if ids::parse(Kind::Volume, token).is_some() || self.store.volume(token).is_some() {
            Some(token)
        } else {
            return Err(Error::Aborted(format!("starting_token {token:?} was not issued by this driver")));
        };
        let limit = if max_entries == 0 { DEFAULT_PAGE } else { max_entries.min(super::MAX_PAGE) };
        let (records, more) = self.store.volumes_page(after, limit);
        let next_token = if more { records.last().map(|v| v.id.clone()).unwrap_or_default() } else { String::new() };
        let items = records
            .into_iter()
            .map(|volume| {
                let condition = match self.pools.get(&volume.pool) {
                    Some(pool) => pool.condition(&volume),
                    None => Condition::abnormal(format!("pool {} is no longer configured", volume.pool)),
                };
                ListedVolume { volume, condition }
            })
            .collect();
        Ok(Page { items, next_token })
    }

    /// A volume and its condition.
    pub fn get_volume(&self, id: &str) -> Result<ListedVolume> {
        self.sync_for_id(Kind::Volume, id)?;
        let volume = self.ready_volume(id)?;
        let condition = self.pool(&volume.pool)?.condition(&volume);
        Ok(ListedVolume { volume, condition })
    }

    /// Free space for new volumes matching the query; zero where they cannot be placed.
    pub fn capacity(&self, query: &CapacityQuery) -> Result<Capacity> {
        let pool = Arc::clone(self.select_pool(check_parameters(&query.parameters)?)?);
        let none = Capacity { total_bytes: 0, available_bytes: 0, maximum_volume_bytes: 0 };
        // A shared pool's free space is the same whichever node asks.
        if pool.node_local() && query.node.as_ref().is_some_and(|n| n != &self.node_id) {
            return Ok(none);
        }
        if query.capabilities.iter().any(|c| unsupported(pool.as_ref(), c).is_some()) {
            return Ok(none);
        }
        Ok(pool.capacity()?)
    }

    /// Raises a volume's size. Requests at or below the current size succeed unchanged.
    /// Returns the new size and whether the node must finish the expansion: true only on
    /// the central controller for a node-local volume, whose owning node applies the limit.
    pub fn controller_expand(&self, id: &str, required: u64, limit: u64) -> Result<(u64, bool)> {
        if limit > 0 && required > limit {
            return Err(Error::OutOfRange(format!("required_bytes {required} exceeds limit_bytes {limit}")));
        }
        self.sync_for_id(Kind::Volume, id)?;
        if self.store.volume(id).is_none()
            && let Some(parsed) = ids::parse(Kind::Volume, id)
            && self.remote_pools.contains(parsed.pool)
        {
            return Ok((required, true));
        }
        self.expand(id, required, limit)
    }

    /// Applies a larger size to a volume this process holds; returns the size and whether
    /// the node must finish the expansion.
    pub(super) fn expand(&self, id: &str, required: u64, limit: u64) -> Result<(u64, bool)> {
        if limit > 0 && required > limit {
            return Err(Error::OutOfRange(format!("required_bytes {required} exceeds limit_bytes {limit}")));
        }
        let _guard = self.lock(&[id.to_string()])?;
        let mut record = self.ready_volume(id)?;
        if limit > 0 && record.capacity > limit {
            return Err(Error::OutOfRange(format!(
                "volume {id} already has {} bytes, more than limit_bytes {limit}; volumes do not shrink",
                record.capacity
            )));
        }
        if required <= record.capacity {
            return Ok((record.capacity, false));
        }
        let pool = Arc::clone(self.pool(&record.pool)?);
        pool.check_writable()?;
        let room = pool.capacity()?;
        let growth = required - record.capacity;
        if growth > room.available_bytes && !pool.grows_within_its_device() {
            return Err(Error::ResourceExhausted(format!(
                "pool {} has {} bytes free; growing {id} by {growth} bytes does not fit",
                record.pool, room.available_bytes
            )));
        }
        let node_required = pool.expand_volume(&record, required)?;
        record.capacity = required;
        self.put_volume(&record)?;
        tracing::info!(volume.id = %id, bytes = required, node_expansion_required = node_required, "volume expanded");
        Ok((required, node_required))
    }

    /// Snapshots a volume, or returns the snapshot this name already made of it.
    pub fn create_snapshot(&self, source: &str, name: &str) -> Result<SnapshotRecord> {
        self.sync_for_id(Kind::Volume, source)?;
        let _guard = self.lock(&[format!("snapshot-name:{name}"), source.to_string()])?;
        let existing = self.store.snapshot_by_name(name);
        if let Some(s) = &existing {
            if s.source_volume != source {
                return Err(Error::AlreadyExists(format!(
                    "snapshot name {name:?} is already used by {} of volume {}",
                    s.id, s.source_volume
                )));
            }
            if s.phase == Phase::Ready {
                return Ok(s.clone());
            }
        }
        let volume = self.ready_volume(source)?;
        let pool = Arc::clone(self.pool(&volume.pool)?);
        pool.check_writable()?;
        let mut record = match existing {
            Some(s) => s,
            None => {
                let (id, key) = ids::mint(Kind::Snapshot, &volume.pool);
                let record = SnapshotRecord {
                    id,
                    name: name.to_string(),
                    pool: volume.pool.clone(),
                    key,
                    node: self.node_id.clone(),
                    source_volume: source.to_string(),
                    phase: Phase::Creating,
                    size: 0,
                    method: None,
                    created_unix_ms: state::now_ms(),
                };
                self.put_snapshot(&record)?;
                record
            }
        };
        super::failpoint("snapshot.create.after-intent")?;
        if let Err(e) = pool.create_snapshot(&volume, &mut record) {
            if pool.delete_snapshot(&record).is_ok() {
                let _ = self.remove_snapshot_record(&record);
            }
            return Err(e.into());
        }
        super::failpoint("snapshot.create.before-ready")?;
        record.phase = Phase::Ready;
        self.put_snapshot(&record)?;
        tracing::info!(snapshot.id = %record.id, volume.id = %source, bytes = record.size, method = ?record.method, "snapshot created");
        Ok(record)
    }

    /// Deletes a snapshot; unknown IDs are already gone.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.sync_for_id(Kind::Snapshot, id)?;
        // Also exclusive on what restores from it read: never deleted under a restore.
        let _guard = self.lock(&[id.to_string(), crate::locks::reading(id)])?;
        let Some(mut record) = self.store.snapshot(id) else {
            return Ok(());
        };
        let pool = Arc::clone(self.pool(&record.pool)?);
        pool.check_writable()?;
        record.phase = Phase::Deleting;
        self.put_snapshot(&record)?;
        super::failpoint("snapshot.delete.after-intent")?;
        pool.delete_snapshot(&record)?;
        super::failpoint("snapshot.delete.before-forget")?;
        self.remove_snapshot_record(&record)?;
        tracing::info!(snapshot.id = %id, "snapshot deleted");
        Ok(())
    }

    /// Snapshots filtered by ID or source volume, a page at a time.
    pub fn list_snapshots(
        &self,
        max_entries: usize,
        token: &str,
        snapshot_id: &str,
        source: &str,
    ) -> Result<Page<SnapshotRecord>> {
        self.ensure_synced(None)?;
        let after = if token.is_empty() {
            None
        } else if ids::parse(Kind::Snapshot, token).is_some() {
            Some(token)
        } else {
            return Err(Error::Aborted(format!("starting_token {token:?} was not issued by this driver")));
        };
        let limit = if max_entries == 0 { DEFAULT_PAGE } else { max_entries.min(super::MAX_PAGE) };
        let (items, more) = self.store.snapshots_page(after, limit, |s| {
            s.phase == Phase::Ready
                && (snapshot_id.is_empty() || s.id == snapshot_id)
                && (source.is_empty() || s.source_volume == source)
        });
        let next_token = if more { items.last().map(|s| s.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Page { items, next_token })
    }

    /// A snapshot by ID.
    pub fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord> {
        self.sync_for_id(Kind::Snapshot, id)?;
        self.store
            .snapshot(id)
            .filter(|s| s.phase == Phase::Ready)
            .ok_or_else(|| Error::NotFound(format!("snapshot {id} does not exist on node {}", self.node_id)))
    }
}
