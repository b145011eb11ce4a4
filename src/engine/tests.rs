//! Engine tests with the recording syscall fake: no root needed, and the project-quota
//! path that this kernel cannot run for real is checked call by call.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::mount::{FsStat, ProjectQuotaState, ProjectUsage};

const XFS_MAGIC: i64 = 0x5846_5342;

fn engine_on(fake: Arc<RecordingSyscall>, dir: &Path, enforcement: &str) -> Engine {
    let text = format!(
        "stateDir: {}\npools:\n  - name: fast\n    type: hostpath\n    path: {}\n    createPath: true\n    capacityEnforcement: {enforcement}\n",
        dir.join("state").display(),
        dir.join("pool").display()
    );
    let config = Config::parse(&text, "test").expect("config");
    Engine::open(config, "node-a".into(), fake, Placement::OnNode).expect("engine")
}

fn xfs_with_prjquota(dir: &Path, state: ProjectQuotaState) -> Arc<RecordingSyscall> {
    let stat = FsStat {
        magic: XFS_MAGIC,
        total_bytes: 10 << 30,
        available_bytes: 8 << 30,
        total_inodes: 1000,
        free_inodes: 900,
    };
    let mountinfo = format!("30 1 8:1 / {} rw,relatime - xfs /dev/sdb1 rw,attr2,inode64,prjquota\n", dir.display());
    Arc::new(RecordingSyscall::new(stat, &mountinfo).with_project_quota(state))
}

fn cap() -> Capability {
    Capability { block: false, fs_type: String::new(), mount_flags: vec![], mode: AccessMode::SingleNodeWriter }
}

fn create(name: &str, bytes: u64) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        required_bytes: bytes,
        limit_bytes: 0,
        capabilities: vec![cap()],
        parameters: BTreeMap::new(),
        source: None,
        allowed_nodes: None,
        key: None,
        mutable: BTreeMap::new(),
    }
}

#[test]
fn project_quota_volumes_get_an_id_and_a_hard_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = xfs_with_prjquota(dir.path(), ProjectQuotaState::Enforced);
    let engine = engine_on(Arc::clone(&fake), dir.path(), "required");
    let vol = engine.create_volume(create("pvc-1", 5 << 20)).expect("create");
    assert_eq!(vol.enforced, crate::state::Enforced::ProjectQuota);
    let project = vol.project_id.expect("project id");
    let vol_dir = dir.path().join("pool/volumes").join(&vol.key);
    let calls = fake.calls();
    assert!(calls.contains(&Call::SetProjectId { dir: vol_dir.clone(), project }), "{calls:?}");
    assert!(calls.contains(&Call::SetProjectLimit { mount_point: dir.path().to_path_buf(), project, bytes: 5 << 20 }));

    let second = engine.create_volume(create("pvc-2", 1 << 20)).expect("create");
    assert_ne!(second.project_id, Some(project), "each volume has its own project");

    engine.controller_expand(&vol.id, 9 << 20, 0).expect("expand");
    assert!(fake.calls().contains(&Call::SetProjectLimit {
        mount_point: dir.path().to_path_buf(),
        project,
        bytes: 9 << 20
    }));

    fake.set_project_usage(project, ProjectUsage { used_bytes: 3 << 20, used_inodes: 7, hard_limit_bytes: 9 << 20 });
    let usage =
        engine.pools["fast"].usage(&engine.store.volume(&vol.id).expect("rec"), Path::new("/unused")).expect("usage");
    assert_eq!((usage.total_bytes, usage.used_bytes, usage.available_bytes), (9 << 20, 3 << 20, 6 << 20));

    engine.delete_volume(&vol.id).expect("delete");
    assert!(
        fake.calls().contains(&Call::SetProjectLimit { mount_point: dir.path().to_path_buf(), project, bytes: 0 }),
        "limit cleared"
    );
    assert!(!vol_dir.exists());
}

#[test]
fn project_ids_continue_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = xfs_with_prjquota(dir.path(), ProjectQuotaState::Enforced);
    let first = engine_on(Arc::clone(&fake), dir.path(), "auto").create_volume(create("a", 1 << 20)).expect("create");
    let engine = engine_on(fake, dir.path(), "auto");
    let second = engine.create_volume(create("b", 1 << 20)).expect("create");
    assert!(second.project_id > first.project_id);
}

#[test]
fn prjquota_mounted_but_not_enforced_is_unenforced_and_required_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = xfs_with_prjquota(dir.path(), ProjectQuotaState::Accounting);
    let engine = engine_on(Arc::clone(&fake), dir.path(), "required");
    let err = engine.create_volume(create("pvc", 1 << 20)).expect_err("cannot enforce");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::FailedPrecondition);
    assert!(fake.calls().is_empty(), "nothing happened: {:?}", fake.calls());
    drop(engine);

    let auto = engine_on(xfs_with_prjquota(dir.path(), ProjectQuotaState::Accounting), dir.path(), "auto");
    let vol = auto.create_volume(create("pvc", 1 << 20)).expect("create");
    assert_eq!(vol.enforced, crate::state::Enforced::None);
}

#[test]
fn btrfs_pools_enable_quotas_and_limit_each_subvolume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stat = FsStat {
        magic: crate::mount::btrfs::BTRFS_SUPER_MAGIC,
        total_bytes: 1 << 30,
        available_bytes: 1 << 30,
        ..FsStat::default()
    };
    let fake = Arc::new(RecordingSyscall::new(stat, ""));
    let engine = engine_on(Arc::clone(&fake), dir.path(), "auto");
    let vol = engine.create_volume(create("pvc", 2 << 20)).expect("create");
    let pool = dir.path().join("pool");
    let calls = fake.calls();
    assert_eq!(calls[0], Call::QuotaEnable { path: pool.clone() });
    assert!(calls.contains(&Call::SubvolumeCreate { parent: pool.join("volumes"), name: vol.key.clone() }));
    assert!(
        calls.contains(&Call::QgroupLimit { subvol: pool.join("volumes").join(&vol.key), max_bytes: Some(2 << 20) })
    );
}

#[test]
fn error_codes_follow_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stat = FsStat { magic: 0xEF53, total_bytes: 1 << 30, available_bytes: 100 << 20, ..FsStat::default() };
    let engine = engine_on(Arc::new(RecordingSyscall::new(stat, "")), dir.path(), "auto");
    let code = |e: Error| tonic::Status::from(e).code();
    use tonic::Code;

    let vol = engine.create_volume(create("pvc", 1 << 20)).expect("create");
    assert_eq!(code(engine.create_volume(create("pvc", 2 << 20)).unwrap_err()), Code::AlreadyExists);
    assert_eq!(code(engine.create_volume(create("huge", 1 << 30)).unwrap_err()), Code::ResourceExhausted);
    let mut inverted = create("inv", 2 << 20);
    inverted.limit_bytes = 1 << 20;
    assert_eq!(code(engine.create_volume(inverted).unwrap_err()), Code::OutOfRange);
    let mut multi = create("rwx", 1 << 20);
    multi.capabilities[0].mode = AccessMode::MultiNodeMultiWriter;
    assert_eq!(code(engine.create_volume(multi).unwrap_err()), Code::InvalidArgument);
    let mut unknown = create("p", 1 << 20);
    unknown.parameters.insert("colour".into(), "red".into());
    let err = engine.create_volume(unknown).unwrap_err();
    assert!(err.to_string().contains("colour"));
    assert_eq!(code(err), Code::InvalidArgument);
    let mut other_node = create("elsewhere", 1 << 20);
    other_node.allowed_nodes = Some(vec!["node-b".into()]);
    assert_eq!(code(engine.create_volume(other_node).unwrap_err()), Code::ResourceExhausted);
    let mut missing_source = create("restore", 1 << 20);
    missing_source.source =
        Some(crate::state::ContentSource::Snapshot("snap:fast:00000000000000000000000000000000".into()));
    assert_eq!(code(engine.create_volume(missing_source).unwrap_err()), Code::NotFound);

    assert_eq!(
        code(engine.controller_publish("fake-vol-id-1", "node-a", &cap(), false, &BTreeMap::new()).unwrap_err()),
        Code::NotFound
    );
    assert_eq!(
        code(engine.controller_publish(&vol.id, "some-fake-node-id", &cap(), false, &BTreeMap::new()).unwrap_err()),
        Code::NotFound
    );
    engine.controller_publish(&vol.id, "node-a", &cap(), false, &BTreeMap::new()).expect("publish");
    engine.controller_publish(&vol.id, "node-a", &cap(), false, &BTreeMap::new()).expect("idempotent");
    assert_eq!(
        code(engine.controller_publish(&vol.id, "node-a", &cap(), true, &BTreeMap::new()).unwrap_err()),
        Code::AlreadyExists
    );
    assert_eq!(code(engine.delete_volume(&vol.id).unwrap_err()), Code::FailedPrecondition, "published volumes stay");
    engine.controller_unpublish(&vol.id, "node-a").expect("unpublish");
    engine.controller_unpublish(&vol.id, "node-a").expect("idempotent");

    assert_eq!(code(engine.list_volumes(0, "garbage").unwrap_err()), Code::Aborted);
    assert_eq!(code(engine.list_snapshots(0, "garbage", "", "").unwrap_err()), Code::Aborted);
    assert_eq!(code(engine.get_snapshot("snap:fast:0").unwrap_err()), Code::NotFound);
    assert_eq!(code(engine.controller_expand(&vol.id, 4 << 20, 2 << 20).unwrap_err()), Code::OutOfRange);
    assert_eq!(
        code(engine.controller_expand("vol:fast:00000000000000000000000000000000", 1, 0).unwrap_err()),
        Code::NotFound
    );
    assert_eq!(engine.controller_expand(&vol.id, 1, 0).expect("no shrink"), (1 << 20, false));

    let _busy = engine.lock(std::slice::from_ref(&vol.id)).expect("lock");
    assert_eq!(code(engine.delete_volume(&vol.id).unwrap_err()), Code::Aborted, "a busy volume answers ABORTED");
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stat = FsStat {
        magic: crate::mount::btrfs::BTRFS_SUPER_MAGIC,
        total_bytes: 1 << 30,
        available_bytes: 1 << 30,
        ..FsStat::default()
    };
    let fake = Arc::new(RecordingSyscall::new(stat, ""));
    let engine = engine_on(Arc::clone(&fake), dir.path(), "auto");
    fake.fail("btrfs_qgroup_limit", libc::EIO);
    let err = engine.create_volume(create("pvc", 1 << 20)).expect_err("limit fails");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
    assert_eq!(engine.store.volume_count(), 0, "the intent record is rolled back");
    assert_eq!(std::fs::read_dir(dir.path().join("pool/volumes")).expect("ls").count(), 0);
}

#[test]
fn central_controller_defers_node_local_expansion_to_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "stateDir: {}\npools:\n  - name: fast\n    type: hostpath\n    path: {}\n    createPath: true\n",
        dir.path().join("state").display(),
        dir.path().join("pool").display()
    );
    let config = Config::parse(&text, "test").expect("config");
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), ""));
    let engine = Engine::open(config, "controller".into(), fake.clone(), Placement::Central).expect("engine");
    assert!(!dir.path().join("pool").exists(), "the central controller does not touch node-local pools");
    let id = "vol:fast:0123456789abcdef0123456789abcdef";
    assert_eq!(engine.controller_expand(id, 5 << 20, 0).expect("deferred"), (5 << 20, true));
    assert_eq!(
        tonic::Status::from(engine.controller_expand("fake-vol-id-1", 1, 0).unwrap_err()).code(),
        tonic::Code::NotFound
    );
    let err = engine.create_volume(create("pvc", 1 << 20)).expect_err("node-local");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::FailedPrecondition);
    assert!(fake.calls().is_empty());
}

#[test]
fn reconcile_finishes_deletes_and_reports_unaccounted_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stat = FsStat { magic: 0xEF53, total_bytes: 1 << 30, available_bytes: 1 << 30, ..FsStat::default() };
    let fake = Arc::new(RecordingSyscall::new(stat, ""));
    let engine = engine_on(Arc::clone(&fake), dir.path(), "auto");
    let doomed = engine.create_volume(create("doomed", 1 << 20)).expect("create");
    let mut deleting = (*engine.store.volume(&doomed.id).expect("record")).clone();
    deleting.phase = crate::state::Phase::Deleting;
    engine.store.put_volume(&deleting).expect("crash after the intent");
    let stranger = dir.path().join("pool/volumes/not-a-berth-volume");
    std::fs::create_dir(&stranger).expect("someone else's data");
    drop(engine);

    let engine = engine_on(fake, dir.path(), "auto");
    assert!(engine.store.volume(&doomed.id).is_none(), "the interrupted delete was finished at start");
    assert!(!dir.path().join("pool/volumes").join(&doomed.key).exists());
    let report = engine.reconcile();
    assert_eq!(report.unaccounted, vec![stranger.clone()]);
    assert!(stranger.exists(), "data berth cannot account for is reported, never deleted");
}

#[test]
fn each_failure_says_what_it_concerns_and_gets_its_code_in_one_place() {
    use std::path::PathBuf;
    use tonic::Code;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_on(xfs_with_prjquota(dir.path(), ProjectQuotaState::Enforced), dir.path(), "auto");
    let code = |e: Error| tonic::Status::from(e).code();

    // Real failures from the engine, not hand-made ones.
    let missing = engine.get_volume("vol:fast:none").expect_err("no such volume");
    assert!(matches!(&missing, Error::NoVolume { id, node } if id == "vol:fast:none" && node == "node-a"), "{missing}");
    assert_eq!(code(missing), Code::NotFound);
    let _held = engine.lock(&["a".to_string()]).expect("lock");
    let busy = engine.lock(&["a".to_string()]).expect_err("busy");
    assert!(matches!(&busy, Error::Busy { keys } if keys == &["a"]), "{busy}");
    assert_eq!(code(busy), Code::Aborted);
    let unknown = engine.select_pool(Some("slow")).err().expect("unknown pool");
    assert_eq!(code(unknown), Code::InvalidArgument);

    for (error, want) in [
        (Error::NotStaged { volume: "v".into(), path: PathBuf::from("/s") }, Code::FailedPrecondition),
        (
            Error::StillMounted { volume: "v".into(), mounts: vec![PathBuf::from("/a"), PathBuf::from("/b")] },
            Code::FailedPrecondition,
        ),
        (Error::PoolFull { pool: "fast".into(), available: 1, requested: 2 }, Code::ResourceExhausted),
        (Error::RequiredOverLimit { required: 2, limit: 1 }, Code::OutOfRange),
        (Error::NameTaken { kind: "volume", name: "n".into(), holder: "v".into() }, Code::AlreadyExists),
        (Error::PoolUnavailable { pool: "fast".into(), reason: "r".into() }, Code::Unavailable),
        (Error::UnknownToken { token: "t".into() }, Code::Aborted),
    ] {
        let message = error.to_string();
        assert_eq!(code(error), want, "{message}");
    }
    let mounted = Error::StillMounted { volume: "v".into(), mounts: vec![PathBuf::from("/a"), PathBuf::from("/b")] };
    assert_eq!(mounted.to_string(), "volume v is still mounted at /a, /b; unpublish and unstage it first");
}
