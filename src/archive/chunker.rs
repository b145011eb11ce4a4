//! Content-defined chunking: boundaries chosen by the bytes themselves, so an edit moves
//! only the boundaries next to it and a second copy finds every other chunk unchanged.
//!
//! A gear hash rolls over the stream (`h = (h << 1) + GEAR[byte]`, so bit `k` of `h`
//! depends on the last `k + 1` bytes) and a boundary falls where the hash's top bits are
//! all zero. Chunks are normalised the FastCDC way: no boundary in the first
//! [`Sizes::min`] bytes (they are not even hashed), a stricter mask (two more bits) until
//! [`Sizes::avg`], a looser one (two fewer) after it, and a forced cut at [`Sizes::max`].
//! That keeps most chunks near the average, which is what bounds how much a small
//! scattered write costs a second copy.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::Hash;

/// Chunk size bounds, in bytes; `avg` must be a power of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

/// The sizes copies use. A 16 KiB write scattered at random changes the chunks it
/// overlaps and often a neighbour, and 1% of a volume written that way must cost a second
/// copy at most 3% (issue 22), manifest included; smaller chunks cost less data per write
/// but a longer manifest (48 bytes per chunk) and more files. Measured on 256 MiB with
/// `berth bench --workload archive --archive-chunk-kib N`: 16 KiB average sent 3.7% for
/// scattered writes, 8 KiB 2.8%, 4 KiB 2.6% with twice the chunks; docs/performance.md
/// has the 1 GiB figures for these sizes.
pub const DEFAULT_SIZES: Sizes = Sizes { min: 2 << 10, avg: 8 << 10, max: 32 << 10 };

/// The largest chunk any manifest may name: manifests with larger ones are refused, so a
/// hostile manifest cannot make a restore allocate without bound.
pub const MAX_CHUNK: usize = 16 << 20;

/// 256 pseudo-random 64-bit values, one per byte value, from splitmix64 with a fixed
/// seed: every build and every node cuts the same bytes at the same places.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6265_7274_685f_6364; // "berth_cd"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// A mask of the top `bits` bits.
const fn top_bits(bits: u32) -> u64 {
    !0u64 << (64 - bits)
}

impl Sizes {
    /// Checks the bounds: `0 < min <= avg <= max <= MAX_CHUNK`, `avg` a power of two.
    pub fn check(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.avg || self.avg > self.max || self.max > MAX_CHUNK {
            return Err(format!("chunk sizes {self:?} must satisfy 0 < min <= avg <= max <= {MAX_CHUNK}"));
        }
        if !self.avg.is_power_of_two() || self.avg < 64 {
            return Err(format!("average chunk size {} must be a power of two of at least 64", self.avg));
        }
        Ok(())
    }

    /// Where the first chunk of `data` ends (`data.len()` at most, `max` at most).
    /// `data` shorter than `max` is taken to be the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let len = data.len().min(self.max);
        if len <= self.min {
            return len;
        }
        let bits = self.avg.trailing_zeros();
        let (strict, loose) = (top_bits(bits + 2), top_bits(bits.saturating_sub(2).max(1)));
        let mut h = 0u64;
        let middle = self.avg.min(len);
        for (i, &b) in data.iter().enumerate().take(middle).skip(self.min) {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & strict == 0 {
                return i + 1;
            }
        }
        for (i, &b) in data.iter().enumerate().take(len).skip(middle) {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & loose == 0 {
                return i + 1;
            }
        }
        len
    }
}

/// One chunk as a [`Chunker`] hands it out: its bytes (borrowed until the next call) and
/// their SHA-256.
pub struct Chunk<'a> {
    pub data: &'a [u8],
    pub hash: Hash,
}

/// Splits a stream into chunks with a buffer of `2 * max` bytes, whatever the stream's
/// length.
pub struct Chunker<R> {
    reader: R,
    sizes: Sizes,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, sizes: Sizes) -> Self {
        Chunker { reader, sizes, buf: vec![0; 2 * sizes.max], start: 0, end: 0, eof: false }
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk<'_>>> {
        Ok(self.next_cut()?.map(|data| Chunk { data, hash: Hash(Sha256::digest(data).into()) }))
    }

    /// The next chunk's bytes, not hashed (for a caller that hashes them elsewhere).
    pub fn next_cut(&mut self) -> io::Result<Option<&[u8]>> {
        if self.end - self.start < self.sizes.max && !self.eof {
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start) = (self.end - self.start, 0);
            while self.end < self.buf.len() {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.start == self.end {
            return Ok(None);
        }
        let len = self.sizes.cut(&self.buf[self.start..self.end]);
        self.start += len;
        Ok(Some(&self.buf[self.start - len..self.start]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn chunks(data: &[u8], sizes: Sizes) -> Vec<(Hash, usize)> {
        let mut c = Chunker::new(data, sizes);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().expect("chunk") {
            out.push((chunk.hash, chunk.data.len()));
        }
        out
    }

    #[test]
    fn chunks_cover_the_stream_within_bounds_and_are_deterministic() {
        let data = noise(1, 3 << 20);
        let a = chunks(&data, DEFAULT_SIZES);
        assert_eq!(a.iter().map(|c| c.1).sum::<usize>(), data.len());
        let (last, rest) = a.split_last().expect("chunks");
        assert!(rest.iter().all(|c| c.1 >= DEFAULT_SIZES.min && c.1 <= DEFAULT_SIZES.max));
        assert!(last.1 <= DEFAULT_SIZES.max);
        let mean = data.len() / a.len();
        assert!((DEFAULT_SIZES.avg / 2..DEFAULT_SIZES.avg * 2).contains(&mean), "mean chunk {mean}");
        assert_eq!(a, chunks(&data, DEFAULT_SIZES), "same bytes, same chunks");
        // Reading in odd-sized pieces changes nothing.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut c = Chunker::new(Dribble(&data), DEFAULT_SIZES);
        let mut b = Vec::new();
        while let Some(chunk) = c.next_chunk().expect("chunk") {
            b.push((chunk.hash, chunk.data.len()));
        }
        assert_eq!(a, b);
        assert!(chunks(&[], DEFAULT_SIZES).is_empty());
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = noise(2, 4 << 20);
        let mut edited = data.clone();
        edited.splice(1 << 20..1 << 20, *b"inserted bytes");
        let (a, b) = (chunks(&data, DEFAULT_SIZES), chunks(&edited, DEFAULT_SIZES));
        let old: std::collections::HashSet<_> = a.iter().map(|c| c.0).collect();
        let changed: usize = b.iter().filter(|c| !old.contains(&c.0)).map(|c| c.1).sum();
        assert!(changed <= 3 * DEFAULT_SIZES.max, "{changed} bytes changed for a 14-byte insertion");
        assert!(changed > 0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(DEFAULT_SIZES.check().is_ok());
        for bad in [
            Sizes { min: 0, avg: 1024, max: 4096 },
            Sizes { min: 2048, avg: 1024, max: 4096 },
            Sizes { min: 512, avg: 1000, max: 4096 },
            Sizes { min: 512, avg: 1024, max: MAX_CHUNK + 1 },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
