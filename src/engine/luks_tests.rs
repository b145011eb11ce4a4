//! LUKS2 volumes of a block pool, call by call with the recording fake: this kernel has
//! no device-mapper, so the order of loop, crypt and filesystem operations, and what
//! never reaches cryptsetup, is checked here (tests/encryption.rs runs it for real where
//! device-mapper exists).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::Code;

use super::*;
use crate::config::Config;
use crate::crypt::{KEY_BYTES, Key, Scheme};
use crate::mount::fake::{Call, RecordingSyscall};
use crate::mount::{FsStat, Syscall};
use crate::state::{ContentSource, Layer, VolumeRecord};

const RIGHT: [u8; KEY_BYTES] = [0x5a; KEY_BYTES];
const WRONG: [u8; KEY_BYTES] = [0xa5; KEY_BYTES];

/// An engine on the recording fake with a block pool `disks` and a hostPath pool `dirs`
/// (also what group_tests.rs runs on).
pub(super) fn engine(fake: &Arc<RecordingSyscall>, dir: &Path) -> Engine {
    let text = format!(
        "stateDir: {}\npools:\n  - name: disks\n    type: block\n    path: {}\n    createPath: true\n  - name: dirs\n    type: hostpath\n    \
         path: {}\n    createPath: true\n",
        dir.join("state").display(),
        dir.join("block").display(),
        dir.join("dirs").display()
    );
    let config = Config::parse(&text, "test").expect("config");
    Engine::open(config, "node-a".into(), Arc::clone(fake) as Arc<dyn crate::mount::Syscall>, Placement::OnNode)
        .expect("engine")
}

pub(super) fn fake() -> Arc<RecordingSyscall> {
    let stat = FsStat { magic: 0xEF53, total_bytes: 10 << 30, available_bytes: 8 << 30, ..FsStat::default() };
    Arc::new(RecordingSyscall::new(stat, "").tracking_mounts())
}

fn cap() -> Capability {
    Capability { block: false, fs_type: String::new(), mount_flags: vec![], mode: AccessMode::SingleNodeWriter }
}

fn create(name: &str, pool: &str, encryption: &str, source: Option<ContentSource>) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        required_bytes: 64 << 20,
        limit_bytes: 0,
        capabilities: vec![cap()],
        parameters: BTreeMap::from([("pool".into(), pool.into()), ("encryption".into(), encryption.into())]),
        source,
        allowed_nodes: None,
        key: None,
        mutable: BTreeMap::new(),
    }
}

fn stage(id: &str, staging: &Path, key: Option<[u8; KEY_BYTES]>) -> NodeStage {
    NodeStage {
        volume_id: id.into(),
        staging: staging.to_path_buf(),
        capability: cap(),
        context: BTreeMap::new(),
        key: key.map(|k| Arc::new(Key::from_bytes(k))),
    }
}

/// A block pool on the recording fake holding one luks2 volume, `pvc-1`, never staged.
fn luks_volume() -> (tempfile::TempDir, Arc<RecordingSyscall>, Engine, Arc<VolumeRecord>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = engine(&fake, dir.path());
    let vol = engine.create_volume(create("pvc-1", "disks", "luks2", None)).expect("create");
    (dir, fake, engine, vol)
}

fn code(e: Error) -> Code {
    tonic::Status::from(e).code()
}

/// The crypt, loop and filesystem calls, as short strings in order.
fn storage_calls(fake: &RecordingSyscall, from: usize) -> Vec<String> {
    fake.calls()[from..]
        .iter()
        .filter_map(|c| match c {
            Call::LoopAttach { .. } => Some("attach".to_string()),
            Call::LoopDetach { .. } => Some("detach".to_string()),
            Call::LoopSetCapacity { .. } => Some("loop-capacity".to_string()),
            Call::LuksFormat { device } => Some(format!("luks-format {}", device.display())),
            Call::LuksOpen { device, name } => Some(format!("luks-open {} {name}", device.display())),
            Call::LuksClose { name } => Some(format!("luks-close {name}")),
            Call::LuksResize { name } => Some(format!("luks-resize {name}")),
            Call::LuksWipe { .. } => Some("luks-wipe".to_string()),
            Call::Mkfs { device, .. } => Some(format!("mkfs {}", device.display())),
            Call::Mount { source: Some(s), fs_type: Some(_), .. } => Some(format!("mount {}", s.display())),
            Call::Umount { .. } => Some("umount".to_string()),
            Call::GrowFs { device, .. } => Some(format!("grow-fs {}", device.display())),
            Call::AddKey { .. } | Call::RemoveKey { .. } => Some("fscrypt-key".to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn stage_formats_then_opens_unstage_closes_top_first_and_a_second_stage_only_opens() {
    let (dir, fake, engine, vol) = luks_volume();
    assert_eq!(vol.layers, [Layer::Loop, Layer::Crypt]);
    assert_eq!(vol.encryption.as_ref().map(|e| (e.scheme, e.key_id)), Some((Scheme::Luks2, None)));
    let name = format!("berth-{}", vol.key);
    let mapped = format!("/dev/mapper/{name}");

    let staging = dir.path().join("staging");
    let before = fake.calls().len();
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    assert_eq!(
        storage_calls(&fake, before),
        [
            "attach".to_string(),
            "luks-format /dev/loop100".into(),
            format!("luks-open /dev/loop100 {name}"),
            format!("mkfs {mapped}"),
            format!("mount {mapped}"),
        ],
        "the filesystem is made and mounted on the mapping, never on the loop device"
    );
    let recorded = engine.store.volume(&vol.id).expect("record").encryption.as_ref().expect("encrypted").key_id;
    assert_eq!(recorded, Some(crate::crypt::key_id(&Key::from_bytes(RIGHT))), "the key's identifier is recorded");
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("a repeated stage is a no-op");

    let before = fake.calls().len();
    engine.node_unstage(&vol.id, &staging).expect("unstage");
    assert_eq!(storage_calls(&fake, before), ["umount".to_string(), format!("luks-close {name}"), "detach".into()]);
    assert!(fake.luks_mappings().is_empty());

    let before = fake.calls().len();
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("second stage");
    assert_eq!(
        storage_calls(&fake, before),
        ["attach".to_string(), format!("luks-open /dev/loop100 {name}"), format!("mount {mapped}")],
        "the header and the filesystem are there: nothing is formatted again"
    );
}

#[test]
fn a_wrong_or_missing_key_is_refused_before_cryptsetup_and_no_key_shows_anywhere() {
    let (dir, fake, engine, vol) = luks_volume();
    let staging = dir.path().join("staging");
    let before = fake.calls().len();
    let missing = engine.node_stage(&stage(&vol.id, &staging, None)).expect_err("no key");
    assert!(missing.to_string().contains("node-stage-secret-name"), "{missing}");
    assert_eq!(code(missing), Code::InvalidArgument);
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    engine.node_unstage(&vol.id, &staging).expect("unstage");

    let before_wrong = fake.calls().len();
    let wrong = engine.node_stage(&stage(&vol.id, &staging, Some(WRONG))).expect_err("wrong key");
    let message = wrong.to_string();
    assert_eq!(code(wrong), Code::PermissionDenied);
    assert!(storage_calls(&fake, before_wrong).is_empty(), "nothing reached the loop or crypt layers");

    let secrets = [hex::encode(RIGHT), hex::encode(WRONG)];
    let calls = format!("{:?}", &fake.calls()[before..]);
    for secret in &secrets {
        assert!(!calls.contains(secret.as_str()) && !message.contains(secret.as_str()));
        assert!(!calls.contains("5a5a5a5a") && !calls.contains("a5a5a5a5"), "no key bytes in the recorded calls");
    }
    assert!(!format!("{:?}", engine.store.volume(&vol.id)).contains(&secrets[0]), "nor in the record");
}

#[test]
fn expansion_grows_the_loop_then_the_crypt_layer_then_the_filesystem() {
    let (dir, fake, engine, vol) = luks_volume();
    let staging = dir.path().join("staging");
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    engine.controller_expand(&vol.id, 128 << 20, 0).expect("controller expand");
    let before = fake.calls().len();
    engine.node_expand(&vol.id, &staging, 128 << 20, 0).expect("node expand");
    let name = format!("berth-{}", vol.key);
    assert_eq!(
        storage_calls(&fake, before),
        ["loop-capacity".to_string(), format!("luks-resize {name}"), format!("grow-fs /dev/mapper/{name}")]
    );
}

#[test]
fn delete_erases_the_header_before_the_image_goes() {
    let (dir, fake, engine, vol) = luks_volume();
    let image = dir.path().join("block/volumes").join(format!("{}.img", vol.key));
    let staging = dir.path().join("staging");
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    engine.node_unstage(&vol.id, &staging).expect("unstage");
    // The fake's header lives on the loop device it was written through; the real
    // header is in the image, which is what delete erases.
    fake.luks_format(&image, &Key::from_bytes(RIGHT)).expect("header in the image");
    let before = fake.calls().len();
    engine.delete_volume(&vol.id).expect("delete");
    assert!(fake.calls()[before..].contains(&Call::LuksWipe { device: image.clone() }), "{:?}", fake.calls());
    assert!(!image.exists());
}

#[test]
fn a_retry_after_a_crash_between_format_and_open_opens_the_header_it_wrote() {
    let (dir, fake, engine, vol) = luks_volume();
    let staging = dir.path().join("staging");
    fake.fail("luks_open", libc::EIO);
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect_err("open fails");
    assert!(
        engine.store.volume(&vol.id).and_then(|v| v.encryption.as_ref().and_then(|e| e.key_id)).is_some(),
        "the identifier was recorded before the header was written"
    );
    fake.unfail("luks_open");
    let before = fake.calls().len();
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("retry");
    let calls = storage_calls(&fake, before);
    assert!(!calls.iter().any(|c| c.starts_with("luks-format")), "never formatted twice: {calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("luks-open")), "{calls:?}");
}

#[test]
fn schemes_go_to_the_pools_that_offer_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = engine(&fake, dir.path());
    let err = engine.create_volume(create("a", "dirs", "luks2", None)).expect_err("luks2 on hostpath");
    assert!(err.to_string().contains("not luks2"), "{err}");
    assert_eq!(code(err), Code::InvalidArgument);
    let mut xfs = create("b", "disks", "fscrypt", None);
    xfs.parameters.insert("csi.storage.k8s.io/fstype".into(), "xfs".into());
    let err = engine.create_volume(xfs).expect_err("fscrypt on an xfs block volume");
    assert!(err.to_string().contains("needs ext4"), "{err}");
    assert_eq!(code(err), Code::InvalidArgument);

    fake.fail("luks_support", libc::ENODEV);
    let err = engine.create_volume(create("c", "disks", "luks2", None)).expect_err("no device-mapper");
    assert!(err.to_string().contains("cannot encrypt"), "{err}");
    assert_eq!(code(err), Code::InvalidArgument);
    assert!(engine.store.volume_by_name("c").is_none(), "nothing recorded");
}

#[test]
fn an_fscrypt_block_volume_is_formatted_encryptable_and_published_from_its_encrypted_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = fake();
    let engine = engine(&fake, dir.path());
    let vol = engine.create_volume(create("pvc-f", "disks", "fscrypt", None)).expect("fscrypt on ext4");
    assert_eq!(vol.layers, [Layer::Loop], "no crypt layer: the filesystem encrypts");
    let staging = dir.path().join("staging");
    engine.node_stage(&stage(&vol.id, &staging, None)).expect_err("no key");
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Mkfs { .. })), "nothing formatted without a key");
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    assert!(fake.calls().iter().any(|c| matches!(c, Call::Mkfs { encrypt: true, .. })), "{:?}", fake.calls());
    let id = crate::crypt::key_id(&Key::from_bytes(RIGHT));
    let policy = fake.calls().into_iter().find_map(|c| match c {
        Call::SetPolicy { path, id } => Some((path, id)),
        _ => None,
    });
    assert_eq!(policy, Some((staging.join("volume"), id)), "the data directory is encrypted under the volume's key");
    let pool = engine.pool("disks").expect("pool");
    let from = pool.publish_from(crate::backend::StageSource::Managed(&vol), &staging);
    assert_eq!(from, staging.join("volume"), "pods get the encrypted directory, never the filesystem's root");
}

#[test]
fn snapshots_and_clones_copy_ciphertext_without_a_key_and_stay_luks2() {
    let (dir, fake, engine, vol) = luks_volume();
    let staging = dir.path().join("staging");
    engine.node_stage(&stage(&vol.id, &staging, Some(RIGHT))).expect("stage");
    engine.node_unstage(&vol.id, &staging).expect("unstage");
    let id = crate::crypt::key_id(&Key::from_bytes(RIGHT));

    let snap = engine.create_snapshot(&vol.id, "snap-1", None, None).expect("snapshot without a key");
    assert_eq!(snap.encryption.as_ref().map(|e| (e.scheme, e.key_id)), Some((Scheme::Luks2, Some(id))));
    let restored = engine
        .create_volume(create("pvc-2", "disks", "luks2", Some(ContentSource::Snapshot(snap.id.clone()))))
        .expect("restore without a key");
    assert_eq!(restored.encryption.as_ref().and_then(|e| e.key_id), Some(id));
    assert_eq!(restored.layers, [Layer::Loop, Layer::Crypt]);
    let clone = engine
        .create_volume(create("pvc-3", "disks", "luks2", Some(ContentSource::Volume(vol.id.clone()))))
        .expect("clone without a key");
    assert_eq!(clone.encryption.as_ref().and_then(|e| e.key_id), Some(id));
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::AddKey { .. })), "no keyring for LUKS2");

    let err = engine
        .create_volume(create("pvc-4", "disks", "none", Some(ContentSource::Snapshot(snap.id.clone()))))
        .expect_err("a plaintext restore of a luks2 snapshot");
    assert_eq!(code(err), Code::InvalidArgument);
    let plain = engine.create_volume(create("plain", "disks", "none", None)).expect("plain");
    let err = engine
        .create_volume(create("pvc-5", "disks", "luks2", Some(ContentSource::Volume(plain.id.clone()))))
        .expect_err("a luks2 clone of plaintext");
    assert!(err.to_string().contains("would stay plaintext"), "{err}");
    assert_eq!(code(err), Code::InvalidArgument);

    let snapshot_image: PathBuf = dir.path().join("block/snapshots").join(format!("{}.img", snap.key));
    fake.luks_format(&snapshot_image, &Key::from_bytes(RIGHT)).expect("header in the snapshot's image");
    engine.delete_snapshot(&snap.id).expect("delete snapshot");
    assert!(fake.calls().contains(&Call::LuksWipe { device: snapshot_image.clone() }));
    assert!(!snapshot_image.exists());
}
