//! Snapshot copies that outlive the node (issue 22): a volume's content stored on a shared
//! place as content-addressed chunks plus one manifest per copy, restorable anywhere.
//!
//! # Layout
//! - [`chunker`] cuts every regular file's data ranges (and a block image's) into chunks of
//!   2 to 32 KiB at content-defined boundaries; a chunk is named by its SHA-256.
//! - [`store::ChunkStore`] is where chunks and manifests live: `chunks/ab/<hash>`,
//!   `manifests/<name>`, and the two areas of the protocol below, `pending/` and `gc/`.
//!   [`store::DirStore`] is a local (or kernel-mounted) directory; the trait asks only for
//!   what NFSv3 offers (create, write, commit, read, rename, remove, readdir), so an
//!   implementation over berth's userspace client fits it: [`nfsstore::NfsStore`].
//! - [`manifest`] describes one copy: every entry of a tree (path, kind, owner, mode,
//!   mtime, xattrs, size, data ranges, chunks) or a block image, versioned and checksummed.
//! - [`copy`] writes a copy: only chunks the store lacks travel. [`restore`] builds a tree
//!   or image from a manifest under a temporary name, checking every chunk's hash, and
//!   renames it into place when whole; [`restore::verify`] is the restore drill.
//! - [`gc`] deletes a copy: its manifest, then the chunks no manifest needs.
//!
//! # Copies and garbage collection
//! A copy may find a chunk present and not write it; a collection running at the same
//! time must not delete that chunk before the copy's manifest names it. Both sides
//! announce themselves before looking at the other (see [`lease`]):
//! 1. A copy creates its lease `pending/<id>`, then looks for collection markers in `gc/`.
//!    If there is one, it removes its lease, waits for the marker to go, and starts over.
//! 2. A collection creates its marker `gc/<id>`, then waits until `pending/` is empty.
//!
//! Each writes before it reads, so at least one sees the other: a collection never sweeps
//! while a copy that looked at the store is running. The copy's lease file becomes its
//! manifest: the copy writes the manifest into it and renames it into `manifests/`. A
//! collection takes over a lease whose content has not changed for the stale interval
//! (a crashed copy; live copies rewrite theirs as they go) by renaming it into `gc/`, so
//! of the copy's commit and the takeover exactly one rename succeeds: a copy that lost its
//! lease fails instead of committing a manifest whose chunks may be gone. Once no lease is
//! left, the collection reads every manifest (refusing to sweep if one is unreadable),
//! removes uploads abandoned by crashed copies and every pack (and loose chunk) no
//! manifest needs, and rewrites each pack of which more than a fifth is unneeded: its
//! needed chunks go to a new pack, durably, before the old pack is removed, so a needed
//! chunk is in some pack at every moment. Then it removes its marker. A crash anywhere
//! leaves at worst unneeded chunks (the next collection removes them), a chunk in two
//! packs, a stale lease or a stale marker (taken over after the stale interval). Restores
//! take no lease: a reader that finds a pack gone (rewritten since it listed) lists again.
//! Packs reach the store under a temporary name and are renamed into `packs/` only after
//! they are durable ([`store::ChunkStore::flush`]), so a pack under its name is whole, and
//! the manifest is committed only after the packs of its chunks are.
//!
//! # Limits, as built
//! - The copy's side of the protocol is fenced (its commit is a rename a takeover makes
//!   fail); the collection's is not: a collection paused longer than the stale interval
//!   between a heartbeat and a pack removal could remove a chunk a copy that took over
//!   its marker has just found present. The interval (10 minutes by default, heartbeats
//!   every quarter of it) must exceed any such pause.
//! - A copy holds its whole manifest in memory (48 bytes per chunk once encoded, about
//!   5.5 MB per GiB of data) and the set of hashes it has seen, and one directory
//!   descriptor per level of the tree ([`copy::MAX_DEPTH`] levels at most); its store
//!   holds the pack being filled (up to 8 MiB) and where every stored chunk is (about
//!   100 bytes per chunk: 12 MB per GiB stored), learned by reading every pack's index
//!   (36 KiB per 8 MiB pack) once per copy.
//! - A restore renames its result over an absent path or an empty directory; a volume
//!   root that is a mount point or a btrfs subvolume cannot be replaced that way.
//! - A store's temporary files of a process that died between writing and linking them
//!   (`.<name>.<instance>.tmp` in `manifests/`, `pending/`, `gc/`) are left behind.

pub mod chunker;
pub mod copy;
mod fsmeta;
pub mod gc;
pub mod lease;
pub mod manifest;
pub mod nfsstore;
pub mod pack;
pub mod restore;
pub mod store;

use std::fmt;

/// A chunk's name: the SHA-256 of its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Hash {
        use sha2::Digest;
        Hash(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl std::str::FromStr for Hash {
    type Err = String;
    fn from_str(s: &str) -> Result<Hash, String> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("{s:?} is not 64 lowercase hex digits"));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| format!("{s:?} is not 64 lowercase hex digits"))?;
        Ok(Hash(out))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What went wrong with a copy, restore, verification or collection. Every variant names
/// the chunk, manifest, path or lease it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk {chunk} needed by manifest {manifest:?} is missing from the store")]
    ChunkMissing { chunk: Hash, manifest: String },
    #[error("chunk {chunk} of manifest {manifest:?} is corrupted: {len} bytes that hash to {actual}")]
    ChunkCorrupt { chunk: Hash, manifest: String, actual: Hash, len: usize },
    #[error(
        "chunk {chunk} of manifest {manifest:?} is truncated or too long: {found} bytes, the manifest says {expected}"
    )]
    ChunkLength { chunk: Hash, manifest: String, expected: usize, found: usize },
    #[error("manifest {name:?}: {problem}")]
    Manifest { name: String, problem: manifest::Problem },
    #[error("manifest {name:?} does not exist in the store")]
    ManifestMissing { name: String },
    #[error("manifest {name:?} already exists in the store; a copy never replaces one")]
    ManifestExists { name: String },
    #[error("copy {copy} was stopped before it committed; nothing was committed")]
    Stopped { copy: String },
    #[error("the store {store} cannot be reached: {reason}")]
    Unreachable { store: String, reason: String },
    #[error("{what} {name:?} is not a valid name: use 1 to 200 of A-Z a-z 0-9 . _ - , not starting with '.'")]
    BadName { what: &'static str, name: String },
    #[error(
        "copy {copy}: a garbage collection took over its lease (it looked stale); nothing was committed, copy again"
    )]
    LeaseLost { copy: String },
    #[error("garbage collection {gc}: its marker was taken over by a copy (it looked stale); the sweep stopped")]
    MarkerLost { gc: String },
    #[error("{what} gave up after {waited_ms} ms waiting for {holders:?}")]
    Busy { what: &'static str, holders: Vec<String>, waited_ms: u128 },
    #[error("restore destination {path} exists and is not an empty directory (or is not absent)")]
    DestinationInUse { path: String },
    #[error("{path}: {what} cannot be copied")]
    Unsupported { path: String, what: String },
    #[error("restored {path} of manifest {manifest:?} reads back differently from chunk {chunk}")]
    ReadBack { path: String, manifest: String, chunk: Hash },
    #[error("source {path} went past {max} directory levels")]
    TooDeep { path: String, max: usize },
}

/// Where a shared pool keeps its store of snapshot copies, relative to its root: beside
/// the pool's records, out of every volume's directory.
pub const STORE_DIR: [&str; 2] = [".berth", "archive"];

/// The manifest name of the copy of snapshot `key` (the key part of its ID, unique across
/// nodes: a node that finds the manifest of an ID it has no record of restores from it).
pub fn snapshot_manifest(key: &str) -> String {
    format!("snap-{key}")
}

pub(crate) fn io_err(op: &'static str, path: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, path: path.to_string(), source }
}

/// Checks a manifest or lease name: it becomes a file name on the store.
pub fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Error::BadName { what, name: name.to_string() }) }
}

/// Writes bytes that may not be UTF-8 (file names, link targets, xattr names) as a JSON
/// string: valid UTF-8 as is, `%` as `%25`, every other byte as `%XX`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(&s.replace('%', "%25"));
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` is valid UTF-8: that is what `valid_up_to` measured.
                out.push_str(&std::str::from_utf8(good).unwrap_or_default().replace('%', "%25"));
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("%{b:02X}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

/// The inverse of [`escape`]; `None` for a `%` not followed by two hex digits.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hexd = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hexd).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_and_come_back() {
        for raw in [&b"plain"[..], b"100%", b"\xff\xfe odd \n name", "ünï".as_bytes(), b"%41", b""] {
            let e = escape(raw);
            assert_eq!(unescape(&e).as_deref(), Some(raw), "{e}");
        }
        assert_eq!(escape(b"a%b\xff"), "a%25b%FF");
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn hashes_parse_strictly() {
        let h = Hash::of(b"x");
        assert_eq!(h.to_string().parse::<Hash>(), Ok(h));
        assert!("abc".parse::<Hash>().is_err());
        assert!(h.to_string().to_uppercase().parse::<Hash>().is_err());
        assert!(check_name("manifest", "snap-1.2_x").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(201)] {
            assert!(check_name("manifest", bad).is_err(), "{bad}");
        }
    }
}
