//! Pack files: many chunks in one file, so a store holds a few hundred files per GiB
//! instead of one per chunk (a file costs an NFS server a CREATE, a COMMIT and a RENAME,
//! about 0.4 ms whatever the client does; docs/performance.md).
//!
//! A pack is `packs/<name>`, its index first, its chunks after it in index order:
//!
//! ```text
//! magic "BERTHPK1" | count: u32 LE | count x (hash: 32 bytes, len: u32 LE) | SHA-256 of all before
//! chunk data, concatenated
//! ```
//!
//! Its name is the index's SHA-256 (the last field of the index): the index names every
//! chunk by its hash, so two packs with one name hold the same bytes, and a pack written
//! twice (a retry after a crash) replaces itself with itself. A reader learns what a pack
//! holds from its first [`INDEX_PROBE`] bytes (or the whole index when it is longer), and
//! checks every chunk it reads against its hash as ever: a damaged index is refused as a
//! whole, damaged data is a corrupted chunk.

use super::Hash;

const MAGIC: &[u8; 8] = b"BERTHPK1";
/// Bytes of one index entry: the chunk's hash and length.
const ENTRY: usize = 36;
/// A pack is sealed once its chunks hold this many bytes...
pub const PACK_BYTES: usize = 8 << 20;
/// ...or it has this many chunks (an index of at most 36 KiB; 8 MiB of chunks of the
/// 8 KiB average are about 1,000).
pub const PACK_CHUNKS: usize = 1024;
/// Bytes a reader fetches first: the whole index of any pack of [`PACK_CHUNKS`] chunks,
/// so listing a store reads about 0.4% of what it holds.
pub const INDEX_PROBE: u32 = (8 + 4 + PACK_CHUNKS * ENTRY + 32) as u32;
/// The largest index a reader accepts (a pack of other writers may hold more chunks).
const MAX_CHUNKS: usize = 1 << 20;

/// Where a chunk is in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub hash: Hash,
    pub offset: u64,
    pub len: u32,
}

/// A pack's index, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub name: Hash,
    pub entries: Vec<Entry>,
}

impl Index {
    /// The bytes of chunk data the pack holds.
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// What a reader makes of a pack's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Index(Index),
    /// The index is longer than the bytes given: read this many.
    NeedMore(usize),
}

/// Why a pack's index was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a pack (no BERTHPK1 magic)")]
    NotAPack,
    #[error("its index claims {0} chunks, more than a pack may hold")]
    TooMany(usize),
    #[error("its index does not match its checksum")]
    Checksum,
    #[error("its index names {actual}, not the pack's name")]
    Misnamed { actual: Hash },
}

/// Chunks gathered into the next pack.
#[derive(Default)]
pub struct Builder {
    entries: Vec<(Hash, u32)>,
    data: Vec<u8>,
}

impl Builder {
    pub fn push(&mut self, hash: Hash, data: &[u8]) {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.entries.push((hash, len));
        self.data.extend_from_slice(data);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the pack is as large as a pack gets.
    pub fn full(&self) -> bool {
        self.data.len() >= PACK_BYTES || self.entries.len() >= PACK_CHUNKS
    }

    /// The pack's name, bytes and index; the builder is empty again.
    pub fn seal(&mut self) -> Sealed {
        let entries = std::mem::take(&mut self.entries);
        let data = std::mem::take(&mut self.data);
        let mut bytes = Vec::with_capacity(8 + 4 + entries.len() * ENTRY + 32 + data.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (hash, len) in &entries {
            bytes.extend_from_slice(&hash.0);
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        let name = Hash::of(&bytes);
        bytes.extend_from_slice(&name.0);
        let mut offset = bytes.len() as u64;
        bytes.extend_from_slice(&data);
        let entries = entries
            .into_iter()
            .map(|(hash, len)| {
                let e = Entry { hash, offset, len };
                offset += u64::from(len);
                e
            })
            .collect();
        Sealed { index: Index { name, entries }, bytes }
    }
}

/// A pack ready to be written under its name.
pub struct Sealed {
    pub index: Index,
    pub bytes: Vec<u8>,
}

/// Reads the index at the start of pack `name` from `head`, its first bytes.
pub fn parse(name: &Hash, head: &[u8]) -> Result<Parsed, Problem> {
    if head.len() < 12 {
        return if MAGIC.starts_with(head) { Ok(Parsed::NeedMore(12)) } else { Err(Problem::NotAPack) };
    }
    if &head[..8] != MAGIC {
        return Err(Problem::NotAPack);
    }
    let count = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if count > MAX_CHUNKS {
        return Err(Problem::TooMany(count));
    }
    let body = 12 + count * ENTRY;
    let header = body + 32;
    if head.len() < header {
        return Ok(Parsed::NeedMore(header));
    }
    let actual = Hash::of(&head[..body]);
    if head[body..header] != actual.0 {
        return Err(Problem::Checksum);
    }
    if actual != *name {
        return Err(Problem::Misnamed { actual });
    }
    let mut offset = header as u64;
    let entries = head[12..body]
        .chunks_exact(ENTRY)
        .map(|e| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&e[..32]);
            let len = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
            let entry = Entry { hash: Hash(hash), offset, len };
            offset += u64::from(len);
            entry
        })
        .collect();
    Ok(Parsed::Index(Index { name: *name, entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(n: usize) -> Sealed {
        let mut b = Builder::default();
        for i in 0..n {
            let data = vec![i as u8; 100 + i];
            b.push(Hash::of(&data), &data);
        }
        b.seal()
    }

    #[test]
    fn a_pack_reads_back_its_index_and_every_chunk_at_its_offset() {
        let p = sealed(5);
        let Ok(Parsed::Index(index)) = parse(&p.index.name, &p.bytes) else { panic!("not parsed") };
        assert_eq!(index, p.index);
        for e in &index.entries {
            let data = &p.bytes[e.offset as usize..e.offset as usize + e.len as usize];
            assert_eq!(Hash::of(data), e.hash);
        }
        assert_eq!(index.data_bytes(), (100..105).sum::<u64>());
    }

    #[test]
    fn a_short_head_asks_for_the_whole_index() {
        let p = sealed(40);
        let header = 12 + 40 * ENTRY + 32;
        assert_eq!(parse(&p.index.name, &p.bytes[..5]), Ok(Parsed::NeedMore(12)));
        assert_eq!(parse(&p.index.name, &p.bytes[..100]), Ok(Parsed::NeedMore(header)));
        assert!(matches!(parse(&p.index.name, &p.bytes[..header]), Ok(Parsed::Index(_))));
        assert!(INDEX_PROBE as usize >= 12 + PACK_CHUNKS * ENTRY + 32);
    }

    #[test]
    fn a_damaged_or_foreign_index_is_refused() {
        let p = sealed(3);
        let mut bad = p.bytes.clone();
        bad[20] ^= 1;
        assert_eq!(parse(&p.index.name, &bad), Err(Problem::Checksum));
        assert_eq!(parse(&p.index.name, b"something else entirely"), Err(Problem::NotAPack));
        let other = sealed(2);
        assert!(matches!(parse(&p.index.name, &other.bytes), Err(Problem::Misnamed { .. })));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&p.index.name, &huge), Err(Problem::TooMany(_))));
    }

    #[test]
    fn an_empty_builder_seals_an_empty_pack_and_a_full_one_says_so() {
        let mut b = Builder::default();
        assert!(b.is_empty() && !b.full());
        for i in 0..PACK_CHUNKS as u32 {
            b.push(Hash::of(&i.to_le_bytes()), &i.to_le_bytes());
        }
        assert!(b.full());
        let p = b.seal();
        assert!(b.is_empty());
        assert!(p.bytes.len() <= INDEX_PROBE as usize + PACK_CHUNKS * 4);
    }
}
