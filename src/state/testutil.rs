//! Records and stores the state module's tests build on.

use std::path::{Path, PathBuf};

use super::{JOURNAL, Phase, SnapshotRecord, Store, VolumeRecord, checkpoint};

pub(super) fn volume(id: &str, name: &str) -> VolumeRecord {
    VolumeRecord {
        created_unix_ms: 1,
        ..VolumeRecord::intent(id.into(), "0".repeat(32), name.into(), "p", "n".into(), 1 << 20)
    }
}

pub(super) fn snapshot(id: &str, name: &str) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        name: name.into(),
        pool: "p".into(),
        key: "1".repeat(32),
        node: "n".into(),
        source_volume: "vol:p:1".into(),
        phase: Phase::Ready,
        size: 1,
        method: None,
        encryption: None,
        group: None,
        copy: None,
        created_unix_ms: 1,
    }
}

pub(super) fn epoch_on_disk(dir: &Path) -> u64 {
    checkpoint::read(&dir.join("state")).expect("read").expect("a checkpoint").epoch
}

/// A store whose checkpoint holds vol-0 and whose journal holds vol-1 .. vol-5, one
/// write each, and the journal's path.
pub(super) fn six_volumes(dir: &Path) -> PathBuf {
    let (store, _) = Store::open(dir).expect("open");
    store.put_volume(&volume("vol-0", "pvc-0")).expect("put");
    store.checkpoint().expect("checkpoint");
    for i in 1..6 {
        store.put_volume(&volume(&format!("vol-{i}"), &format!("pvc-{i}"))).expect("put");
    }
    drop(store);
    dir.join("state").join(JOURNAL)
}

/// Any record as the pretty JSON of a record file.
pub(super) trait Json {
    fn json(&self) -> Vec<u8>;
}

impl<T: serde::Serialize> Json for T {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("json")
    }
}
