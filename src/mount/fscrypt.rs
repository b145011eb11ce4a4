//! fscrypt through its ioctls (`linux/fscrypt.h`): add a master key to a filesystem,
//! give an empty directory a v2 policy naming that key, read a directory's policy, and
//! remove the key again. Every call takes an open descriptor: the key calls act on the
//! filesystem it belongs to, the policy calls on the directory itself.
//!
//! A v2 key belongs to the filesystem, not to a directory, and the kernel counts the
//! users who added it, not the times: berth (root) adding it for two volumes and removing
//! it for one locks both. So berth itself decides when a key may go (see
//! `engine::encryption`), and calls [`remove_key`] only for the last volume using it.

use std::io;
use std::mem::size_of;
use std::os::fd::BorrowedFd;

use super::ioctl::{Req, ioctl};
use crate::crypt::{KEY_BYTES, KEY_ID_BYTES, Key, KeyId};

const POLICY_V2: u8 = 2;
const MODE_AES_256_XTS: u8 = 1;
const MODE_AES_256_CTS: u8 = 4;
/// Names padded to 32 bytes: hides their lengths best (what the fscrypt tool uses).
const FLAGS_PAD_32: u8 = 0x03;
const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
/// Files of the key's directories were still open when it was removed: their contents
/// stay readable until they are closed.
pub const REMOVAL_FILES_BUSY: u32 = 0x1;
/// Only this user's claim on the key went; other users that added it keep it present.
pub const REMOVAL_OTHER_USERS: u32 = 0x2;

/// `struct fscrypt_policy_v1`: only its size matters, in SET_ENCRYPTION_POLICY's number.
const POLICY_V1_SIZE: usize = 12;

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PolicyV2 {
    version: u8,
    contents_encryption_mode: u8,
    filenames_encryption_mode: u8,
    flags: u8,
    log2_data_unit_size: u8,
    reserved: [u8; 3],
    master_key_identifier: [u8; KEY_ID_BYTES],
}
const _: () = assert!(size_of::<PolicyV2>() == 24);

/// `struct fscrypt_get_policy_ex_arg`, with room for a v2 policy.
#[repr(C)]
#[derive(Default)]
struct GetPolicyExArg {
    policy_size: u64,
    policy: PolicyV2,
}
const _: () = assert!(size_of::<GetPolicyExArg>() == 32);

/// `struct fscrypt_key_specifier`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct KeySpecifier {
    kind: u32,
    reserved: u32,
    /// The union: an identifier in its first 16 bytes.
    u: [u8; 32],
}
const _: () = assert!(size_of::<KeySpecifier>() == 40);

/// `struct fscrypt_add_key_arg` followed by the raw key (its flexible array member).
#[repr(C)]
struct AddKeyArg {
    key_spec: KeySpecifier,
    raw_size: u32,
    key_id: u32,
    reserved: [u32; 8],
    raw: [u8; KEY_BYTES],
}
const _: () = assert!(size_of::<AddKeyArg>() == 80 + KEY_BYTES);

impl Drop for AddKeyArg {
    fn drop(&mut self) {
        for b in &mut self.raw {
            // SAFETY: `b` is a valid, aligned, exclusive reference into this value.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// `struct fscrypt_remove_key_arg`.
#[repr(C)]
#[derive(Default)]
struct RemoveKeyArg {
    key_spec: KeySpecifier,
    removal_status_flags: u32,
    reserved: [u32; 5],
}
const _: () = assert!(size_of::<RemoveKeyArg>() == 64);

const MAGIC: u8 = b'f';
const FS_IOC_SET_ENCRYPTION_POLICY: Req = nix::request_code_read!(MAGIC, 19, POLICY_V1_SIZE) as Req;
const FS_IOC_GET_ENCRYPTION_POLICY_EX: Req = nix::request_code_readwrite!(MAGIC, 22, 9) as Req;
const FS_IOC_ADD_ENCRYPTION_KEY: Req = nix::request_code_readwrite!(MAGIC, 23, 80) as Req;
const FS_IOC_REMOVE_ENCRYPTION_KEY: Req = nix::request_code_readwrite!(MAGIC, 24, size_of::<RemoveKeyArg>()) as Req;

fn identifier_spec(id: &KeyId) -> KeySpecifier {
    let mut spec = KeySpecifier { kind: KEY_SPEC_TYPE_IDENTIFIER, ..KeySpecifier::default() };
    spec.u[..KEY_ID_BYTES].copy_from_slice(&id.0);
    spec
}

/// Adds `key` to the filesystem holding `fd`, and returns the identifier the kernel
/// derived from it. Adding a key that is there already is a no-op.
pub fn add_key(fd: BorrowedFd<'_>, key: &Key) -> io::Result<KeyId> {
    let mut arg = AddKeyArg {
        key_spec: KeySpecifier { kind: KEY_SPEC_TYPE_IDENTIFIER, ..KeySpecifier::default() },
        raw_size: KEY_BYTES as u32,
        key_id: 0,
        reserved: [0; 8],
        raw: *key.bytes(),
    };
    // SAFETY: `arg` is a live `fscrypt_add_key_arg` with `raw_size` bytes of key after it.
    unsafe { ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, &raw mut arg) }?;
    let mut id = [0u8; KEY_ID_BYTES];
    id.copy_from_slice(&arg.key_spec.u[..KEY_ID_BYTES]);
    Ok(KeyId(id))
}

/// Removes berth's claim on key `id` from the filesystem holding `fd`; returns the
/// kernel's status flags ([`REMOVAL_FILES_BUSY`], [`REMOVAL_OTHER_USERS`]).
/// A key that is not there answers ENOKEY.
pub fn remove_key(fd: BorrowedFd<'_>, id: &KeyId) -> io::Result<u32> {
    let mut arg = RemoveKeyArg { key_spec: identifier_spec(id), ..RemoveKeyArg::default() };
    // SAFETY: `arg` is a live, writable `fscrypt_remove_key_arg`.
    unsafe { ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, &raw mut arg) }?;
    Ok(arg.removal_status_flags)
}

/// Gives the empty directory `dir` a v2 policy under key `id` (which must have been
/// added): everything made in it from now on is encrypted.
pub fn set_policy(dir: BorrowedFd<'_>, id: &KeyId) -> io::Result<()> {
    let policy = PolicyV2 {
        version: POLICY_V2,
        contents_encryption_mode: MODE_AES_256_XTS,
        filenames_encryption_mode: MODE_AES_256_CTS,
        flags: FLAGS_PAD_32,
        master_key_identifier: id.0,
        ..PolicyV2::default()
    };
    // SAFETY: `policy` is a live `fscrypt_policy_v2`; the kernel reads its version first.
    unsafe { ioctl(dir, FS_IOC_SET_ENCRYPTION_POLICY, &raw const policy) }.map(drop)
}

/// The key identifier of `dir`'s policy: `None` for a directory that is not encrypted.
/// A filesystem that cannot encrypt answers EOPNOTSUPP (ext4 without the `encrypt`
/// feature) or ENOTTY (one without fscrypt); a v1 policy answers EINVAL.
pub fn policy_key(dir: BorrowedFd<'_>) -> io::Result<Option<KeyId>> {
    let mut arg = GetPolicyExArg { policy_size: size_of::<PolicyV2>() as u64, ..GetPolicyExArg::default() };
    // SAFETY: `arg` is a live, writable `fscrypt_get_policy_ex_arg` with room for v2.
    match unsafe { ioctl(dir, FS_IOC_GET_ENCRYPTION_POLICY_EX, &raw mut arg) } {
        Ok(_) if arg.policy.version == POLICY_V2 => Ok(Some(KeyId(arg.policy.master_key_identifier))),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the directory has a version {} encryption policy, not berth's version 2", arg.policy.version),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an error of [`policy_key`] or [`set_policy`] means the filesystem cannot
/// encrypt at all (as opposed to a failure of this one call).
#[must_use]
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY))
}

/// Where the kernel lists ext4's optional features; `encryption` is there when it was
/// built with fscrypt (CONFIG_FS_ENCRYPTION).
const EXT4_FEATURES: &str = "/sys/fs/ext4/features";

/// Whether this kernel's ext4 can encrypt; the error says why not.
pub fn ext4_support() -> io::Result<()> {
    let feature = std::path::Path::new(EXT4_FEATURES).join("encryption");
    match feature.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("this kernel's ext4 has no fscrypt ({} is missing)", feature.display()),
        )),
        Err(e) => Err(io::Error::new(e.kind(), format!("reading {}: {e}", feature.display()))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    /// An ext4 image with the `encrypt` feature, loop-mounted; unmounted when dropped.
    struct Encryptable {
        _dir: tempfile::TempDir,
        mount: PathBuf,
    }

    impl Encryptable {
        fn new(test: &str) -> Option<Encryptable> {
            super::super::testutil::runnable(test)?;
            let dir = super::super::testutil::disk_backed_tempdir("berth-fscrypt-");
            let image = dir.path().join("ext4.img");
            let mount = dir.path().join("mnt");
            std::fs::create_dir(&mount).expect("mkdir");
            std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("image");
            let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
            if !ok(Command::new("mkfs.ext4").args(["-q", "-F", "-O", "encrypt"]).arg(&image)) {
                eprintln!("SKIPPED: {test}: mkfs.ext4 -O encrypt failed or is missing");
                return None;
            }
            assert!(ok(Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&mount)), "mount");
            Some(Encryptable { _dir: dir, mount })
        }
    }

    impl Drop for Encryptable {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
    }

    fn open(path: &Path) -> std::fs::File {
        std::fs::File::open(path).expect("open directory")
    }

    #[test]
    fn a_directory_under_a_v2_policy_is_ciphertext_once_its_key_is_removed() {
        let Some(fs) = Encryptable::new("a_directory_under_a_v2_policy_is_ciphertext_once_its_key_is_removed") else {
            return;
        };
        let dir = fs.mount.join("vol");
        std::fs::create_dir(&dir).expect("mkdir");
        assert_eq!(policy_key(open(&dir).as_fd()).expect("get"), None, "not encrypted yet");
        let key = Key::from_bytes([7; KEY_BYTES]);
        let id = add_key(open(&fs.mount).as_fd(), &key).expect("add key");
        assert_eq!(crate::crypt::key_id(&key), id, "berth derives the identifier as the kernel does");
        assert_eq!(add_key(open(&fs.mount).as_fd(), &key).expect("again"), id, "the same key, the same identifier");
        let other = add_key(open(&fs.mount).as_fd(), &Key::from_bytes([8; KEY_BYTES])).expect("another key");
        assert_ne!(other, id);
        assert_eq!(crate::crypt::key_id(&Key::from_bytes([8; KEY_BYTES])), other);
        remove_key(open(&fs.mount).as_fd(), &other).expect("remove the other");

        set_policy(open(&dir).as_fd(), &id).expect("set policy");
        assert_eq!(policy_key(open(&dir).as_fd()).expect("get"), Some(id));
        std::fs::write(dir.join("plain-name.txt"), b"plaintext").expect("write");
        // Keep nothing open, or the key's files stay busy.
        let flags = remove_key(open(&fs.mount).as_fd(), &id).expect("remove");
        assert_eq!(flags & REMOVAL_FILES_BUSY, 0, "nothing was open");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert_ne!(names[0], "plain-name.txt", "names are ciphertext without the key");
        assert!(std::fs::read(dir.join(&names[0])).is_err(), "contents are unreadable without the key");
        assert_eq!(remove_key(open(&fs.mount).as_fd(), &id).expect_err("gone").raw_os_error(), Some(libc::ENOKEY));

        add_key(open(&fs.mount).as_fd(), &key).expect("add it back");
        assert_eq!(std::fs::read(dir.join("plain-name.txt")).expect("readable again"), b"plaintext");
        remove_key(open(&fs.mount).as_fd(), &id).expect("remove");

        // A filesystem without the feature cannot encrypt.
        let tmp = tempfile::tempdir().expect("tempdir");
        match policy_key(open(tmp.path()).as_fd()) {
            Err(e) => assert!(unsupported(&e), "{e}"),
            Ok(found) => panic!("{} is on a filesystem without fscrypt: {found:?}", tmp.path().display()),
        }
    }
}
