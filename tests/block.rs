//! Block and device pools end to end: images attached through real loop devices,
//! formatted and mounted or handed out raw, snapshots taken while a writer runs, online
//! expansion seen inside the mounted filesystem, reboot replay, and device pools on loop
//! devices the test creates as stand-in disks.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn block_config(state: &Path, pool: &Path) -> String {
    format!(
        "stateDir: {}\npools:\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        state.display(),
        pool.display()
    )
}

fn fs_cap(fs_type: &str) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume {
            fs_type: fs_type.into(),
            ..Default::default()
        })),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn raw_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Block(pb::volume_capability::BlockVolume {})),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

async fn create(b: &mut Berth, name: &str, bytes: i64, cap: pb::VolumeCapability) -> pb::Volume {
    let mut req = create_req(name, bytes);
    req.volume_capabilities = vec![cap];
    b.controller.create_volume(req).await.expect("create").into_inner().volume.expect("volume")
}

fn image_of(pool: &Path, id: &str) -> PathBuf {
    pool.join("volumes").join(format!("{}.img", id.rsplit(':').next().expect("key")))
}

/// Loop devices backed by `image`, from losetup.
fn loops_of(image: &Path) -> Vec<String> {
    sh("losetup", &["-n", "-O", "NAME", "-j", image.to_str().expect("utf8")])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn mount_entry(path: &Path) -> Option<berth::mount::mountinfo::MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    berth::mount::mountinfo::parse(&text).expect("parse").into_iter().rev().find(|e| e.mount_point == path)
}

/// Whether this process may grow a mounted ext4 filesystem (capability 24).
fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// ControllerExpandVolume then NodeExpandVolume, as the resizer and the kubelet do; the
/// mounted filesystem must see the new size.
async fn expand_online(b: &mut Berth, id: &str, target: &Path, bytes: i64) {
    let before = statvfs_total(target);
    let grown = b
        .controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("expand")
        .into_inner();
    assert!(grown.node_expansion_required, "the node must grow the filesystem");
    b.node
        .node_expand_volume(pb::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .expect("node expand");
    let after = statvfs_total(target);
    assert!(after as f64 > before as f64 * 1.5, "the mounted filesystem grew online: {before} -> {after}");
}

fn statvfs_total(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

#[tokio::test]
async fn filesystem_volumes_format_snapshot_under_writes_and_expand_online() {
    let test = "filesystem_volumes_format_snapshot_under_writes_and_expand_online";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "xfs", "2G") else { return };
    let pool = pool_fs.mount.join("pool");
    let mut b = Berth::start(scratch.path(), &block_config(&scratch.path().join("state"), &pool), "node-a", &[]).await;

    let vol = create(&mut b, "pvc-fs", 64 * MIB, fs_cap("")).await;
    assert_eq!(vol.volume_context["berth.csi.io/capacity-enforcement"], "device-size");
    let image = image_of(&pool, &vol.volume_id);
    let meta = fs::metadata(&image).expect("image");
    assert_eq!(meta.len(), 64 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20, "the image is sparse");

    let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, "a", fs_cap("")).await;
    let staged = mount_entry(&p.staging).expect("staging is mounted");
    assert_eq!(staged.fs_type, "ext4", "ext4 is the default filesystem");
    assert!(staged.source.starts_with("/dev/loop"), "{}", staged.source);
    assert_eq!(loops_of(&image), vec![staged.source.clone()], "one loop device backs the image");
    fs::write(p.target.join("hello"), b"block data").expect("write through the target");

    // A writer appends numbered lines while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let log = p.target.join("counter");
    let writer = {
        let stop = Arc::clone(&stop);
        let log = log.clone();
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().create(true).append(true).open(&log).expect("open");
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) || n < 200 {
                writeln!(f, "{n}").expect("append");
                n += 1;
                if n.is_multiple_of(50) {
                    f.sync_all().expect("sync");
                }
            }
            f.sync_all().expect("sync");
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: vol.volume_id.clone(),
            name: "snap".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot under writes")
        .into_inner()
        .snapshot
        .expect("snapshot");
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    assert_eq!(snap.size_bytes, 64 * MIB);

    let mut restore = create_req("pvc-restored", 96 * MIB);
    restore.volume_capabilities = vec![fs_cap("")];
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let restored = b.controller.create_volume(restore).await.expect("restore").into_inner().volume.expect("vol");
    assert_eq!(
        fs::metadata(image_of(&pool, &restored.volume_id)).expect("image").len(),
        96 << 20,
        "restores grow to the requested size"
    );
    let r = stage_publish(&mut b, scratch.path(), &restored.volume_id, "r", fs_cap("")).await;
    assert_eq!(fs::read(r.target.join("hello")).expect("restored file"), b"block data");
    let lines: Vec<u64> = fs::read_to_string(r.target.join("counter"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("whole line"))
        .collect();
    assert!(lines.iter().enumerate().all(|(i, n)| *n == i as u64), "the snapshot holds a clean prefix of the writes");
    assert!((lines.len() as u64) < written, "writes after the snapshot are not in it");
    assert!(statvfs_total(&r.target) > 80 << 20, "the restored filesystem was grown to the new size");

    // Online expansion while mounted: xfs needs only CAP_SYS_ADMIN; ext4 also needs
    // CAP_SYS_RESOURCE, which some sandboxes drop (a real node plugin runs privileged).
    let xfs = create(&mut b, "pvc-grow-xfs", 320 * MIB, fs_cap("xfs")).await;
    let x = stage_publish(&mut b, scratch.path(), &xfs.volume_id, "x", fs_cap("xfs")).await;
    fs::write(x.target.join("keep"), b"xfs data").expect("write");
    expand_online(&mut b, &xfs.volume_id, &x.target, 640 * MIB).await;
    assert_eq!(fs::read(x.target.join("keep")).expect("still there"), b"xfs data");
    unpublish_unstage(&mut b, &xfs.volume_id, &x).await;
    if has_cap_sys_resource() {
        expand_online(&mut b, &vol.volume_id, &p.target, 256 * MIB).await;
        assert_eq!(fs::read(p.target.join("hello")).expect("still there"), b"block data");
    } else {
        println!(
            "SKIPPED: {test}: online ext4 growth (this process lacks CAP_SYS_RESOURCE); offline growth at stage is tested by the restore above"
        );
    }
    let after = statvfs_total(&p.target);

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
    assert_eq!(stats.usage[0].total as u64, after);

    for (id, paths) in [(&vol.volume_id, &p), (&restored.volume_id, &r)] {
        unpublish_unstage(&mut b, id, paths).await;
    }
    assert!(loops_of(&image).is_empty(), "unstage detaches the loop device");
    for id in [&vol.volume_id, &restored.volume_id, &xfs.volume_id] {
        b.controller
            .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
            .await
            .expect("delete");
    }
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("delete snapshot");
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), 0);
    assert_eq!(fs::read_dir(pool.join("snapshots")).expect("ls").count(), 0);
}

#[tokio::test]
async fn xfs_and_btrfs_volumes_and_raw_block_devices() {
    let test = "xfs_and_btrfs_volumes_and_raw_block_devices";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b = Berth::start(scratch.path(), &block_config(&scratch.path().join("state"), &pool), "node-a", &[]).await;
    for fs_type in ["xfs", "btrfs"] {
        if !have(&format!("mkfs.{fs_type}")) {
            println!("SKIPPED: {test}: mkfs.{fs_type} missing");
            continue;
        }
        let vol = create(&mut b, &format!("pvc-{fs_type}"), 320 * MIB, fs_cap(fs_type)).await;
        let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, fs_type, fs_cap(fs_type)).await;
        let staged = mount_entry(&p.staging).expect("mounted");
        assert_eq!(staged.fs_type, fs_type);
        let options: Vec<&str> = staged.options.split(',').collect();
        assert!(options.contains(&"nosuid") && options.contains(&"nodev"), "{}", staged.options);
        fs::write(p.target.join("f"), fs_type).expect("write");
        unpublish_unstage(&mut b, &vol.volume_id, &p).await;
        // Staging again finds the filesystem and mounts it without formatting.
        let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, fs_type, fs_cap(fs_type)).await;
        assert_eq!(fs::read_to_string(p.target.join("f")).expect("kept"), fs_type);
        unpublish_unstage(&mut b, &vol.volume_id, &p).await;
    }

    // mkfs.xfs refuses below 300 MiB: a smaller claim gets a volume that can be formatted.
    if have("mkfs.xfs") {
        let small = create(&mut b, "pvc-small-xfs", 100 * MIB, fs_cap("xfs")).await;
        assert_eq!(small.capacity_bytes, 300 * MIB);
        let p = stage_publish(&mut b, scratch.path(), &small.volume_id, "small-xfs", fs_cap("xfs")).await;
        assert_eq!(mount_entry(&p.staging).expect("mounted").fs_type, "xfs");
        unpublish_unstage(&mut b, &small.volume_id, &p).await;
        let mut capped = create_req("pvc-capped-xfs", 100 * MIB);
        capped.volume_capabilities = vec![fs_cap("xfs")];
        capped.capacity_range = Some(pb::CapacityRange { required_bytes: 100 * MIB, limit_bytes: 200 * MIB });
        assert_eq!(code(b.controller.create_volume(capped).await), Code::OutOfRange);
    }

    let raw = create(&mut b, "pvc-raw", 16 * MIB, raw_cap()).await;
    let p = stage_publish(&mut b, scratch.path(), &raw.volume_id, "raw", raw_cap()).await;
    let meta = fs::metadata(&p.target).expect("target");
    assert!(meta.file_type().is_block_device(), "the pod sees a real block device");
    {
        let mut dev = fs::OpenOptions::new().read(true).write(true).open(&p.target).expect("open device");
        dev.seek(SeekFrom::Start(4 << 20)).expect("seek");
        dev.write_all(b"raw bytes").expect("write");
        dev.sync_all().expect("sync");
    }
    let mut img = fs::File::open(image_of(&pool, &raw.volume_id)).expect("image");
    img.seek(SeekFrom::Start(4 << 20)).expect("seek");
    let mut buf = [0u8; 9];
    img.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"raw bytes", "the bytes landed in the image");
    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: raw.volume_id.clone(),
            volume_path: p.target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats of a raw volume")
        .into_inner();
    assert_eq!(stats.usage[0].total, 16 * MIB, "a raw volume reports its device size");
    let blank = berth::mount::tools::blkid(&image_of(&pool, &raw.volume_id)).expect("blkid");
    assert_eq!(blank, berth::mount::Signature::None, "raw volumes are never formatted");
    unpublish_unstage(&mut b, &raw.volume_id, &p).await;
    assert!(!p.target.exists(), "the target file is removed");
    assert!(loops_of(&image_of(&pool, &raw.volume_id)).is_empty());

    // A raw volume staged or published as a filesystem would have the node mount (or
    // format) what the pod wrote.
    let staging = scratch.path().join("staging-raw-as-fs");
    let staged = b
        .node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: raw.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(fs_cap("ext4")),
            ..Default::default()
        })
        .await;
    assert_eq!(code(staged), tonic::Code::FailedPrecondition);
    let published = b
        .node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: raw.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: scratch.path().join("pod-raw-as-fs/vol").display().to_string(),
            volume_capability: Some(fs_cap("ext4")),
            ..Default::default()
        })
        .await;
    assert_eq!(code(published), tonic::Code::FailedPrecondition);
    let blank = berth::mount::tools::blkid(&image_of(&pool, &raw.volume_id)).expect("blkid");
    assert_eq!(blank, berth::mount::Signature::None, "still never formatted");
    assert!(loops_of(&image_of(&pool, &raw.volume_id)).is_empty(), "nothing attached");
}

#[tokio::test]
async fn never_reformats_and_never_detaches_a_foreign_loop() {
    let test = "never_reformats_and_never_detaches_a_foreign_loop";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b = Berth::start(scratch.path(), &block_config(&scratch.path().join("state"), &pool), "node-a", &[]).await;
    let vol = create(&mut b, "pvc-ext4", 32 * MIB, fs_cap("ext4")).await;
    let image = image_of(&pool, &vol.volume_id);
    let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, "e", fs_cap("ext4")).await;
    fs::write(p.target.join("precious"), b"data").expect("write");
    unpublish_unstage(&mut b, &vol.volume_id, &p).await;

    // Asking for xfs on a volume that holds ext4 is an error, never a reformat.
    let staging = scratch.path().join("staging-x");
    let err = b
        .node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(fs_cap("xfs")),
            ..Default::default()
        })
        .await;
    assert_eq!(code(err), Code::FailedPrecondition);
    assert!(!staging.exists(), "nothing is left at the staging path");
    let sig = berth::mount::tools::blkid(&image).expect("blkid");
    assert_eq!(sig, berth::mount::Signature::Filesystem("ext4".into()), "the ext4 filesystem is intact");

    // A loop device someone else attached to the same image is left alone.
    let foreign = sh("losetup", &["--find", "--show", image.to_str().expect("utf8")]).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _guard = Detach(foreign.clone());
    // Mounted through it (a backup job), the image is not mounted a second time.
    let backup = scratch.path().join("backup");
    fs::create_dir_all(&backup).expect("mkdir");
    sh("mount", &[&foreign, backup.to_str().expect("utf8")]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let unmount = Unmount(backup.clone());
    let staging = scratch.path().join("staging-twice");
    let twice = b
        .node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(fs_cap("ext4")),
            ..Default::default()
        })
        .await;
    let status = twice.expect_err("a second mount of one filesystem");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&foreign) && status.message().contains("backup"), "{}", status.message());
    assert_eq!(loops_of(&image), vec![foreign.clone()], "no second loop device");
    drop(unmount);
    let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, "f", fs_cap("ext4")).await;
    let staged = mount_entry(&p.staging).expect("mounted");
    assert_ne!(staged.source, foreign, "berth attaches its own device");
    assert_eq!(fs::read(p.target.join("precious")).expect("data"), b"data");
    unpublish_unstage(&mut b, &vol.volume_id, &p).await;
    assert_eq!(loops_of(&image), vec![foreign.clone()], "only berth's own loop device was detached");
}

#[tokio::test]
async fn reboot_replay_reattaches_the_same_image() {
    let test = "reboot_replay_reattaches_the_same_image";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b = Berth::start(scratch.path(), &block_config(&scratch.path().join("state"), &pool), "node-a", &[]).await;
    let vol = create(&mut b, "pvc-reboot", 32 * MIB, fs_cap("")).await;
    let image = image_of(&pool, &vol.volume_id);
    let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, "b", fs_cap("")).await;
    fs::write(p.target.join("state"), b"before reboot").expect("write");
    b.stop();
    // The device stack was recorded at creation; a record from before stacks were
    // recorded has none, and stages through the pool's default stack.
    let state = scratch.path().join("state");
    {
        let (store, _) = berth::state::Store::open(&state).expect("open state");
        let mut record = std::sync::Arc::unwrap_or_clone(store.volume(&vol.volume_id).expect("record"));
        assert_eq!(record.layers, [berth::state::Layer::Loop]);
        record.layers.clear();
        store.put_volume(&record).expect("put");
    }
    // The reboot: every mount gone, every loop device gone; directories stay.
    unmount_below(scratch.path());
    for dev in loops_of(&image) {
        sh("losetup", &["-d", &dev]);
    }
    b.restart().await;
    let q = stage_publish(&mut b, scratch.path(), &vol.volume_id, "b", fs_cap("")).await;
    assert_eq!(fs::read(q.target.join("state")).expect("data after reboot"), b"before reboot");
    unpublish_unstage(&mut b, &vol.volume_id, &q).await;
    // Unpublish and unstage of mounts that vanished succeed too.
    unpublish_unstage(&mut b, &vol.volume_id, &q).await;
}

#[tokio::test]
async fn device_pool_picks_the_smallest_fit_and_wipes_on_delete() {
    let test = "device_pool_picks_the_smallest_fit_and_wipes_on_delete";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let disks = Disks::new(scratch.path(), &[64, 32, 128, 48]);
    // The fourth disk holds someone's filesystem: it must never be handed out.
    sh("mkfs.ext4", &["-q", "-F", &disks.devices[3]]);
    let pool = scratch.path().join("snap-pool");
    let config = format!(
        "stateDir: {}\npools:\n  - name: disks\n    type: device\n    devices: [{}]\n    wipe: zero\n    snapshotPool: img\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        scratch.path().join("state").display(),
        disks.devices.join(", "),
        pool.display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let with_pool = |name: &str, bytes: i64| {
        let mut req = create_req(name, bytes);
        req.parameters.insert("pool".into(), "disks".into());
        req
    };
    let capacity = async |b: &mut Berth| {
        let query = pb::GetCapacityRequest {
            parameters: [("pool".to_string(), "disks".to_string())].into(),
            ..Default::default()
        };
        b.controller.get_capacity(query).await.expect("capacity").into_inner().available_capacity
    };
    // A listed disk that holds data is no capacity: it is never handed out.
    sh("mkfs.ext4", &["-q", "-F", &disks.devices[2]]);
    assert_eq!(capacity(&mut b).await, 64 * MIB, "the 128 MiB disk holds a filesystem");
    sh("wipefs", &["-q", "-a", &disks.devices[2]]);
    assert_eq!(capacity(&mut b).await, 128 * MIB, "the largest free device");
    let vol = b
        .controller
        .create_volume(with_pool("pvc-d", 40 * MIB))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("vol");
    assert_eq!(vol.capacity_bytes, 64 * MIB, "the smallest blank device that fits (the 48 MiB one holds data)");
    // A whole disk cannot grow past itself: OUT_OF_RANGE, whatever the pool has free.
    let grow = b
        .controller
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 512 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await;
    assert_eq!(code(grow), Code::OutOfRange);
    let p = stage_publish(&mut b, scratch.path(), &vol.volume_id, "d", fs_cap("")).await;
    assert_eq!(mount_entry(&p.staging).expect("mounted").source, disks.devices[0]);
    fs::write(p.target.join("on-disk"), b"device data").expect("write");

    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: vol.volume_id.clone(),
            name: "dsnap".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot into the block pool")
        .into_inner()
        .snapshot
        .expect("snap");
    assert_eq!(snap.size_bytes, 64 * MIB);
    unpublish_unstage(&mut b, &vol.volume_id, &p).await;

    let mut restore = with_pool("pvc-d2", 64 * MIB);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let restored =
        b.controller.create_volume(restore).await.expect("restore onto a device").into_inner().volume.expect("vol");
    assert_eq!(restored.capacity_bytes, 128 * MIB, "the only free device that fits");
    let r = stage_publish(&mut b, scratch.path(), &restored.volume_id, "d2", fs_cap("")).await;
    assert_eq!(fs::read(r.target.join("on-disk")).expect("restored"), b"device data");
    unpublish_unstage(&mut b, &restored.volume_id, &r).await;

    let full = b.controller.create_volume(with_pool("pvc-none", 100 * MIB)).await;
    assert_eq!(code(full), Code::ResourceExhausted);

    for id in [&vol.volume_id, &restored.volume_id] {
        b.controller
            .delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() })
            .await
            .expect("delete");
    }
    for dev in [&disks.devices[0], &disks.devices[2]] {
        assert_eq!(
            berth::mount::tools::blkid(Path::new(dev)).expect("blkid"),
            berth::mount::Signature::None,
            "{dev} was wiped"
        );
        let mut head = vec![0u8; 1 << 20];
        fs::File::open(dev).expect("open").read_exact(&mut head).expect("read");
        assert!(head.iter().all(|b| *b == 0), "wipe: zero leaves zeros");
    }
    assert_eq!(
        berth::mount::tools::blkid(Path::new(&disks.devices[3])).expect("blkid"),
        berth::mount::Signature::Filesystem("ext4".into()),
        "the device that held data was never touched"
    );
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("delete snapshot");
}

#[tokio::test]
async fn preallocated_images_and_device_pools_without_a_snapshot_pool() {
    let test = "preallocated_images_and_device_pools_without_a_snapshot_pool";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "xfs", "1G") else { return };
    let disks = Disks::new(scratch.path(), &[32]);
    let config = format!(
        "stateDir: {}\npools:\n  - {{name: thick, type: block, path: {}, createPath: true, preallocate: true}}\n  - {{name: disks, type: device, devices: ['{}'], wipe: signatures}}\n",
        scratch.path().join("state").display(),
        pool_fs.mount.join("thick").display(),
        disks.devices[0]
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let in_pool = |name: &str, pool: &str, bytes: i64| {
        let mut r = create_req(name, bytes);
        r.parameters.insert("pool".into(), pool.into());
        r
    };
    let capacity = |b: &mut Berth| {
        let mut c = b.controller.clone();
        async move {
            c.get_capacity(pb::GetCapacityRequest {
                parameters: [("pool".to_string(), "thick".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect("capacity")
            .into_inner()
            .available_capacity
        }
    };
    let before = capacity(&mut b).await;
    let vol = b
        .controller
        .create_volume(in_pool("thick-vol", "thick", 128 * MIB))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v");
    let image =
        pool_fs.mount.join("thick/volumes").join(format!("{}.img", vol.volume_id.rsplit(':').next().expect("key")));
    let allocated = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&image).expect("image")) * 512;
    assert!(allocated >= 128 << 20, "preallocate: true allocates every block up front ({allocated} bytes)");
    let after = capacity(&mut b).await;
    assert!(before - after >= 128 * MIB, "GetCapacity reports the space the image took: {before} -> {after}");

    let dvol = b
        .controller
        .create_volume(in_pool("dev-vol", "disks", 16 * MIB))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v");
    let p = stage_publish(&mut b, scratch.path(), &dvol.volume_id, "d", fs_cap("")).await;
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: dvol.volume_id.clone(),
            name: "no-pool".into(),
            ..Default::default()
        })
        .await;
    let err = snap.expect_err("no snapshot pool");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("snapshotPool"), "{}", err.message());
    unpublish_unstage(&mut b, &dvol.volume_id, &p).await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: dvol.volume_id, ..Default::default() })
        .await
        .expect("delete");
    assert_eq!(
        berth::mount::tools::blkid(Path::new(&disks.devices[0])).expect("blkid"),
        berth::mount::Signature::None,
        "wipe: signatures erased the filesystem signature"
    );
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id, ..Default::default() })
        .await
        .expect("delete");
}

/// Stand-in disks for device pools: loop devices over image files, reachable through
/// symbolic links in a directory under /dev as /dev/disk/by-id would be. The test can move
/// a disk to another loop device, as a reboot gives a disk another /dev/sdX. On drop it
/// detaches only loop devices still backed by its own images and removes the links.
struct Rig {
    links: PathBuf,
    images: Vec<PathBuf>,
    /// The loop device each image is attached to now.
    loops: Vec<String>,
}

impl Rig {
    fn new(dir: &Path, count: usize, size_mib: u64) -> Rig {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_nanos();
        let links = PathBuf::from(format!("/dev/berth-test-{}-{nanos}", std::process::id()));
        fs::create_dir(&links).expect("mkdir under /dev");
        let mut rig = Rig { links, images: Vec::new(), loops: Vec::new() };
        for i in 0..count {
            let img = dir.join(format!("disk{i}.img"));
            sh("truncate", &["-s", &format!("{size_mib}M"), img.to_str().expect("utf8")]);
            rig.loops.push(sh("losetup", &["--find", "--show", img.to_str().expect("utf8")]).trim().to_string());
            rig.images.push(img);
            rig.link(i, i);
        }
        rig
    }

    fn link_path(&self, i: usize) -> PathBuf {
        self.links.join(format!("disk-{i}"))
    }

    /// Points link `i` at the loop device holding image `disk`.
    fn link(&self, i: usize, disk: usize) {
        let _ = fs::remove_file(self.link_path(i));
        std::os::unix::fs::symlink(&self.loops[disk], self.link_path(i)).expect("symlink");
    }

    /// Which image the loop device `dev` holds.
    fn disk_of(&self, dev: &str) -> usize {
        self.loops.iter().position(|l| l == dev).unwrap_or_else(|| panic!("{dev} is none of {:?}", self.loops))
    }

    /// Exchanges the loop devices of images `a` and `b`, as a reboot that probes the disks
    /// in another order does. Each image is attached to its new device before the old
    /// one is detached, so no other test can take a device in between.
    fn swap_kernel_names(&mut self, a: usize, b: usize) {
        let (la, lb) = (self.loops[a].clone(), self.loops[b].clone());
        sh("losetup", &["-d", &la]);
        sh("losetup", &[&la, self.images[b].to_str().expect("utf8")]);
        sh("losetup", &["-d", &lb]);
        sh("losetup", &[&lb, self.images[a].to_str().expect("utf8")]);
        self.loops.swap(a, b);
    }

    /// Replaces the contents of image `disk` with those of `from`, re-attaching it (its
    /// identity, the backing file, and its size stay the same).
    fn replace_contents(&mut self, disk: usize, from: &Path) {
        sh("losetup", &["-d", &self.loops[disk]]);
        fs::copy(from, &self.images[disk]).expect("copy image");
        self.loops[disk] =
            sh("losetup", &["--find", "--show", self.images[disk].to_str().expect("utf8")]).trim().to_string();
        self.link(disk, disk);
    }

    /// Moves image `disk` to a loop device it never had.
    fn move_to_new_name(&mut self, disk: usize) {
        let old = self.loops[disk].clone();
        let new = sh("losetup", &["--find", "--show", self.images[disk].to_str().expect("utf8")]).trim().to_string();
        sh("losetup", &["-d", &old]);
        self.loops[disk] = new;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (dev, img) in self.loops.iter().zip(&self.images) {
            let back = std::process::Command::new("losetup").args(["-n", "-O", "BACK-FILE", dev]).output();
            if back.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == img.to_string_lossy()) {
                let _ = std::process::Command::new("losetup").args(["-d", dev]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.links);
    }
}

fn device_config(state: &Path, devices: &[String], extra: &str) -> String {
    format!(
        "stateDir: {}\npools:\n  - name: disks\n    type: device\n    devices: [{}]\n{extra}",
        state.display(),
        devices.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
    )
}

async fn stage_only(b: &mut Berth, id: &str, staging: &Path) -> Result<(), tonic::Status> {
    b.node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(fs_cap("")),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn delete(b: &mut Berth, id: &str) -> Result<(), tonic::Status> {
    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }).await.map(|_| ())
}

/// Writes `text` into a new filesystem volume and returns the index of its disk.
async fn fill(b: &mut Berth, rig: &Rig, root: &Path, id: &str, text: &str) -> usize {
    let p = stage_publish(b, root, id, text, fs_cap("")).await;
    let disk = rig.disk_of(&mount_entry(&p.staging).expect("mounted").source);
    fs::write(p.target.join("data"), text).expect("write");
    unpublish_unstage(b, id, &p).await;
    disk
}

#[tokio::test]
async fn device_pool_follows_each_disk_by_identity_and_refuses_a_link_to_another() {
    let test = "device_pool_follows_each_disk_by_identity_and_refuses_a_link_to_another";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let mut rig = Rig::new(scratch.path(), 3, 32);
    let pattern = rig.links.join("disk-*").display().to_string();
    let config = device_config(&scratch.path().join("state"), &[pattern], "");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let v1 = create(&mut b, "pvc-one", 16 * MIB, fs_cap("")).await.volume_id;
    let v2 = create(&mut b, "pvc-two", 16 * MIB, fs_cap("")).await.volume_id;
    let v3 = create(&mut b, "pvc-blank", 16 * MIB, fs_cap("")).await.volume_id;
    let d1 = fill(&mut b, &rig, scratch.path(), &v1, "one").await;
    let d2 = fill(&mut b, &rig, scratch.path(), &v2, "two").await;
    let d3 = 3 - d1 - d2;
    b.stop();

    // A reboot: disks 1 and 2 swap kernel names, the never-staged disk 3 comes back under a
    // name no record knows; the by-id links follow their disks, as udev makes them.
    rig.swap_kernel_names(d1, d2);
    rig.move_to_new_name(d3);
    for i in 0..3 {
        rig.link(i, i);
    }
    b.restart().await;
    let p = stage_publish(&mut b, scratch.path(), &v1, "after-reboot", fs_cap("")).await;
    assert_eq!(fs::read_to_string(p.target.join("data")).expect("read"), "one", "volume 1 is still disk {d1}");
    unpublish_unstage(&mut b, &v1, &p).await;
    let taken = b.controller.create_volume(create_req("pvc-four", 16 * MIB)).await;
    assert_eq!(code(taken), Code::ResourceExhausted, "disk {d3} is still volume 3's under its new name");

    // The links of disks 1 and 2 now lead to each other's disk: nothing is mounted or wiped.
    rig.link(d1, d2);
    rig.link(d2, d1);
    let staging = scratch.path().join("staging-swapped");
    let err = stage_only(&mut b, &v1, &staging).await.expect_err("a link to another disk");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for name in [&rig.loops[d1], &rig.loops[d2]] {
        assert!(err.message().contains(name.as_str()), "the message names both devices: {}", err.message());
    }
    assert!(mount_entry(&staging).is_none(), "nothing was mounted");
    let err = delete(&mut b, &v1).await.expect_err("no wipe of another disk");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    rig.link(d1, d1);
    rig.link(d2, d2);
    let p = stage_publish(&mut b, scratch.path(), &v2, "survived", fs_cap("")).await;
    assert_eq!(fs::read_to_string(p.target.join("data")).expect("read"), "two", "volume 2's data survived");
    unpublish_unstage(&mut b, &v2, &p).await;

    // Same path, same identity, same size, another filesystem: as a disk whose kernel
    // exposes no serial replaced by another of its size would look. Volume 2's filesystem
    // is copied into volume 1's image; the UUID recorded at the first stage tells them apart.
    let saved = scratch.path().join("disk-one.saved");
    fs::copy(&rig.images[d1], &saved).expect("save volume 1's disk");
    let other = rig.images[d2].clone();
    rig.replace_contents(d1, &other);
    let err = stage_only(&mut b, &v1, &staging).await.expect_err("another filesystem");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("filesystem UUID"), "{}", err.message());
    assert!(mount_entry(&staging).is_none(), "nothing was mounted");
    assert_eq!(code(delete(&mut b, &v1).await), Code::FailedPrecondition);
    rig.replace_contents(d1, &saved);
    let p = stage_publish(&mut b, scratch.path(), &v1, "put-back", fs_cap("")).await;
    assert_eq!(fs::read_to_string(p.target.join("data")).expect("read"), "one");
    unpublish_unstage(&mut b, &v1, &p).await;
    for v in [&v1, &v2, &v3] {
        delete(&mut b, v).await.expect("delete");
    }
}

#[tokio::test]
async fn device_pool_refuses_records_outside_the_allow_list_or_naming_one_device() {
    let test = "device_pool_refuses_records_outside_the_allow_list_or_naming_one_device";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let rig = Rig::new(scratch.path(), 2, 32);
    let state = scratch.path().join("state");
    let all = device_config(&state, &[rig.links.join("disk-*").display().to_string()], "");
    let mut b = Berth::start(scratch.path(), &all, "node-a", &[]).await;
    let v1 = create(&mut b, "pvc-one", 16 * MIB, fs_cap("")).await.volume_id;
    let d1 = fill(&mut b, &rig, scratch.path(), &v1, "one").await;
    b.stop();

    // A second record naming volume 1's disk (a damaged or hand-edited state).
    let twin_id = format!("{}{}", &v1[..v1.len() - 32], "0123456789abcdef0123456789abcdef");
    {
        let (store, _) = berth::state::Store::open(&state).expect("open state");
        let mut twin = std::sync::Arc::unwrap_or_clone(store.volume(&v1).expect("record"));
        twin.id = twin_id.clone();
        twin.name = "pvc-twin".into();
        twin.key = "0123456789abcdef0123456789abcdef".into();
        store.put_volume(&twin).expect("put");
    }
    b.restart().await;
    assert!(b.logs().contains("name the same device"), "the start reports the conflict");
    let staging = scratch.path().join("staging-twin");
    for id in [&v1, &twin_id] {
        let err = stage_only(&mut b, id, &staging).await.expect_err("two records, one disk");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("same device"), "{}", err.message());
        assert_eq!(code(delete(&mut b, id).await), Code::FailedPrecondition);
    }
    assert!(mount_entry(&staging).is_none(), "nothing was mounted");
    let other_id = create(&mut b, "pvc-other", 16 * MIB, fs_cap("")).await.volume_id;
    let full = b.controller.create_volume(create_req("pvc-third", 16 * MIB)).await;
    assert_eq!(code(full), Code::ResourceExhausted, "the disk both records name is never handed out");
    b.stop();
    {
        let (store, _) = berth::state::Store::open(&state).expect("open state");
        store.remove_volume(&twin_id).expect("the operator removes the wrong record");
    }

    // The allow-list no longer names volume 1's disk.
    let narrowed = device_config(&state, &[rig.link_path(1 - d1).display().to_string()], "");
    fs::write(&b.config, narrowed).expect("config");
    b.restart().await;
    let err = stage_only(&mut b, &v1, &staging).await.expect_err("outside the allow-list");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("allow-list"), "{}", err.message());
    assert_eq!(code(delete(&mut b, &v1).await), Code::FailedPrecondition);
    assert_eq!(
        berth::mount::tools::blkid(&rig.link_path(d1)).expect("blkid"),
        berth::mount::Signature::Filesystem("ext4".into()),
        "volume 1's disk was not wiped"
    );
    b.stop();

    // A record written before identities were: the kernel's name, no identity. The start
    // records the identity while that name still leads to the volume's disk.
    let kernel_name = fs::canonicalize(rig.link_path(d1)).expect("link").display().to_string();
    {
        let (store, _) = berth::state::Store::open(&state).expect("open state");
        let mut legacy = std::sync::Arc::unwrap_or_clone(store.volume(&v1).expect("record"));
        legacy.device = Some(kernel_name.clone());
        legacy.device_identity = None;
        assert_eq!(legacy.layers, [berth::state::Layer::Disk]);
        legacy.layers.clear();
        store.put_volume(&legacy).expect("put");
    }
    fs::write(&b.config, all).expect("config");
    b.restart().await;
    assert!(b.logs().contains("recorded the identity"), "the legacy record was adopted");
    let p = stage_publish(&mut b, scratch.path(), &v1, "back", fs_cap("")).await;
    assert_eq!(fs::read_to_string(p.target.join("data")).expect("read"), "one");
    unpublish_unstage(&mut b, &v1, &p).await;
    b.stop();
    let (volumes, _) = berth::state::read_records(&state).expect("records");
    let adopted = volumes.iter().find(|v| v.id == v1).expect("v1");
    assert_eq!(
        adopted.device.as_deref(),
        Some(rig.link_path(d1).to_str().expect("utf8")),
        "named as the allow-list does"
    );
    let identity = adopted.device_identity.as_ref().expect("identity recorded");
    assert_eq!((identity.kernel_name.as_str(), identity.size), (kernel_name.as_str(), 32 << 20));
    assert!(identity.serial.as_deref().is_some_and(|s| s.starts_with("loop:")), "{identity:?}");
    b.restart().await;
    for v in [&v1, &other_id] {
        delete(&mut b, v).await.expect("delete");
    }
}

#[tokio::test]
async fn device_pool_leaves_nothing_of_a_deleted_volume_for_the_next() {
    let test = "device_pool_leaves_nothing_of_a_deleted_volume_for_the_next";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let rig = Rig::new(scratch.path(), 1, 24);
    // The default wipe, as most pools are configured.
    let config = device_config(&scratch.path().join("state"), &[rig.link_path(0).display().to_string()], "");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let first = create(&mut b, "pvc-first", 16 * MIB, raw_cap()).await.volume_id;
    let p = stage_publish(&mut b, scratch.path(), &first, "first", raw_cap()).await;
    let pattern: Vec<u8> = b"tenant-one-secret-".iter().copied().cycle().take(20 << 20).collect();
    {
        let mut dev = fs::OpenOptions::new().write(true).open(&p.target).expect("open");
        dev.seek(SeekFrom::Start(1 << 20)).expect("seek");
        dev.write_all(&pattern).expect("write");
        dev.sync_all().expect("sync");
    }
    unpublish_unstage(&mut b, &first, &p).await;
    delete(&mut b, &first).await.expect("delete");
    let next = create(&mut b, "pvc-next", 16 * MIB, raw_cap()).await.volume_id;
    let mut raw = Vec::new();
    fs::File::open(rig.link_path(0)).expect("open").read_to_end(&mut raw).expect("read the whole device");
    assert_eq!(raw.len(), 24 << 20);
    let left = raw.iter().filter(|b| **b != 0).count();
    assert_eq!(left, 0, "{left} bytes of the last tenant are readable by the next");
    delete(&mut b, &next).await.expect("delete");
}

#[tokio::test]
async fn device_pool_a_disk_two_pools_list_is_handed_out_once() {
    let test = "device_pool_a_disk_two_pools_list_is_handed_out_once";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let rig = Rig::new(scratch.path(), 1, 24);
    let disk = rig.link_path(0).display().to_string();
    let config = format!(
        "stateDir: {}\npools:\n  - {{name: one, type: device, devices: ['{disk}']}}\n  - {{name: two, type: device, devices: ['{}/disk-*']}}\n",
        scratch.path().join("state").display(),
        rig.links.display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let in_pool = |name: &str, pool: &str| {
        let mut r = create_req(name, 16 * MIB);
        r.parameters.insert("pool".into(), pool.into());
        r
    };
    let first = b.controller.create_volume(in_pool("pvc-one", "one")).await.expect("create").into_inner();
    let first = first.volume.expect("volume").volume_id;
    let twice = b.controller.create_volume(in_pool("pvc-two", "two")).await;
    assert_eq!(code(twice), Code::ResourceExhausted, "the blank disk is pool one's volume's");
    b.restart().await;
    let twice = b.controller.create_volume(in_pool("pvc-two", "two")).await;
    assert_eq!(code(twice), Code::ResourceExhausted, "also after a restart");
    delete(&mut b, &first).await.expect("delete");
    let second = b.controller.create_volume(in_pool("pvc-two", "two")).await.expect("free again").into_inner();
    delete(&mut b, &second.volume.expect("volume").volume_id).await.expect("delete");
}
