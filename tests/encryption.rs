//! Encryption at rest, with the real binary on real filesystems: hostPath volumes under
//! fscrypt on an ext4 image with the `encrypt` feature. What a thief of the disk finds,
//! what a wrong or missing key gets, and what a crash between adding a key and mounting
//! leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;
const KEY: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";
const PLAINTEXT: &str = "ledger: account 4711 owes 1,000,000 EUR";
const FILE_NAME: &str = "customer-ledger.txt";

fn secrets(key: &str) -> HashMap<String, String> {
    [("encryptionKey".to_string(), key.to_string())].into()
}

fn other_key() -> String {
    "5a".repeat(64)
}

fn encrypted(name: &str, key: Option<&str>) -> pb::CreateVolumeRequest {
    let mut req = create_req(name, 16 * MIB);
    req.parameters.insert("encryption".into(), "fscrypt".into());
    req.secrets = key.map(secrets).unwrap_or_default();
    req
}

fn stage_req(volume_id: &str, staging: &Path, key: Option<&str>) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: key.map(secrets).unwrap_or_default(),
        ..Default::default()
    }
}

async fn unstage(b: &mut Berth, volume_id: &str, staging: &Path) {
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: volume_id.to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
}

fn key_of(id: &str) -> String {
    id.rsplit(':').next().expect("key").to_string()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// berth with one hostPath pool on a fresh ext4 image that can encrypt.
async fn encrypting_pool(scratch: &Scratch, test: &str, extra: &[&str]) -> Option<(FsImage, PathBuf, Berth)> {
    let disk = FsImage::with_options(scratch, test, "ext4", "256M", &["-O", "encrypt"])?;
    let pool = disk.mount.join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let b = Berth::start(scratch.path(), &config, "node-a", extra).await;
    Some((disk, pool, b))
}

#[tokio::test]
async fn an_encrypted_volume_is_ciphertext_on_disk_and_reads_back_with_its_key_only() {
    let test = "an_encrypted_volume_is_ciphertext_on_disk_and_reads_back_with_its_key_only";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((disk, pool, mut b)) = encrypting_pool(&scratch, test, &[]).await else {
        return;
    };
    // No key at creation: the volume gets its key at its first stage.
    let vol = b.controller.create_volume(encrypted("pvc-ledger", None)).await.expect("create").into_inner();
    let id = vol.volume.expect("volume").volume_id;
    let dir = pool.join("volumes").join(key_of(&id));
    let staging = scratch.path().join("staging");

    let missing = b.node.node_stage_volume(stage_req(&id, &staging, None)).await.expect_err("no key");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("node-stage-secret-name"), "{}", missing.message());
    let malformed_key = "not-a-key-but-a-secret-all-the-same";
    let malformed = b.node.node_stage_volume(stage_req(&id, &staging, Some(malformed_key))).await.expect_err("bad");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(!malformed.message().contains(malformed_key), "never echoed: {}", malformed.message());

    b.node.node_stage_volume(stage_req(&id, &staging, Some(KEY))).await.expect("stage with the key");
    fs::write(staging.join(FILE_NAME), PLAINTEXT.repeat(100)).expect("write through the stage");
    unstage(&mut b, &id, &staging).await;
    let names = names_in(&dir);
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], FILE_NAME, "with the key removed, names are ciphertext");
    assert!(fs::read(dir.join(&names[0])).is_err(), "and contents unreadable");

    // A stolen disk: neither the data nor the file's name is on it.
    b.stop();
    disk.remount_after(|image| {
        let bytes = fs::read(image).expect("read the image");
        assert!(!contains(&bytes, PLAINTEXT.as_bytes()), "the plaintext is on the disk");
        assert!(!contains(&bytes, FILE_NAME.as_bytes()), "the file name is on the disk");
    });
    b.restart().await;

    let wrong = b.node.node_stage_volume(stage_req(&id, &staging, Some(&other_key()))).await.expect_err("wrong key");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    assert!(wrong.message().contains("not the key of volume"), "{}", wrong.message());
    assert_ne!(names_in(&dir), vec![FILE_NAME.to_string()], "a wrong key reveals nothing");
    b.node.node_stage_volume(stage_req(&id, &staging, Some(KEY))).await.expect("stage with the key");
    assert_eq!(fs::read_to_string(staging.join(FILE_NAME)).expect("read"), PLAINTEXT.repeat(100));

    // A snapshot of the staged volume needs no key of its own; its restore does.
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-ledger".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot while staged")
        .into_inner()
        .snapshot
        .expect("snapshot");
    unstage(&mut b, &id, &staging).await;
    let snap_dir = pool.join("snapshots").join(key_of(&snap.snapshot_id));
    assert_ne!(names_in(&snap_dir), vec![FILE_NAME.to_string()], "the snapshot is encrypted too");
    let from_snapshot = |name: &str, key: Option<&str>| {
        let mut req = encrypted(name, key);
        req.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            })),
        });
        req
    };
    let keyless = b.controller.create_volume(from_snapshot("pvc-restored", None)).await.expect_err("no key");
    assert_eq!(keyless.code(), Code::InvalidArgument);
    assert!(keyless.message().contains("provisioner-secret-name"), "{}", keyless.message());
    let wrong = b.controller.create_volume(from_snapshot("pvc-restored", Some(&other_key()))).await;
    assert_eq!(wrong.expect_err("wrong key").code(), Code::PermissionDenied);
    let mut plain = from_snapshot("pvc-restored", Some(KEY));
    plain.parameters.remove("encryption");
    let plain = b.controller.create_volume(plain).await.expect_err("never restored as plaintext");
    assert_eq!(plain.code(), Code::InvalidArgument);
    assert!(plain.message().contains("must be encrypted too"), "{}", plain.message());

    let restored = b
        .controller
        .create_volume(from_snapshot("pvc-restored", Some(KEY)))
        .await
        .expect("restore with the key")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let mut clone = encrypted("pvc-clone", Some(KEY));
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: id.clone(),
        })),
    });
    let cloned = b
        .controller
        .create_volume(clone)
        .await
        .expect("clone with the key")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    for copy in [&restored, &cloned] {
        let copy_dir = pool.join("volumes").join(key_of(copy));
        assert_ne!(names_in(&copy_dir), vec![FILE_NAME.to_string()], "{copy} is encrypted at rest");
        let wrong = b.node.node_stage_volume(stage_req(copy, &staging, Some(&other_key()))).await;
        assert_eq!(wrong.expect_err("wrong key").code(), Code::PermissionDenied);
        b.node.node_stage_volume(stage_req(copy, &staging, Some(KEY))).await.expect("stage the copy");
        assert_eq!(fs::read_to_string(staging.join(FILE_NAME)).expect("read the copy"), PLAINTEXT.repeat(100));
        unstage(&mut b, copy, &staging).await;
    }

    for volume_id in [restored, cloned, id] {
        b.controller
            .delete_volume(pb::DeleteVolumeRequest { volume_id, ..Default::default() })
            .await
            .expect("deleted without the key");
    }
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("snapshot deleted without the key");
    assert!(names_in(&pool.join("volumes")).is_empty() && names_in(&pool.join("snapshots")).is_empty());
    b.stop();
    // The key reached no log line and no record; its identifier may.
    let logs = b.logs();
    assert!(!logs.contains(KEY) && !logs.contains(&other_key()), "a key is in the log");
    let state = fs::read_dir(scratch.path().join("state/state")).expect("state files");
    for file in state {
        let bytes = fs::read(file.expect("entry").path()).expect("read state");
        assert!(!contains(&bytes, KEY.as_bytes()), "a key is in the records");
    }
}

#[tokio::test]
async fn a_pool_that_cannot_encrypt_refuses_encrypted_volumes_before_recording_anything() {
    let test = "a_pool_that_cannot_encrypt_refuses_encrypted_volumes_before_recording_anything";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    // ext4 without the encrypt feature.
    let Some(disk) = FsImage::new(&scratch, test, "ext4", "64M") else {
        return;
    };
    let pool = disk.mount.join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let refused = b.controller.create_volume(encrypted("pvc-plain", Some(KEY))).await.expect_err("cannot encrypt");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("tune2fs -O encrypt"), "{}", refused.message());
    assert!(!refused.message().contains(KEY), "{}", refused.message());
    let mut unknown = encrypted("pvc-plain", None);
    unknown.parameters.insert("encryption".into(), "rot13".into());
    assert_eq!(code(b.controller.create_volume(unknown).await), Code::InvalidArgument);
    assert!(names_in(&pool.join("volumes")).is_empty(), "nothing was created");
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert!(listed.entries.is_empty(), "nothing was recorded");
    b.stop();
}

#[tokio::test]
async fn a_crash_between_adding_the_key_and_the_mount_leaves_no_key_behind() {
    let test = "a_crash_between_adding_the_key_and_the_mount_leaves_no_key_behind";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some((_disk, pool, mut b)) = encrypting_pool(&scratch, test, &[]).await else {
        return;
    };
    let id = b
        .controller
        .create_volume(encrypted("pvc-crash", Some(KEY)))
        .await
        .expect("create with the key")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let dir = pool.join("volumes").join(key_of(&id));
    let staging = scratch.path().join("staging");
    b.node.node_stage_volume(stage_req(&id, &staging, Some(KEY))).await.expect("stage");
    fs::write(staging.join(FILE_NAME), PLAINTEXT).expect("write");
    unstage(&mut b, &id, &staging).await;

    b.env.push(("BERTH_FAILPOINTS".into(), "node.stage.key-added=kill".into()));
    b.restart().await;
    assert!(b.node.node_stage_volume(stage_req(&id, &staging, Some(KEY))).await.is_err(), "killed");
    assert!(b.exited_within(std::time::Duration::from_secs(10)));
    // The key is in the kernel now, with nothing mounted: the data is readable on the node.
    assert_eq!(names_in(&dir), vec![FILE_NAME.to_string()], "the crash left the key in the kernel");
    b.env.clear();
    b.respawn().await;
    assert_ne!(names_in(&dir), vec![FILE_NAME.to_string()], "the next start removed the key nothing uses");
    b.node.node_stage_volume(stage_req(&id, &staging, Some(KEY))).await.expect("the stage works after the crash");
    assert_eq!(fs::read_to_string(staging.join(FILE_NAME)).expect("read"), PLAINTEXT);
    unstage(&mut b, &id, &staging).await;
    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.expect("delete");
    b.stop();
}

/// A capability for a volume mounted as `fs_type`.
fn fs_cap(fs_type: &str) -> pb::VolumeCapability {
    let mut cap = rwo();
    cap.access_type = Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume {
        fs_type: fs_type.into(),
        ..Default::default()
    }));
    cap
}

fn with_source(mut req: pb::CreateVolumeRequest, source: pb::volume_content_source::Type) -> pb::CreateVolumeRequest {
    req.volume_content_source = Some(pb::VolumeContentSource { r#type: Some(source) });
    req
}

/// Stages `volume_id` as ext4 with `key` and publishes it at `target`.
async fn stage_and_publish(
    b: &mut Berth,
    volume_id: &str,
    staging: &Path,
    target: &Path,
    key: &str,
) -> Result<(), tonic::Status> {
    let mut stage = stage_req(volume_id, staging, Some(key));
    stage.volume_capability = Some(fs_cap("ext4"));
    b.node.node_stage_volume(stage).await?;
    let publish = pb::NodePublishVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(fs_cap("ext4")),
        ..Default::default()
    };
    b.node.node_publish_volume(publish).await.map(|_| ())
}

async fn unpublish_and_unstage(b: &mut Berth, volume_id: &str, staging: &Path, target: &Path) {
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    unstage(b, volume_id, staging).await;
}

#[tokio::test]
async fn an_fscrypt_block_volume_holds_only_ciphertext_in_its_image() {
    let test = "an_fscrypt_block_volume_holds_only_ciphertext_in_its_image";
    if !require_root(test) {
        return;
    }
    if !Path::new("/sys/fs/ext4/features/encryption").exists() {
        println!("SKIPPED: {test}: this kernel's ext4 has no fscrypt (/sys/fs/ext4/features/encryption)");
        return;
    }
    let scratch = Scratch::new();
    let images = scratch.path().join("images");
    let config = format!(
        "stateDir: {}\npools:\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        scratch.path().join("state").display(),
        images.display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let block_volume = |name: &str, fs_type: &str, key: Option<&str>| {
        let mut req = encrypted(name, key);
        req.capacity_range = Some(pb::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 });
        req.volume_capabilities = vec![fs_cap(fs_type)];
        req
    };

    // fscrypt encrypts files: a raw device or a filesystem other than ext4 is refused.
    let mut raw = block_volume("pvc-raw", "ext4", Some(KEY));
    raw.volume_capabilities[0].access_type =
        Some(pb::volume_capability::AccessType::Block(pb::volume_capability::BlockVolume {}));
    let refused = b.controller.create_volume(raw).await.expect_err("raw block");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("luks2"), "{}", refused.message());
    let refused = b.controller.create_volume(block_volume("pvc-xfs", "xfs", Some(KEY))).await.expect_err("xfs");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("needs ext4"), "{}", refused.message());

    let id = b
        .controller
        .create_volume(block_volume("pvc-block-ledger", "ext4", None))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let image = images.join("volumes").join(format!("{}.img", key_of(&id)));
    let (staging, target) = (scratch.path().join("staging"), scratch.path().join("target"));
    let mut keyless = stage_req(&id, &staging, None);
    keyless.volume_capability = Some(fs_cap("ext4"));
    assert_eq!(code(b.node.node_stage_volume(keyless).await), Code::InvalidArgument);

    stage_and_publish(&mut b, &id, &staging, &target, KEY).await.expect("stage and publish with the key");
    assert_eq!(names_in(&staging), ["lost+found", "volume"], "the data lives in the encrypted directory");
    fs::write(target.join(FILE_NAME), PLAINTEXT.repeat(100)).expect("write through the pod's target");
    unpublish_and_unstage(&mut b, &id, &staging, &target).await;
    assert!(mounts_below(scratch.path()).is_empty(), "unstaged: nothing mounted, the key left with the filesystem");
    let bytes = fs::read(&image).expect("read the image");
    assert!(!contains(&bytes, PLAINTEXT.as_bytes()), "the plaintext is in the image");
    assert!(!contains(&bytes, FILE_NAME.as_bytes()), "the file name is in the image");

    let wrong = stage_and_publish(&mut b, &id, &staging, &target, &other_key()).await.expect_err("wrong key");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    assert!(mounts_below(scratch.path()).is_empty(), "a refused stage mounts nothing");
    // Expansion and stats work as for plaintext volumes: grown while unstaged, the
    // filesystem fills its new size at the next stage.
    b.controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("expand");
    stage_and_publish(&mut b, &id, &staging, &target, KEY).await.expect("stage with the key");
    assert_eq!(fs::read_to_string(target.join(FILE_NAME)).expect("read"), PLAINTEXT.repeat(100));
    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("stats of the encrypted directory")
        .into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32).expect("bytes");
    assert!(bytes.total > 100 * MIB && bytes.used > 0, "the grown filesystem: {bytes:?}");

    // A snapshot copies the image's ciphertext; its restore needs the key to read it.
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-block-ledger".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot while published")
        .into_inner()
        .snapshot
        .expect("snapshot");
    unpublish_and_unstage(&mut b, &id, &staging, &target).await;
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let from_snap = Type::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() });
    let mut restore = with_source(block_volume("pvc-block-restored", "ext4", Some(KEY)), from_snap);
    restore.capacity_range = Some(pb::CapacityRange { required_bytes: 128 * MIB, limit_bytes: 0 });
    let restored =
        b.controller.create_volume(restore).await.expect("restore").into_inner().volume.expect("volume").volume_id;
    let wrong = stage_and_publish(&mut b, &restored, &staging, &target, &other_key()).await.expect_err("wrong");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    stage_and_publish(&mut b, &restored, &staging, &target, KEY).await.expect("stage the restore");
    assert_eq!(fs::read_to_string(target.join(FILE_NAME)).expect("read the restore"), PLAINTEXT.repeat(100));
    unpublish_and_unstage(&mut b, &restored, &staging, &target).await;

    // A plaintext block volume cannot become an encrypted copy: its blocks would stay plaintext.
    let mut plain = create_req("pvc-block-plain", 64 * MIB);
    plain.volume_capabilities = vec![fs_cap("ext4")];
    let plain = b.controller.create_volume(plain).await.expect("plain").into_inner().volume.expect("volume").volume_id;
    let from_plain = Type::Volume(VolumeSource { volume_id: plain.clone() });
    let refused = b
        .controller
        .create_volume(with_source(block_volume("pvc-block-clone", "ext4", Some(KEY)), from_plain))
        .await
        .expect_err("plaintext clone");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("would stay plaintext"), "{}", refused.message());

    for volume_id in [restored, plain, id] {
        b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id, ..Default::default() }).await.expect("delete");
    }
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("delete the snapshot");
    b.stop();
    assert!(!b.logs().contains(KEY), "a key is in the log");
}
