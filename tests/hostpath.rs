//! hostPath volumes end to end: the real binary over a unix socket, pools on btrfs, xfs
//! and ext4 filesystems created in image files, real mounts checked in mountinfo.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

struct Published {
    staging: PathBuf,
    target: PathBuf,
}

async fn stage_and_publish(b: &mut Berth, scratch: &Path, volume_id: &str, tag: &str, readonly: bool) -> Published {
    let staging = scratch.join(format!("staging-{tag}"));
    let pods = scratch.join(format!("pod-{tag}"));
    fs::create_dir_all(&pods).expect("mkdir");
    let target = pods.join("mount");
    b.node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwo()),
            ..Default::default()
        })
        .await
        .expect("stage");
    b.node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            readonly,
            ..Default::default()
        })
        .await
        .expect("publish");
    Published { staging, target }
}

async fn unpublish_and_unstage(b: &mut Berth, volume_id: &str, p: &Published) {
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: p.target.display().to_string(),
        })
        .await
        .expect("unpublish");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: p.staging.display().to_string(),
        })
        .await
        .expect("unstage");
    assert!(!p.target.exists(), "unpublish removes the target");
}

fn write_bytes(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    let chunk = vec![0xabu8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        f.sync_all()?;
        left -= n;
    }
    Ok(())
}

/// berth with one hostPath pool enforcing sizes on a fresh 1 GiB btrfs image; `None`, after
/// saying why, where the test cannot run here.
async fn btrfs_pool(test: &str, scratch: &Scratch) -> Option<(FsImage, PathBuf, Berth)> {
    if !require_root(test) {
        return None;
    }
    if !have("btrfs") {
        println!("SKIPPED: {test}: btrfs-progs is not installed");
        return None;
    }
    hostpath_on(scratch, test, ("btrfs", "1G"), "required", &[]).await
}

async fn volume_stats(
    b: &mut Berth,
    id: &str,
    target: &Path,
) -> Result<tonic::Response<pb::NodeGetVolumeStatsResponse>, tonic::Status> {
    b.node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
}

fn is_mounted(path: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    berth::mount::mountinfo::parse(&text).expect("parse").iter().any(|e| e.mount_point == path)
}

async fn create(b: &mut Berth, name: &str, bytes: i64) -> pb::Volume {
    b.controller.create_volume(create_req(name, bytes)).await.expect("create").into_inner().volume.expect("volume")
}

#[tokio::test]
async fn btrfs_volume_lifecycle_enforces_size_snapshots_and_expands() {
    let test = "btrfs_volume_lifecycle_enforces_size_snapshots_and_expands";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((_fs_img, pool, mut b)) = hostpath_on(&scratch, test, ("btrfs", "1G"), "required", &[]).await else {
        return;
    };

    let vol = create(&mut b, "pvc-btrfs", 16 * MIB).await;
    assert_eq!(vol.capacity_bytes, 16 * MIB);
    assert_eq!(vol.volume_context["berth.csi.io/capacity-enforcement"], "btrfs-qgroup");
    let again = create(&mut b, "pvc-btrfs", 16 * MIB).await;
    assert_eq!(again.volume_id, vol.volume_id, "same name, same volume");
    let key = vol.volume_id.rsplit(':').next().expect("key");
    let dir = pool.join("volumes").join(key);
    assert_eq!(fs::metadata(&dir).expect("volume dir").ino(), 256, "each volume is a btrfs subvolume");

    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "a", false).await;
    assert!(is_mounted(&p.staging) && is_mounted(&p.target));
    fs::write(p.target.join("hello.txt"), b"v1").expect("write through the publish target");
    assert_eq!(fs::read(dir.join("hello.txt")).expect("visible in pool"), b"v1");

    let err =
        write_bytes(&p.target.join("big"), 32 << 20).expect_err("the qgroup limit stops a 32 MiB write into 16 MiB");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    fs::remove_file(p.target.join("big")).expect("rm");

    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32).expect("bytes");
    assert_eq!(bytes.total, 16 * MIB, "stats report this volume's limit, not the disk");
    assert!(!stats.volume_condition.expect("condition").abnormal);

    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: vol.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snap.ready_to_use);
    fs::write(p.target.join("hello.txt"), b"v2").expect("source moves on");

    let mut restore = create_req("pvc-restored", 16 * MIB);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let restored = b.controller.create_volume(restore).await.expect("restore").into_inner().volume.expect("volume");
    let rkey = restored.volume_id.rsplit(':').next().expect("key");
    assert_eq!(fs::read(pool.join("volumes").join(rkey).join("hello.txt")).expect("restored file"), b"v1");

    let mut clone = create_req("pvc-clone", 16 * MIB);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: vol.volume_id.clone(),
        })),
    });
    let cloned = b.controller.create_volume(clone).await.expect("clone").into_inner().volume.expect("volume");
    let ckey = cloned.volume_id.rsplit(':').next().expect("key");
    assert_eq!(fs::read(pool.join("volumes").join(ckey).join("hello.txt")).expect("cloned file"), b"v2");

    let expanded = b
        .controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("expand")
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 64 * MIB);
    write_bytes(&p.target.join("big"), 32 << 20).expect("after expansion the same write fits");

    let in_use = b
        .controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() })
        .await;
    assert_eq!(code(in_use), Code::FailedPrecondition, "a mounted volume is not deleted");
    unpublish_and_unstage(&mut b, &vol.volume_id, &p).await;
    assert!(!is_mounted(&p.target) && !is_mounted(&p.staging));

    for id in [&vol.volume_id, &restored.volume_id, &cloned.volume_id] {
        b.controller
            .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
            .await
            .expect("delete");
    }
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() })
        .await
        .expect("delete snapshot");
    assert!(!dir.exists(), "the subvolume is gone");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0);
    assert_eq!(fs::read_dir(pool.join("snapshots")).expect("ls").count(), 0);
    assert!(b.stop().success());
}

#[tokio::test]
async fn xfs_pool_takes_reflink_snapshots_and_reports_unenforced_sizes() {
    let test = "xfs_pool_takes_reflink_snapshots_and_reports_unenforced_sizes";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((fs_img, pool, mut b)) = hostpath_on(&scratch, test, ("xfs", "600M"), "auto", &[]).await else {
        return;
    };
    let vol = create(&mut b, "pvc-xfs", 32 * MIB).await;
    assert_eq!(vol.volume_context["berth.csi.io/capacity-enforcement"], "none", "xfs without prjquota cannot enforce");

    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "x", false).await;
    write_bytes(&p.target.join("data"), 8 << 20).expect("write");
    fs::create_dir(p.target.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink("/etc/passwd", p.target.join("sub/link")).expect("symlink");

    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: vol.volume_id.clone(),
            name: "s".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snap.size_bytes >= 8 << 20, "snapshot size is the data it holds: {}", snap.size_bytes);
    let skey = snap.snapshot_id.rsplit(':').next().expect("key");
    let sdir = pool.join("snapshots").join(skey);
    assert_eq!(fs::read_link(sdir.join("sub/link")).expect("link copied as a link"), Path::new("/etc/passwd"));
    assert_eq!(fs::metadata(sdir.join("data")).expect("data").len(), 8 << 20);
    let before = fs::metadata(&fs_img.mount).map(|_| ()).ok();
    assert!(before.is_some());

    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32).expect("bytes");
    assert_eq!(bytes.total, 32 * MIB);
    assert!(bytes.used >= 8 << 20 && bytes.used < 16 << 20, "used counts this volume only: {}", bytes.used);

    unpublish_and_unstage(&mut b, &vol.volume_id, &p).await;
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("delete snap");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id, ..Default::default() })
        .await
        .expect("delete");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0);
}

#[tokio::test]
async fn required_enforcement_on_plain_ext4_fails_clearly() {
    let test = "required_enforcement_on_plain_ext4_fails_clearly";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((_fs_img, pool, mut b)) = hostpath_on(&scratch, test, ("ext4", "64M"), "required", &[]).await else {
        return;
    };
    let err = b.controller.create_volume(create_req("pvc", MIB)).await.expect_err("cannot enforce");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("requires enforced capacity"), "{}", err.message());
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0, "nothing was created");
}

#[tokio::test]
async fn readonly_publish_refuses_writes_and_state_survives_restart() {
    let test = "readonly_publish_refuses_writes_and_state_survives_restart";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;
    let vol = create(&mut b, "pvc-ro", MIB).await;
    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "ro", true).await;
    let err = fs::write(p.target.join("x"), b"no").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // SIGTERM leaves mounts in place; a restart finds the volume and the same publish is a no-op.
    assert!(b.stop().success());
    assert!(is_mounted(&p.target), "stopping berth never unmounts");
    b.restart().await;
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.entries.len(), 1);
    b.node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: p.staging.display().to_string(),
            target_path: p.target.display().to_string(),
            volume_capability: Some(rwo()),
            readonly: true,
            ..Default::default()
        })
        .await
        .expect("idempotent publish after restart");
    let rw_again = b
        .node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: p.staging.display().to_string(),
            target_path: p.target.display().to_string(),
            volume_capability: Some(rwo()),
            readonly: false,
            ..Default::default()
        })
        .await;
    assert_eq!(code(rw_again), Code::AlreadyExists);
    unpublish_and_unstage(&mut b, &vol.volume_id, &p).await;
}

#[tokio::test]
async fn reboot_replay_remounts_a_bare_staging_directory() {
    let test = "reboot_replay_remounts_a_bare_staging_directory";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;
    let vol = create(&mut b, "pvc-reboot", MIB).await;
    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "r", false).await;
    fs::write(p.target.join("data"), b"kept").expect("write");

    b.stop();
    unmount_below(&p.target);
    unmount_below(&p.staging);
    assert!(p.staging.is_dir() && !is_mounted(&p.staging), "a reboot leaves bare directories");
    b.restart().await;

    let not_staged = b
        .node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: p.staging.display().to_string(),
            target_path: p.target.display().to_string(),
            volume_capability: Some(rwo()),
            ..Default::default()
        })
        .await;
    assert_eq!(code(not_staged), Code::FailedPrecondition, "a bare staging dir is never bind-mounted as the volume");
    let again = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "r", false).await;
    assert_eq!(fs::read(again.target.join("data")).expect("data survived"), b"kept");
    unpublish_and_unstage(&mut b, &vol.volume_id, &again).await;
}

#[tokio::test]
async fn static_volume_publishes_an_existing_directory_and_refuses_symlinks() {
    let test = "static_volume_publishes_an_existing_directory_and_refuses_symlinks";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    fs::create_dir_all(pool.join("shared/app")).expect("mkdir");
    fs::write(pool.join("shared/app/config"), b"admin data").expect("write");
    std::os::unix::fs::symlink("/etc", pool.join("shared/evil")).expect("symlink");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;

    let stage = |sub: &str, staging: &Path| pb::NodeStageVolumeRequest {
        volume_id: "static-pv-1".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        volume_context: [("subPath".to_string(), sub.to_string())].into(),
        ..Default::default()
    };
    let staging = scratch.path().join("static-staging");
    b.node.node_stage_volume(stage("shared/app", &staging)).await.expect("stage static");
    assert_eq!(fs::read(staging.join("config")).expect("read"), b"admin data");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: "static-pv-1".into(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");

    for bad in ["shared/evil", "../", "shared/../../etc", "/etc", "volumes/x", "shared//app", ""] {
        let result = b.node.node_stage_volume(stage(bad, &staging)).await;
        let c = code(result);
        assert!(matches!(c, Code::InvalidArgument | Code::NotFound), "{bad:?}: {c:?}");
    }
    assert!(mounts_below(scratch.path()).iter().all(|m| !m.mount_point.starts_with(&staging)), "nothing was mounted");
}

#[tokio::test]
async fn ephemeral_volume_lives_and_dies_with_the_pod() {
    let test = "ephemeral_volume_lives_and_dies_with_the_pod";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let state = scratch.path().join("state");
    // Without the pool's opt-in, no ephemeral volume.
    let mut b = Berth::start(scratch.path(), &hostpath_config(&state, &pool, "auto"), "node-a", &[]).await;
    let refused = pb::NodePublishVolumeRequest {
        volume_id: "csi-00000000000000ff".into(),
        target_path: scratch.path().join("pod-refused/mount").display().to_string(),
        volume_capability: Some(rwo()),
        volume_context: [("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(code(b.node.node_publish_volume(refused.clone()).await), Code::FailedPrecondition);
    b.stop();
    let mut b = Berth::start(
        scratch.path(),
        &(hostpath_config(&state, &pool, "auto") + "    ephemeral: true\n"),
        "node-a",
        &[],
    )
    .await;
    // Opted in, but no bigger than the pool's free space.
    let mut huge = refused;
    huge.volume_context.insert("size".into(), "1Ei".into());
    assert_eq!(code(b.node.node_publish_volume(huge).await), Code::ResourceExhausted);
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0, "nothing was created");
    let pod = scratch.path().join("pod-eph");
    fs::create_dir_all(&pod).expect("mkdir");
    let target = pod.join("mount");
    let req = pb::NodePublishVolumeRequest {
        volume_id: "csi-0123456789abcdef".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        volume_context: [
            ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
            ("csi.storage.k8s.io/serviceAccount.tokens".to_string(), "SENTINEL-TOKEN-42".to_string()),
            ("size".to_string(), "8Mi".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    b.node.node_publish_volume(req.clone()).await.expect("publish ephemeral");
    b.node.node_publish_volume(req).await.expect("idempotent");
    fs::write(target.join("scratch"), b"tmp").expect("write");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 1);
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: "csi-0123456789abcdef".into(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0, "the ephemeral volume's data is gone");
    assert!(!b.logs().contains("SENTINEL-TOKEN-42"), "the service-account token never reaches the log");
}

#[tokio::test]
async fn secrets_never_reach_logs_or_error_messages() {
    let test = "secrets_never_reach_logs_or_error_messages";
    if !require_root(test) {
        return;
    }
    const SENTINEL: &str = "SENTINEL-SECRET-7f3a";
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &["--log-level", "trace"]).await;
    let secrets: std::collections::HashMap<String, String> = [("password".to_string(), SENTINEL.to_string())].into();
    let mut messages = Vec::new();

    let mut req = create_req("pvc-secret", MIB);
    req.secrets = secrets.clone();
    let vol = b.controller.create_volume(req.clone()).await.expect("create").into_inner().volume.expect("vol");
    req.parameters.insert("bogus".into(), "x".into());
    messages.push(b.controller.create_volume(req).await.expect_err("bad parameter").message().to_string());
    let staging = scratch.path().join("st");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets.clone(),
        volume_context: [("csi.storage.k8s.io/serviceAccount.tokens".to_string(), SENTINEL.to_string())].into(),
        ..Default::default()
    };
    b.node.node_stage_volume(stage.clone()).await.expect("stage");
    let pods = scratch.path().join("pods");
    fs::create_dir_all(&pods).expect("mkdir");
    let publish = pb::NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: pods.join("t").display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets.clone(),
        volume_context: stage.volume_context.clone(),
        ..Default::default()
    };
    b.node.node_publish_volume(publish.clone()).await.expect("publish");
    let mut bad = publish.clone();
    bad.volume_id = "fake-vol-id-1".into();
    messages.push(b.node.node_publish_volume(bad).await.expect_err("unknown").message().to_string());
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: publish.target_path.clone(),
        })
        .await
        .expect("unpublish");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: stage.staging_target_path.clone(),
        })
        .await
        .expect("unstage");
    let del = pb::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), secrets };
    b.controller.delete_volume(del).await.expect("delete");

    let logs = b.logs();
    assert!(logs.contains("rpc finished"), "trace logging is on");
    assert_eq!(logs.matches(SENTINEL).count(), 0, "a secret reached the log");
    for m in messages {
        assert!(!m.contains(SENTINEL), "a secret reached an error message: {m}");
    }
}

#[tokio::test]
async fn stats_report_an_abnormal_volume_when_its_directory_vanishes() {
    let test = "stats_report_an_abnormal_volume_when_its_directory_vanishes";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;
    let vol = create(&mut b, "pvc-vanish", MIB).await;
    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "v", false).await;
    let key = vol.volume_id.rsplit(':').next().expect("key");
    fs::remove_dir(pool.join("volumes").join(key)).expect("the backing directory disappears");
    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: p.target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    let condition = stats.volume_condition.expect("condition");
    assert!(condition.abnormal, "{condition:?}");
    let got = b
        .controller
        .controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: vol.volume_id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert!(got.status.expect("status").volume_condition.expect("condition").abnormal);
    unpublish_and_unstage(&mut b, &vol.volume_id, &p).await;
}

#[tokio::test]
async fn xfs_project_quota_enforces_sizes_where_the_kernel_supports_it() {
    let test = "xfs_project_quota_enforces_sizes_where_the_kernel_supports_it";
    if !require_root(test) {
        return;
    }
    if !have("mkfs.xfs") {
        println!("SKIPPED: {test}: mkfs.xfs is not installed");
        return;
    }
    let scratch = Scratch::new();
    let image = scratch.path().join("prj.img");
    let mnt = scratch.path().join("prj");
    fs::create_dir_all(&mnt).expect("mkdir");
    sh("truncate", &["-s", "512M", image.to_str().expect("utf8")]);
    sh("mkfs.xfs", &["-q", "-f", image.to_str().expect("utf8")]);
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop,prjquota", image.to_str().expect("utf8"), mnt.to_str().expect("utf8")])
        .output()
        .expect("mount");
    if !mounted.status.success() {
        println!(
            "SKIPPED: {test}: this kernel cannot mount xfs with prjquota ({}); the project-quota path is checked call by call with the recording fake in engine::tests",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let pool = mnt.join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "required"), "node-a", &[])
            .await;
    let vol = create(&mut b, "pvc-prj", 8 * MIB).await;
    assert_eq!(vol.volume_context["berth.csi.io/capacity-enforcement"], "project-quota");
    let p = stage_and_publish(&mut b, scratch.path(), &vol.volume_id, "q", false).await;
    let err = write_bytes(&p.target.join("big"), 16 << 20).expect_err("the project quota stops the write");
    assert!(matches!(err.raw_os_error(), Some(libc::EDQUOT | libc::ENOSPC)), "{err}");
    fs::remove_file(p.target.join("big")).expect("rm");
    b.controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 32 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("expand");
    write_bytes(&p.target.join("big"), 16 << 20).expect("after expansion the write fits");
    unpublish_and_unstage(&mut b, &vol.volume_id, &p).await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id, ..Default::default() })
        .await
        .expect("delete");
}

#[tokio::test]
async fn a_single_writer_publish_bars_every_other_publish_and_ephemeral_never_takes_a_persistent_volume() {
    let test = "a_single_writer_publish_bars_every_other_publish_and_ephemeral_never_takes_a_persistent_volume";
    if !require_root(test) {
        return;
    }
    use pb::volume_capability::access_mode::Mode;
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b = Berth::start(
        scratch.path(),
        &(hostpath_config(&scratch.path().join("state"), &pool, "auto") + "    ephemeral: true\n"),
        "node-a",
        &[],
    )
    .await;
    let id = b.controller.create_volume(create_req("pvc-rwop", MIB)).await.expect("create").into_inner().volume;
    let id = id.expect("volume").volume_id;
    let staging = scratch.path().join("staging");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(Mode::SingleNodeSingleWriter)),
        ..Default::default()
    };
    b.node.node_stage_volume(stage).await.expect("stage");
    let publish = |target: &Path, mode: Mode| pb::NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(mode)),
        ..Default::default()
    };
    let pods = scratch.path().join("pods");
    fs::create_dir_all(&pods).expect("mkdir");
    let (first, second) = (pods.join("first"), pods.join("second"));
    b.node.node_publish_volume(publish(&first, Mode::SingleNodeSingleWriter)).await.expect("the single writer");
    for mode in [Mode::SingleNodeWriter, Mode::SingleNodeMultiWriter, Mode::SingleNodeReaderOnly] {
        let other = b.node.node_publish_volume(publish(&second, mode)).await;
        assert_eq!(code(other), Code::FailedPrecondition, "{mode:?} beside a ReadWriteOncePod publish");
    }
    // The claim is a record: a restart keeps it.
    b.restart().await;
    let other = b.node.node_publish_volume(publish(&second, Mode::SingleNodeWriter)).await;
    assert_eq!(code(other), Code::FailedPrecondition, "after a restart");
    assert!(mounts_below(&pods).iter().all(|m| m.mount_point == first), "one publish only");

    // An ephemeral publish naming the persistent volume gets nothing.
    let mut ephemeral = publish(&second, Mode::SingleNodeWriter);
    ephemeral.staging_target_path.clear();
    ephemeral.volume_context = [("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string())].into();
    assert_eq!(code(b.node.node_publish_volume(ephemeral).await), Code::AlreadyExists);
    assert!(mounts_below(&pods).iter().all(|m| m.mount_point == first), "nothing mounted");

    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: first.display().to_string(),
        })
        .await
        .expect("unpublish");
    b.node.node_publish_volume(publish(&second, Mode::SingleNodeWriter)).await.expect("free again");
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: second.display().to_string(),
        })
        .await
        .expect("unpublish");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    assert!(mounts_below(scratch.path()).is_empty());
}

#[tokio::test]
async fn a_clone_or_restore_holds_its_source_until_the_copy_is_whole() {
    let test = "a_clone_or_restore_holds_its_source_until_the_copy_is_whole";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    // ext4: clones and restores are file-by-file copies.
    let Some((_fs_img, pool, mut b)) = hostpath_on(&scratch, test, ("ext4", "256M"), "auto", &[]).await else {
        return;
    };
    let source = b.controller.create_volume(create_req("pvc-source", 64 * MIB)).await.expect("create");
    let source = source.into_inner().volume.expect("volume").volume_id;
    let key = source.rsplit(':').next().expect("key");
    const FILES: usize = 200;
    for i in 0..FILES {
        fs::write(pool.join("volumes").join(key).join(format!("f{i:03}")), format!("{i}")).expect("write");
    }
    let snapshot = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: source.clone(),
            name: "snap-source".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot")
        .snapshot_id;
    // Each file copied now takes 10 ms: the copies below take seconds.
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.copy=sleep(10)".into()));
    b.restart().await;

    for (name, from, id) in [
        (
            "pvc-clone",
            pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
                volume_id: source.clone(),
            }),
            source.clone(),
        ),
        (
            "pvc-restore",
            pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                snapshot_id: snapshot.clone(),
            }),
            snapshot.clone(),
        ),
    ] {
        let mut req = create_req(name, 64 * MIB);
        req.volume_content_source = Some(pb::VolumeContentSource { r#type: Some(from) });
        let mut controller = b.controller.clone();
        let copy = tokio::spawn(async move { controller.create_volume(req).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!copy.is_finished(), "{name}: the copy is still running");
        let deleted = if id == source {
            b.controller
                .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
                .await
                .map(|_| ())
        } else {
            b.controller
                .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: id.clone(), ..Default::default() })
                .await
                .map(|_| ())
        };
        assert_eq!(code(deleted), Code::Aborted, "{name}: its source is not deleted under the copy");
        let made = copy.await.expect("join").expect("the copy completes").into_inner().volume.expect("volume");
        let made_key = made.volume_id.rsplit(':').next().expect("key").to_string();
        let copied = fs::read_dir(pool.join("volumes").join(&made_key)).expect("ls").count();
        assert_eq!(copied, FILES, "{name}: every file of the source");
    }
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snapshot, ..Default::default() })
        .await
        .expect("deleted once no restore reads it");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: source, ..Default::default() })
        .await
        .expect("deleted once no clone reads it");
    b.stop();
}

#[tokio::test]
async fn a_new_pool_whose_directory_is_missing_is_not_made_unless_its_configuration_says_so() {
    let scratch = Scratch::new();
    // A data disk's mount point that does not exist yet: the disk is not mounted.
    let pool = scratch.path().join("mnt/disk1/berth");
    let config = format!(
        "stateDir: {}\npools:\n  - {{name: disk1, type: hostpath, path: {}}}\n",
        scratch.path().join("state").display(),
        pool.display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let mut req = create_req("pvc-early", MIB);
    req.parameters.insert("pool".into(), "disk1".into());
    let status = b.controller.create_volume(req.clone()).await.expect_err("no pool on the root disk");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("does not exist") && status.message().contains("createPath"),
        "{}",
        status.message()
    );
    assert!(!scratch.path().join("mnt").exists(), "nothing was created, not even a parent");
    b.stop();

    // The disk arrives (here: the directory is made); the next start makes it the pool.
    fs::create_dir_all(&pool).expect("mkdir");
    b.restart().await;
    b.controller.create_volume(req).await.expect("created once the directory is there");
    assert!(pool.join(".berth-pool").exists(), "the pool is marked");
    b.stop();
}

#[tokio::test]
async fn a_pool_whose_disk_is_not_mounted_or_is_read_only_answers_precisely_and_is_never_recreated() {
    let test = "a_pool_whose_disk_is_not_mounted_or_is_read_only_answers_precisely_and_is_never_recreated";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((disk, pool, mut b)) = common::hostpath_on(&scratch, test, ("ext4", "128M"), "auto", &[]).await else {
        return;
    };
    let vol = b.controller.create_volume(create_req("pvc-kept", MIB)).await.expect("create");
    let id = vol.into_inner().volume.expect("volume").volume_id;
    assert!(pool.join(".berth-pool").exists(), "the pool is marked");
    b.stop();
    let image = scratch.path().join("ext4.img").display().to_string();

    // The disk is not mounted at boot: its mount point is an empty directory.
    sh("umount", &[disk.mount.to_str().expect("utf8")]);
    b.restart().await;
    let created = b.controller.create_volume(create_req("pvc-new", MIB)).await;
    let status = created.expect_err("no pool on the wrong disk");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("probably not mounted"), "{}", status.message());
    let staging = scratch.path().join("staging");
    let stage = |readonly: bool| pb::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(if readonly {
            mount_cap(pb::volume_capability::access_mode::Mode::SingleNodeReaderOnly)
        } else {
            rwo()
        }),
        ..Default::default()
    };
    assert_eq!(code(b.node.node_stage_volume(stage(false)).await), Code::Unavailable);
    let delete = pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() };
    assert_eq!(code(b.controller.delete_volume(delete.clone()).await), Code::Unavailable, "the record stays");
    assert!(!pool.exists(), "nothing was created on the root disk");
    b.stop();

    // Mounted read-only: precise codes, and no read-write stage whose pod would get EROFS.
    sh("mount", &["-o", "loop,ro", &image, disk.mount.to_str().expect("utf8")]);
    b.restart().await;
    assert_eq!(code(b.controller.create_volume(create_req("pvc-new", MIB)).await), Code::FailedPrecondition);
    assert_eq!(code(b.node.node_stage_volume(stage(false)).await), Code::FailedPrecondition);
    assert_eq!(code(b.controller.delete_volume(delete.clone()).await), Code::FailedPrecondition);
    b.node.node_stage_volume(stage(true)).await.expect("a read-only stage works");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    b.stop();

    sh("umount", &[disk.mount.to_str().expect("utf8")]);
    sh("mount", &["-o", "loop", &image, disk.mount.to_str().expect("utf8")]);
    b.restart().await;
    b.controller.delete_volume(delete).await.expect("the right disk, writable: deleted");
    b.stop();
}

#[tokio::test]
async fn subvolumes_a_pod_makes_inside_its_volume_are_limited_counted_refused_for_snapshots_and_deleted() {
    let test = "subvolumes_a_pod_makes_inside_its_volume_are_limited_counted_refused_for_snapshots_and_deleted";
    let scratch = Scratch::new();
    let Some((fs_img, pool, mut b)) = btrfs_pool(test, &scratch).await else { return };
    let vol = b.controller.create_volume(create_req("pvc-nested", 64 * MIB)).await.expect("create");
    let id = vol.into_inner().volume.expect("volume").volume_id;
    let p = stage_and_publish(&mut b, scratch.path(), &id, "n", false).await;
    // The pod makes a subvolume (no privilege needed) and fills it.
    sh("btrfs", &["-q", "subvolume", "create", p.target.join("inner").to_str().expect("utf8")]);
    fs::create_dir_all(p.target.join("inner/deeper")).expect("mkdir");
    sh("btrfs", &["-q", "subvolume", "create", p.target.join("inner/deeper/sub").to_str().expect("utf8")]);
    write_bytes(&p.target.join("inner/deeper/sub/data"), 8 << 20).expect("write");
    sh("sync", &[]);

    let stats = volume_stats(&mut b, &id, &p.target).await.expect("stats").into_inner();
    assert!(stats.usage[0].used >= 8 * MIB, "the nested data counts: {:?}", stats.usage[0]);
    assert_eq!(stats.usage.len(), 1, "btrfs has no inode count: none is reported, not zero free: {:?}", stats.usage);

    // The nested subvolumes now count toward the volume's 64 MiB: filling one fails
    // with EDQUOT instead of taking the pool's space.
    let err = write_bytes(&p.target.join("inner/deeper/sub/more"), 96 << 20).expect_err("the limit holds");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // A full volume still grows and is still deleted (berth's qgroup calls are not
    // charged to the volume).
    let expanded = b
        .controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 80 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("expand a full volume")
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 80 * MIB);
    // A subvolume made later is found without any call (berth looks every few seconds).
    let later = p.target.join("later");
    sh("btrfs", &["-q", "subvolume", "create", later.to_str().expect("utf8")]);
    let rootid =
        |path: &Path| sh("btrfs", &["inspect-internal", "rootid", path.to_str().expect("utf8")]).trim().to_string();
    let (volume_group, later_group) = (format!("1/{}", rootid(&p.target)), format!("0/{}", rootid(&later)));
    let adopted = || {
        let show = sh("btrfs", &["qgroup", "show", "-p", "--raw", fs_img.mount.to_str().expect("utf8")]);
        show.lines().any(|l| l.starts_with(&format!("{later_group} ")) && l.contains(&volume_group))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !adopted() {
        assert!(std::time::Instant::now() < deadline, "{later_group} never joined {volume_group}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let err = write_bytes(&later.join("fill"), 96 << 20).expect_err("the grown limit holds");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // The volume stays full from here on: snapshots are refused and delete works.

    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-nested".into(),
            ..Default::default()
        })
        .await;
    let status = snap.expect_err("a snapshot would miss the nested data");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("inner/deeper/sub"), "{}", status.message());
    let mut clone = create_req("pvc-clone", 80 * MIB);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: id.clone(),
        })),
    });
    assert_eq!(code(b.controller.create_volume(clone).await), Code::FailedPrecondition);

    unpublish_and_unstage(&mut b, &id, &p).await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
        .await
        .expect("deleted, nested subvolumes and all");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0, "nothing left");
    let show = sh("btrfs", &["qgroup", "show", "--raw", fs_img.mount.to_str().expect("utf8")]);
    assert!(!show.lines().any(|l| l.starts_with("1/")), "the volume's quota group is gone too:\n{show}");
    b.stop();
}

#[tokio::test]
async fn btrfs_volume_stats_come_from_the_quota_group_without_a_walk() {
    let test = "btrfs_volume_stats_come_from_the_quota_group_without_a_walk";
    let scratch = Scratch::new();
    let Some((_disk, _pool, mut b)) = btrfs_pool(test, &scratch).await else { return };
    // Any walk of a volume's tree fails: stats must not need one.
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.walk=error".into()));
    b.restart().await;
    let vol = b.controller.create_volume(create_req("pvc-counted", 64 * MIB)).await.expect("create");
    let id = vol.into_inner().volume.expect("volume").volume_id;
    let p = stage_and_publish(&mut b, scratch.path(), &id, "c", false).await;
    for i in 0..1000 {
        fs::write(p.target.join(format!("f{i}")), b"x").expect("write");
    }
    write_bytes(&p.target.join("data"), 12 << 20).expect("write");
    // btrfs counts a volume's bytes at each transaction commit; `sync` makes one now.
    sh("sync", &[]);
    let stats = volume_stats(&mut b, &id, &p.target).await.expect("stats without a walk").into_inner();
    let bytes = &stats.usage[0];
    assert!(bytes.used >= 12 * MIB && bytes.used < 16 * MIB, "{bytes:?}");
    assert_eq!(bytes.total, 64 * MIB);
    assert_eq!(stats.usage.len(), 1, "btrfs keeps no inode count per volume: none is reported");
    unpublish_and_unstage(&mut b, &id, &p).await;
    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.expect("delete");
    b.stop();
}

#[tokio::test]
async fn a_reflink_snapshot_of_a_sparse_file_reports_what_a_restore_needs() {
    let test = "a_reflink_snapshot_of_a_sparse_file_reports_what_a_restore_needs";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((_fs_img, pool, mut b)) = hostpath_on(&scratch, test, ("xfs", "512M"), "auto", &[]).await else {
        return;
    };
    let vol = b.controller.create_volume(create_req("pvc-sparse", 64 * MIB)).await.expect("create");
    let id = vol.into_inner().volume.expect("volume").volume_id;
    let key = id.rsplit(':').next().expect("key");
    // One byte at the end of a 1 TiB file.
    let f = fs::File::create(pool.join("volumes").join(key).join("sparse")).expect("create");
    f.set_len(1 << 40).expect("truncate");
    std::os::unix::fs::FileExt::write_at(&f, b"x", (1 << 40) - 1).expect("write");
    drop(f);
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-sparse".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snap.size_bytes < 64 * MIB, "the snapshot needs {} bytes", snap.size_bytes);
    let mut restore = create_req("pvc-restored", 64 * MIB);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    b.controller.create_volume(restore).await.expect("restored into a volume of the source's size");
    b.stop();
}

#[tokio::test]
async fn a_huge_volume_slows_its_own_stats_not_every_volumes() {
    let test = "a_huge_volume_slows_its_own_stats_not_every_volumes";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "none"), "node-a", &[])
            .await;
    let mut ids = Vec::new();
    for name in ["pvc-huge", "pvc-small"] {
        let v = b.controller.create_volume(create_req(name, MIB)).await.expect("create").into_inner();
        ids.push(v.volume.expect("volume").volume_id);
    }
    let huge = stage_and_publish(&mut b, scratch.path(), &ids[0], "huge", false).await;
    let small = stage_and_publish(&mut b, scratch.path(), &ids[1], "small", false).await;
    // A pod's 100,000 empty files.
    let dir = huge.target.join("many");
    fs::create_dir(&dir).expect("mkdir");
    for i in 0..100_000 {
        fs::File::create(dir.join(i.to_string())).expect("create");
    }
    let stats = |id: &str, path: &Path| pb::NodeGetVolumeStatsRequest {
        volume_id: id.to_string(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    };
    let mut node = b.node.clone();
    let huge_req = stats(&ids[0], &huge.target);
    let walking = tokio::spawn(async move {
        let started = std::time::Instant::now();
        node.node_get_volume_stats(huge_req).await.expect("stats of the huge volume");
        started.elapsed()
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let got = b.node.node_get_volume_stats(stats(&ids[1], &small.target)).await.expect("stats").into_inner();
    let small_took = started.elapsed();
    let huge_took = walking.await.expect("join");
    assert!(got.usage[0].total > 0);
    assert!(small_took * 4 < huge_took, "the small volume's stats took {small_took:?}, the huge one's {huge_took:?}");
    unpublish_and_unstage(&mut b, &ids[0], &huge).await;
    unpublish_and_unstage(&mut b, &ids[1], &small).await;
    b.stop();
}
