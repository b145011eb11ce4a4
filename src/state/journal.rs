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
//! magic "BJ02" | epoch u64 | seq u64 | len u32 | writer u64 | first u64 | check [u8; 8] | payload | zeros
//! ```
//!
//! `epoch` names the checkpoint (the `records` file) the frame applies to, `seq` counts
//! frames from 0 within it, `writer` is drawn afresh by each process that opens the
//! journal, `first` is the `seq` of the first frame of the write that carried this one, and
//! `check` is the first 8 bytes of SHA-256 over the previous frame's check (or the epoch,
//! for frame 0), the header fields and the payload. A replay takes frames from offset 0
//! while each one is whole, of the expected epoch and sequence, and chained to the one
//! before, and stops at the first that is not.
//!
//! Writes are serialised and each is durable before the next begins, so only frames of
//! the last write can be torn, and none of them was acknowledged. A torn write may still
//! leave a whole frame behind the torn one. The next process overwrites from the torn
//! frame on, and its frames carry another writer and so other checks. A leftover frame
//! therefore never chains to the new ones, even where its sequence number fits. Frames
//! left over from an older epoch never match at all.
//!
//! Where the replay stops is harmless only if it is the end of the last write. A frame of
//! the epoch further on whose write began after the frame the replay stopped at (its
//! `first` is greater) proves otherwise: the stopped-at frame was acknowledged and later
//! damaged, and so may be every change after it. The replay reports that as [`Damage`]
//! instead of starting on part of the records; [`salvage`] is the operator's way out.
//! Damage within the last write cannot be told from a torn write, and is taken as one.
//!
//! Journals of the format before `first` ("BJ01", a 40-byte header without it) are read
//! as they are, without that proof, and the next checkpoint starts them over as BJ02.

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
const HEADER: usize = 48;
const MAGIC: &[u8; 4] = b"BJ02";

/// Where a frame format keeps its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    magic: &'static [u8; 4],
    header: usize,
}

const CURRENT: Layout = Layout { magic: MAGIC, header: HEADER };
/// The format before the `first` field.
const V1: Layout = Layout { magic: b"BJ01", header: 40 };

impl Layout {
    /// The layout of the frames in `bytes` (read from offset 0): the first frame's.
    fn of(bytes: &[u8]) -> Layout {
        if bytes.starts_with(V1.magic) { V1 } else { CURRENT }
    }

    /// The checked header fields: everything between the magic and the check.
    fn fields(self) -> std::ops::Range<usize> {
        4..self.header - 8
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(out)
}

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
    /// Its frames are of the format before this one: appending must wait for a
    /// checkpoint, which starts the file over in this format.
    legacy: bool,
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
/// the next frame would go, the journal's usable size, and whether frames of later writes
/// lie beyond where the replay stopped.
pub fn frames(path: &Path, epoch: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    let capacity = len - len % BLOCK;
    // Read as far as the frames go, not the whole file: a checkpointed journal is empty.
    let mut bytes = Vec::new();
    grow(&file, &mut bytes, BLOCK, capacity)?;
    let layout = Layout::of(&bytes);
    let (mut offset, mut frames, mut last) = (0usize, Vec::new(), genesis(epoch));
    loop {
        match frame_at(layout, &bytes, offset, epoch, frames.len() as u64, &last) {
            Ok(Some((payload, next, check))) => {
                frames.push(payload.to_vec());
                (offset, last) = (next, check);
            }
            Err(needed) if bytes.len() < capacity => grow(&file, &mut bytes, needed, capacity)?,
            Ok(None) | Err(_) => break,
        }
    }
    let damage = match layout {
        CURRENT => later_writes(&file, offset, capacity, epoch, frames.len() as u64)?,
        _ => None,
    };
    let legacy = layout != CURRENT && !frames.is_empty();
    Ok(Scan { frames, offset: offset as u64, capacity: capacity as u64, last, legacy, damage })
}

/// Reads more of the file into `bytes`: at least `needed` bytes in all, at most `capacity`.
fn grow(file: &File, bytes: &mut Vec<u8>, needed: usize, capacity: usize) -> io::Result<()> {
    let want = needed.max(bytes.len() * 2).max(64 << 10).min(capacity);
    let have = bytes.len();
    if want > have {
        bytes.resize(want, 0);
        file.read_exact_at(&mut bytes[have..], have as u64)?;
    }
    Ok(())
}

/// Damage at `stop`, where the replay stopped at frame `seq`, if a frame of `epoch` after
/// it belongs to a write that began after that frame.
fn later_writes(file: &File, stop: usize, capacity: usize, epoch: u64, seq: u64) -> io::Result<Option<Damage>> {
    let mut later = 0;
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = stop + BLOCK;
    while at < capacity {
        let n = chunk.len().min(capacity - at);
        file.read_exact_at(&mut chunk[..n], at as u64)?;
        later += chunk[..n].chunks(BLOCK).filter(|block| later_header(block, epoch, seq)).count();
        at += n;
    }
    Ok((later > 0).then_some(Damage { seq, offset: stop as u64, later }))
}

/// Whether `block` starts with the header of a frame of `epoch` whose write began after
/// frame `seq`.
fn later_header(block: &[u8], epoch: u64, seq: u64) -> bool {
    block.len() >= HEADER
        && &block[..4] == MAGIC
        && u64_at(block, 4) == epoch
        && u64_at(block, 32) > seq
        && u64_at(block, 12) >= u64_at(block, 32)
}

/// The frames of one epoch as found, and where they end.
pub struct Scan {
    pub frames: Vec<Vec<u8>>,
    offset: u64,
    capacity: u64,
    last: [u8; 8],
    /// The frames are of the format before this one.
    legacy: bool,
    /// Frames of later writes lie beyond the last good frame.
    pub damage: Option<Damage>,
}

/// A replay that stopped short of frames written after the one it stopped at: changes
/// that were acknowledged would be lost by starting there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The frame the replay stopped at, and where it starts.
    pub seq: u64,
    pub offset: u64,
    /// Frames of later writes found after it.
    pub later: usize,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame {} (at byte {}) is damaged, and {} frame(s) written after it follow; \
             starting would forget every change from that frame on",
            self.seq, self.offset, self.later
        )
    }
}

/// What frame 0 of `epoch` chains to.
fn genesis(epoch: u64) -> [u8; 8] {
    epoch.to_le_bytes()
}

/// The error a start reports for `damage` in the journal at `path`.
pub fn damaged(path: &Path, damage: &Damage) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {damage}. berth does not start on part of its records: `berth doctor` explains the recovery \
             (docs/operations.md, Damaged records)",
            path.display()
        ),
    )
}

/// Opens the journal at `path` for appending, after the frames of `epoch` it holds.
/// Damage (see [`Damage`]) is an error naming the file: berth does not start on part of
/// its records.
pub fn replay(path: &Path, epoch: u64) -> io::Result<Replayed> {
    let Scan { frames, offset, capacity, last, legacy, damage } = frames(path, epoch)?;
    if let Some(damage) = damage {
        return Err(damaged(path, &damage));
    }
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
        legacy,
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
    layout: Layout,
    bytes: &'a [u8],
    offset: usize,
    epoch: u64,
    seq: u64,
    prev: &[u8; 8],
) -> Result<Option<Frame<'a>>, usize> {
    let size = layout.header;
    let header = bytes.get(offset..offset + size).ok_or(offset + size)?;
    if &header[..4] != layout.magic || u64_at(header, 4) != epoch || u64_at(header, 12) != seq {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[20..24]);
    let end = offset + size + u32::from_le_bytes(len) as usize;
    let payload = bytes.get(offset + size..end).ok_or(end)?;
    let sum = check(prev, &header[layout.fields()], payload);
    Ok((header[size - 8..] == sum).then_some((payload, offset + round_up(end - offset), sum)))
}

/// What [`salvage`] could read of a damaged journal.
#[derive(Debug, Default)]
pub struct Salvage {
    /// The payloads of the frames that are whole and check, in order.
    pub frames: Vec<Vec<u8>>,
    /// The sequence numbers of the frames that do not, with their payload where the
    /// header still tells where it is (it may be damaged itself).
    pub lost: Vec<(u64, Option<Vec<u8>>)>,
}

/// Reads every frame of `epoch` that can still be trusted, past damage: after a frame
/// that does not check, the replay goes on at the next frame of a later write, and takes
/// it when it chains to the check that the frame before it recorded.
pub fn salvage(path: &Path, epoch: u64) -> io::Result<Salvage> {
    let mut bytes = std::fs::read(path)?;
    bytes.truncate(bytes.len() - bytes.len() % BLOCK);
    let layout = Layout::of(&bytes);
    let mut out = Salvage::default();
    let (mut offset, mut seq, mut prev) = (0usize, 0u64, genesis(epoch));
    // The frame the damage starts at, once found.
    let mut damaged: Option<u64> = None;
    loop {
        if let Ok(Some((payload, next, check))) = frame_at(layout, &bytes, offset, epoch, seq, &prev) {
            out.frames.push(payload.to_vec());
            (offset, seq, prev) = (next, seq + 1, check);
            continue;
        }
        let blocks = |from: usize| (from..bytes.len()).step_by(BLOCK);
        let written_after = damaged.unwrap_or(seq);
        let resume = blocks(offset + BLOCK)
            .find(|&at| later_header(&bytes[at..], epoch, written_after) && u64_at(&bytes[at..], 12) > seq);
        let Some(at) = resume else {
            // Past damage, a frame that does not check is lost too; before any, the end
            // of the last write is where the frames end.
            if damaged.is_some() && header_of(&bytes[offset..], epoch, seq) {
                out.lost.push((seq, payload_of(&bytes[offset..], epoch, seq).map(<[u8]>::to_vec)));
            }
            break;
        };
        damaged.get_or_insert(seq);
        let resumed = u64_at(&bytes[at..], 12);
        let between = || blocks(offset).take_while(move |&b| b < at);
        for lost in seq..resumed {
            let payload = between().find_map(|b| payload_of(&bytes[b..], epoch, lost));
            out.lost.push((lost, payload.map(<[u8]>::to_vec)));
        }
        // The frame just before: the last header there, or where the damaged one began
        // (even a damaged header usually keeps its check).
        let before = between().filter(|&b| bytes[b..].starts_with(MAGIC)).last().unwrap_or(offset);
        prev = bytes[before + HEADER - 8..before + HEADER].try_into().unwrap_or([0; 8]);
        (offset, seq) = (at, resumed);
    }
    Ok(out)
}

/// Whether `block` starts with a (current-format) header of frame `seq` of `epoch`.
fn header_of(block: &[u8], epoch: u64, seq: u64) -> bool {
    block.len() >= HEADER && &block[..4] == MAGIC && u64_at(block, 4) == epoch && u64_at(block, 12) == seq
}

/// The payload of frame `seq` of `epoch` at the start of `block`, unchecked.
fn payload_of(block: &[u8], epoch: u64, seq: u64) -> Option<&[u8]> {
    if !header_of(block, epoch, seq) {
        return None;
    }
    let len = u32::from_le_bytes(block[20..24].try_into().ok()?) as usize;
    block.get(HEADER..HEADER.checked_add(len)?)
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

    /// Whether the file is of the size and format this version writes (an older one is
    /// recreated at the next checkpoint, which must come before any append).
    pub fn current(&self) -> bool {
        self.capacity == SIZE && !self.legacy
    }

    /// Starts over after a checkpoint of `epoch`: later frames go from offset 0, and the
    /// old ones no longer match. With `recreate`, the file is first rewritten at [`SIZE`].
    pub fn restart(&mut self, epoch: u64, recreate: bool) -> io::Result<()> {
        if recreate {
            create(&self.path)?;
            self.file = open_for_writes(&self.path, self.direct)?;
            self.capacity = SIZE;
        }
        (self.epoch, self.seq, self.offset, self.last) = (epoch, 0, 0, genesis(epoch));
        (self.broken, self.legacy) = (false, false);
        Ok(())
    }

    /// Writes one frame per payload, durably and in one write. A failure marks the
    /// journal broken.
    pub fn append(&mut self, payloads: &[&[u8]]) -> io::Result<()> {
        if self.broken || self.legacy {
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
            frame[32..40].copy_from_slice(&self.seq.to_le_bytes());
            last = check(&last, &frame[CURRENT.fields()], payload);
            frame[40..48].copy_from_slice(&last);
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

    /// Flips one byte of the journal at `at`.
    fn damage(path: &Path, at: usize) {
        let file = OpenOptions::new().read(true).write(true).open(path).expect("open");
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at as u64).expect("read");
        file.write_all_at(&[byte[0] ^ 0x5a], at as u64).expect("damage");
    }

    /// Every field of a header (epoch, seq, len, writer, first, check) and the payload.
    const FIELDS: [usize; 7] = [4, 12, 20, 24, 32, 40, HEADER + 1];

    #[test]
    fn damage_in_the_last_write_is_taken_for_a_torn_frame() {
        for damage_at in FIELDS {
            let (_dir, path) = fresh();
            let mut j = replay(&path, 3).expect("open").journal;
            j.append(&[b"change 0"]).expect("append");
            j.append(&[b"change 1", b"change 2"]).expect("the last write");
            drop(j);
            damage(&path, BLOCK + damage_at);
            let replayed = replay(&path, 3).expect("replay");
            assert_eq!(replayed.frames, vec![b"change 0".to_vec()], "damage at byte {damage_at}");
            assert_eq!(replayed.journal.usage().0, BLOCK as u64, "the next frame overwrites the damaged one");
        }
    }

    #[test]
    fn damage_before_a_later_write_refuses_the_replay_and_salvage_keeps_the_rest() {
        for damage_at in FIELDS {
            let (_dir, path) = fresh();
            let mut j = replay(&path, 3).expect("open").journal;
            for i in 0..4 {
                j.append(&[format!("change {i}").as_bytes()]).expect("append");
            }
            drop(j);
            damage(&path, BLOCK + damage_at);
            let scan = frames(&path, 3).expect("scan");
            assert_eq!(scan.damage, Some(Damage { seq: 1, offset: BLOCK as u64, later: 2 }), "damage at {damage_at}");
            let err = replay(&path, 3).err().expect("a start refuses damage");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("frame 1 (at byte 4096) is damaged"), "{err}");

            let saved = salvage(&path, 3).expect("salvage");
            let lost: Vec<u64> = saved.lost.iter().map(|(seq, _)| *seq).collect();
            // A damaged check also breaks the link of the frame after it.
            let (kept, expected_lost): (Vec<&[u8]>, Vec<u64>) = match damage_at {
                40 => (vec![b"change 0", b"change 3"], vec![1, 2]),
                _ => (vec![b"change 0", b"change 2", b"change 3"], vec![1]),
            };
            assert_eq!(saved.frames, kept, "damage at {damage_at}");
            assert_eq!(lost, expected_lost, "damage at {damage_at}");
            if damage_at == HEADER + 1 {
                assert_eq!(saved.lost[0].1.as_ref().map(Vec::len), Some(8), "the damaged payload is shown");
            }
        }
    }

    #[test]
    fn a_journal_of_the_format_before_is_read_and_must_be_started_over() {
        let (_dir, path) = fresh();
        // Two BJ01 frames, written as that version did.
        let mut bytes = vec![0u8; 2 * BLOCK];
        let mut prev = genesis(9);
        for (seq, payload) in [&b"old 0"[..], b"old 1"].into_iter().enumerate() {
            let frame = &mut bytes[seq * BLOCK..];
            frame[..4].copy_from_slice(V1.magic);
            frame[4..12].copy_from_slice(&9u64.to_le_bytes());
            frame[12..20].copy_from_slice(&(seq as u64).to_le_bytes());
            frame[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            prev = check(&prev, &frame[4..32], payload);
            frame[32..40].copy_from_slice(&prev);
            frame[40..40 + payload.len()].copy_from_slice(payload);
        }
        OpenOptions::new().write(true).open(&path).expect("open").write_all_at(&bytes, 0).expect("write");
        let mut replayed = replay(&path, 9).expect("replay");
        assert_eq!(replayed.frames, vec![b"old 0".to_vec(), b"old 1".to_vec()]);
        assert!(!replayed.journal.current(), "a checkpoint must come first");
        assert!(replayed.journal.append(&[b"new"]).is_err(), "no BJ02 frame after BJ01 ones");
        replayed.journal.restart(10, true).expect("restart");
        replayed.journal.append(&[b"new"]).expect("append");
        assert_eq!(replay(&path, 10).expect("replay").frames, vec![b"new".to_vec()]);
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
        assert!(!j.current());
        assert_eq!(j.usage().1, 3 * BLOCK as u64);
        j.restart(2, true).expect("recreate");
        assert!(j.current());
        assert_eq!(fs::metadata(&path).expect("stat").len(), SIZE);
    }
}
