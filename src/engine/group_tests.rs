//! Group snapshots call by call with the recording fake: what is frozen, in which order,
//! what a refused or failed group leaves (nothing), and how an interrupted group is rolled
//! back. tests/group_snapshots.rs proves the consistency itself with real filesystems.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tonic::Code;

use super::luks_tests::{engine as open, fake};
use super::*;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::state::{GroupRef, Phase, SnapshotRecord, VolumeRecord};

fn cap() -> Capability {
    Capability { block: false, fs_type: String::new(), mount_flags: vec![], mode: AccessMode::SingleNodeWriter }
}

fn volume(engine: &Engine, name: &str, pool: &str) -> Arc<VolumeRecord> {
    volume_as(engine, name, pool, cap())
}

fn volume_as(engine: &Engine, name: &str, pool: &str, capability: Capability) -> Arc<VolumeRecord> {
    engine
        .create_volume(CreateVolume {
            name: name.into(),
            required_bytes: 64 << 20,
            limit_bytes: 0,
            capabilities: vec![capability],
            parameters: BTreeMap::from([("pool".into(), pool.into())]),
            source: None,
            allowed_nodes: None,
            key: None,
            mutable: BTreeMap::new(),
        })
        .expect("create volume")
}

fn stage(engine: &Engine, id: &str, staging: &Path) {
    engine
        .node_stage(&NodeStage {
            volume_id: id.into(),
            staging: staging.to_path_buf(),
            capability: cap(),
            context: BTreeMap::new(),
            key: None,
        })
        .expect("stage");
}

fn code(e: Error) -> Code {
    tonic::Status::from(e).code()
}

/// The freezes and thaws, in order.
fn freezes(fake: &RecordingSyscall, from: usize) -> Vec<String> {
    fake.calls()[from..]
        .iter()
        .filter_map(|c| match c {
            Call::Freeze { mount_point } => Some(format!("freeze {}", mount_point.display())),
            Call::Thaw { mount_point } => Some(format!("thaw {}", mount_point.display())),
            _ => None,
        })
        .collect()
}

fn snapshot_records(engine: &Engine) -> Vec<Arc<SnapshotRecord>> {
    engine.store.snapshots_page(None, usize::MAX, |_| true).0
}

#[test]
fn every_mounted_member_is_frozen_before_the_first_is_taken_and_thawed_after_the_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = open(&fake, dir.path());
    let (data, wal, idle) =
        (volume(&engine, "data", "disks"), volume(&engine, "wal", "disks"), volume(&engine, "idle", "dirs"));
    let (s1, s2) = (dir.path().join("stage-data"), dir.path().join("stage-wal"));
    stage(&engine, &data.id, &s1);
    stage(&engine, &wal.id, &s2);

    let sources = vec![data.id.clone(), wal.id.clone(), idle.id.clone()];
    let before = fake.calls().len();
    let group = engine.create_group_snapshot("nightly", &sources, None).expect("group");
    assert_eq!(
        freezes(&fake, before),
        [
            format!("freeze {}", s1.display()),
            format!("freeze {}", s2.display()),
            format!("thaw {}", s2.display()),
            format!("thaw {}", s1.display()),
        ],
        "one freeze per mounted filesystem, none of them twice, the idle directory volume not at all"
    );
    assert!(group.id.starts_with("group:disks:"), "{}", group.id);
    assert!(group.ready());
    let members: Vec<&str> = group.members.iter().map(|m| m.source_volume.as_str()).collect();
    assert_eq!(members, sources.iter().map(String::as_str).collect::<Vec<_>>(), "members in request order");
    for m in &group.members {
        assert_eq!(m.group.as_ref().map(|g| (g.id.as_str(), g.name.as_str())), Some((group.id.as_str(), "nightly")));
        assert_eq!(m.phase, Phase::Ready);
    }
    assert!(
        std::fs::read_dir(dir.path().join("state/freezes")).map_or(true, |mut d| d.next().is_none()),
        "no freeze left recorded"
    );

    // The same request again is the same group; the same name for other volumes is not.
    let before = fake.calls().len();
    let again = engine.create_group_snapshot("nightly", &sources, None).expect("retry");
    assert_eq!(again.id, group.id);
    assert_eq!(
        again.members.iter().map(|m| &m.id).collect::<Vec<_>>(),
        group.members.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    assert!(freezes(&fake, before).is_empty(), "a retry of a whole group freezes nothing");
    let e = engine.create_group_snapshot("nightly", &sources[..2], None).expect_err("other sources");
    assert_eq!(code(e), Code::AlreadyExists);

    // Members restore one by one, as Kubernetes restores them.
    let restored = engine
        .create_volume(CreateVolume {
            name: "restored".into(),
            required_bytes: 64 << 20,
            limit_bytes: 0,
            capabilities: vec![cap()],
            parameters: BTreeMap::from([("pool".into(), "disks".into())]),
            source: Some(crate::state::ContentSource::Snapshot(group.members[0].id.clone())),
            allowed_nodes: None,
            key: None,
            mutable: BTreeMap::new(),
        })
        .expect("restore a member");
    assert_eq!(restored.phase, Phase::Ready);

    // Get and Delete check the member list they are given.
    let ids: Vec<String> = group.members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(engine.get_group_snapshot(&group.id, &ids).expect("get").members.len(), 3);
    assert_eq!(engine.get_group_snapshot(&group.id, &[]).expect("get without a list").members.len(), 3);
    let e = engine.get_group_snapshot(&group.id, &ids[..2]).expect_err("a member missing");
    assert_eq!(code(e), Code::InvalidArgument);
    let e = engine.delete_group_snapshot(&group.id, &[ids[0].clone(), "not-a-snapshot".into()]).expect_err("stranger");
    assert_eq!(code(e), Code::InvalidArgument);
    assert_eq!(snapshot_records(&engine).len(), 3, "a refused delete deletes nothing");
    engine.delete_group_snapshot(&group.id, &ids).expect("delete");
    assert!(snapshot_records(&engine).is_empty());
    engine.delete_group_snapshot(&group.id, &ids).expect("deleting again is success");
    assert_eq!(code(engine.get_group_snapshot(&group.id, &[]).expect_err("gone")), Code::NotFound);
}

#[test]
fn a_member_that_cannot_be_held_still_refuses_the_group_before_anything_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = open(&fake, dir.path());
    let raw_cap = Capability { block: true, ..cap() };
    let (block, raw) = (volume(&engine, "block", "disks"), volume_as(&engine, "raw", "disks", raw_cap.clone()));
    let staging = dir.path().join("stage-raw");
    engine
        .node_stage(&NodeStage {
            volume_id: raw.id.clone(),
            staging: staging.clone(),
            capability: raw_cap,
            context: BTreeMap::new(),
            key: None,
        })
        .expect("stage raw");

    let before = fake.calls().len();
    let e = engine.create_group_snapshot("g", &[block.id.clone(), raw.id.clone()], None).expect_err("raw in use");
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&raw.id), "{}", status.message());
    assert!(status.message().contains("raw block device in use"), "{}", status.message());
    assert!(snapshot_records(&engine).is_empty(), "nothing recorded");
    assert!(freezes(&fake, before).is_empty(), "nothing frozen");

    // A volume of another node (unknown here) beside one of this node.
    let foreign = "vol:disks:00000000000000000000000000000000".to_string();
    let e = engine.create_group_snapshot("g", &[block.id.clone(), foreign.clone()], None);
    assert_eq!(code(e.expect_err("foreign member")), Code::FailedPrecondition);
    let e = engine.create_group_snapshot("g", std::slice::from_ref(&foreign), None);
    assert_eq!(code(e.expect_err("nothing here")), Code::NotFound);
    let e = engine.create_group_snapshot("g", &[block.id.clone(), block.id.clone()], None);
    assert_eq!(code(e.expect_err("twice")), Code::InvalidArgument);
    assert_eq!(code(engine.create_group_snapshot("g", &[], None).expect_err("none")), Code::InvalidArgument);
    let many: Vec<String> = (0..=groups::MAX_MEMBERS).map(|i| format!("vol:disks:{i:032x}")).collect();
    assert_eq!(code(engine.create_group_snapshot("g", &many, None).expect_err("too many")), Code::InvalidArgument);
}

#[test]
fn a_failed_freeze_thaws_what_was_frozen_and_leaves_no_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = open(&fake, dir.path());
    let (a, b) = (volume(&engine, "a", "disks"), volume(&engine, "b", "disks"));
    let (sa, sb) = (dir.path().join("stage-a"), dir.path().join("stage-b"));
    stage(&engine, &a.id, &sa);
    stage(&engine, &b.id, &sb);
    fake.fail("freeze", libc::EBUSY);
    let e = engine.create_group_snapshot("g", &[a.id.clone(), b.id.clone()], None).expect_err("freeze fails");
    assert_eq!(code(e), Code::Internal);
    assert!(snapshot_records(&engine).is_empty(), "the members' intents are rolled back");
    assert!(!std::fs::read_dir(dir.path().join("block/snapshots")).is_ok_and(|mut d| d.next().is_some()));
    fake.unfail("freeze");
    let group = engine.create_group_snapshot("g", &[a.id.clone(), b.id.clone()], None).expect("retry succeeds");
    assert!(group.ready());
}

#[test]
fn a_start_after_a_crash_rolls_back_a_group_with_a_member_still_creating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = open(&fake, dir.path());
    let (a, b) = (volume(&engine, "a", "disks"), volume(&engine, "b", "disks"));
    let group = engine.create_group_snapshot("g", &[a.id.clone(), b.id.clone()], None).expect("group");
    // As a crash while the members were marked Ready leaves it: one Ready, one Creating.
    let mut second = (*group.members[1]).clone();
    second.phase = Phase::Creating;
    engine.store.put_snapshot(&second).expect("put");
    // And a group whose first intent only was written.
    let (id, key) = crate::ids::mint(crate::ids::Kind::Snapshot, "disks");
    let lone = SnapshotRecord {
        name: id.clone(),
        id,
        pool: "disks".into(),
        key,
        node: "node-a".into(),
        source_volume: a.id.clone(),
        phase: Phase::Creating,
        size: 0,
        method: None,
        encryption: None,
        group: Some(GroupRef { id: "group:disks:11111111111111111111111111111111".into(), name: "other".into() }),
        copy: None,
        created_unix_ms: 1,
    };
    engine.store.put_snapshot(&lone).expect("put");
    let single = engine.create_snapshot(&a.id, "single", None, None).expect("a snapshot outside any group");
    drop(engine);

    let engine = open(&fake, dir.path());
    let left: Vec<String> = snapshot_records(&engine).iter().map(|s| s.id.clone()).collect();
    assert_eq!(left, std::slice::from_ref(&single.id), "both interrupted groups are gone, Ready member included");
    let images: Vec<_> = std::fs::read_dir(dir.path().join("block/snapshots"))
        .expect("snapshots dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(images, [format!("{}.img", single.key)], "and so is their data");
    // The name is free to take again.
    assert!(engine.create_group_snapshot("g", &[a.id.clone(), b.id.clone()], None).expect("again").ready());
}
