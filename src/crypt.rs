//! Encryption at rest: which schemes a StorageClass may ask for, and the keys that come in
//! a request's secrets.
//!
//! A key lives in memory only for the call that uses it: [`Key`] is never printed, never
//! serialised, and zeroed when dropped. What berth records and shows is the key's
//! [`KeyId`], which the kernel derives from the key one way (fscrypt's HKDF-SHA512
//! identifier): it tells a wrong key from the right one without revealing either.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The StorageClass parameter that asks for encryption.
pub const PARAMETER: &str = "encryption";

/// The secrets entry holding a volume's key: 64 bytes as 128 hexadecimal digits.
pub const SECRET_KEY: &str = "encryptionKey";

/// Bytes in a key: fscrypt's AES-256-XTS needs a 512-bit master key, and LUKS2 takes the
/// same 64 bytes as its keyslot passphrase.
pub const KEY_BYTES: usize = 64;

/// Bytes in a key identifier.
pub const KEY_ID_BYTES: usize = 16;

/// How a volume is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// The filesystem encrypts file contents and names (fscrypt v2 policy, AES-256-XTS
    /// contents and AES-256-CTS names) under the volume's directory.
    Fscrypt,
    /// The whole block device is a LUKS2 container (dm-crypt, AES-256-XTS), opened as a
    /// device-mapper layer on the block-device stack: everything the filesystem writes,
    /// metadata and free space included, is ciphertext on the image or disk.
    Luks2,
}

impl Scheme {
    /// The parameter's value for this scheme.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Fscrypt => "fscrypt",
            Scheme::Luks2 => "luks2",
        }
    }

    /// Reads the `encryption` parameter: `None` when absent or `none`.
    ///
    /// # Errors
    /// A value that names no scheme, with the values that do.
    pub fn from_parameter(value: Option<&str>) -> Result<Option<Scheme>, String> {
        match value {
            None | Some("none") => Ok(None),
            Some("fscrypt") => Ok(Some(Scheme::Fscrypt)),
            Some("luks2") => Ok(Some(Scheme::Luks2)),
            Some(other) => {
                Err(format!("parameter {PARAMETER}: {other:?} is not a scheme berth offers (fscrypt, luks2, none)"))
            }
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the key of each kind of call comes from, for the message when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFrom {
    NodeStage,
    CreateVolume,
    CreateSnapshot,
}

impl KeyFrom {
    /// The call.
    #[must_use]
    pub fn call(self) -> &'static str {
        match self {
            KeyFrom::NodeStage => "NodeStageVolume",
            KeyFrom::CreateVolume => "CreateVolume",
            KeyFrom::CreateSnapshot => "CreateSnapshot",
        }
    }

    /// How a user gets the key into that call's secrets.
    #[must_use]
    pub fn how(self) -> &'static str {
        match self {
            KeyFrom::NodeStage => {
                "name the Secret in the StorageClass with csi.storage.k8s.io/node-stage-secret-name and -namespace"
            }
            KeyFrom::CreateVolume => {
                "name the Secret in the StorageClass with csi.storage.k8s.io/provisioner-secret-name and -namespace"
            }
            KeyFrom::CreateSnapshot => {
                "name the Secret in the VolumeSnapshotClass with csi.storage.k8s.io/snapshotter-secret-name and \
                 -namespace, or snapshot the volume while it is staged on its node"
            }
        }
    }
}

/// A volume's encryption, as its record keeps it: the scheme, and the identifier of its
/// key once a key was given (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: Scheme,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
}

/// The identifier of a key: public, and the same for the same key on every filesystem.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut id = [0u8; KEY_ID_BYTES];
        hex::decode_to_slice(&text, &mut id).map_err(serde::de::Error::custom)?;
        Ok(KeyId(id))
    }
}

/// Key material. Not `Clone`, not `Debug`-printable, zeroed on drop.
pub struct Key(Box<[u8; KEY_BYTES]>);

impl Key {
    /// The raw bytes, for the one ioctl that hands them to the kernel.
    #[must_use]
    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// A key from raw bytes (tests and the recording fake).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(Box::new(bytes))
    }

    /// The key in a request's secrets: `Ok(None)` when the secrets hold none.
    ///
    /// # Errors
    /// A value that is not 128 hexadecimal digits. The message says what is wrong with
    /// its shape and never quotes it.
    pub fn from_secrets(secrets: &HashMap<String, String>) -> Result<Option<Key>, String> {
        let Some(text) = secrets.get(SECRET_KEY) else {
            return Ok(None);
        };
        let text = text.trim();
        let mut key = Key(Box::new([0u8; KEY_BYTES]));
        if text.len() != 2 * KEY_BYTES {
            return Err(format!(
                "secret {SECRET_KEY} must be {KEY_BYTES} bytes as {} hexadecimal digits (e.g. `openssl rand -hex \
                 {KEY_BYTES}`); it has {} characters",
                2 * KEY_BYTES,
                text.len()
            ));
        }
        hex::decode_to_slice(text, &mut key.0[..]).map_err(|_| {
            format!("secret {SECRET_KEY} must be {KEY_BYTES} bytes as hexadecimal digits; it holds other characters")
        })?;
        Ok(Some(key))
    }
}

/// HMAC-SHA512 (RFC 2104) of `message` under `key` (at most one block long).
fn hmac_sha512(key: &[u8], message: &[&[u8]]) -> [u8; 64] {
    use sha2::{Digest, Sha512};
    const BLOCK: usize = 128;
    debug_assert!(key.len() <= BLOCK);
    let mut padded = [0u8; BLOCK];
    padded[..key.len()].copy_from_slice(key);
    let mut inner = Sha512::new();
    inner.update(padded.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha512::new();
    outer.update(padded.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    for b in &mut padded {
        // SAFETY: `b` is a valid, aligned, exclusive reference into this array.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    outer.finalize().into()
}

/// The identifier fscrypt derives from a v2 master key, computed here as the kernel does
/// (HKDF-SHA512 without salt, then 16 bytes expanded with the info `"fscrypt\0"`, context
/// 1): berth checks a key against a volume's recorded identifier before the key reaches
/// the kernel, and records the identifier before the key is added, so a crash in between
/// leaves nothing it cannot find and remove.
#[must_use]
pub fn key_id(key: &Key) -> KeyId {
    const CONTEXT_KEY_IDENTIFIER: u8 = 1;
    let mut prk = hmac_sha512(&[0u8; 64], &[key.bytes()]);
    let okm = hmac_sha512(&prk, &[b"fscrypt\0", &[CONTEXT_KEY_IDENTIFIER], &[1]]);
    for b in &mut prk {
        // SAFETY: `b` is a valid, aligned, exclusive reference into this array.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    let mut id = [0u8; KEY_ID_BYTES];
    id.copy_from_slice(&okm[..KEY_ID_BYTES]);
    KeyId(id)
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into the box.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(value: &str) -> HashMap<String, String> {
        [(SECRET_KEY.to_string(), value.to_string())].into()
    }

    #[test]
    fn keys_come_as_128_hex_digits_and_never_show() {
        let hex_key = "ab".repeat(KEY_BYTES);
        let key = Key::from_secrets(&secrets(&hex_key)).expect("valid").expect("present");
        assert_eq!(key.bytes(), &[0xab; KEY_BYTES]);
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
        assert!(Key::from_secrets(&HashMap::new()).expect("absent is fine").is_none());

        let short = Key::from_secrets(&secrets("abcd")).expect_err("short");
        assert!(short.contains("has 4 characters"), "{short}");
        let secret_like = format!("{}zz", "cd".repeat(KEY_BYTES - 1));
        let odd = Key::from_secrets(&secrets(&secret_like)).expect_err("not hex");
        assert!(!odd.contains(&secret_like) && !odd.contains("cdcd"), "never quoted: {odd}");
    }

    #[test]
    fn schemes_and_identifiers_read_back_as_written() {
        assert_eq!(Scheme::from_parameter(Some("fscrypt")), Ok(Some(Scheme::Fscrypt)));
        assert_eq!(Scheme::from_parameter(Some("luks2")), Ok(Some(Scheme::Luks2)));
        assert_eq!(Scheme::from_parameter(None), Ok(None));
        assert_eq!(Scheme::from_parameter(Some("none")), Ok(None));
        let err = Scheme::from_parameter(Some("rot13")).expect_err("unknown");
        assert!(err.contains("fscrypt, luks2, none"), "{err}");

        let e = Encryption { scheme: Scheme::Fscrypt, key_id: Some(KeyId([0x1f; KEY_ID_BYTES])) };
        let text = serde_json::to_string(&e).expect("json");
        assert_eq!(text, format!("{{\"scheme\":\"fscrypt\",\"key_id\":\"{}\"}}", "1f".repeat(KEY_ID_BYTES)));
        assert_eq!(serde_json::from_str::<Encryption>(&text).expect("parse"), e);
    }
}
