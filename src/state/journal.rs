//! The journal: every record change since the last checkpoint, one frame per change.
//!
//! A change is durable once its frame is written, and a frame costs one write to blocks
//! the file already owns: the file is preallocated with real zeros, and written with
//! `O_DIRECT | O_DSYNC`. That needs no metadata update and no journal commit of the
//! filesystem, which made it 5-20 times cheaper here than writing, syncing and renaming a
//! record file and syncing its directory (see docs/performance.md).
//!
//! A frame starts on a [`BLOCK`] boundary:
//!
//! ```text
//! magic "BJ01" | epoch u64 | seq u64 | len u32 | writer u64 | check [u8; 8] | payload | zeros
//! ```
//!
//! `epoch` names the checkpoint (the `records` file) the frame applies to, `seq` counts
//! frames from 0 within it, `writer` is drawn afresh by each process that opens the
//! journal, and `check` is the first 8 bytes of SHA-256 over the previous frame's check
//! (or the epoch, for frame 0), the header fields and the payload. A replay takes frames
//! from offset 0 while each one is whole, of the expected epoch and sequence, and chained
//! to the one before, and stops at the first that is not.
//!
//! Writes are serialised and each is durable before the next begins, so only frames of
//! the last write can be torn, and none of them was acknowledged. A torn write may still
//! leave a whole frame behind the torn one. The next process overwrites from the torn
//! frame on, and its frames carry another writer and so other checks. A leftover frame
//! therefore never chains to the new ones, even where its sequence number fits. Frames
//! left over from an older epoch never match at all.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Frames start on this boundary; it is also the alignment direct I/O needs.
pub const BLOCK: usize = 4096;
/// The journal's size. A frame takes at least one block, so it holds 2,048 changes before
/// a checkpoint must empty it.
pub const SIZE: u64 = 8 << 20;
const HEADER: usize = 40;
const MAGIC: &[u8; 4] = b"BJ01";

/// The open journal and where the next frame goes.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Opened with `O_DIRECT`; off where the filesystem refuses it (tmpfs).
    direct: bool,
    epoch: u64,
    seq: u64,
    offset: u64,
    capacity: u64,
    /// Drawn at open; part of every frame this process writes.
    writer: u64,
    /// The check of the last frame, which the next one chains to.
    last: [u8; 8],
    /// A write or a checkpoint failed midway: what is on disk may differ from what berth
    /// holds, so the next change must checkpoint before it appends.
    pub broken: bool,
    buf: Vec<u8>,
}

/// What a replay found.
pub struct Replayed {
    pub journal: Journal,
    /// The payload of every valid frame, in order.
    pub frames: Vec<Vec<u8>>,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// The bytes a frame with `payload_len` bytes of payload takes.
pub fn frame_size(payload_len: usize) -> u64 {
    round_up(HEADER + payload_len) as u64
}

/// Whether `path` holds at least one frame header (of any epoch).
pub fn has_frames(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|f| f.read_exact_at(&mut magic, 0)).is_ok() && &magic == MAGIC
}

/// Creates the journal file full of zeros, durably, replacing whatever was there.
pub fn create(path: &Path) -> io::Result<()> {
    let tmp = path.with_file_name(".journal.tmp");
    let mut file = File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SIZE / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    super::replace_durably(file, &tmp, path)
}

fn open_for_writes(path: &Path, direct: bool) -> io::Result<File> {
    let flags = if direct { libc::O_DIRECT | libc::O_DSYNC } else { libc::O_DSYNC };
    OpenOptions::new().read(true).write(true).custom_flags(flags).open(path)
}

/// The payloads of the frames of `epoch` from the start of the journal at `path`, where
/// the next frame would go, and the journal's usable size.
pub fn frames(path: &Path, epoch: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    let capacity = len - len % BLOCK;
    // Read as far as the frames go, not the whole file: a checkpointed journal is empty.
    let mut bytes = Vec::new();
    let (mut offset, mut frames, mut last) = (0usize, Vec::new(), genesis(epoch));
    loop {
        match frame_at(&bytes, offset, epoch, frames.len() as u64, &last) {
            Ok(Some((payload, next, check))) => {
                frames.push(payload.to_vec());
                (offset, last) = (next, check);
            }
            Err(needed) if bytes.len() < capacity => {
                let want = needed.max(bytes.len() * 2).max(64 << 10).min(capacity);
                let have = bytes.len();
                bytes.resize(want, 0);
                file.read_exact_at(&mut bytes[have..], have as u64)?;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(Scan { frames, offset: offset as u64, capacity: capacity as u64, last })
}

/// The frames of one epoch as found, and where they end.
pub struct Scan {
    pub frames: Vec<Vec<u8>>,
    offset: u64,
    capacity: u64,
    last: [u8; 8],
}

/// What frame 0 of `epoch` chains to.
fn genesis(epoch: u64) -> [u8; 8] {
    epoch.to_le_bytes()
}

/// Opens the journal at `path` for appending, after the frames of `epoch` it holds.
pub fn replay(path: &Path, epoch: u64) -> io::Result<Replayed> {
    let Scan { frames, offset, capacity, last } = frames(path, epoch)?;
    let (file, direct) = match open_for_writes(path, true) {
        Ok(file) => (file, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open_for_writes(path, false)?, false),
        Err(e) => return Err(e),
    };
    let journal = Journal {
        path: path.to_path_buf(),
        file,
        direct,
        epoch,
        seq: frames.len() as u64,
        offset,
        capacity,
        writer: super::unique_u64(0),
        last,
        broken: false,
        buf: Vec::new(),
    };
    Ok(Replayed { journal, frames })
}

fn check(prev: &[u8; 8], fields: &[u8], payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::new().chain_update(prev).chain_update(fields).chain_update(payload).finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// The payload of the frame at `offset`, where the next one starts and its check, if that
/// frame is whole, is frame `seq` of `epoch` and chains to `prev`; `Err` with the length
/// `bytes` must have to tell.
type Frame<'a> = (&'a [u8], usize, [u8; 8]);
fn frame_at<'a>(
    bytes: &'a [u8],
    offset: usize,
    epoch: u64,
    seq: u64,
    prev: &[u8; 8],
) -> Result<Option<Frame<'a>>, usize> {
    let header = bytes.get(offset..offset + HEADER).ok_or(offset + HEADER)?;
    if &header[..4] != MAGIC || header[4..12] != epoch.to_le_bytes() || header[12..20] != seq.to_le_bytes() {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[20..24]);
    let end = offset + HEADER + u32::from_le_bytes(len) as usize;
    let payload = bytes.get(offset + HEADER..end).ok_or(end)?;
    let sum = check(prev, &header[4..32], payload);
    Ok((header[32..40] == sum).then_some((payload, offset + round_up(end - offset), sum)))
}

impl Journal {
    /// Whether frames taking `bytes` (see [`frame_size`]) fit after the last one.
    pub fn fits(&self, bytes: u64) -> bool {
        self.offset + bytes <= self.capacity
    }

    /// Bytes in use, and the journal's size.
    pub fn usage(&self) -> (u64, u64) {
        (self.offset, self.capacity)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the file is of the size this version writes (an older or damaged one is
    /// recreated at the next checkpoint).
    pub fn sized(&self) -> bool {
        self.capacity == SIZE
    }

    /// Starts over after a checkpoint of `epoch`: later frames go from offset 0, and the
    /// old ones no longer match. With `recreate`, the file is first rewritten at [`SIZE`].
    pub fn restart(&mut self, epoch: u64, recreate: bool) -> io::Result<()> {
        if recreate {
            create(&self.path)?;
            self.file = open_for_writes(&self.path, self.direct)?;
            self.capacity = SIZE;
        }
        (self.epoch, self.seq, self.offset, self.last, self.broken) = (epoch, 0, 0, genesis(epoch), false);
        Ok(())
    }

    /// Writes one frame per payload, durably and in one write. A failure marks the
    /// journal broken.
    pub fn append(&mut self, payloads: &[&[u8]]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the journal needs a checkpoint first"));
        }
        let size: u64 = payloads.iter().map(|p| frame_size(p.len())).sum();
        if !self.fits(size) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the journal is full"));
        }
        let size = usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Direct I/O wants an aligned buffer: take the aligned window of a larger one.
        self.buf.clear();
        self.buf.resize(size + BLOCK, 0);
        let start = self.buf.as_ptr().align_offset(BLOCK);
        let (mut at, mut last) = (start, self.last);
        for (seq, payload) in (self.seq..).zip(payloads) {
            let len = u32::try_from(payload.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let frame = &mut self.buf[at..at + HEADER + payload.len()];
            frame[..4].copy_from_slice(MAGIC);
            frame[4..12].copy_from_slice(&self.epoch.to_le_bytes());
            frame[12..20].copy_from_slice(&seq.to_le_bytes());
            frame[20..24].copy_from_slice(&len.to_le_bytes());
            frame[24..32].copy_from_slice(&self.writer.to_le_bytes());
            last = check(&last, &frame[4..32], payload);
            frame[32..40].copy_from_slice(&last);
            frame[HEADER..].copy_from_slice(payload);
            at += round_up(HEADER + payload.len());
        }
        // Broken until the write is known good, so not even a panic leaves it appendable.
        self.broken = true;
        self.write_frames(start, size)?;
        self.broken = false;
        self.offset += size as u64;
        self.seq += payloads.len() as u64;
        self.last = last;
        Ok(())
    }

    fn write_frames(&mut self, start: usize, size: usize) -> io::Result<()> {
        crate::failpoint::hit("state.journal.before-write")?;
        let frame = &self.buf[start..start + size];
        match self.file.write_all_at(frame, self.offset) {
            // Some filesystems open with O_DIRECT and refuse the write instead.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.file = open_for_writes(&self.path, false)?;
                self.direct = false;
                self.file.write_all_at(frame, self.offset)?;
            }
            other => other?,
        }
        crate::failpoint::hit("state.journal.after-write")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn fresh() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        create(&path).expect("create");
        (dir, path)
    }

    #[test]
    fn frames_replay_in_order_and_only_for_their_epoch() {
        let (_dir, path) = fresh();
        assert!(!has_frames(&path));
        let mut j = replay(&path, 7).expect("open").journal;
        for i in 0..3 {
            j.append(&[format!("change {i}").as_bytes()]).expect("append");
        }
        j.append(&[&vec![b'x'; 3 * BLOCK]]).expect("a frame may span blocks");
        assert_eq!(j.usage().0, 7 * BLOCK as u64, "three small frames, and four blocks for the big one");
        let again = replay(&path, 7).expect("replay");
        assert_eq!(again.frames.len(), 4);
        assert_eq!(again.frames[1], b"change 1");
        assert_eq!(again.journal.usage().0, 7 * BLOCK as u64, "appends continue after the last frame");
        assert!(replay(&path, 8).expect("replay").frames.is_empty(), "another epoch's frames never apply");

        // Past the first read, and a frame straddling its end.
        for _ in 0..20 {
            j.append(&[&[b'z'; 3000]]).expect("append");
        }
        j.append(&[&vec![b'w'; 100 << 10]]).expect("append");
        let again = replay(&path, 7).expect("replay");
        assert_eq!(again.frames.len(), 25);
        assert_eq!(again.frames[24].len(), 100 << 10);
        assert!(has_frames(&path));
    }

    #[test]
    fn a_restart_hides_the_older_frames_behind_the_new_ones() {
        let (_dir, path) = fresh();
        let mut j = replay(&path, 1).expect("open").journal;
        for i in 0..5 {
            j.append(&[format!("old {i}").as_bytes()]).expect("append");
        }
        j.restart(2, false).expect("restart");
        j.append(&[b"new 0", b"new 1"]).expect("append a batch");
        let frames = replay(&path, 2).expect("replay").frames;
        assert_eq!(
            frames,
            vec![b"new 0".to_vec(), b"new 1".to_vec()],
            "old frames after the new tail are another epoch's"
        );
    }

    #[test]
    fn a_torn_or_damaged_frame_ends_the_replay() {
        for damage_at in [4usize, 12, 20, 24, 32, HEADER + 1] {
            let (_dir, path) = fresh();
            let mut j = replay(&path, 3).expect("open").journal;
            for i in 0..3 {
                j.append(&[format!("change {i}").as_bytes()]).expect("append");
            }
            drop(j);
            let file = OpenOptions::new().read(true).write(true).open(&path).expect("open");
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, (BLOCK + damage_at) as u64).expect("read");
            file.write_all_at(&[byte[0] ^ 0x5a], (BLOCK + damage_at) as u64).expect("damage");
            let replayed = replay(&path, 3).expect("replay");
            assert_eq!(replayed.frames, vec![b"change 0".to_vec()], "damage at byte {damage_at}");
            assert_eq!(replayed.journal.usage().0, BLOCK as u64, "the next frame overwrites the damaged one");
        }
    }

    #[test]
    fn a_whole_frame_left_behind_a_torn_one_never_joins_the_next_writers_frames() {
        let (_dir, path) = fresh();
        let mut j = replay(&path, 5).expect("open").journal;
        j.append(&[b"a", b"b-torn", b"c-left-over"]).expect("one write of three frames");
        drop(j);
        // Frame 1 torn by a power cut, frame 2 written whole.
        let file = OpenOptions::new().read(true).write(true).open(&path).expect("open");
        file.write_all_at(&[0xff], (BLOCK + HEADER) as u64).expect("tear");
        let mut j = replay(&path, 5).expect("replay").journal;
        assert_eq!(j.usage().0, BLOCK as u64, "the replay stopped at the torn frame");
        // The next process's frame 1 takes one block, so the left-over frame 2 follows it
        // with the sequence number the replay expects next.
        j.append(&[b"b-new"]).expect("append");
        let frames = replay(&path, 5).expect("replay").frames;
        assert_eq!(frames, vec![b"a".to_vec(), b"b-new".to_vec()], "the left-over frame does not chain");
    }

    #[test]
    fn a_full_journal_refuses_and_a_failed_write_breaks_it() {
        let (_dir, path) = fresh();
        let mut j = replay(&path, 1).expect("open").journal;
        let big = vec![b'y'; SIZE as usize - HEADER + 1];
        assert!(!j.fits(frame_size(big.len())), "the header needs room too");
        j.append(&[&big[..big.len() - 1]]).expect("exactly fills it");
        let err = j.append(&[b"more"]).expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        j.broken = true;
        j.restart(2, false).expect("restart");
        assert!(!j.broken && j.fits(SIZE), "a restart empties and mends it");
    }

    #[test]
    fn a_short_file_is_used_as_it_is_and_recreated_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        fs::write(&path, vec![0u8; 3 * BLOCK + 100]).expect("write");
        let mut j = replay(&path, 1).expect("open").journal;
        assert!(!j.sized());
        assert_eq!(j.usage().1, 3 * BLOCK as u64);
        j.restart(2, true).expect("recreate");
        assert!(j.sized());
        assert_eq!(fs::metadata(&path).expect("stat").len(), SIZE);
    }
}
