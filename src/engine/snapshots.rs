//! CreateSnapshot, DeleteSnapshot, ListSnapshots and the GetSnapshot lookup.

use std::sync::Arc;

use super::listing::Page;
use super::{DEFAULT_PAGE, Engine, Error, Result, copies};
use crate::backend::Work;
use crate::ids::{self, Kind};
use crate::state::{self, Phase, SnapshotRecord};

impl Engine {
    /// Snapshots a volume, or returns the snapshot this name already made of it. A copy
    /// that outlasts [`Engine::copy_wait`] goes on in the background and the snapshot is
    /// returned not yet Ready (`ready_to_use` false); its retries return the record.
    /// `key` (from the snapshotter's secrets) reads an encrypted volume not staged here.
    /// `copy_to` (the class's `copyTo`) names a shared pool the snapshot is then copied to,
    /// in the background: the snapshot is not ready to use until the copy is checked (see
    /// [`super::archive`]).
    pub fn create_snapshot(
        &self,
        source: &str,
        name: &str,
        key: Option<&crate::crypt::Key>,
        copy_to: Option<&str>,
    ) -> Result<Arc<SnapshotRecord>> {
        self.sync_for_id(Kind::Volume, source)?;
        let _guard = self.lock(&[format!("snapshot-name:{name}"), source.to_string()])?;
        let existing = self.store.snapshot_by_name(name);
        if let Some(s) = &existing {
            if s.source_volume != source {
                return Err(Error::NameTaken {
                    kind: "snapshot",
                    name: name.to_string(),
                    holder: format!("{} of volume {}", s.id, s.source_volume),
                });
            }
            if s.copy.as_ref().map(|c| c.pool.as_str()) != copy_to {
                return Err(Error::NameTaken {
                    kind: "snapshot",
                    name: name.to_string(),
                    holder: format!(
                        "{} whose copy goes to {}, not {}",
                        s.id,
                        s.copy.as_ref().map_or("no pool", |c| c.pool.as_str()),
                        copy_to.unwrap_or("no pool")
                    ),
                });
            }
            if s.ready_to_use() {
                return Ok(Arc::clone(s));
            }
            if s.phase == Phase::Ready {
                let volume = self.ready_volume(source)?;
                return self.await_snapshot_copy(name, &volume, Arc::clone(s));
            }
            if let Some(job) = self.copies.running(&s.id) {
                return self.await_snapshot(name, &s.id, &job);
            }
        } else if let Some(failed) = self.copies.take_failure(&copies::snapshot_key(name)) {
            return Err(failed);
        }
        let volume = self.ready_volume(source)?;
        let pool = self.pool(&volume.pool)?.clone();
        pool.check_writable()?;
        // Finishing an interrupted snapshot changes the record: the copy to change.
        let mut record = if let Some(s) = existing {
            Arc::unwrap_or_clone(s)
        } else {
            let (id, key) = ids::mint(Kind::Snapshot, &volume.pool);
            let mut record = SnapshotRecord {
                id,
                name: name.to_string(),
                pool: volume.pool.clone(),
                key,
                node: self.node_id.clone(),
                source_volume: source.to_string(),
                phase: Phase::Creating,
                size: 0,
                method: None,
                encryption: volume.encryption.clone(),
                group: None,
                copy: None,
                created_unix_ms: state::now_ms(),
            };
            if let Some(target) = copy_to {
                self.check_copy_to(target, pool.as_ref(), &record)?;
                record.copy = Some(Self::copy_for(target, &record));
            }
            self.begin_snapshot(&record)?;
            record
        };
        // Pools that copy in the background (NFS) do not encrypt: no key outlives the call.
        if pool.info().background_copies {
            let id = record.id.clone();
            let job = self.start_snapshot_copy(pool, volume, record)?;
            return self.await_snapshot(name, &id, &job);
        }
        // A LUKS2 volume's snapshot copies its ciphertext and needs no key.
        let _key = match super::encryption::key_of(&volume).filter(|_| pool.keyring().is_some()) {
            Some(id) => Some(self.hold_for(&pool, &volume, id, key, crate::crypt::KeyFrom::CreateSnapshot)?),
            None => None,
        };
        self.build_snapshot(pool.as_ref(), &volume, &mut record, &Work::new())?;
        tracing::info!(snapshot.id = %record.id, volume.id = %source, bytes = record.size, method = ?record.method, "snapshot created");
        if record.copy.is_some() {
            return self.await_snapshot_copy(name, &volume, Arc::new(record));
        }
        Ok(Arc::new(record))
    }

    /// Deletes a snapshot; unknown IDs are already gone. A copy cutting the snapshot, or
    /// restoring from it, is stopped and undone first.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.sync_for_id(Kind::Snapshot, id)?;
        self.stop_copies(id)?;
        // Also exclusive on what restores from it read: never deleted under a restore.
        let _guard = self.lock(&[id.to_string(), crate::locks::reading(id)])?;
        let Some(record) = self.store.snapshot(id) else {
            // Not here: its copy on a shared pool, if one holds it (the node that took it
            // may be gone).
            if let Some(found) = self.find_copy(id)? {
                self.delete_copy(id, &found.pool, &found.manifest.name)?;
            }
            return Ok(());
        };
        let pool = self.pool(&record.pool)?.clone();
        pool.check_writable()?;
        if let Some(copy) = &record.copy {
            self.delete_copy(id, &copy.pool, &copy.manifest)?;
        }
        self.delete_snapshot_storage(pool.as_ref(), &mut Arc::unwrap_or_clone(record))?;
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
    ) -> Result<Page<Arc<SnapshotRecord>>> {
        self.ensure_synced(None)?;
        let after = if token.is_empty() {
            None
        } else if ids::parse(Kind::Snapshot, token).is_some() {
            Some(token)
        } else {
            return Err(Error::UnknownToken { token: token.to_string() });
        };
        let limit = if max_entries == 0 { DEFAULT_PAGE } else { max_entries.min(super::MAX_PAGE) };
        let (items, more) = self.store.snapshots_page(after, limit, |s| {
            self.listable(s)
                && (snapshot_id.is_empty() || s.id == snapshot_id)
                && (source.is_empty() || s.source_volume == source)
        });
        let next_token = if more { items.last().map(|s| s.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Page { items, next_token })
    }

    /// Whether a snapshot is listed: Ready, or being cut by a background copy (listed
    /// with `ready_to_use` false, as the CO polls for readiness with ListSnapshots).
    fn listable(&self, s: &SnapshotRecord) -> bool {
        s.phase == Phase::Ready || (s.phase == Phase::Creating && self.copies.running(&s.id).is_some())
    }

    /// A snapshot by ID.
    pub fn get_snapshot(&self, id: &str) -> Result<Arc<SnapshotRecord>> {
        self.sync_for_id(Kind::Snapshot, id)?;
        self.store
            .snapshot(id)
            .filter(|s| self.listable(s))
            .ok_or_else(|| Error::NoSnapshot { id: id.to_string(), node: self.node_id.clone() })
    }
}
