//! NFS on the node side with the recording syscall fake: the exact mount(2) source, type,
//! flags and data; validation before any call; stale mounts; stats from the mount table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::*;
use crate::config::Config;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::mount::{FsStat, MntFlags, MsFlags};

const ID: &str = "vol:shared:0123456789abcdef0123456789abcdef";

fn node_engine(dir: &Path, fake: Arc<RecordingSyscall>, options: &str) -> Engine {
    // Port 9 (discard) on loopback refuses at once: the background registration fails fast.
    let text = format!(
        "stateDir: {}\npools:\n  - {{name: shared, type: nfs, server: 127.0.0.1, export: /exports/k8s, mountOptions: [{options}]}}\n",
        dir.join("state").display()
    );
    let config = Config::parse(&text, "test").expect("config");
    Engine::open(config, "node-a".into(), fake, Placement::OnNode).expect("engine")
}

fn cap(mode: AccessMode, flags: &[&str]) -> Capability {
    Capability {
        block: false,
        fs_type: String::new(),
        mount_flags: flags.iter().map(std::string::ToString::to_string).collect(),
        mode,
    }
}

fn stage(staging: &Path, capability: Capability, context: &[(&str, &str)]) -> NodeStage {
    NodeStage {
        volume_id: ID.into(),
        staging: staging.to_path_buf(),
        capability,
        context: context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        key: None,
    }
}

fn mounts(fake: &RecordingSyscall) -> Vec<Call> {
    fake.calls().into_iter().filter(|c| matches!(c, Call::Mount { .. })).collect()
}

fn mount_call(source: &str, target: &Path, fs: &str, flags: MsFlags, data: &str) -> Call {
    Call::Mount {
        source: Some(PathBuf::from(source)),
        target: target.to_path_buf(),
        fs_type: Some(fs.into()),
        flags,
        data: Some(data.into()),
    }
}

#[test]
fn stage_mounts_the_subdirectory_with_exact_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), "").tracking_mounts());
    let engine = node_engine(dir.path(), Arc::clone(&fake), "port=9, mountport=9");
    let staging = dir.path().join("staging");
    engine
        .node_stage(&stage(&staging, cap(AccessMode::MultiNodeMultiWriter, &[]), &[("subDir", "ns/db")]))
        .expect("stage");
    assert_eq!(
        mounts(&fake),
        vec![mount_call(
            "127.0.0.1:/exports/k8s/ns/db",
            &staging,
            "nfs4",
            MsFlags::empty(),
            "port=9,mountport=9,soft,timeo=30,retrans=3,vers=4,addr=127.0.0.1"
        )]
    );
    // Staged again: the mount table says it is there, nothing more happens.
    engine
        .node_stage(&stage(&staging, cap(AccessMode::MultiNodeMultiWriter, &[]), &[("subDir", "ns/db")]))
        .expect("idempotent");
    assert_eq!(mounts(&fake).len(), 1);

    // Publish binds from staging; read-only as a second step.
    let target = dir.path().join("target");
    engine
        .node_publish(&NodePublish {
            volume_id: ID.into(),
            staging: Some(staging.clone()),
            target: target.clone(),
            capability: cap(AccessMode::MultiNodeMultiWriter, &[]),
            readonly: true,
            context: BTreeMap::from([("subDir".to_string(), "ns/db".to_string())]),
        })
        .expect("publish");
    let calls = mounts(&fake);
    assert!(
        matches!(&calls[1], Call::Mount { source: Some(s), target: t, flags, .. } if s == &staging && t == &target && *flags == MsFlags::MS_BIND)
    );
    assert!(matches!(&calls[2], Call::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT)));

    // A stale mount: the plain unmount answers ESTALE, berth detaches lazily and succeeds.
    fake.fail("umount", libc::ESTALE);
    engine.node_unpublish(ID, &target).expect("unpublish a stale mount");
    engine.node_unstage(ID, &staging).expect("unstage a stale mount");
    let lazy = fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Umount { flags, .. } if *flags == MntFlags::MNT_DETACH))
        .count();
    assert_eq!(lazy, 2);
    assert!(!target.exists() && !staging.exists());
}

#[test]
fn capability_options_version_and_readonly_reach_the_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), "").tracking_mounts());
    let engine = node_engine(dir.path(), Arc::clone(&fake), "port=9, mountport=9, nfsvers=4.1");
    let staging = dir.path().join("staging");
    let capability = cap(AccessMode::MultiNodeReaderOnly, &["nfsvers=3", "hard", "noatime"]);
    engine.node_stage(&stage(&staging, capability, &[("subDir", "app")])).expect("stage");
    assert_eq!(
        mounts(&fake),
        vec![mount_call(
            "127.0.0.1:/exports/k8s/app",
            &staging,
            "nfs",
            MsFlags::MS_NOATIME | MsFlags::MS_RDONLY,
            "port=9,mountport=9,nfsvers=4.1,nfsvers=3,hard,timeo=30,retrans=3,addr=127.0.0.1"
        )]
    );
}

#[test]
fn static_volumes_name_a_configured_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), "").tracking_mounts());
    let engine = node_engine(dir.path(), Arc::clone(&fake), "port=9, mountport=9");
    let staging = dir.path().join("staging");
    let mut req = stage(
        &staging,
        cap(AccessMode::SingleNodeWriter, &[]),
        &[("server", "127.0.0.1"), ("export", "/exports/k8s/team"), ("subDir", "a")],
    );
    req.volume_id = "my-static-pv".into();
    engine.node_stage(&req).expect("stage");
    assert!(
        matches!(&mounts(&fake)[0], Call::Mount { source: Some(s), .. } if s == Path::new("127.0.0.1:/exports/k8s/team/a"))
    );
}

#[test]
fn refused_requests_make_no_call_and_no_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), "").tracking_mounts());
    let engine = node_engine(dir.path(), Arc::clone(&fake), "port=9, mountport=9");
    let staging = dir.path().join("staging");
    let code = |e: Error| tonic::Status::from(e).code();
    use tonic::Code;
    let rw = || cap(AccessMode::SingleNodeWriter, &[]);
    for bad in ["..", "../x", "a/../../b", "/etc", "a\\b", "a\0b", "a\nb", "", ".berth/volumes", "a//b"] {
        let err = engine.node_stage(&stage(&staging, rw(), &[("subDir", bad)])).expect_err(bad);
        assert_eq!(code(err), Code::InvalidArgument, "{bad:?}");
    }
    for opt in ["vers=4,addr=10.0.0.1", "addr=10.0.0.1", "sec=krb5,sec=sys", "remount", "uid=0", "context=\"x\""] {
        let err = engine
            .node_stage(&stage(&staging, cap(AccessMode::SingleNodeWriter, &[opt]), &[("subDir", "a")]))
            .expect_err(opt);
        assert_eq!(code(err), Code::InvalidArgument, "{opt:?}");
    }
    let other = [("server", "10.9.9.9"), ("export", "/exports/k8s"), ("subDir", "a")];
    let mut req = stage(&staging, rw(), &other);
    req.volume_id = "static".into();
    assert_eq!(code(engine.node_stage(&req).expect_err("unknown server")), Code::InvalidArgument);
    let mut outside = stage(&staging, rw(), &[("server", "127.0.0.1"), ("export", "/exports"), ("subDir", "k8s")]);
    outside.volume_id = "static".into();
    assert_eq!(code(engine.node_stage(&outside).expect_err("export outside the pool")), Code::InvalidArgument);
    assert_eq!(code(engine.node_stage(&stage(&staging, rw(), &[])).expect_err("no subDir")), Code::NotFound);
    let mut ext4 = rw();
    ext4.fs_type = "ext4".into();
    assert_eq!(
        code(engine.node_stage(&stage(&staging, ext4, &[("subDir", "a")])).expect_err("ext4")),
        Code::InvalidArgument
    );
    assert!(mounts(&fake).is_empty(), "{:?}", fake.calls());
    assert!(!staging.exists());
}

#[test]
fn stats_of_an_nfs_mount_come_from_the_mount_table_and_a_walk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("mounted");
    std::fs::create_dir(&vol).expect("mkdir");
    std::fs::write(vol.join("data"), vec![7u8; 64 << 10]).expect("write");
    let table = format!("50 1 0:50 / {} rw - nfs4 127.0.0.1:/exports/k8s/ns/db rw,vers=4.2\n", vol.display());
    let fake = Arc::new(RecordingSyscall::new(FsStat::default(), &table));
    let engine = node_engine(dir.path(), fake, "port=9, mountport=9");
    let (usage, condition) = engine.node_stats(ID, &vol).expect("stats");
    assert!(!condition.abnormal, "{condition:?}");
    assert!(usage.used_bytes >= 64 << 10, "{usage:?}");
    assert_eq!(usage.used_inodes, Some(2));
}
