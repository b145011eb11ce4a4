//! The description of one copy: a header line that names the format, its version, the
//! body's length and the body's SHA-256, then the body as JSON. A manifest that is not
//! one, of an unknown version, cut short, altered, or inconsistent (a path that escapes,
//! a hard link to nothing, chunks that do not add up to the data) is refused with a
//! [`Problem`] that says which.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::chunker::MAX_CHUNK;
use super::{Error, Hash, unescape};

/// The first bytes of every manifest.
pub const MAGIC: &str = "berth-archive-manifest";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;
/// Manifests larger than this are refused before they are read whole.
pub const MAX_MANIFEST: usize = 1 << 30;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a berth archive manifest (it does not start with {MAGIC:?})")]
    NotAManifest,
    #[error("the header line is malformed: {0}")]
    BadHeader(String),
    #[error("version {found} is not one this berth reads (it reads version {VERSION})")]
    UnknownVersion { found: u32 },
    #[error("truncated: the header announces {expected} bytes of body, {found} are there")]
    Truncated { expected: usize, found: usize },
    #[error("{extra} bytes follow the announced body of {expected} bytes")]
    TrailingBytes { expected: usize, extra: usize },
    #[error("checksum mismatch: the header says {expected}, the body hashes to {actual}")]
    Checksum { expected: Hash, actual: Hash },
    #[error("the body is not a valid manifest: {0}")]
    Invalid(String),
    #[error("entry {index} ({path:?}): {why}")]
    BadEntry { index: usize, path: String, why: String },
}

/// One chunk of a data stream, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A regular file's or image's content: its size, the byte ranges that hold data (the
/// rest are holes), and the chunks of those ranges' bytes, concatenated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub size: u64,
    /// `[offset, length]` pairs, sorted, not overlapping, within `size`.
    pub ranges: Vec<[u64; 2]>,
    /// Stored packed (see [`packed`]): a manifest is sent whole with every copy, so its
    /// size per chunk counts against what a second copy moves.
    #[serde(with = "packed")]
    pub chunks: Vec<ChunkRef>,
}

/// A chunk list as one base64 string of 36-byte records (SHA-256, then the length as a
/// little-endian u32): 48 bytes per chunk in the manifest instead of about 85 as JSON
/// objects.
pub mod packed {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::{ChunkRef, Hash};

    const RECORD: usize = 36;

    pub fn serialize<S: serde::Serializer>(chunks: &[ChunkRef], s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::with_capacity(chunks.len() * RECORD);
        for c in chunks {
            raw.extend_from_slice(&c.hash.0);
            raw.extend_from_slice(&c.len.to_le_bytes());
        }
        s.serialize_str(&STANDARD.encode(raw))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ChunkRef>, D::Error> {
        use serde::de::Error;
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        let raw = STANDARD.decode(text.as_bytes()).map_err(|e| D::Error::custom(format!("chunk list: {e}")))?;
        if raw.len() % RECORD != 0 {
            return Err(D::Error::custom(format!(
                "chunk list of {} bytes is not whole {RECORD}-byte records",
                raw.len()
            )));
        }
        Ok(raw
            .chunks_exact(RECORD)
            .map(|r| {
                let (hash, len) = r.split_at(32);
                let mut h = [0u8; 32];
                h.copy_from_slice(hash);
                ChunkRef { hash: Hash(h), len: u32::from_le_bytes([len[0], len[1], len[2], len[3]]) }
            })
            .collect())
    }
}

/// What an entry of a tree is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Kind {
    Dir,
    File {
        data: Data,
    },
    /// `target` escaped as names are ([`super::escape`]).
    Symlink {
        target: String,
    },
    /// Another name of the regular file at `target`, an earlier entry's path.
    Hardlink {
        target: String,
    },
    Char {
        major: u64,
        minor: u64,
    },
    Block {
        major: u64,
        minor: u64,
    },
    Fifo,
    Socket,
}

/// One entry of a tree. The root is the first entry, with the empty path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, components joined by `/`, escaped ([`super::escape`]).
    pub path: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Permission bits (07777); not meaningful for hard links and symlinks.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Extended attributes: escaped name, hex value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(String, String)>,
}

/// What a copy holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "content", rename_all = "lowercase", deny_unknown_fields)]
pub enum Content {
    Tree { entries: Vec<Entry> },
    Image { data: Data },
}

/// One copy's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Its name in the store.
    pub name: String,
    /// Unix seconds when the copy started.
    pub created: u64,
    /// What was copied, for people.
    pub source: String,
    /// What the copy is of, for programs: the snapshot, volume, node and filesystem a
    /// restore elsewhere needs to know (see [`crate::engine`]'s snapshot copies).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    pub content: Content,
}

impl Data {
    /// Data bytes (holes excluded).
    pub fn stored(&self) -> u64 {
        self.ranges.iter().map(|r| r[1]).sum()
    }

    fn check(&self) -> Result<(), String> {
        let mut end = 0u64;
        for &[off, len] in &self.ranges {
            let stop = off.checked_add(len).ok_or("a range overflows")?;
            if len == 0 || off < end || stop > self.size {
                return Err(format!("range [{off}, {len}] is empty, overlaps or lies beyond size {}", self.size));
            }
            end = stop;
        }
        let mut total = 0u64;
        for c in &self.chunks {
            if c.len == 0 || c.len as usize > MAX_CHUNK {
                return Err(format!("chunk {} has length {}, not 1..={MAX_CHUNK}", c.hash, c.len));
            }
            total += u64::from(c.len);
        }
        if total != self.stored() {
            return Err(format!("chunks hold {total} bytes, the ranges {}", self.stored()));
        }
        Ok(())
    }
}

/// Checks a path as restore will use it: components neither empty, `.` nor `..`, no NUL.
pub fn path_bytes(path: &str) -> Result<Vec<u8>, String> {
    let raw = unescape(path).ok_or("bad % escape")?;
    if raw.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b".." || c.contains(&0) || c.len() > 255) {
        return Err("has an empty, '.', '..', NUL-holding or over-long component".into());
    }
    Ok(raw)
}

impl Manifest {
    /// Every chunk the manifest needs, with its length.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.data_streams().flat_map(|d| d.chunks.iter())
    }

    /// The image's data, or every regular file's, in manifest order.
    pub fn data_streams(&self) -> impl Iterator<Item = &Data> {
        let datas: Vec<&Data> = match &self.content {
            Content::Image { data } => vec![data],
            Content::Tree { entries } => entries
                .iter()
                .filter_map(|e| if let Kind::File { data } = &e.kind { Some(data) } else { None })
                .collect(),
        };
        datas.into_iter()
    }

    /// The bytes of the manifest as stored.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut out = format!("{MAGIC} {VERSION} {} {}\n", body.len(), Hash::of(&body)).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Parses and checks the manifest stored as `name`.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Manifest, Error> {
        Self::parse(bytes).map_err(|problem| Error::Manifest { name: name.to_string(), problem })
    }

    fn parse(bytes: &[u8]) -> Result<Manifest, Problem> {
        let rest = bytes.strip_prefix(MAGIC.as_bytes()).ok_or(Problem::NotAManifest)?;
        let rest = rest.strip_prefix(b" ").ok_or(Problem::NotAManifest)?;
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| Problem::BadHeader("no end of line".into()))?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| Problem::BadHeader("not text".into()))?;
        let body = &rest[nl + 1..];
        let mut fields = header.split(' ');
        let version = fields.next().and_then(|v| v.parse::<u32>().ok());
        let version = version.ok_or_else(|| Problem::BadHeader(format!("no version in {header:?}")))?;
        if version != VERSION {
            return Err(Problem::UnknownVersion { found: version });
        }
        let (len, sum) = match (fields.next(), fields.next(), fields.next()) {
            (Some(len), Some(sum), None) => (len, sum),
            _ => return Err(Problem::BadHeader(format!("{header:?} is not 'VERSION LENGTH SHA256'"))),
        };
        let expected: usize = len.parse().map_err(|_| Problem::BadHeader(format!("length {len:?}")))?;
        let sum: Hash = sum.parse().map_err(Problem::BadHeader)?;
        if body.len() < expected {
            return Err(Problem::Truncated { expected, found: body.len() });
        }
        if body.len() > expected {
            return Err(Problem::TrailingBytes { expected, extra: body.len() - expected });
        }
        let actual = Hash::of(body);
        if actual != sum {
            return Err(Problem::Checksum { expected: sum, actual });
        }
        let manifest: Manifest = serde_json::from_slice(body).map_err(|e| Problem::Invalid(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The consistency a restore relies on: paths stay inside, parents come first and
    /// are directories, hard links name an earlier file, data adds up.
    fn check(&self) -> Result<(), Problem> {
        let entries = match &self.content {
            Content::Image { data } => return data.check().map_err(Problem::Invalid),
            Content::Tree { entries } => entries,
        };
        let mut kinds: HashMap<Vec<u8>, &Kind> = HashMap::new();
        for (index, e) in entries.iter().enumerate() {
            let bad = |why: String| Problem::BadEntry { index, path: e.path.clone(), why };
            if index == 0 {
                if !e.path.is_empty() || e.kind != Kind::Dir {
                    return Err(bad("the first entry must be the root directory, with an empty path".into()));
                }
                kinds.insert(Vec::new(), &e.kind);
                continue;
            }
            let path = path_bytes(&e.path).map_err(|w| bad(format!("path {w}")))?;
            let parent = path.rsplitn(2, |&b| b == b'/').nth(1).unwrap_or_default().to_vec();
            if kinds.get(&parent) != Some(&&Kind::Dir) {
                return Err(bad("its parent is not an earlier directory entry".into()));
            }
            match &e.kind {
                Kind::File { data } => data.check().map_err(bad)?,
                Kind::Hardlink { target } => {
                    let t = path_bytes(target).map_err(|w| bad(format!("link target {w}")))?;
                    if !matches!(kinds.get(&t), Some(Kind::File { .. })) {
                        return Err(bad(format!("hard link to {target:?}, not an earlier regular file")));
                    }
                }
                Kind::Symlink { target } => {
                    let t = unescape(target).ok_or_else(|| bad("symlink target: bad % escape".into()))?;
                    if t.is_empty() || t.contains(&0) || t.len() > 4096 {
                        return Err(bad("symlink target is empty, holds a NUL or is over 4096 bytes".into()));
                    }
                }
                _ => {}
            }
            for (name, value) in &e.xattrs {
                if unescape(name).is_none_or(|n| n.is_empty() || n.contains(&0)) || hex::decode(value).is_err() {
                    return Err(bad(format!("xattr {name:?} has a bad name or value")));
                }
            }
            if kinds.insert(path, &e.kind).is_some() {
                return Err(bad("the path appears twice".into()));
            }
        }
        if entries.is_empty() {
            return Err(Problem::Invalid("a tree with no root entry".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o755, uid: 0, gid: 0, mtime: 1, mtime_nsec: 2, xattrs: vec![] }
    }

    fn sample() -> Manifest {
        let data = Data { size: 10, ranges: vec![[0, 4]], chunks: vec![ChunkRef { hash: Hash::of(b"abcd"), len: 4 }] };
        Manifest {
            name: "m".into(),
            created: 5,
            source: "/src".into(),
            labels: [("snapshot".to_string(), "snap:p:1".to_string())].into(),
            content: Content::Tree {
                entries: vec![
                    entry("", Kind::Dir),
                    entry("d", Kind::Dir),
                    entry("d/f", Kind::File { data }),
                    entry("d/h", Kind::Hardlink { target: "d/f".into() }),
                    entry("l", Kind::Symlink { target: "/etc/passwd".into() }),
                ],
            },
        }
    }

    fn problem(bytes: &[u8]) -> Problem {
        match Manifest::decode("m", bytes) {
            Err(Error::Manifest { name, problem }) if name == "m" => problem,
            other => panic!("expected a manifest problem, got {other:?}"),
        }
    }

    #[test]
    fn manifests_round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode("m", &m.encode()).expect("decode"), m);
        assert_eq!(m.chunks().count(), 1);
    }

    #[test]
    fn damaged_manifests_say_what_is_wrong() {
        let good = sample().encode();
        let nl = good.iter().position(|&b| b == b'\n').expect("header");
        assert_eq!(problem(b"hello"), Problem::NotAManifest);
        assert_eq!(problem(&[]), Problem::NotAManifest);
        assert!(matches!(problem(&good[..nl]), Problem::BadHeader(_)));
        let cut = &good[..good.len() - 7];
        assert_eq!(problem(cut), Problem::Truncated { expected: good.len() - nl - 1, found: good.len() - nl - 8 });
        let mut long = good.clone();
        long.extend_from_slice(b"xx");
        assert_eq!(problem(&long), Problem::TrailingBytes { expected: good.len() - nl - 1, extra: 2 });
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        assert!(matches!(problem(&flipped), Problem::Checksum { .. }));
        let v2 = String::from_utf8(good.clone()).expect("text").replacen(" 1 ", " 2 ", 1);
        assert_eq!(problem(v2.as_bytes()), Problem::UnknownVersion { found: 2 });
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        type Edit = Box<dyn Fn(&mut Vec<Entry>)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("escapes", Box::new(|e| e.push(entry("../x", Kind::Fifo)))),
            ("absolute", Box::new(|e| e.push(entry("/x", Kind::Fifo)))),
            ("dot", Box::new(|e| e.push(entry("d/./x", Kind::Fifo)))),
            ("orphan", Box::new(|e| e.push(entry("nodir/x", Kind::Fifo)))),
            ("through a symlink", Box::new(|e| e.push(entry("l/x", Kind::Fifo)))),
            ("twice", Box::new(|e| e.push(entry("d", Kind::Fifo)))),
            ("link to a dir", Box::new(|e| e.push(entry("h2", Kind::Hardlink { target: "d".into() })))),
            ("link forward", Box::new(|e| e.insert(2, entry("h0", Kind::Hardlink { target: "d/f".into() })))),
            ("root not first", Box::new(|e| e.swap(0, 1))),
            (
                "chunks short",
                Box::new(|e| {
                    if let Kind::File { data } = &mut e[2].kind {
                        data.ranges[0][1] = 5;
                    }
                }),
            ),
            (
                "range past size",
                Box::new(|e| {
                    if let Kind::File { data } = &mut e[2].kind {
                        data.ranges[0][0] = 8;
                    }
                }),
            ),
        ];
        for (what, edit) in cases {
            let mut m = sample();
            if let Content::Tree { entries } = &mut m.content {
                edit(entries);
            }
            assert!(
                matches!(problem(&m.encode()), Problem::BadEntry { .. } | Problem::Invalid(_)),
                "{what} was accepted"
            );
        }
    }
}
