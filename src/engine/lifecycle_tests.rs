//! The volume and snapshot state machine, transition by transition: what recovery at
//! start does with each unfinished phase, and what a retried call does when recovery has
//! not run (or could not finish).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::mount::FsStat;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::state::{ContentSource, Phase, SnapshotRecord, VolumeRecord};

const EXT4_MAGIC: i64 = 0xEF53;

fn config(dir: &Path) -> Config {
    let text = format!(
        "stateDir: {}\npools:\n  - name: fast\n    type: hostpath\n    path: {}\n    createPath: true\n",
        dir.join("state").display(),
        dir.join("pool").display()
    );
    Config::parse(&text, "test").expect("config")
}

fn fake(magic: i64) -> Arc<RecordingSyscall> {
    let stat = FsStat { magic, total_bytes: 1 << 30, available_bytes: 1 << 30, ..FsStat::default() };
    Arc::new(RecordingSyscall::new(stat, ""))
}

/// An engine as `berth serve` has it before recovery has run.
fn unrecovered(dir: &Path, sys: Arc<RecordingSyscall>) -> Engine {
    Engine::open_unreconciled(config(dir), "node-a".into(), sys, Placement::OnNode).expect("engine")
}

fn request(name: &str, source: Option<ContentSource>) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        required_bytes: 1 << 20,
        limit_bytes: 0,
        capabilities: vec![Capability {
            block: false,
            fs_type: String::new(),
            mount_flags: vec![],
            mode: AccessMode::SingleNodeWriter,
        }],
        parameters: BTreeMap::new(),
        source,
        allowed_nodes: None,
        key: None,
        mutable: BTreeMap::new(),
    }
}

/// The record a crash leaves right after CreateVolume's intent.
fn half_volume(name: &str, source: Option<ContentSource>) -> VolumeRecord {
    let (id, key) = crate::ids::mint(crate::ids::Kind::Volume, "fast");
    VolumeRecord {
        source,
        created_unix_ms: 1,
        ..VolumeRecord::intent(id, key, name.into(), "fast", "node-a".into(), 1 << 20)
    }
}

fn half_snapshot(name: &str, source_volume: &str, phase: Phase) -> SnapshotRecord {
    let (id, key) = crate::ids::mint(crate::ids::Kind::Snapshot, "fast");
    SnapshotRecord {
        id,
        name: name.into(),
        pool: "fast".into(),
        key,
        node: "node-a".into(),
        source_volume: source_volume.into(),
        phase,
        size: 0,
        method: None,
        encryption: None,
        group: None,
        copy: None,
        created_unix_ms: 1,
    }
}

fn volume_dir(dir: &Path, key: &str) -> std::path::PathBuf {
    dir.join("pool/volumes").join(key)
}

#[test]
fn a_retry_before_recovery_finishes_the_half_made_volume_it_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = fake(crate::mount::btrfs::BTRFS_SUPER_MAGIC);
    let engine = unrecovered(dir.path(), Arc::clone(&sys));
    // The crash came after the intent and the subvolume, before the limit and Ready.
    let half = half_volume("pvc", None);
    engine.store.put_volume(&half).expect("intent");
    std::fs::create_dir(volume_dir(dir.path(), &half.key)).expect("half-made subvolume");
    drop(engine);

    let engine = unrecovered(dir.path(), Arc::clone(&sys));
    assert_eq!(engine.store.volume(&half.id).map(|v| v.phase), Some(Phase::Creating), "nothing finished it yet");
    let done = engine.create_volume(request("pvc", None)).expect("retry");
    assert_eq!(done.id, half.id, "the retry finishes the same volume");
    assert_eq!(done.phase, Phase::Ready);
    assert_eq!(engine.store.volume(&half.id).map(|v| v.phase), Some(Phase::Ready));
    let subvol = volume_dir(dir.path(), &half.key);
    assert!(sys.calls().contains(&Call::QgroupLimit { subvol, max_bytes: Some(1 << 20) }));
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::SubvolumeCreate { .. })), "existing storage is reused");
    assert_eq!(engine.reconcile().finished, 0, "nothing was left for recovery");
}

#[test]
fn recovery_finishes_a_half_made_volume_and_rolls_back_one_whose_source_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = unrecovered(dir.path(), fake(EXT4_MAGIC));
    let plain = half_volume("plain", None);
    let gone = ContentSource::Snapshot("snap:fast:0123456789abcdef0123456789abcdef".into());
    let orphan = half_volume("restore", Some(gone));
    for v in [&plain, &orphan] {
        engine.store.put_volume(v).expect("intent");
        std::fs::create_dir_all(volume_dir(dir.path(), &v.key)).expect("half-made directory");
    }
    std::fs::write(volume_dir(dir.path(), &orphan.key).join("partial"), b"half a copy").expect("partial copy");

    let report = engine.reconcile();
    assert_eq!((report.finished, report.rolled_back, report.failed), (1, 1, 0), "{report:?}");
    assert_eq!(engine.store.volume(&plain.id).map(|v| v.phase), Some(Phase::Ready));
    assert!(engine.store.volume(&orphan.id).is_none(), "the rolled-back record is gone");
    assert!(!volume_dir(dir.path(), &orphan.key).exists(), "and so is its partial copy");
    assert!(volume_dir(dir.path(), &plain.key).is_dir());
    assert_eq!(engine.reconcile(), Report::default(), "a second pass finds nothing to do");
}

#[test]
fn recovery_finishes_interrupted_deletions_of_volumes_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = unrecovered(dir.path(), fake(EXT4_MAGIC));
    let mut doomed = half_volume("doomed", None);
    doomed.phase = Phase::Deleting;
    engine.store.put_volume(&doomed).expect("intent");
    std::fs::create_dir_all(volume_dir(dir.path(), &doomed.key).join("sub")).expect("data being deleted");
    let snapshot = half_snapshot("s", &doomed.id, Phase::Deleting);
    engine.store.put_snapshot(&snapshot).expect("intent");

    let report = engine.reconcile();
    assert_eq!((report.deleted, report.failed), (2, 0), "{report:?}");
    assert!(engine.store.volume(&doomed.id).is_none());
    assert!(engine.store.snapshot(&snapshot.id).is_none());
    assert!(!volume_dir(dir.path(), &doomed.key).exists());
}

#[test]
fn recovery_finishes_a_snapshot_of_a_ready_volume_and_rolls_back_one_of_a_gone_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = unrecovered(dir.path(), fake(EXT4_MAGIC));
    let volume = engine.create_volume(request("v", None)).expect("create");
    std::fs::write(volume_dir(dir.path(), &volume.key).join("data"), b"kept").expect("write");
    let taken = half_snapshot("taken", &volume.id, Phase::Creating);
    let stray = half_snapshot("stray", "vol:fast:00000000000000000000000000000000", Phase::Creating);
    for s in [&taken, &stray] {
        engine.store.put_snapshot(s).expect("intent");
    }

    let report = engine.reconcile();
    assert_eq!((report.finished, report.rolled_back, report.failed), (1, 1, 0), "{report:?}");
    let finished = engine.store.snapshot(&taken.id).expect("finished snapshot");
    assert_eq!(finished.phase, Phase::Ready);
    assert!(engine.store.snapshot(&stray.id).is_none());
    // The finished snapshot restores the volume's data.
    let restored = engine
        .create_volume(request("r", Some(ContentSource::Snapshot(taken.id.clone()))))
        .expect("restore the recovered snapshot");
    assert_eq!(std::fs::read(volume_dir(dir.path(), &restored.key).join("data")).expect("read"), b"kept");
}

#[test]
fn an_undo_that_fails_keeps_the_intent_and_a_later_retry_finishes_the_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = fake(crate::mount::btrfs::BTRFS_SUPER_MAGIC);
    let engine = unrecovered(dir.path(), Arc::clone(&sys));
    sys.fail("btrfs_qgroup_limit", libc::EIO);
    sys.fail("btrfs_subvolume_delete", libc::EBUSY);
    sys.fail("btrfs_qgroup_remove", libc::EBUSY);
    engine.create_volume(request("pvc", None)).expect_err("the limit fails");
    let kept = engine.store.volume_by_name("pvc").expect("the intent stays when the undo fails");
    assert_eq!(kept.phase, Phase::Creating);
    drop(engine);

    // The kernel recovers; the next start finishes what the failed call began.
    let engine = unrecovered(dir.path(), fake(crate::mount::btrfs::BTRFS_SUPER_MAGIC));
    assert_eq!(engine.reconcile().finished, 1);
    let done = engine.create_volume(request("pvc", None)).expect("retry");
    assert_eq!((&done.id, done.phase), (&kept.id, Phase::Ready));
}
