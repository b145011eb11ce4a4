//! The keys of encrypted volumes in the kernel.
//!
//! fscrypt keeps a key per filesystem, not per directory, and counts who added it, not
//! how often: one removal by berth (root) takes the key from every volume under it. So
//! berth decides when a key goes. A key is in the kernel while a volume under it is
//! staged (NodeStage adds it, the last NodeUnstage removes it) or while a call holds it
//! ([`KeyHold`]: a copy of an encrypted volume, the policy of a new one). A volume's key
//! identifier is recorded before its key is first added, so a start after a crash finds
//! every key a crash may have left behind and removes those nothing staged uses
//! ([`Engine::remove_unused_keys`]).
//!
//! This is fscrypt's arrangement, for pools with a [`backend::Keyring`]. LUKS2 volumes
//! (block and device pools) have no shared keyring: a volume's key goes to its own crypt
//! layer at NodeStage, is checked against the recorded identifier exactly as here, and
//! leaves the node when the layer is closed at NodeUnstage.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::{Engine, Error, Result};
use crate::backend::{self, Pool};
use crate::crypt::{Key, KeyFrom, KeyId, key_id};
use crate::state::VolumeRecord;

/// Calls holding a key in the kernel, by pool and key.
#[derive(Debug, Default)]
pub struct KeyHolds(Mutex<HashMap<(String, KeyId), usize>>);

/// A key in the kernel for the life of this value.
pub(super) struct KeyHold<'a> {
    engine: &'a Engine,
    pool: Pool,
    id: KeyId,
}

impl Drop for KeyHold<'_> {
    fn drop(&mut self) {
        self.engine.let_go(&self.pool, &self.id);
    }
}

/// The error for a call on encrypted `volume` that brought no key and finds none.
fn missing_key(volume: &VolumeRecord, from: KeyFrom) -> Error {
    let scheme = volume.encryption.as_ref().map_or(crate::crypt::Scheme::Fscrypt, |e| e.scheme);
    Error::KeyMissing { volume: volume.id.clone(), scheme, from }
}

/// The key a record's volume (or snapshot) is encrypted under, once it has one.
pub(super) fn key_of(volume: &VolumeRecord) -> Option<KeyId> {
    volume.encryption.as_ref().and_then(|e| e.key_id)
}

impl Engine {
    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<(String, KeyId), usize>> {
        self.key_holds.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `key` against the identifier `what` is recorded under (any key fits what
    /// has none yet) and returns the key's identifier.
    pub(super) fn check_key(what: &str, recorded: Option<KeyId>, key: &Key) -> Result<KeyId> {
        let given = key_id(key);
        match recorded {
            Some(recorded) if recorded != given => Err(Error::WrongKey { what: what.to_string(), given, recorded }),
            _ => Ok(given),
        }
    }

    /// Adds `key` to `pool`'s filesystem and keeps it there until the hold is dropped.
    pub(super) fn hold_key(&self, pool: &Pool, key: &Key) -> Result<KeyHold<'_>> {
        let keys = pool.keyring().ok_or_else(|| backend::Error::CannotEncrypt {
            pool: pool.name().to_string(),
            reason: format!("{} pools keep no keys in a filesystem keyring", pool.info().kind),
        })?;
        let id = key_id(key);
        let mut holds = self.holds();
        let added = keys.add_key(key)?;
        if added != id {
            tracing::error!(pool = pool.name(), expected = %id, kernel = %added, "the kernel derived another key identifier than berth");
        }
        *holds.entry((pool.name().to_string(), id)).or_default() += 1;
        Ok(KeyHold { engine: self, pool: pool.clone(), id })
    }

    /// Holds key `id` of `volume` for a call that reads or writes its content: the key
    /// from the call's secrets (checked), or, without one, the key already in the kernel
    /// because a volume under it is staged here; else KeyMissing saying where it goes.
    pub(super) fn hold_for(
        &self,
        pool: &Pool,
        volume: &VolumeRecord,
        id: KeyId,
        key: Option<&Key>,
        from: KeyFrom,
    ) -> Result<KeyHold<'_>> {
        if let Some(key) = key {
            Self::check_key(&format!("volume {}", volume.id), Some(id), key)?;
            return self.hold_key(pool, key);
        }
        let mut holds = self.holds();
        let at = (pool.name().to_string(), id);
        if let Some(n) = holds.get_mut(&at) {
            *n += 1;
        } else if self.staged_under(pool, &id)? {
            holds.insert(at, 1);
        } else {
            return Err(missing_key(volume, from));
        }
        Ok(KeyHold { engine: self, pool: pool.clone(), id })
    }

    /// What [`Engine::hold_for`] would answer, without holding anything: checked before
    /// a new volume's intent is recorded, so a request without its key records nothing.
    pub(super) fn check_hold(
        &self,
        pool: &Pool,
        volume: &VolumeRecord,
        id: KeyId,
        key: Option<&Key>,
        from: KeyFrom,
    ) -> Result<()> {
        if let Some(key) = key {
            return Self::check_key(&format!("volume {}", volume.id), Some(id), key).map(drop);
        }
        if self.holds().contains_key(&(pool.name().to_string(), id)) || self.staged_under(pool, &id)? {
            return Ok(());
        }
        Err(missing_key(volume, from))
    }

    fn let_go(&self, pool: &Pool, id: &KeyId) {
        let mut holds = self.holds();
        let at = (pool.name().to_string(), *id);
        match holds.get_mut(&at) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                holds.remove(&at);
                self.remove_unless_staged(pool, id);
            }
        }
    }

    /// After its last unmount: removes the volume's key unless a call or another staged
    /// volume uses it.
    pub(super) fn release_key_of(&self, pool: &Pool, volume: &VolumeRecord) {
        if let Some(id) = key_of(volume) {
            let holds = self.holds();
            if !holds.contains_key(&(pool.name().to_string(), id)) {
                self.remove_unless_staged(pool, &id);
            }
        }
    }

    /// At start: removes every recorded key that no staged volume uses, such as one a
    /// crash left between adding it and mounting the volume.
    pub fn remove_unused_keys(&self) {
        let recorded: BTreeSet<(String, KeyId)> = self
            .store
            .volumes_where(|v| key_of(v).is_some())
            .iter()
            .filter_map(|v| Some((v.pool.clone(), key_of(v)?)))
            .collect();
        for (pool_name, id) in recorded {
            let Some(pool) = self.pools.get(&pool_name) else { continue };
            let holds = self.holds();
            if !holds.contains_key(&(pool_name, id)) {
                self.remove_unless_staged(pool, &id);
            }
        }
    }

    /// Removes key `id` from `pool` unless a staged volume uses it. The caller holds
    /// the holds' lock, so no call adds it meanwhile.
    fn remove_unless_staged(&self, pool: &Pool, id: &KeyId) {
        let Some(keys) = pool.keyring() else { return };
        match self.staged_under(pool, id) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(pool = pool.name(), key.id = %id, error = %e, "cannot tell whether a volume under this key is staged; the key stays");
                return;
            }
        }
        match keys.remove_key(id) {
            Ok(false) => tracing::debug!(pool = pool.name(), key.id = %id, "encryption key removed"),
            Ok(true) => {
                tracing::warn!(pool = pool.name(), key.id = %id, "encryption key removed while files under it were open: they stay readable until closed");
            }
            Err(e) => tracing::error!(pool = pool.name(), key.id = %id, error = %e, "cannot remove an encryption key"),
        }
    }

    fn staged_under(&self, pool: &Pool, id: &KeyId) -> Result<bool> {
        let Some(keyring) = pool.keyring() else { return Ok(false) };
        let under = self.store.volumes_where(|v| v.pool == pool.name() && key_of(v) == Some(*id));
        Ok(keyring.any_mounted(&under)?)
    }
}
