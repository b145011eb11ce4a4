//! CreateVolume, DeleteVolume, ValidateVolumeCapabilities and expansion: requests
//! checked here, records changed through the state machine in [`super::lifecycle`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Capability, Engine, Error, FS_TYPES, Result, copies, encryption};
use crate::backend::{Backend, Pool, PoolKind, Source, Work};
use crate::crypt::{Encryption, KeyFrom, Scheme};
use crate::ids::{self, Kind};
use crate::state::{AccessKind, ContentSource, Phase, VolumeRecord};

/// StorageClass parameters berth reads; the provisioner's own keys are accepted too.
const POOL_PARAMETER: &str = "pool";
const CO_PREFIX: &str = "csi.storage.k8s.io/";
pub(super) const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";

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
    /// The key of an encrypted volume, from the provisioner's secrets.
    pub key: Option<std::sync::Arc<crate::crypt::Key>>,
    /// Mutable parameters to start with (see [`crate::backend::mutable`]).
    pub mutable: BTreeMap<String, String>,
}

/// Checks StorageClass parameters and returns the pool they name, if any.
pub fn check_parameters(parameters: &BTreeMap<String, String>) -> Result<Option<&str>> {
    for key in parameters.keys() {
        if key != POOL_PARAMETER && key != crate::crypt::PARAMETER && !key.starts_with(CO_PREFIX) {
            return Err(Error::BadRequest(format!(
                "unknown parameter {key:?}; berth accepts \"pool\", \"encryption\" and the csi.storage.k8s.io/ keys"
            )));
        }
    }
    Ok(parameters.get(POOL_PARAMETER).map(String::as_str))
}

/// Why a pool cannot serve a capability. The controller answers every reason with
/// INVALID_ARGUMENT (the request asks for what the pool never offers); the node answers
/// the first two with FAILED_PRECONDITION (the volume exists, but not for this use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unfit {
    /// A multi-node access mode on a node-local pool.
    AccessMode(String),
    /// Raw block on a pool of directories.
    RawBlock(String),
    /// A filesystem type the pool does not offer.
    Filesystem(String),
    /// Mount flags the pool refuses.
    MountFlags(String),
}

impl Unfit {
    pub(super) fn message(self) -> String {
        match self {
            Unfit::AccessMode(m) | Unfit::RawBlock(m) | Unfit::Filesystem(m) | Unfit::MountFlags(m) => m,
        }
    }
}

/// The flags a bind mount applies for `capability` on `pool`, or why the pool cannot
/// serve it.
pub(super) fn unfit(
    pool: &dyn Backend,
    capability: &Capability,
) -> std::result::Result<crate::mount::ops::Flags, Unfit> {
    let info = pool.info();
    if capability.mode.multi_node() && info.node_local {
        return Err(Unfit::AccessMode(format!(
            "access mode {} needs several nodes, but {} pool {} is local to one node",
            capability.mode, info.kind, info.name
        )));
    }
    if capability.block && !info.raw_block {
        return Err(Unfit::RawBlock(format!(
            "{} pool {} serves filesystem volumes only, not raw block",
            info.kind, info.name
        )));
    }
    if !info.fs_types.contains(&capability.fs_type.as_str()) {
        return Err(Unfit::Filesystem(format!(
            "filesystem type {:?} is not one of {}",
            capability.fs_type,
            info.fs_types.iter().filter(|t| !t.is_empty()).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    pool.parse_mount_flags(&capability.mount_flags).map_err(Unfit::MountFlags)
}

/// [`unfit`]'s reason as text, for the controller's checks.
pub(super) fn unsupported(pool: &dyn Backend, capability: &Capability) -> Option<String> {
    unfit(pool, capability).err().map(Unfit::message)
}

/// The filesystem a Filesystem-mode volume of a formatting pool gets: the capability's
/// fs_type, else the StorageClass's `csi.storage.k8s.io/fstype`, else ext4.
fn choose_fs_type(pool: &dyn Backend, req: &CreateVolume, access: AccessKind) -> Result<Option<String>> {
    let Some(default_fs) = pool.info().default_fs.filter(|_| access == AccessKind::Mount) else {
        return Ok(None);
    };
    let from_capability = req.capabilities.iter().map(|c| c.fs_type.as_str()).find(|t| !t.is_empty());
    let from_parameter = req.parameters.get(FSTYPE_PARAMETER).map(String::as_str).filter(|t| !t.is_empty());
    let chosen = from_capability.or(from_parameter).unwrap_or(default_fs);
    if chosen.is_empty() || !FS_TYPES.contains(&chosen) {
        return Err(Error::BadRequest(format!("filesystem type {chosen:?} is not one of ext4, xfs, btrfs")));
    }
    Ok(Some(chosen.to_string()))
}

fn volume_size(req: &CreateVolume, default: u64) -> Result<u64> {
    if req.limit_bytes > 0 && req.required_bytes > req.limit_bytes {
        return Err(Error::RequiredOverLimit { required: req.required_bytes, limit: req.limit_bytes });
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
        return Err(Error::TooSmall {
            what: format!("an {fs} filesystem"),
            needs: min,
            allowed: format!("limit_bytes is {limit_bytes}"),
        });
    }
    Ok(min)
}

/// The encryption of a new volume: what its StorageClass asks for, with the key its
/// source is under (a copy of encrypted content stays under that key), or the request's
/// key, or none yet (an empty volume gets its key at its first stage). `copies_blocks`:
/// the pool copies a source's blocks (block and device pools), so a plaintext source
/// cannot become an encrypted copy.
fn encryption_of_new(
    req: &CreateVolume,
    scheme: Option<Scheme>,
    source: Option<Source<'_>>,
    copies_blocks: bool,
) -> Result<Option<Encryption>> {
    let (what, from) = match source {
        Some(Source::Snapshot(s)) => (format!("snapshot {}", s.id), s.encryption.clone()),
        Some(Source::Volume(v)) => (format!("volume {}", v.id), v.encryption.clone()),
        None => (String::new(), None),
    };
    let given = req.key.as_deref();
    match (scheme, from) {
        (None, None) => Ok(None),
        (None, Some(e)) => Err(Error::BadRequest(format!(
            "source {what} is encrypted ({}); a volume made from it must be encrypted too: use a StorageClass with \
             parameter {}: {}",
            e.scheme,
            crate::crypt::PARAMETER,
            e.scheme
        ))),
        (Some(scheme), Some(e)) if e.scheme != scheme => {
            Err(Error::BadRequest(format!("source {what} is encrypted with {}, not {scheme}", e.scheme)))
        }
        (Some(scheme), Some(e)) => {
            if let Some(key) = given {
                Engine::check_key(&what, e.key_id, key)?;
            }
            Ok(Some(Encryption { scheme, key_id: e.key_id }))
        }
        (Some(scheme), None) if source.is_some() && (scheme == Scheme::Luks2 || copies_blocks) => {
            Err(Error::BadRequest(format!(
                "source {what} is not encrypted: a {scheme} block volume is a copy of its source's blocks, which \
                 would stay plaintext; copy the data into a new {scheme} volume from inside a pod instead"
            )))
        }
        (Some(scheme), None) => {
            if source.is_some() && given.is_none() {
                // Plaintext copied into an encrypted volume: encrypted as it is written,
                // under the request's key; without it the copy would stay plaintext.
                return Err(Error::KeyMissing { volume: req.name.clone(), scheme, from: KeyFrom::CreateVolume });
            }
            Ok(Some(Encryption { scheme, key_id: given.map(crate::crypt::key_id) }))
        }
    }
}

impl Engine {
    /// Creates a volume, or returns the one this name already created. Same name with an
    /// incompatible request is ALREADY_EXISTS; a missing source NOT_FOUND; no room here
    /// RESOURCE_EXHAUSTED.
    pub fn create_volume(&self, req: CreateVolume) -> Result<Arc<VolumeRecord>> {
        let pool_name = check_parameters(&req.parameters)?;
        let pool = self.select_pool(pool_name)?.clone();
        pool.check_writable()?;
        self.ensure_synced(Some(pool.name()))?;
        if req.capabilities.is_empty() {
            return Err(Error::BadRequest("volume_capabilities is required".into()));
        }
        for cap in &req.capabilities {
            if let Some(reason) = unsupported(pool.as_ref(), cap) {
                return Err(Error::BadRequest(reason));
            }
        }
        let scheme = Scheme::from_parameter(req.parameters.get(crate::crypt::PARAMETER).map(String::as_str))
            .map_err(Error::BadRequest)?;
        let size = volume_size(&req, self.config.default_volume_size.0)?;
        let access = if req.capabilities.iter().any(|c| c.block) { AccessKind::Block } else { AccessKind::Mount };
        let fs_type = choose_fs_type(pool.as_ref(), &req, access)?;
        if let Some(scheme) = scheme {
            pool.check_encryption(scheme, access, fs_type.as_deref())?;
        }
        super::modify::check(pool.as_ref(), &req.mutable)?;
        let size = fit_filesystem(size, fs_type.as_deref(), req.limit_bytes)?;
        // A shared pool's volumes are reachable from every node: any topology fits.
        if let Some(allowed) = &req.allowed_nodes
            && pool.info().node_local
            && !allowed.contains(&self.node_id)
        {
            return Err(Error::OutsideTopology {
                node: self.node_id.clone(),
                pool: pool.name().to_string(),
                allowed: allowed.join(", "),
            });
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
            let encrypted = v.encryption.as_ref().map(|e| e.scheme);
            if v.pool != pool.name()
                || !fits
                || v.source != req.source
                || v.access != access
                || v.fs_type != fs_type
                || encrypted != scheme
            {
                return Err(Error::NameTaken {
                    kind: "volume",
                    name: req.name.clone(),
                    holder: format!(
                        "{} (pool {}, {} bytes, source {:?}) which this request does not match",
                        v.id, v.pool, v.capacity, v.source
                    ),
                });
            }
            match v.phase {
                Phase::Ready => return Ok(Arc::clone(v)),
                Phase::Deleting => return Err(Error::BeingDeleted { volume: v.id.clone() }),
                Phase::Creating => {
                    if let Some(job) = self.copies.running(&v.id) {
                        return self.await_volume(&req.name, &v.id, &job);
                    }
                    tracing::info!(volume.id = %v.id, "finishing an interrupted CreateVolume");
                }
            }
        } else if let Some(failed) = self.copies.take_failure(&copies::volume_key(&req.name)) {
            return Err(failed);
        }

        // A snapshot this node has no record of: its copy on a shared pool, if any.
        if let Some(ContentSource::Snapshot(id)) = &req.source
            && self.store.snapshot(id).is_none()
        {
            return self.create_from_copy(&req, pool, existing, size, access, fs_type);
        }
        let (snapshot, source_volume) = self.resolve_source(&req, pool.as_ref(), size)?;
        let source = match (&snapshot, &source_volume) {
            (Some(s), _) => Some(Source::Snapshot(s)),
            (_, Some(v)) => Some(Source::Volume(v)),
            _ => None,
        };
        // Finishing an interrupted create changes the record: the copy to change.
        let mut record = if let Some(v) = existing {
            Arc::unwrap_or_clone(v)
        } else {
            self.check_room(pool.as_ref(), size)?;
            let mut record = self.new_volume_record(&req, pool.as_ref(), size, access, fs_type);
            // The key's identifier is recorded with the intent, before the key is used.
            let copies_blocks = matches!(pool.info().kind, PoolKind::Block | PoolKind::Device);
            record.encryption = encryption_of_new(&req, scheme, source, copies_blocks)?;
            if let Some(id) = encryption::key_of(&record).filter(|_| pool.keyring().is_some()) {
                self.check_hold(&pool, &record, id, req.key.as_deref(), KeyFrom::CreateVolume)?;
            }
            self.begin_volume(&record)?;
            record
        };
        // Pools that copy in the background (NFS) do not encrypt: no key outlives the call.
        if source.is_some() && pool.info().background_copies {
            let id = record.id.clone();
            let job = self.start_volume_copy(pool, record, (snapshot, source_volume), req.limit_bytes)?;
            return self.await_volume(&req.name, &id, &job);
        }
        // fscrypt: the copy is encrypted as it is written, so the key must be in the
        // filesystem. LUKS2: the copy is the source's ciphertext, and needs no key.
        let _key = match encryption::key_of(&record).filter(|_| pool.keyring().is_some()) {
            Some(id) => Some(self.hold_for(&pool, &record, id, req.key.as_deref(), KeyFrom::CreateVolume)?),
            None => None,
        };
        self.build_volume(pool.as_ref(), &mut record, source, req.limit_bytes, &Work::new())?;
        tracing::info!(volume.id = %record.id, volume.name = %record.name, bytes = record.capacity, enforced = record.enforced.as_str(), "volume created");
        Ok(Arc::new(record))
    }

    /// The Ready snapshot or volume a request copies from, checked against the pool and
    /// size it will be copied into; the records stay alive while the backend reads them.
    fn resolve_source(&self, req: &CreateVolume, pool: &dyn Backend, size: u64) -> Result<super::lifecycle::Sources> {
        match &req.source {
            None => Ok((None, None)),
            Some(ContentSource::Snapshot(id)) => {
                let s = self.store.snapshot(id).filter(|s| s.phase == Phase::Ready).ok_or_else(|| Error::NoSource {
                    kind: "snapshot",
                    id: id.clone(),
                    node: self.node_id.clone(),
                })?;
                if s.pool != pool.name() {
                    return Err(Error::BadRequest(format!(
                        "snapshot {id} is in pool {}; it can only be restored into that pool, not {}",
                        s.pool,
                        pool.name()
                    )));
                }
                if size < s.size {
                    return Err(Error::TooSmall {
                        what: format!("a restore of snapshot {id}"),
                        needs: s.size,
                        allowed: format!("{size} requested"),
                    });
                }
                Ok((Some(s), None))
            }
            Some(ContentSource::Volume(id)) => {
                let v = self
                    .store
                    .volume(id)
                    .filter(|v| v.phase == Phase::Ready)
                    .ok_or_else(|| Error::NoCloneSource { id: id.clone(), node: self.node_id.clone() })?;
                if v.pool != pool.name() {
                    return Err(Error::BadRequest(format!(
                        "volume {id} is in pool {}; it can only be cloned within that pool, not into {}",
                        v.pool,
                        pool.name()
                    )));
                }
                if size < v.capacity {
                    return Err(Error::TooSmall {
                        what: format!("a clone of {id}"),
                        needs: v.capacity,
                        allowed: format!("{size} requested"),
                    });
                }
                Ok((None, Some(v)))
            }
        }
    }

    /// Refuses, before any side effect, a new volume of `size` bytes that cannot succeed:
    /// the pool cannot enforce what it promises, or has no room.
    pub(super) fn check_room(&self, pool: &dyn Backend, size: u64) -> Result<()> {
        pool.enforcement()?;
        let room = pool.capacity()?;
        if size > room.available_bytes {
            return Err(Error::PoolFull {
                pool: format!("{} on node {}", pool.name(), self.node_id),
                available: room.available_bytes,
                requested: size,
            });
        }
        Ok(())
    }

    /// The intent record of a new volume: phase Creating, a fresh ID and storage key.
    pub(super) fn new_volume_record(
        &self,
        req: &CreateVolume,
        pool: &dyn Backend,
        size: u64,
        access: AccessKind,
        fs_type: Option<String>,
    ) -> VolumeRecord {
        let (id, key) = ids::mint(Kind::Volume, pool.name());
        let node = if pool.info().node_local { self.node_id.clone() } else { String::new() };
        VolumeRecord {
            access,
            source: req.source.clone(),
            fs_type,
            // Secrets never reach a record.
            parameters: req
                .parameters
                .iter()
                .filter(|(k, _)| !crate::sensitive::is_sensitive_key(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mutable: req.mutable.clone(),
            ..VolumeRecord::intent(id, key, req.name.clone(), pool.name(), node, size)
        }
    }

    /// Deletes a volume; unknown IDs are already gone. A volume still published or mounted
    /// is FAILED_PRECONDITION and left untouched. Background copies into or out of it are
    /// stopped and undone first.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.sync_for_id(Kind::Volume, id)?;
        // A volume in use is refused before any copy of it is touched; a copy filling the
        // volume, or reading it, is then stopped and undone. Without a copy the check
        // under the lock is the one that counts (one read of the mount table, not two).
        if self.copies.touches(id)
            && let Some(record) = self.store.volume(id)
        {
            self.refuse_in_use(&record)?;
            self.stop_copies(id)?;
        }
        // Also exclusive on what copies from it read: never deleted under a clone.
        let _guard = self.lock(&[id.to_string(), crate::locks::reading(id)])?;
        let Some(record) = self.store.volume(id) else {
            return Ok(());
        };
        let pool = self.refuse_in_use(&record)?;
        self.delete_volume_storage(pool.as_ref(), &mut Arc::unwrap_or_clone(record))?;
        tracing::info!(volume.id = %id, "volume deleted");
        Ok(())
    }

    /// The pool of a volume about to be deleted; FAILED_PRECONDITION while the volume is
    /// published or mounted.
    fn refuse_in_use(&self, record: &VolumeRecord) -> Result<Pool> {
        let pool = self.pool(&record.pool)?.clone();
        pool.check_writable()?;
        if !record.published.is_empty() {
            return Err(Error::StillPublished {
                volume: record.id.clone(),
                nodes: record.published.keys().cloned().collect(),
            });
        }
        // A volume still being created was never handed out, so nothing mounts it (and
        // its record may not name its storage yet).
        if record.phase == Phase::Creating {
            return Ok(pool);
        }
        let table = self.mount_table(std::path::Path::new("/"))?;
        let mounts = pool.mounts(crate::backend::StageSource::Managed(record), &table)?;
        if !mounts.is_empty() {
            return Err(Error::StillMounted { volume: record.id.clone(), mounts });
        }
        Ok(pool)
    }

    pub(super) fn ready_volume(&self, id: &str) -> Result<Arc<VolumeRecord>> {
        self.store
            .volume(id)
            .filter(|v| v.phase != Phase::Deleting)
            .ok_or_else(|| Error::NoVolume { id: id.to_string(), node: self.node_id.clone() })
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
            return Err(Error::BadRequest("volume_capabilities is required".into()));
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

    /// Raises a volume's size. Requests at or below the current size succeed unchanged.
    /// Returns the new size and whether the node must finish the expansion: true only on
    /// the central controller for a node-local volume, whose owning node applies the limit.
    pub fn controller_expand(&self, id: &str, required: u64, limit: u64) -> Result<(u64, bool)> {
        if limit > 0 && required > limit {
            return Err(Error::RequiredOverLimit { required, limit });
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
            return Err(Error::RequiredOverLimit { required, limit });
        }
        let _guard = self.lock(&[id.to_string()])?;
        let record = self.ready_volume(id)?;
        if limit > 0 && record.capacity > limit {
            return Err(Error::TooSmall {
                what: format!("volume {id}, which does not shrink,"),
                needs: record.capacity,
                allowed: format!("limit_bytes is {limit}"),
            });
        }
        if required <= record.capacity {
            return Ok((record.capacity, false));
        }
        let pool = self.pool(&record.pool)?.clone();
        pool.check_writable()?;
        let room = pool.capacity()?;
        let growth = required - record.capacity;
        if growth > room.available_bytes && !pool.info().grows_within_device {
            return Err(Error::PoolFull {
                pool: record.pool.clone(),
                available: room.available_bytes,
                requested: growth,
            });
        }
        let node_required = pool.expand_volume(&record, required)?;
        self.put_volume(&VolumeRecord { capacity: required, ..(*record).clone() })?;
        tracing::info!(volume.id = %id, bytes = required, node_expansion_required = node_required, "volume expanded");
        Ok((required, node_required))
    }
}
