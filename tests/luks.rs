//! LUKS2 block volumes with the real binary and cryptsetup: the image holds ciphertext
//! only, a wrong key is refused, the right one reads the data back, and deleting the
//! volume erases the header first. Needs device-mapper with dm-crypt; where the kernel
//! has none the test says so and stops (the order of every call is checked with the
//! recording fake in src/engine/luks_tests.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;
const PLAINTEXT: &str = "ledger: account 4711 owes 1,000,000 EUR";

fn secrets(key: &str) -> HashMap<String, String> {
    [("encryptionKey".to_string(), key.to_string())].into()
}

fn stage_req(volume_id: &str, staging: &Path, key: &str) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets(key),
        ..Default::default()
    }
}

fn unstage_req(volume_id: &str, staging: &Path) -> pb::NodeUnstageVolumeRequest {
    pb::NodeUnstageVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.display().to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why this machine cannot run LUKS2 volumes, if it cannot. The kernel's lists decide:
/// `/dev/mapper/control` may exist without device-mapper (libdevmapper makes the node).
fn no_luks() -> Option<String> {
    let listed = |file: &str| fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.ends_with(" device-mapper")));
    if !listed("/proc/misc") && !listed("/proc/devices") {
        return Some("kernel has no device-mapper".into());
    }
    if !Path::new("/dev/mapper/control").exists() {
        return Some("no /dev/mapper/control".into());
    }
    if Command::new("cryptsetup").arg("--version").output().is_err() {
        return Some("cryptsetup is not installed (scripts/test installs cryptsetup-bin)".into());
    }
    None
}

/// Closes the volume's mapping and detaches its loop devices when the test ends, also
/// when it fails half-way (berth's own unstage is what the test checks).
struct Cleanup {
    mapping: String,
    image: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("cryptsetup").args(["close", &self.mapping]).output();
        if let Ok(out) = Command::new("losetup").args(["-n", "-O", "NAME", "-j"]).arg(&self.image).output() {
            for device in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = Command::new("losetup").args(["-d", device]).output();
            }
        }
    }
}

/// libdevmapper makes `/dev/mapper/control` when cryptsetup first runs, even where the
/// kernel has no device-mapper: what the test made there goes when it ends.
struct LeaveDevAsFound {
    had_dir: bool,
    had_control: bool,
}

impl LeaveDevAsFound {
    fn new() -> LeaveDevAsFound {
        LeaveDevAsFound {
            had_dir: Path::new("/dev/mapper").exists(),
            had_control: Path::new("/dev/mapper/control").exists(),
        }
    }
}

impl Drop for LeaveDevAsFound {
    fn drop(&mut self) {
        if !self.had_control {
            let _ = fs::remove_file("/dev/mapper/control");
        }
        if !self.had_dir {
            let _ = fs::remove_dir("/dev/mapper");
        }
    }
}

#[tokio::test]
async fn a_luks2_block_volume_is_ciphertext_in_its_image_and_opens_with_its_key_only() {
    let test = "a_luks2_block_volume_is_ciphertext_in_its_image_and_opens_with_its_key_only";
    if !require_root(test) {
        return;
    }
    if let Some(reason) = no_luks() {
        println!("SKIPPED: {test}: {reason}");
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = format!(
        "stateDir: {}\npools:\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        scratch.path().join("state").display(),
        pool.display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let key = "3c".repeat(64);
    let other = "c3".repeat(64);

    let mut req = create_req("pvc-ledger", 64 * MIB);
    req.parameters.insert("encryption".into(), "luks2".into());
    let vol = b.controller.create_volume(req).await.expect("create").into_inner().volume.expect("volume");
    let id = vol.volume_id;
    let volume_key = id.rsplit(':').next().expect("key").to_string();
    let image = pool.join("volumes").join(format!("{volume_key}.img"));
    let _cleanup = Cleanup { mapping: format!("berth-{volume_key}"), image: image.clone() };
    let staging = scratch.path().join("staging");

    b.node.node_stage_volume(stage_req(&id, &staging, &key)).await.expect("stage: format and open");
    assert!(Path::new(&format!("/dev/mapper/berth-{volume_key}")).exists(), "the mapping is open");
    fs::write(staging.join("ledger.txt"), PLAINTEXT.repeat(1000)).expect("write");
    b.node.node_unstage_volume(unstage_req(&id, &staging)).await.expect("unstage");
    assert!(!Path::new(&format!("/dev/mapper/berth-{volume_key}")).exists(), "unstage closed the mapping");

    let bytes = fs::read(&image).expect("read the image");
    assert!(bytes.starts_with(b"LUKS\xba\xbe"), "the image starts with a LUKS header");
    assert!(!contains(&bytes, PLAINTEXT.as_bytes()), "the plaintext is in the image");
    assert!(!contains(&bytes, key.as_bytes()), "the key is in the image");

    let wrong = b.node.node_stage_volume(stage_req(&id, &staging, &other)).await.expect_err("wrong key");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    assert!(!wrong.message().contains(&other) && !wrong.message().contains(&key), "{}", wrong.message());
    b.node.node_stage_volume(stage_req(&id, &staging, &key)).await.expect("stage with the key");
    assert_eq!(fs::read_to_string(staging.join("ledger.txt")).expect("read back"), PLAINTEXT.repeat(1000));
    b.node.node_unstage_volume(unstage_req(&id, &staging)).await.expect("unstage");

    // The header's keyslots go before the image is removed: a second link to the image
    // keeps its blocks, as a disk keeps a deleted file's, and the key opens them no more.
    let kept = scratch.path().join("kept.img");
    fs::hard_link(&image, &kept).expect("link the image");
    assert!(opens_with(&kept, &key), "the key opens the header before the delete");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
        .await
        .expect("delete");
    assert!(!image.exists());
    assert!(!opens_with(&kept, &key), "the key still opens what the deleted volume left");
}

/// Whether `key` (hex) opens a keyslot of the LUKS header in `image`.
fn opens_with(image: &Path, key: &str) -> bool {
    use std::io::Write;
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file=-"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cryptsetup");
    child.stdin.take().expect("stdin").write_all(&hex::decode(key).expect("hex")).expect("write the key");
    child.wait().expect("wait").success()
}

/// What berth's cryptsetup calls write, on an image file: header operations need no
/// device-mapper, so this runs on every machine with cryptsetup.
#[test]
fn the_header_has_the_documented_parameters_opens_with_the_key_and_is_erased() {
    let test = "the_header_has_the_documented_parameters_opens_with_the_key_and_is_erased";
    if Command::new("cryptsetup").arg("--version").output().is_err() {
        println!("SKIPPED: {test}: cryptsetup is not installed (scripts/test installs cryptsetup-bin)");
        return;
    }
    let _dev = LeaveDevAsFound::new();
    let scratch = Scratch::new();
    let image = scratch.path().join("volume.img");
    fs::File::create(&image).expect("create").set_len(32 << 20).expect("size");
    let hex_key = "7e".repeat(64);
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(&hex_key, &mut bytes).expect("hex");
    let key = berth::crypt::Key::from_bytes(bytes);

    assert!(!berth::mount::luks::erase(&image).expect("probe a blank file"), "no header: nothing erased");
    berth::mount::luks::format(&image, &key).expect("luksFormat");
    let dump =
        String::from_utf8(Command::new("cryptsetup").arg("luksDump").arg(&image).output().expect("luksDump").stdout)
            .expect("utf8");
    for expected in ["Version:       \t2", "aes-xts-plain64", "PBKDF:      pbkdf2", "Iterations: 1000"] {
        assert!(dump.contains(expected), "{expected:?} missing from:\n{dump}");
    }
    assert!(dump.contains("Cipher key: 512 bits"), "{dump}");
    assert!(opens_with(&image, &hex_key), "the key opens its keyslot");
    assert!(!opens_with(&image, &"e7".repeat(64)), "another key does not");
    assert!(!fs::read(&image).expect("read").windows(64).any(|w| w == bytes), "the key is not in the header");

    assert!(berth::mount::luks::erase(&image).expect("erase"), "the header was erased");
    assert!(!opens_with(&image, &hex_key), "no keyslot opens after the erase");
}
