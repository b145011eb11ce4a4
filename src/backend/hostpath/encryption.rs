//! Encrypted hostPath volumes: fscrypt v2 policies on volume and snapshot directories,
//! where the pool's filesystem can encrypt (ext4 with the `encrypt` feature, f2fs).
//!
//! A volume's directory gets its policy while it is empty: at creation when the request
//! brought the key, else at its first stage; a copy's root (clone, restore, snapshot) gets
//! it before anything is copied in, so no byte of it is ever stored in plaintext.
//! Deleting needs no key: the kernel unlinks encrypted names without it.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::HostPath;
use crate::backend::{Error, Keyring, Result};
use crate::crypt::{Key, KeyId, Scheme};
use crate::mount::{fscrypt, mountinfo, ops};
use crate::state::VolumeRecord;

/// The key a record's volume is encrypted under, once it has one.
pub(super) fn key_of(volume: &VolumeRecord) -> Option<KeyId> {
    volume.encryption.as_ref().and_then(|e| e.key_id)
}

impl HostPath {
    /// Makes the open directory `dir` (at `path`, for messages) encrypted under `id`; see
    /// [`crate::backend::fscrypt::ensure_policy`].
    pub(super) fn ensure_policy(&self, volume: &str, path: &Path, dir: BorrowedFd<'_>, id: &KeyId) -> Result<()> {
        crate::backend::fscrypt::ensure_policy(self.sys.as_ref(), volume, path, dir, id)
    }

    /// fscrypt when the pool's filesystem can encrypt, else why not.
    pub(super) fn scheme(&self) -> Result<Scheme> {
        let root = fs::File::open(&self.root).map_err(Error::io("open pool directory", &self.root))?;
        match self.sys.fscrypt_policy_key(root.as_fd()) {
            Ok(_) => Ok(Scheme::Fscrypt),
            Err(e) if fscrypt::unsupported(&e) => Err(Error::CannotEncrypt {
                pool: self.info.name.clone(),
                reason: format!(
                    "the filesystem of {} has no fscrypt ({e}); ext4 needs the encrypt feature (tune2fs -O encrypt \
                     on its device), and xfs and btrfs cannot",
                    self.root.display()
                ),
            }),
            Err(e) => Err(Error::io("read the encryption policy of", &self.root)(e)),
        }
    }
}

impl Keyring for HostPath {
    fn add_key(&self, key: &Key) -> Result<KeyId> {
        self.sys
            .fscrypt_add_key(&self.root, key)
            .map_err(Error::io("add an encryption key to the filesystem of", &self.root))
    }

    fn remove_key(&self, id: &KeyId) -> Result<bool> {
        match self.sys.fscrypt_remove_key(&self.root, id) {
            Ok(flags) => Ok(flags & fscrypt::REMOVAL_FILES_BUSY != 0),
            Err(e) if e.raw_os_error() == Some(libc::ENOKEY) => Ok(false),
            Err(e) => Err(Error::io("remove an encryption key from the filesystem of", &self.root)(e)),
        }
    }

    fn any_mounted(&self, volumes: &[std::sync::Arc<VolumeRecord>]) -> Result<bool> {
        let table = ops::table(self.sys.as_ref()).map_err(Error::io("read mount table", &self.root))?;
        Ok(volumes.iter().any(|v| !mountinfo::binds_of(&table, &self.volume_dir(&v.key)).is_empty()))
    }
}
