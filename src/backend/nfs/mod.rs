//! NFS pools: a subdirectory of an existing export per volume, shared by every node.
//!
//! The controller never mounts anything: it creates, copies, archives and removes the
//! subdirectories through berth's userspace NFSv3 client ([`crate::nfs`]), so it runs
//! unprivileged on any node. Each volume's record is kept on the export itself
//! ([`export`]), which is the durable truth; the controller's local store is a cache
//! rebuilt from it at start. Nodes mount `server:/export/<subdir>` with mount(2)
//! ([`node`]). docs/nfs.md explains the design.

pub mod access;
pub mod copy;
pub mod export;
pub mod node;
mod pool;

pub use pool::NfsPool;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    Capability, Capacity, Condition, Controller, Error, Node, PoolInfo, Result, Shared, Source, StageSource, Usage,
    Work,
};
use crate::config::OnDelete;
use crate::mount::mountinfo::{self, MountEntry};
use crate::mount::{MsFlags, ops};
use crate::nfs::{self, FileType, SetAttr};
use crate::safepath;
use crate::state::{AccessKind, Enforced, Phase, SnapshotMethod, SnapshotRecord, VolumeRecord};

use crate::config::mount_options::Options;
use crate::config::template;
use pool::{split_last, utc_stamp};

/// Where a volume's directory (relative to the export) is kept in its record.
pub const SUBDIR_KEY: &str = "berth.csi.io/subdir";
/// Volume context keys of NFS volumes (also the attributes of static PVs).
pub const CONTEXT_SERVER: &str = "server";
pub const CONTEXT_EXPORT: &str = "export";
pub const CONTEXT_SUBDIR: &str = "subDir";
/// Filesystem types a capability may name for an NFS volume.
pub const FS_TYPES: &[&str] = &["", "nfs", "nfs4"];
/// How often a node plugin retries registering itself while the server is unreachable.
const REGISTER_RETRY: Duration = Duration::from_secs(30);

impl Controller for NfsPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    /// Whether the server takes writes shows only when it is asked to: each call's
    /// answer says so.
    fn check_writable(&self) -> Result<()> {
        Ok(())
    }

    fn enforcement(&self) -> Result<Enforced> {
        // NFS has no per-directory quota: sizes are recorded, not enforced.
        Ok(Enforced::None)
    }

    fn capacity(&self) -> Result<Capacity> {
        let st = self.with("FSSTAT", "", |c| {
            let root = c.root.clone();
            c.fsstat(&root)
        })?;
        Ok(Capacity {
            total_bytes: st.total_bytes,
            available_bytes: st.avail_bytes,
            maximum_volume_bytes: st.avail_bytes,
        })
    }

    /// Nothing to choose ahead: a volume's storage is named by its key.
    fn reserve(&self, _volume: &mut VolumeRecord) -> Result<bool> {
        Ok(false)
    }

    fn create_volume(&self, volume: &mut VolumeRecord, source: Option<Source<'_>>, work: &Work) -> Result<()> {
        volume.enforced = Enforced::None;
        let sub = match self.sub_dir(volume) {
            Some(s) => s.to_string(),
            None => {
                self.template.expand(&volume.parameters, &volume.name).map_err(|reason| Error::BadSubDir { reason })?
            }
        };
        let id = volume.id.clone();
        let fresh = self
            .with("claim", &sub, |c| export::claim(c, &sub, &id))?
            .map_err(|holder| Error::SubdirTaken { path: self.location(&sub), holder })?;
        super::failpoint("nfs.claim", &self.location(&sub))?;
        if self.sub_dir(volume).is_none() {
            volume.parameters.insert(SUBDIR_KEY.to_string(), sub.clone());
            self.persist_volume(volume)?;
        }
        let existing = self.with("look up", &sub, |c| {
            let root = c.root.clone();
            export::walk(c, &root, &sub)
        })?;
        if let Some((_, attr)) = existing {
            if fresh {
                self.with("release claim", &sub, |c| export::release(c, &sub, &id))?;
                return Err(Error::ExistingData { path: self.location(&sub) });
            }
            if attr.ftype != FileType::Directory {
                return Err(Error::NotADirectory { path: self.location(&sub) });
            }
            // Made by an earlier attempt; copies are renamed into place only when whole.
            return Ok(());
        }
        let (parent_rel, leaf) = split_last(&sub);
        let mode = self.mode;
        super::failpoint("nfs.create.dir", &self.location(&sub))?;
        match source {
            None => self.with("create volume directory", &sub, |c| {
                let root = c.root.clone();
                let parent = export::mkdir_all(c, &root, parent_rel, 0o755)?;
                let fh = match c.mkdir(&parent, leaf.as_bytes(), mode) {
                    Ok((fh, _)) => fh,
                    Err(e) if e.is_exist() => match c.lookup(&parent, leaf.as_bytes())? {
                        Some((fh, a)) if a.ftype == FileType::Directory => fh,
                        _ => return Err(e),
                    },
                    Err(e) => return Err(e),
                };
                // The server's umask may have narrowed the mode MKDIR asked for.
                c.setattr(&fh, &SetAttr { mode: Some(mode), ..SetAttr::default() })
            })?,
            Some(src) => {
                let from_rel = self.source_dir(src)?;
                let key = volume.key.clone();
                let label = format!("populate volume {}", volume.id);
                let stats = self.dedicated("populate volume", &sub, |c| {
                    let root = c.root.clone();
                    let (from, _) = export::walk(c, &root, &from_rel)?
                        .ok_or(nfs::Error::Status { proc: "LOOKUP", status: nfs::Status::NOENT })?;
                    let tmp = export::meta_dir(c, export::TMP)?;
                    copy::remove_tree(c, &tmp, key.as_bytes())?;
                    let stats = copy::copy_tree(c, &from, &tmp, key.as_bytes(), &label, work)?;
                    // NFS3ERR_IO stands for the injected fault.
                    crate::failpoint::hit("nfs.copy.before-rename")
                        .map_err(|_| nfs::Error::Status { proc: "nfs.copy.before-rename", status: nfs::Status(5) })?;
                    let parent = export::mkdir_all(c, &root, parent_rel, 0o755)?;
                    c.rename(&tmp, key.as_bytes(), &parent, leaf.as_bytes())?;
                    Ok(stats)
                })?;
                tracing::info!(volume.id = %volume.id, bytes = stats.bytes, files = stats.files, "volume populated from source");
            }
        }
        Ok(())
    }

    fn delete_volume(&self, volume: &VolumeRecord) -> Result<()> {
        super::failpoint("nfs.delete", Path::new(&volume.key))?;
        let key = volume.key.clone();
        // A failed copy leaves its partial tree here.
        self.with("remove partial copy", &key, |c| {
            let tmp = export::meta_dir(c, export::TMP)?;
            copy::remove_tree(c, &tmp, key.as_bytes())
        })?;
        let Some(sub) = self.sub_dir(volume).map(str::to_string) else {
            return Ok(());
        };
        let id = volume.id.clone();
        let holder = self.with("read claim", &sub, |c| export::claim_holder(c, &sub))?;
        if holder.as_deref() != Some(id.as_str()) {
            // Never touch a directory this volume does not own (a refused collision).
            tracing::info!(volume.id = %id, subdir = %sub, "volume owns no directory on the export");
            return Ok(());
        }
        // A volume that never became ready is removed whatever the policy says.
        let policy = if volume.phase == Phase::Creating {
            OnDelete::Delete
        } else {
            super::mutable::on_delete(&volume.mutable).unwrap_or(self.on_delete)
        };
        let (parent_rel, leaf) = split_last(&sub);
        match policy {
            OnDelete::Retain => {
                // The claim stays too: no new volume can take over the retained data.
                tracing::info!(volume.id = %id, dir = %self.location(&sub).display(), "volume directory retained");
                return Ok(());
            }
            OnDelete::Archive => {
                let archived = format!("archived-{leaf}-{}", utc_stamp(crate::state::now_ms() / 1000));
                self.with("archive volume directory", &sub, |c| {
                    let root = c.root.clone();
                    if let Some((parent, _)) = export::walk(c, &root, parent_rel)?
                        && c.lookup(&parent, leaf.as_bytes())?.is_some()
                    {
                        c.rename(&parent, leaf.as_bytes(), &parent, archived.as_bytes())?;
                    }
                    Ok(())
                })?;
                tracing::info!(volume.id = %id, archived = %archived, "volume directory archived");
            }
            OnDelete::Delete => {
                self.with("remove volume directory", &sub, |c| {
                    let root = c.root.clone();
                    let trash = export::meta_dir(c, export::TRASH)?;
                    // Moved aside first, so the volume is gone at once however long the
                    // removal takes, and a retry finds what is left.
                    if let Some((parent, _)) = export::walk(c, &root, parent_rel)?
                        && c.lookup(&parent, leaf.as_bytes())?.is_some()
                    {
                        copy::remove_tree(c, &trash, key.as_bytes())?;
                        c.rename(&parent, leaf.as_bytes(), &trash, key.as_bytes())?;
                    }
                    Ok(())
                })?;
                self.dedicated("remove volume directory", &sub, |c| {
                    let trash = export::meta_dir(c, export::TRASH)?;
                    copy::remove_tree(c, &trash, key.as_bytes())
                })?;
            }
        }
        self.with("release claim", &sub, |c| export::release(c, &sub, &id))
    }

    fn expand_volume(&self, _volume: &VolumeRecord, _bytes: u64) -> Result<bool> {
        // No per-directory quota on NFS: the new size is recorded, not enforced.
        Ok(false)
    }

    fn create_snapshot(&self, volume: &VolumeRecord, snapshot: &mut SnapshotRecord, work: &Work) -> Result<()> {
        let sub =
            self.sub_dir(volume).ok_or_else(|| Error::NoExportDirectory { volume: volume.id.clone() })?.to_string();
        let key = snapshot.key.clone();
        let label = format!("snapshot {}", snapshot.id);
        super::failpoint("nfs.snapshot.copy", &self.location(&sub))?;
        snapshot.method = Some(SnapshotMethod::Copy);
        let done_size = snapshot.size;
        let size = self.dedicated("snapshot", &sub, |c| {
            let root = c.root.clone();
            let snaps = export::mkdir_all(c, &root, export::SNAPSHOTS, 0o700)?;
            if let Some((fh, _)) = c.lookup(&snaps, key.as_bytes())? {
                // Renamed into place only when whole: an earlier attempt finished it.
                return if done_size > 0 { Ok(done_size) } else { copy::usage(c, &fh).map(|u| u.bytes) };
            }
            let (from, _) = export::walk(c, &root, &sub)?
                .ok_or(nfs::Error::Status { proc: "LOOKUP", status: nfs::Status::NOENT })?;
            let tmp = format!(".tmp-{key}");
            copy::remove_tree(c, &snaps, tmp.as_bytes())?;
            let stats = copy::copy_tree(c, &from, &snaps, tmp.as_bytes(), &label, work)?;
            c.rename(&snaps, tmp.as_bytes(), &snaps, key.as_bytes())?;
            Ok(stats.bytes)
        })?;
        snapshot.size = size;
        Ok(())
    }

    fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let key = snapshot.key.clone();
        self.dedicated("remove snapshot", &format!("{}/{key}", export::SNAPSHOTS), |c| {
            let root = c.root.clone();
            let snaps = export::mkdir_all(c, &root, export::SNAPSHOTS, 0o700)?;
            copy::remove_tree(c, &snaps, format!(".tmp-{key}").as_bytes())?;
            copy::remove_tree(c, &snaps, key.as_bytes())
        })
    }

    fn volume_context(&self, volume: &VolumeRecord) -> BTreeMap<String, String> {
        // Node plugins hold no records: the context names the directory they mount.
        volume.parameters.get(SUBDIR_KEY).map(|dir| (CONTEXT_SUBDIR.to_string(), dir.clone())).into_iter().collect()
    }

    fn condition(&self, volume: &VolumeRecord) -> Condition {
        let Some(sub) = self.sub_dir(volume) else {
            return Condition::abnormal(format!("volume {} has no directory on the export", volume.id));
        };
        let found = self.with("look up", sub, |c| {
            let root = c.root.clone();
            export::walk(c, &root, sub)
        });
        match found {
            Ok(Some((_, a))) if a.ftype == FileType::Directory => Condition::healthy(),
            Ok(Some(_)) => Condition::abnormal(format!("{} is not a directory", self.location(sub).display())),
            Ok(None) => Condition::abnormal(format!("directory {} is missing", self.location(sub).display())),
            Err(e) => Condition::abnormal(format!("cannot check {}: {e}", self.location(sub).display())),
        }
    }

    /// What is on the export outside the records is the export owner's, not berth's to report.
    fn unaccounted(&self, _known: &HashSet<String>) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Its volumes are not encrypted at rest.
    fn check_encryption(&self, _: crate::crypt::Scheme, _: AccessKind, _: Option<&str>) -> Result<()> {
        Err(super::Error::CannotEncrypt {
            pool: self.info.name.clone(),
            reason: "nfs pools do not encrypt; hostpath pools (fscrypt) and block and device pools (luks2) do".into(),
        })
    }

    /// Nodes mount these volumes over NFS; nothing here can hold their writers still.
    fn quiesce(&self, _volume: &VolumeRecord, _table: &[MountEntry]) -> Result<super::Quiesce> {
        Ok(super::Quiesce::Cannot(format!(
            "pool {} is an NFS export that nodes mount and write to directly, and berth cannot freeze their writes",
            self.info.name
        )))
    }

    fn keyring(&self) -> Option<&dyn super::Keyring> {
        None
    }

    /// What DeleteVolume does with the directory, per volume; nothing to apply until then.
    fn mutable_keys(&self) -> &'static [&'static str] {
        &[super::mutable::ON_DELETE]
    }
}

impl Node for NfsPool {
    fn parse_mount_flags(&self, flags: &[String]) -> std::result::Result<ops::Flags, String> {
        let o = Options::parse(flags).map_err(|e| e.to_string())?;
        Ok(ops::Flags { readonly: o.readonly, extra: o.flags })
    }

    fn static_path(&self, sub_path: &str) -> Result<PathBuf> {
        template::check_path("subDir", sub_path).map_err(|reason| Error::BadSubDir { reason })?;
        Ok(PathBuf::from(sub_path))
    }

    fn stage(
        &self,
        source: StageSource<'_>,
        staging: &Path,
        capability: &Capability,
        _key: Option<&crate::crypt::Key>,
    ) -> Result<()> {
        let rel = self.rel_of(source)?;
        let mut options = self.options.clone();
        options.extend(Options::parse(&capability.mount_flags)?);
        let mut flags = options.flags;
        if options.readonly || capability.mode.read_only() {
            flags |= MsFlags::MS_RDONLY;
        }
        let device = self.device(&rel);
        let unreachable = |reason: String| Error::ServerUnreachable { op: "mount", location: device.clone(), reason };
        let addr = nfs::client::resolve(&self.server).map_err(|e| unreachable(e.to_string()))?[0];
        self.sys
            .mount(Some(Path::new(&device)), staging, Some(options.fs_type()), flags, Some(&options.data(addr)))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => Error::NotOnServer { location: device.clone() },
                Some(libc::ETIMEDOUT | libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                    unreachable(e.to_string())
                }
                Some(libc::ENODEV) => Error::NoNfsClient { location: device.clone() },
                _ => Error::Io { op: "mount", path: staging.to_path_buf(), source: e },
            })
    }

    /// Staging records nothing new: the record names the storage.
    fn note_staged(&self, _volume: &VolumeRecord) -> Result<Option<VolumeRecord>> {
        Ok(None)
    }

    fn unstage(&self, _source: StageSource<'_>) -> Result<()> {
        Ok(())
    }

    fn is_mounted_at(&self, source: StageSource<'_>, path: &Path, table: &[MountEntry]) -> Result<bool> {
        let device = self.device(&self.rel_of(source)?);
        Ok(mountinfo::at(table, path).last().is_some_and(|m| mountinfo::is_nfs(m) && m.source == device))
    }

    fn mounts(&self, source: StageSource<'_>, table: &[MountEntry]) -> Result<Vec<PathBuf>> {
        let device = self.device(&self.rel_of(source)?);
        Ok(table.iter().filter(|m| mountinfo::is_nfs(m) && m.source == device).map(|m| m.mount_point.clone()).collect())
    }

    fn node_expand(&self, _volume: &VolumeRecord, _volume_path: &Path) -> Result<()> {
        Ok(())
    }

    fn usage(&self, volume: &VolumeRecord, volume_path: &Path) -> Result<Usage> {
        self.nfs_usage(volume_path, Some(volume.capacity))
    }
}

impl Shared for NfsPool {
    fn persist_volume(&self, volume: &VolumeRecord) -> Result<()> {
        super::failpoint("nfs.record.write", Path::new(&volume.key))?;
        let bytes = Self::record_json(volume)?;
        let name = format!("{}.json", volume.key);
        self.with("write volume record", &format!("{}/{}/{name}", export::META, export::VOLUMES), |c| {
            let dir = export::meta_dir(c, export::VOLUMES)?;
            export::write_file(c, &dir, &name, &bytes)
        })
    }

    fn forget_volume(&self, volume: &VolumeRecord) -> Result<()> {
        let name = format!("{}.json", volume.key);
        self.with("remove volume record", &format!("{}/{}/{name}", export::META, export::VOLUMES), |c| {
            let dir = export::meta_dir(c, export::VOLUMES)?;
            export::remove_file(c, &dir, &name)
        })
    }

    fn persist_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let bytes = Self::record_json(snapshot)?;
        let name = format!("{}.json", snapshot.key);
        self.with("write snapshot record", &format!("{}/{}/{name}", export::META, export::SNAPSHOT_RECORDS), |c| {
            let dir = export::meta_dir(c, export::SNAPSHOT_RECORDS)?;
            export::write_file(c, &dir, &name, &bytes)
        })
    }

    fn forget_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let name = format!("{}.json", snapshot.key);
        self.with("remove snapshot record", &format!("{}/{}/{name}", export::META, export::SNAPSHOT_RECORDS), |c| {
            let dir = export::meta_dir(c, export::SNAPSHOT_RECORDS)?;
            export::remove_file(c, &dir, &name)
        })
    }

    fn stored_records(&self) -> Result<(Vec<VolumeRecord>, Vec<SnapshotRecord>)> {
        let volumes: Vec<VolumeRecord> =
            self.with("read volume records", export::META, |c| export::records(c, export::VOLUMES))?;
        let snapshots: Vec<SnapshotRecord> =
            self.with("read snapshot records", export::META, |c| export::records(c, export::SNAPSHOT_RECORDS))?;
        Ok((
            volumes.into_iter().filter(|v| v.pool == self.info.name).collect(),
            snapshots.into_iter().filter(|s| s.pool == self.info.name).collect(),
        ))
    }

    fn register_node(self: Arc<Self>, node: &str) {
        if safepath::component("node id", node).is_err() {
            tracing::error!(node.id = %node, "node ID is not a safe file name; this node cannot register with the NFS controller");
            return;
        }
        let node = node.to_string();
        std::thread::spawn(move || {
            loop {
                let stamp = crate::state::now_ms().to_string();
                match access::register(&self.endpoint, &node, stamp.as_bytes()) {
                    Ok(access::Owner::Root) => {
                        tracing::info!(pool = %self.info.name, node.id = %node, "node registered on the export");
                        return;
                    }
                    Ok(access::Owner::Squashed(uid)) => {
                        tracing::warn!(
                            pool = %self.info.name,
                            node.id = %node,
                            squashed.uid = uid,
                            "node registered on the export, but the server squashes this node's root to uid {uid} \
                             (root_squash or all_squash): containers running as root write as uid {uid} in this \
                             pool's volumes"
                        );
                        return;
                    }
                    Err(failure) => {
                        tracing::warn!(
                            pool = %self.info.name,
                            node.id = %node,
                            location = %self.location(&format!("{}/{}/{node}", export::META, export::NODES)).display(),
                            retry.seconds = REGISTER_RETRY.as_secs(),
                            "cannot register this node on the export, so ControllerPublishVolume answers NOT_FOUND \
                             for it: {failure}"
                        );
                        std::thread::sleep(REGISTER_RETRY);
                    }
                }
            }
        });
    }

    fn knows_node(&self, node: &str) -> Result<bool> {
        if safepath::component("node id", node).is_err() {
            return Ok(false);
        }
        self.with("look up node", export::NODES, |c| {
            let dir = export::meta_dir(c, export::NODES)?;
            Ok(c.lookup(&dir, node.as_bytes())?.is_some())
        })
    }

    fn unknown_node(&self, node: &str) -> String {
        let nodes = format!("{}/{}", export::META, export::NODES);
        let where_ = self.location(&format!("{nodes}/{node}"));
        let listed = self.with("list nodes", &nodes, |c| {
            let dir = export::meta_dir(c, export::NODES)?;
            Ok(c.readdirplus(&dir)?
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect::<Vec<_>>())
        });
        let how = "a node plugin registers at start by writing that file as uid 0 through NFSv3 \
                   (portmapper, MOUNT and NFS v3; no root squash for the node addresses)";
        let then = "if the node runs berth, its log line \"cannot register this node\" names the cause, and \
                    `berth doctor` in its berth-nfs container checks each requirement";
        match listed {
            Ok(names) if names.is_empty() => format!(
                "no file {}; no node has registered on this export at all, so the server most likely refuses the \
                 nodes ({how}); {then}",
                where_.display()
            ),
            Ok(names) => {
                format!("no file {} while {} other node(s) did register; {how}; {then}", where_.display(), names.len())
            }
            Err(e) => format!("no file {} ({how}); listing the registered nodes failed: {e}", where_.display()),
        }
    }

    fn context_path(&self, context: &BTreeMap<String, String>) -> Result<Option<PathBuf>> {
        let Some(sub) = context.get(CONTEXT_SUBDIR) else {
            return Ok(None);
        };
        let prefix = match (context.get(CONTEXT_SERVER), context.get(CONTEXT_EXPORT)) {
            (None, None) => String::new(),
            (Some(server), Some(exp)) => {
                let exp = safepath::absolute("export", exp)?;
                let unbracket = |s: &str| s.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
                if unbracket(server) != unbracket(&self.server) {
                    return Ok(None);
                }
                match exp.strip_prefix(&self.export) {
                    Ok(rest) => rest.to_string_lossy().into_owned(),
                    Err(_) => return Ok(None),
                }
            }
            (Some(_), None) => {
                return Err(Error::LoneNfsAttribute { given: CONTEXT_SERVER, missing: CONTEXT_EXPORT });
            }
            (None, Some(_)) => {
                return Err(Error::LoneNfsAttribute { given: CONTEXT_EXPORT, missing: CONTEXT_SERVER });
            }
        };
        template::check_path("subDir", sub).map_err(|reason| Error::BadSubDir { reason })?;
        let rel = if prefix.is_empty() { sub.clone() } else { format!("{prefix}/{sub}") };
        template::check_path("export and subDir", &rel).map_err(|reason| Error::BadSubDir { reason })?;
        Ok(Some(PathBuf::from(rel)))
    }

    fn unrecorded_usage(&self, volume_path: &Path) -> Result<Usage> {
        self.nfs_usage(volume_path, None)
    }

    fn archive(&self) -> std::result::Result<Box<dyn crate::archive::store::ChunkStore>, crate::archive::Error> {
        let place = format!("{}:{}", self.server, self.export);
        let client = nfs::Client::connect(&self.endpoint)
            .map_err(|e| crate::archive::Error::Unreachable { store: place.clone(), reason: e.to_string() })?;
        let dir = crate::archive::STORE_DIR.map(str::as_bytes);
        Ok(Box::new(crate::archive::nfsstore::NfsStore::open(client, &dir, &self.server)?))
    }
}
