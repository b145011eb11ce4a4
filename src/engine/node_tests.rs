//! NodePublishVolume with the recording syscall fake: one publish reads the mount table
//! once, and what it reads is current (it sees the stage before it, and a repeated
//! publish sees the bind the first one made).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::*;
use crate::config::Config;
use crate::mount::fake::{Call, RecordingSyscall};
use crate::mount::{FsStat, MsFlags};
use crate::state::VolumeRecord;

/// A block pool (`disks`) and a hostPath pool (`dirs`) on the fake, which tracks mounts.
fn node(dir: &Path) -> (Arc<RecordingSyscall>, Engine) {
    let stat = FsStat { magic: 0xEF53, total_bytes: 10 << 30, available_bytes: 8 << 30, ..FsStat::default() };
    let fake = Arc::new(RecordingSyscall::new(stat, "").tracking_mounts());
    let text = format!(
        "stateDir: {}\npools:\n  - {{name: disks, type: block, path: {}, createPath: true}}\n  - {{name: dirs, type: \
         hostpath, path: {}, createPath: true}}\n",
        dir.join("state").display(),
        dir.join("disks").display(),
        dir.join("dirs").display()
    );
    let config = Config::parse(&text, "test").expect("config");
    let sys = Arc::clone(&fake) as Arc<dyn crate::mount::Syscall>;
    (fake, Engine::open(config, "node-a".into(), sys, Placement::OnNode).expect("engine"))
}

fn cap(block: bool, mode: AccessMode) -> Capability {
    Capability { block, fs_type: String::new(), mount_flags: vec![], mode }
}

fn create(engine: &Engine, pool: &str, block: bool) -> Arc<VolumeRecord> {
    engine
        .create_volume(CreateVolume {
            name: format!("pvc-{pool}-{block}"),
            required_bytes: 64 << 20,
            limit_bytes: 0,
            capabilities: vec![cap(block, AccessMode::SingleNodeWriter)],
            parameters: BTreeMap::from([("pool".into(), pool.into())]),
            source: None,
            allowed_nodes: None,
            key: None,
            mutable: BTreeMap::new(),
        })
        .expect("create")
}

fn stage(engine: &Engine, id: &str, staging: &Path, block: bool) {
    let req = NodeStage {
        volume_id: id.into(),
        staging: staging.to_path_buf(),
        capability: cap(block, AccessMode::SingleNodeWriter),
        context: BTreeMap::new(),
        key: None,
    };
    engine.node_stage(&req).expect("stage");
}

fn publish(id: &str, staging: &Path, target: &Path, capability: Capability, readonly: bool) -> NodePublish {
    NodePublish {
        volume_id: id.into(),
        staging: Some(staging.to_path_buf()),
        target: target.to_path_buf(),
        capability,
        readonly,
        context: BTreeMap::new(),
    }
}

fn binds(fake: &RecordingSyscall) -> usize {
    fake.calls().iter().filter(|c| matches!(c, Call::Mount { flags, .. } if *flags == MsFlags::MS_BIND)).count()
}

/// Publishes `vol` (staged at `staging`) at `target`; returns the mount table reads it took.
fn reads_of_a_publish(fake: &RecordingSyscall, engine: &Engine, req: &NodePublish) -> usize {
    let before = fake.mountinfo_reads();
    engine.node_publish(req).expect("publish");
    fake.mountinfo_reads() - before
}

#[test]
fn a_publish_reads_the_mount_table_once_and_sees_the_mounts_before_it() {
    for block in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fake, engine) = node(dir.path());
        let vol = create(&engine, "disks", block);
        let (staging, target) = (dir.path().join("staging"), dir.path().join("target"));
        stage(&engine, &vol.id, &staging, block);
        let capability = cap(block, AccessMode::SingleNodeWriter);
        if block {
            std::fs::write(&target, b"").expect("the CO's target file");
        }
        let req = publish(&vol.id, &staging, &target, capability.clone(), false);
        assert_eq!(reads_of_a_publish(&fake, &engine, &req), 1, "block {block}: the stage was seen, one read");
        assert_eq!(binds(&fake), 1 + usize::from(block), "block {block}: the raw stage binds too");

        // Again: the table read now shows the first publish's bind, so nothing is mounted twice.
        assert_eq!(reads_of_a_publish(&fake, &engine, &req), 1, "block {block}");
        assert_eq!(binds(&fake), 1 + usize::from(block), "block {block}: a repeated publish is a no-op");
        let readonly = publish(&vol.id, &staging, &target, capability, true);
        let err = engine.node_publish(&readonly).expect_err("published read-write there");
        assert!(matches!(err, Error::PublishedOtherwise { readonly: false, .. }), "block {block}: {err}");
    }
}

#[test]
fn a_single_writer_publish_reads_the_table_once_and_bars_a_second_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, engine) = node(dir.path());
    let vol = create(&engine, "disks", false);
    let staging = dir.path().join("staging");
    stage(&engine, &vol.id, &staging, false);
    let writer = cap(false, AccessMode::SingleNodeSingleWriter);
    let first = publish(&vol.id, &staging, &dir.path().join("a"), writer.clone(), false);
    assert_eq!(reads_of_a_publish(&fake, &engine, &first), 1);

    // The second call's one read holds the first call's bind: the claim is still mounted.
    let second = publish(&vol.id, &staging, &dir.path().join("b"), writer, false);
    let before = fake.mountinfo_reads();
    let err = engine.node_publish(&second).expect_err("held by the first target");
    assert!(matches!(&err, Error::WriterHeld { at, .. } if at == &[dir.path().join("a")]), "{err}");
    assert_eq!(fake.mountinfo_reads() - before, 1);
}

#[test]
fn a_hostpath_publish_reads_the_mount_table_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, engine) = node(dir.path());
    let vol = create(&engine, "dirs", false);
    let staging = dir.path().join("staging");
    stage(&engine, &vol.id, &staging, false);
    // The fake binds nothing: where the kernel would show the volume's directory through
    // the staging mount, a link to it does.
    std::fs::remove_dir(&staging).expect("the empty staging directory");
    std::os::unix::fs::symlink(dir.path().join("dirs/volumes").join(&vol.key), &staging).expect("link");
    let req = publish(&vol.id, &staging, &dir.path().join("target"), cap(false, AccessMode::SingleNodeWriter), true);
    assert_eq!(reads_of_a_publish(&fake, &engine, &req), 1);
    let bound: Vec<PathBuf> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Mount { source: Some(s), target, flags, .. } if flags == MsFlags::MS_BIND && s == staging => {
                Some(target)
            }
            _ => None,
        })
        .collect();
    assert_eq!(bound, [dir.path().join("target")]);
}
