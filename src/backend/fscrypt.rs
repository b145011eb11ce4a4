//! fscrypt policies on directories: the check both hostPath volumes (their directory)
//! and fscrypt block volumes (the encrypted directory of their filesystem) make before
//! anything is written into them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use super::{Error, Result};
use crate::crypt::KeyId;
use crate::mount::Syscall;

/// Makes the open directory `dir` (at `path`, for messages) of `volume` encrypted under
/// `id` with fscrypt: already so is success; under another key, or holding plaintext, is
/// refused. `dir` may be an `O_PATH` descriptor (which takes no ioctls): the directory is
/// reopened through it, so it is the same directory, whatever its path leads to now.
pub fn ensure_policy(sys: &dyn Syscall, volume: &str, path: &Path, dir: BorrowedFd<'_>, id: &KeyId) -> Result<()> {
    let opened = std::fs::File::open(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(Error::io("open", path))?;
    let dir = opened.as_fd();
    match sys.fscrypt_policy_key(dir).map_err(Error::io("read the encryption policy of", path))? {
        Some(found) if found == *id => Ok(()),
        Some(found) => Err(Error::EncryptedOtherwise {
            volume: volume.to_string(),
            path: path.to_path_buf(),
            found,
            recorded: *id,
        }),
        None => {
            let mut entries =
                std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(Error::io("list", path))?;
            if entries.next().is_some() {
                return Err(Error::PlaintextInEncrypted { volume: volume.to_string(), path: path.to_path_buf() });
            }
            sys.fscrypt_set_policy(dir, id).map_err(Error::io("set the encryption policy of", path))
        }
    }
}
