//! Crash consistency: berth is SIGKILLed at every fault point of a full volume lifecycle
//! (hostPath on btrfs, block volumes encrypted with fscrypt, device volumes: create,
//! stage, publish, snapshot, restore,
//! expand and their reverses; a restore onto a device is killed after its disk is recorded
//! and in the middle of the copy), restarted, and the interrupted call replayed the way the
//! CO would. Every replay must succeed (creates with the same ID), no data may be lost, and
//! afterwards nothing may be left: no directory, subvolume, image, loop device, mount or
//! record. Needs the binary built with `--features failpoints` (the test command does).
//! BERTH_LONG_TESTS=1 adds 200+ kills at random hits of random points.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::csi::pb;
use common::*;

const MIB: i64 = 1 << 20;
/// The key of the encrypted block volume (128 hex digits, as a Secret holds it).
const KEY: &str = "7c6b5a4938271605f4e3d2c1b0a998877c6b5a4938271605f4e3d2c1b0a998877c6b5a4938271605f4e3d2c1b0a998877c6b5a4938271605f4e3d2c1b0a99887";

fn key_secret() -> std::collections::HashMap<String, String> {
    [("encryptionKey".to_string(), KEY.to_string())].into()
}

struct Run {
    b: Berth,
    kills: usize,
    replays: usize,
}

impl Run {
    /// Runs one CO call; if berth died at a fault point, restarts it without fault points
    /// and replays the call, which must then succeed.
    async fn step<T>(&mut self, what: &str, call: impl AsyncFn(&mut Berth) -> Result<T, tonic::Status>) -> T {
        match call(&mut self.b).await {
            Ok(v) => v,
            Err(status) => {
                assert!(self.b.exited_within(Duration::from_secs(5)), "{what} failed without a crash: {status:?}");
                self.kills += 1;
                self.b.env.clear();
                self.b.respawn().await;
                self.replays += 1;
                call(&mut self.b)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: replay after a crash failed: {e:?}\n{}", self.b.logs()))
            }
        }
    }
}

fn fs_cap() -> pb::VolumeCapability {
    rwo()
}

fn req(name: &str, bytes: i64, pool: &str) -> pb::CreateVolumeRequest {
    let mut r = create_req(name, bytes);
    r.parameters.insert("pool".into(), pool.into());
    r
}

/// Stages (with the volume's key in `secrets` when it is encrypted) and publishes.
async fn stage_publish_with(
    run: &mut Run,
    id: &str,
    staging: &Path,
    target: &Path,
    secrets: std::collections::HashMap<String, String>,
) {
    let (id2, st, tg) = (id.to_string(), staging.display().to_string(), target.display().to_string());
    run.step("NodeStageVolume", async |b: &mut Berth| {
        b.node
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: id2.clone(),
                staging_target_path: st.clone(),
                volume_capability: Some(fs_cap()),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await
    })
    .await;
    run.step("NodePublishVolume", async |b: &mut Berth| {
        b.node
            .node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: id2.clone(),
                staging_target_path: st.clone(),
                target_path: tg.clone(),
                volume_capability: Some(fs_cap()),
                ..Default::default()
            })
            .await
    })
    .await;
}

async fn stage_publish(run: &mut Run, id: &str, staging: &Path, target: &Path) {
    stage_publish_with(run, id, staging, target, std::collections::HashMap::default()).await;
}

async fn unpublish_unstage(run: &mut Run, id: &str, staging: &Path, target: &Path) {
    let (id2, st, tg) = (id.to_string(), staging.display().to_string(), target.display().to_string());
    run.step("NodeUnpublishVolume", async |b: &mut Berth| {
        b.node
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest { volume_id: id2.clone(), target_path: tg.clone() })
            .await
    })
    .await;
    run.step("NodeUnstageVolume", async |b: &mut Berth| {
        b.node
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: id2.clone(),
                staging_target_path: st.clone(),
            })
            .await
    })
    .await;
}

async fn create(run: &mut Run, r: pb::CreateVolumeRequest) -> String {
    let id = run
        .step("CreateVolume", async |b: &mut Berth| b.controller.create_volume(r.clone()).await)
        .await
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    // The replay returned the one volume of that name: no duplicate was made.
    let listed = run.b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    let named: Vec<_> = listed.entries.iter().filter_map(|e| e.volume.as_ref()).filter(|v| v.volume_id == id).collect();
    assert_eq!(named.len(), 1, "exactly one volume {id}");
    id
}

async fn snapshot(run: &mut Run, source: &str, name: &str) -> String {
    let r = pb::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
    run.step("CreateSnapshot", async |b: &mut Berth| b.controller.create_snapshot(r.clone()).await)
        .await
        .into_inner()
        .snapshot
        .expect("snapshot")
        .snapshot_id
}

/// One whole lifecycle in `dir`, with `faults` set for the first berth process.
async fn lifecycle(
    dir: &Path,
    pool_fs: &Path,
    disks: &[String],
    tag: &str,
    faults: &[(String, String)],
) -> (usize, usize) {
    let hp = pool_fs.join(format!("hp-{tag}"));
    let blk = pool_fs.join(format!("blk-{tag}"));
    let config = format!(
        "stateDir: {}\npools:\n  - {{name: hp, type: hostpath, path: {}, createPath: true, capacityEnforcement: required}}\n  - {{name: blk, type: block, path: {}, createPath: true}}\n  - {{name: dev, type: device, devices: ['{}', '{}'], snapshotPool: blk}}\n",
        dir.join("state").display(),
        hp.display(),
        blk.display(),
        disks[0],
        disks[1]
    );
    fs::create_dir_all(dir).expect("mkdir");
    let mut b = Berth::start(dir, &config, "node-a", &["--log-level", "info"]).await;
    if !faults.is_empty() {
        // Faults apply from the next start: restart with them so startup stays clean.
        b.stop();
        b.env = faults.to_vec();
        b.respawn().await;
    }
    let mut run = Run { b, kills: 0, replays: 0 };

    let v_hp = create(&mut run, req("v-hp", 16 * MIB, "hp")).await;
    let v_hp_dir = hp.join("volumes").join(v_hp.rsplit(':').next().expect("key"));
    let mode = fs::metadata(&v_hp_dir).expect("volume directory").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "a new volume is writable by any pod user, crash or not (faults {faults:?})");
    // The block volume is encrypted with fscrypt: its key reaches its filesystem between
    // the mount and the publish, where a crash may land too.
    let mut encrypted = req("v-blk", 32 * MIB, "blk");
    encrypted.parameters.insert("encryption".into(), "fscrypt".into());
    encrypted.parameters.insert("csi.storage.k8s.io/fstype".into(), "ext4".into());
    let v_blk = create(&mut run, encrypted).await;
    let v_dev = create(&mut run, req("v-dev", 16 * MIB, "dev")).await;
    let paths = |name: &str| (dir.join(format!("staging-{name}")), dir.join(format!("pods/{name}/mount")));
    fs::create_dir_all(dir.join("pods/hp")).expect("mkdir");
    fs::create_dir_all(dir.join("pods/blk")).expect("mkdir");
    fs::create_dir_all(dir.join("pods/restored")).expect("mkdir");
    fs::create_dir_all(dir.join("pods/dev")).expect("mkdir");
    let (s_hp, t_hp) = paths("hp");
    let (s_blk, t_blk) = paths("blk");
    stage_publish(&mut run, &v_hp, &s_hp, &t_hp).await;
    fs::write(t_hp.join("a"), b"hostpath data").expect("write");
    stage_publish_with(&mut run, &v_blk, &s_blk, &t_blk, key_secret()).await;
    fs::write(t_blk.join("b"), b"block data").expect("write");
    let (s_dev, t_dev) = paths("dev");
    stage_publish(&mut run, &v_dev, &s_dev, &t_dev).await;
    fs::write(t_dev.join("d"), b"device data").expect("write");

    let snap_hp = snapshot(&mut run, &v_hp, "s-hp").await;
    let snap_blk = snapshot(&mut run, &v_blk, "s-blk").await;
    let mut restore = req("r-hp", 16 * MIB, "hp");
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap_hp.clone(),
        })),
    });
    let r_hp = create(&mut run, restore).await;
    let expand = pb::ControllerExpandVolumeRequest {
        volume_id: v_hp.clone(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 32 * MIB, limit_bytes: 0 }),
        ..Default::default()
    };
    run.step("ControllerExpandVolume", async |b: &mut Berth| {
        b.controller.controller_expand_volume(expand.clone()).await
    })
    .await;

    // Nothing written before a crash is lost.
    assert_eq!(fs::read(t_hp.join("a")).expect("hostpath data survives"), b"hostpath data");
    assert_eq!(fs::read(t_blk.join("b")).expect("block data survives"), b"block data");
    assert_eq!(fs::read(t_dev.join("d")).expect("device data survives"), b"device data");
    unpublish_unstage(&mut run, &v_dev, &s_dev, &t_dev).await;
    // A restore onto a device (its source unmounted: a crash while a filesystem is frozen
    // is another matter): the disk is chosen and recorded before it is written.
    let snap_dev = snapshot(&mut run, &v_dev, "s-dev").await;
    let mut restore_dev = req("r-dev", 64 * MIB, "dev");
    restore_dev.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap_dev.clone(),
        })),
    });
    let r_dev = create(&mut run, restore_dev).await;
    unpublish_unstage(&mut run, &v_hp, &s_hp, &t_hp).await;
    unpublish_unstage(&mut run, &v_blk, &s_blk, &t_blk).await;
    let image = blk.join("volumes").join(format!("{}.img", v_blk.rsplit(':').next().expect("key")));
    let bytes = fs::read(&image).expect("read the block image");
    assert!(!bytes.windows(10).any(|w| w == b"block data"), "the encrypted volume's plaintext is in its image");
    let (s_r, t_r) = paths("restored");
    stage_publish(&mut run, &r_hp, &s_r, &t_r).await;
    assert_eq!(fs::read(t_r.join("a")).expect("restored data"), b"hostpath data");
    unpublish_unstage(&mut run, &r_hp, &s_r, &t_r).await;
    fs::create_dir_all(dir.join("pods/restored-dev")).expect("mkdir");
    let (s_rd, t_rd) = paths("restored-dev");
    stage_publish(&mut run, &r_dev, &s_rd, &t_rd).await;
    assert_eq!(fs::read(t_rd.join("d")).expect("data restored onto a device"), b"device data");
    unpublish_unstage(&mut run, &r_dev, &s_rd, &t_rd).await;

    for s in [snap_hp, snap_blk, snap_dev] {
        let r = pb::DeleteSnapshotRequest { snapshot_id: s, ..Default::default() };
        run.step("DeleteSnapshot", async |b: &mut Berth| b.controller.delete_snapshot(r.clone()).await).await;
    }
    for v in [v_hp, v_blk, r_hp, v_dev, r_dev] {
        let r = pb::DeleteVolumeRequest { volume_id: v, ..Default::default() };
        run.step("DeleteVolume", async |b: &mut Berth| b.controller.delete_volume(r.clone()).await).await;
    }

    // Zero orphans: storage, records, loop devices, mounts; and nothing unaccounted.
    let logs = run.b.logs();
    for dir in [hp.join("volumes"), hp.join("snapshots"), blk.join("volumes"), blk.join("snapshots")] {
        let left = files_below(&dir);
        assert!(left.is_empty(), "orphans in {}: {left:?} (faults {faults:?})\n{logs}", dir.display());
    }
    assert_no_records(&dir.join("state"), &faults);
    let loops = sh("losetup", &["-l", "-n", "-O", "BACK-FILE"]);
    assert!(!loops.contains(blk.to_str().expect("utf8")), "orphan loop devices: {loops}");
    assert!(mounts_below(dir).is_empty(), "orphan mounts: {:?}", mounts_below(dir));
    for disk in disks {
        assert_eq!(
            berth::mount::tools::blkid(Path::new(disk)).expect("blkid"),
            berth::mount::Signature::None,
            "{disk} was wiped and released (faults {faults:?})"
        );
    }
    assert!(!logs.contains("accounts for; left in place"), "unaccounted data reported (faults {faults:?})");
    (run.kills, run.replays)
}

/// Every entry below `dir` (a volume directory or image counts as one entry).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect()
}

/// berth's state, as its next start would load it, holds no record.
fn assert_no_records(state_dir: &Path, faults: &impl std::fmt::Debug) {
    let (volumes, snapshots) = berth::state::read_records(state_dir).expect("read the records");
    assert!(volumes.is_empty() && snapshots.is_empty(), "orphan records {volumes:?} {snapshots:?} (faults {faults:?})");
}

fn points_of(log: &Path) -> Vec<String> {
    fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

#[tokio::test]
async fn sigkill_at_every_fault_point_then_replay_leaves_nothing_behind() {
    let test = "sigkill_at_every_fault_point_then_replay_leaves_nothing_behind";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "btrfs", "4G") else { return };
    // Two stand-in disks for the device pool, detached on drop.
    struct Detach(Vec<String>);
    impl Drop for Detach {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::process::Command::new("losetup").args(["-d", d]).status();
            }
        }
    }
    let mut disks = Detach(Vec::new());
    for i in 0..2 {
        let image = scratch.path().join(format!("disk{i}.img"));
        sh("truncate", &["-s", "64M", image.to_str().expect("utf8")]);
        disks.0.push(sh("losetup", &["--find", "--show", image.to_str().expect("utf8")]).trim().to_string());
    }
    let disk = &disks.0;

    // A clean run enumerates every fault point reached, in order.
    let log = scratch.path().join("points.log");
    let log_env = vec![("BERTH_FAILPOINT_LOG".to_string(), log.display().to_string())];
    lifecycle(&scratch.path().join("clean"), &pool_fs.mount, disk, "clean", &log_env).await;
    let hits = points_of(&log);
    if hits.is_empty() {
        println!("SKIPPED: {test}: berth was built without --features failpoints");
        return;
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for h in &hits {
        *counts.entry(h.clone()).or_default() += 1;
    }

    // Kill at the first hit of every point, and at the last.
    let mut plan: Vec<(String, u64)> = Vec::new();
    for (name, n) in &counts {
        plan.push((name.clone(), 1));
        if *n > 1 {
            plan.push((name.clone(), *n));
        }
    }
    let long = std::env::var("BERTH_LONG_TESTS").is_ok_and(|v| v == "1");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let random = if long { 210 } else { 12 };
    for _ in 0..random {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = usize::try_from(seed % hits.len() as u64).expect("index");
        let name = &hits[at];
        let nth = hits[..=at].iter().filter(|h| *h == name).count() as u64;
        plan.push((name.clone(), nth));
    }

    let (mut kills, mut replays) = (0, 0);
    for (i, (name, nth)) in plan.iter().enumerate() {
        let run_log = scratch.path().join(format!("run-{i}.log"));
        let faults = vec![
            ("BERTH_FAILPOINTS".to_string(), format!("{name}=kill@{nth}")),
            ("BERTH_FAILPOINT_LOG".to_string(), run_log.display().to_string()),
        ];
        let (k, r) =
            lifecycle(&scratch.path().join(format!("run-{i}")), &pool_fs.mount, disk, &format!("run{i}"), &faults)
                .await;
        if k != 1 {
            let got = points_of(&run_log);
            let at = got.iter().zip(&hits).position(|(a, b)| a != b).unwrap_or(got.len().min(hits.len()));
            let window = |v: &[String]| v[at.saturating_sub(3)..(at + 3).min(v.len())].to_vec();
            panic!(
                "the kill at {name}@{nth} happened {k} times; this run's fault points diverged from the clean run at hit {at}: clean {:?}, this run {:?}",
                window(&hits),
                window(&got)
            );
        }
        kills += k;
        replays += r;
    }
    println!(
        "crash: {} fault points, {} hits per lifecycle, {} kills, {} replays, 0 orphans, 0 lost volumes",
        counts.len(),
        hits.len(),
        kills,
        replays
    );
}

/// The NFS controller's lifecycle against a real ganesha export: create, snapshot,
/// restore, and the deletes, with `faults` set for the first process.
async fn nfs_lifecycle(dir: &Path, g: &common::ganesha::Ganesha, faults: &[(String, String)]) -> (usize, usize) {
    fs::create_dir_all(dir).expect("mkdir");
    let config = common::ganesha::nfs_config(&dir.join("state"), g, &[("shared", "")]);
    let mut b =
        Berth::start(dir, &config, "controller", &["--mode", "controller", "--driver-name", "nfs.berth.csi.io"]).await;
    if !faults.is_empty() {
        b.stop();
        b.env = faults.to_vec();
        b.respawn().await;
    }
    let mut run = Run { b, kills: 0, replays: 0 };
    let rwx = mount_cap(pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter);
    let mut r = req("v-nfs", 16 * MIB, "shared");
    r.volume_capabilities = vec![rwx.clone()];
    let v = run
        .step("CreateVolume", async |b: &mut Berth| b.controller.create_volume(r.clone()).await)
        .await
        .into_inner()
        .volume
        .expect("v");
    let sub = v.volume_context.get("subDir").cloned().unwrap_or_else(|| "v-nfs".into());
    fs::write(g.export.join(&sub).join("f"), b"nfs data").expect("write into the export");
    let snap = snapshot(&mut run, &v.volume_id, "s-nfs").await;
    let mut restore = req("r-nfs", 16 * MIB, "shared");
    restore.volume_capabilities = vec![rwx];
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.clone(),
        })),
    });
    let rv = run
        .step("CreateVolume from snapshot", async |b: &mut Berth| b.controller.create_volume(restore.clone()).await)
        .await
        .into_inner()
        .volume
        .expect("v");
    let rsub = rv.volume_context.get("subDir").cloned().unwrap_or_else(|| "r-nfs".into());
    assert_eq!(fs::read(g.export.join(&rsub).join("f")).expect("restored data"), b"nfs data");
    assert_eq!(fs::read(g.export.join(&sub).join("f")).expect("data survives"), b"nfs data");
    let ds = pb::DeleteSnapshotRequest { snapshot_id: snap, ..Default::default() };
    run.step("DeleteSnapshot", async |b: &mut Berth| b.controller.delete_snapshot(ds.clone()).await).await;
    for id in [v.volume_id, rv.volume_id] {
        let d = pb::DeleteVolumeRequest { volume_id: id, ..Default::default() };
        run.step("DeleteVolume", async |b: &mut Berth| b.controller.delete_volume(d.clone()).await).await;
    }
    // Zero orphans on the export and in the controller's state.
    let logs = run.b.logs();
    let names = |p: PathBuf| -> Vec<String> {
        fs::read_dir(p)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let top: Vec<String> =
        names(g.export.clone()).into_iter().filter(|n| n != ".berth" && n != ".berth-snapshots").collect();
    assert!(top.is_empty(), "orphan directories on the export: {top:?} (faults {faults:?})\n{logs}");
    for meta in ["volumes", "snapshots", "claims", "tmp", "trash"] {
        let left = names(g.export.join(".berth").join(meta));
        assert!(left.is_empty(), "orphans in .berth/{meta}: {left:?} (faults {faults:?})\n{logs}");
    }
    assert!(names(g.export.join(".berth-snapshots")).is_empty(), "orphan snapshots (faults {faults:?})");
    assert_no_records(&dir.join("state"), &faults);
    (run.kills, run.replays)
}

#[tokio::test]
async fn sigkill_during_nfs_controller_operations_leaves_nothing_behind() {
    let test = "sigkill_during_nfs_controller_operations_leaves_nothing_behind";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = common::ganesha::Ganesha::start(scratch.path(), test) else { return };
    let log = scratch.path().join("points.log");
    let log_env = vec![("BERTH_FAILPOINT_LOG".to_string(), log.display().to_string())];
    nfs_lifecycle(&scratch.path().join("clean"), &g, &log_env).await;
    let hits = points_of(&log);
    if hits.is_empty() {
        println!("SKIPPED: {test}: berth was built without --features failpoints");
        return;
    }
    let mut points: Vec<String> = hits.clone();
    points.sort();
    points.dedup();
    let (mut kills, mut replays) = (0, 0);
    for (i, name) in points.iter().enumerate() {
        let faults = vec![("BERTH_FAILPOINTS".to_string(), format!("{name}=kill@1"))];
        let (k, r) = nfs_lifecycle(&scratch.path().join(format!("run-{i}")), &g, &faults).await;
        assert_eq!(k, 1, "the kill at {name} happened");
        kills += k;
        replays += r;
    }
    println!(
        "crash (nfs): {} fault points, {kills} kills, {replays} replays, 0 orphans on the export, 0 lost volumes",
        points.len()
    );
}
