//! The checkpoint: every record in one file, `records`, named by an epoch that the
//! journal's frames refer to.
//!
//! It is written temp → fsync → rename → fsync directory, so a crash leaves the old or
//! the new checkpoint whole. The old one stays right with the journal's frames of its
//! epoch; the new one holds everything and no frame names its fresh epoch yet.
//!
//! The file is one line of JSON and a last line `sha256:<hex>` over that JSON, so damage
//! anywhere in it (a changed digit in a volume ID stays valid JSON) stops the start
//! instead of changing a record. It also records the journal's size when it was written:
//! a journal found shorter than that was cut, and may have lost changes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Maps, SnapshotRecord, VolumeRecord};

pub const FILE_NAME: &str = "records";
const TMP_NAME: &str = ".records.tmp";
const VERSION: u32 = 3;
/// The version before the checksum line: read (once, at an upgrade), never written.
const UNCHECKED: u32 = 2;
const SUM: &[u8] = b"sha256:";

/// The checkpoint as read.
#[derive(Debug, Deserialize)]
pub struct Checkpoint {
    version: u32,
    pub epoch: u64,
    /// The journal's size when this checkpoint was written (version 2 did not say).
    #[serde(default)]
    pub journal_size: Option<u64>,
    pub volumes: Vec<VolumeRecord>,
    pub snapshots: Vec<SnapshotRecord>,
}

impl Checkpoint {
    /// The records of this checkpoint as the in-memory tables.
    pub fn into_maps(self) -> Maps {
        Maps::from_records(self.volumes, self.snapshots)
    }
}

#[derive(Serialize)]
struct Out<'a> {
    version: u32,
    epoch: u64,
    journal_size: u64,
    volumes: Vec<&'a VolumeRecord>,
    snapshots: Vec<&'a SnapshotRecord>,
}

/// The JSON of a checkpoint and the checksum line after it, if there is one.
fn split(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    match line.iter().rposition(|&b| b == b'\n') {
        Some(at) if line[at + 1..].starts_with(SUM) => (&line[..at], Some(&line[at + 1 + SUM.len()..])),
        _ => (bytes, None),
    }
}

/// Reads the checkpoint under the state root: `None` when there is none yet. One that
/// cannot be parsed, or fails its checksum, is an error; berth never starts on part of
/// its records.
pub fn read(root: &Path) -> io::Result<Option<Checkpoint>> {
    let path = root.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let damaged = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} cannot be read: {reason}. berth does not start on part of its records: `berth doctor` \
                 explains the recovery (docs/operations.md, Damaged records)",
                path.display()
            ),
        )
    };
    let (json, sum) = split(&bytes);
    if let Some(sum) = sum {
        let actual = hex::encode(Sha256::digest(json));
        if sum != actual.as_bytes() {
            return Err(damaged("its contents do not match its checksum (the file was damaged)".into()));
        }
    }
    let checkpoint: Checkpoint = serde_json::from_slice(json).map_err(|e| damaged(e.to_string()))?;
    match (checkpoint.version, sum) {
        (VERSION, Some(_)) | (UNCHECKED, None) => Ok(Some(checkpoint)),
        (VERSION, None) => Err(damaged("its checksum line is missing".into())),
        (version, _) => Err(damaged(format!("version {version} is not {VERSION}"))),
    }
}

/// Reads the checkpoint without checking its checksum or version: for a salvage the
/// operator asked to trust it.
pub fn read_unchecked(root: &Path) -> io::Result<Checkpoint> {
    let path = root.join(FILE_NAME);
    let bytes = fs::read(&path)?;
    serde_json::from_slice(split(&bytes).0)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{} cannot be parsed: {e}", path.display())))
}

/// Hashes what it passes on.
struct Summing<W> {
    inner: W,
    sum: Sha256,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes every record in `maps` as the checkpoint of `epoch` to a temp file, streamed
/// (no copy of the records in memory), and returns it unsynced. `journal_size` is the
/// journal file's size now.
pub fn write_tmp(root: &Path, epoch: u64, journal_size: u64, maps: &Maps) -> io::Result<File> {
    let out = Out {
        version: VERSION,
        epoch,
        journal_size,
        volumes: maps.volumes.by_id.values().map(AsRef::as_ref).collect(),
        snapshots: maps.snapshots.by_id.values().map(AsRef::as_ref).collect(),
    };
    let file = BufWriter::with_capacity(1 << 16, File::create(root.join(TMP_NAME))?);
    let mut writer = Summing { inner: file, sum: Sha256::new() };
    // io::Error::from keeps the kind of an I/O error (a full disk) under serde's.
    serde_json::to_writer(&mut writer, &out).map_err(io::Error::from)?;
    let Summing { mut inner, sum } = writer;
    write!(inner, "\nsha256:{}\n", hex::encode(sum.finalize()))?;
    inner.flush()?;
    inner.into_inner().map_err(std::io::IntoInnerError::into_error)
}

/// Removes a temp file a failed write left.
pub fn remove_tmp(root: &Path) {
    let _ = fs::remove_file(root.join(TMP_NAME));
}

/// Syncs the temp file and renames it over the last checkpoint, durably.
pub fn install(root: &Path, tmp: File) -> io::Result<()> {
    super::replace_durably(tmp, &root.join(TMP_NAME), &root.join(FILE_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(maps: &Maps) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = write_tmp(dir.path(), 7, 4096, maps).expect("write");
        install(dir.path(), tmp).expect("install");
        let bytes = fs::read(dir.path().join(FILE_NAME)).expect("read");
        (dir, bytes)
    }

    #[test]
    fn every_byte_of_a_checkpoint_is_checked() {
        let mut maps = Maps::default();
        maps.apply(super::super::Change::PutVolume(std::sync::Arc::new(super::super::testutil::volume(
            "vol-1", "pvc-1",
        ))));
        let (dir, bytes) = written(&maps);
        let read_back = read(dir.path()).expect("read").expect("there");
        assert_eq!((read_back.epoch, read_back.journal_size, read_back.volumes.len()), (7, Some(4096), 1));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            fs::write(dir.path().join(FILE_NAME), &damaged).expect("damage");
            let err = read(dir.path()).expect_err(&format!("a flipped bit at byte {at} must be found"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
        fs::write(dir.path().join(FILE_NAME), &bytes[..bytes.len() - 20]).expect("cut");
        assert!(read(dir.path()).is_err(), "a cut checkpoint is damaged");
    }

    #[test]
    fn a_checkpoint_of_the_version_before_checksums_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), br#"{"version":2,"epoch":5,"volumes":[],"snapshots":[]}"#)
            .expect("write");
        let old = read(dir.path()).expect("read").expect("there");
        assert_eq!((old.epoch, old.journal_size), (5, None));
        fs::write(dir.path().join(FILE_NAME), br#"{"version":3,"epoch":5,"volumes":[],"snapshots":[]}"#)
            .expect("write");
        let err = read(dir.path()).expect_err("version 3 without its checksum");
        assert!(err.to_string().contains("checksum line is missing"), "{err}");
    }
}
