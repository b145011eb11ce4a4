//! The checkpoint: every record in one file, `records`, named by an epoch that the
//! journal's frames refer to.
//!
//! It is written temp → fsync → rename → fsync directory, so a crash leaves the old or
//! the new checkpoint whole. The old one stays right with the journal's frames of its
//! epoch; the new one holds everything and no frame names its fresh epoch yet.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Maps, SnapshotRecord, VolumeRecord};

pub const FILE_NAME: &str = "records";
const TMP_NAME: &str = ".records.tmp";
const VERSION: u32 = 2;

/// The checkpoint as read.
#[derive(Debug, Deserialize)]
pub struct Checkpoint {
    version: u32,
    pub epoch: u64,
    pub volumes: Vec<VolumeRecord>,
    pub snapshots: Vec<SnapshotRecord>,
}

#[derive(Serialize)]
struct Out<'a> {
    version: u32,
    epoch: u64,
    volumes: Vec<&'a VolumeRecord>,
    snapshots: Vec<&'a SnapshotRecord>,
}

/// Reads the checkpoint under the state root: `None` when there is none yet. One that
/// cannot be parsed is an error; berth never starts on part of its records.
pub fn read(root: &Path) -> io::Result<Option<Checkpoint>> {
    let path = root.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let damaged = |reason: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{} cannot be read: {reason}", path.display()))
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if checkpoint.version != VERSION {
        return Err(damaged(format!("version {} is not {VERSION}", checkpoint.version)));
    }
    Ok(Some(checkpoint))
}

/// Writes every record in `maps` as the checkpoint of `epoch` to a temp file, streamed
/// (no copy of the records in memory), and returns it unsynced.
pub fn write_tmp(root: &Path, epoch: u64, maps: &Maps) -> io::Result<File> {
    let out = Out {
        version: VERSION,
        epoch,
        volumes: maps.volumes.by_id.values().collect(),
        snapshots: maps.snapshots.by_id.values().collect(),
    };
    let mut writer = BufWriter::with_capacity(1 << 16, File::create(root.join(TMP_NAME))?);
    // io::Error::from keeps the kind of an I/O error (a full disk) under serde's.
    serde_json::to_writer(&mut writer, &out).map_err(io::Error::from)?;
    writer.flush()?;
    writer.into_inner().map_err(|e| e.into_error())
}

/// Syncs the temp file and renames it over the last checkpoint, durably.
pub fn install(root: &Path, tmp: File) -> io::Result<()> {
    super::replace_durably(tmp, &root.join(TMP_NAME), &root.join(FILE_NAME))
}
