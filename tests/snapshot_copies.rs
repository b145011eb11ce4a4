//! Snapshots that outlive the node (issue 22), with a real nfs-ganesha on 127.0.0.1 as
//! the shared pool and two berth node processes, node-a and node-b, each with its own
//! disks: a snapshot taken on node-a with `copyTo` is restored on node-b after node-a's
//! berth and pool are gone, with equal checksums; the copy of the restored volume moves
//! almost nothing (its chunks are there); deleting the snapshots empties the store; a
//! damaged copy is refused with DATA_LOSS naming the snapshot; a raw block volume's image
//! travels too.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::csi::pb;
use common::ganesha::{Ganesha, nfs_config};
use common::*;
use sha2::Digest;
use tonic::Code;

const DRIVER: &[&str] = &["--metrics-address", "127.0.0.1:0"];
/// Calls answer at once: readiness is seen by polling, as the CO does.
const COPY_WAIT: &str = "copyWaitMs: 0\n";

/// A node: its own directory (socket, config, state) and its pools' lines.
fn node_config(dir: &Path, g: &Ganesha, local: &str) -> String {
    // As the chart gives it to the local driver's nodes (snapshots.copyPools).
    let shared = nfs_config(&dir.join("state"), g, &[("shared", "copiesOnly: true")]);
    format!("{COPY_WAIT}{shared}{local}")
}

fn hostpath_line(pool: &Path) -> String {
    format!(
        "  - {{name: local, type: hostpath, path: {}, createPath: true, capacityEnforcement: auto}}\n",
        pool.display()
    )
}

fn block_line(pool: &Path) -> String {
    format!("  - {{name: disks, type: block, path: {}, createPath: true}}\n", pool.display())
}

async fn node(dir: PathBuf, config: &str, id: &str) -> Berth {
    fs::create_dir_all(&dir).unwrap();
    Berth::start(&dir, config, id, DRIVER).await
}

fn volume_req(name: &str, pool: &str, bytes: i64, snapshot: Option<&str>) -> pb::CreateVolumeRequest {
    let mut r = create_req(name, bytes);
    r.parameters.insert("pool".into(), pool.into());
    r.volume_content_source = snapshot.map(|id| pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: id.to_string(),
        })),
    });
    r
}

/// CreateSnapshot of `volume` with a copy to the shared pool.
fn copy_req(volume: &str, name: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        source_volume_id: volume.into(),
        name: name.into(),
        parameters: [("copyTo".to_string(), "shared".to_string())].into(),
        ..Default::default()
    }
}

async fn copied_snapshot(b: &mut Berth, volume: &str, name: &str) -> pb::Snapshot {
    b.controller
        .create_snapshot(copy_req(volume, name))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("snapshot")
}

/// A 100 MiB volume in pool `local`.
async fn data_volume(b: &mut Berth) -> String {
    let vol = b.controller.create_volume(volume_req("data", "local", 100 << 20, None)).await.expect("create");
    vol.into_inner().volume.expect("volume").volume_id
}

/// Writes `files` into `volume` through a stage and publish under `dir`, then unpublishes
/// and unstages it; what the volume then holds ([`tree_sums`]).
async fn write_files(b: &mut Berth, dir: &Path, volume: &str, files: &[(&str, Vec<u8>)]) -> BTreeMap<String, String> {
    let paths = stage_publish(b, dir, volume, "writer", rwo()).await;
    for (name, data) in files {
        fs::write(paths.target.join(name), data).unwrap();
    }
    let sums = tree_sums(&paths.target);
    unpublish_unstage(b, volume, &paths).await;
    sums
}

/// Retries CreateSnapshot as the snapshotter does while the snapshot is not ready, until
/// an answer is an error (the copy failed): that error.
async fn until_copy_fails(b: &mut Berth, volume: &str, name: &str) -> tonic::Status {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match b.controller.create_snapshot(copy_req(volume, name)).await {
            Ok(r) => assert!(!r.into_inner().snapshot.expect("snapshot").ready_to_use, "ready without its copy"),
            Err(e) => return e,
        }
        assert!(Instant::now() < deadline, "the copy did not fail:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether ListSnapshots says snapshot `id` is ready to use.
async fn listed_ready(b: &mut Berth, id: &str) -> bool {
    let req = pb::ListSnapshotsRequest { snapshot_id: id.into(), ..Default::default() };
    let listed = b.controller.list_snapshots(req).await.expect("list").into_inner();
    listed.entries[0].snapshot.as_ref().expect("snapshot").ready_to_use
}

/// Polls ListSnapshots, as the CO does, until the snapshot is ready to use.
async fn until_ready(b: &mut Berth, id: &str) -> pb::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let req = pb::ListSnapshotsRequest { snapshot_id: id.into(), ..Default::default() };
        let listed = b.controller.list_snapshots(req).await.expect("list").into_inner();
        let s = listed.entries.first().and_then(|e| e.snapshot.clone()).expect("a snapshot being copied is listed");
        if s.ready_to_use {
            return s;
        }
        assert!(Instant::now() < deadline, "snapshot {id} not ready in time:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries CreateVolume as the CO does until it answers anything but ABORTED.
async fn until_answered(b: &mut Berth, req: &pb::CreateVolumeRequest) -> Result<pb::Volume, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match b.controller.create_volume(req.clone()).await {
            Ok(r) => return Ok(r.into_inner().volume.expect("volume")),
            Err(s) if s.code() == Code::Aborted => {}
            Err(s) => return Err(s),
        }
        assert!(Instant::now() < deadline, "CreateVolume {} not answered in time:\n{}", req.name, b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry under `root`: relative path, kind, mode, and a file's SHA-256 or a link's
/// target. Hard links show as equal inode groups.
fn tree_sums(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>, inodes: &mut BTreeMap<u64, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out, inodes);
                "dir".to_string()
            } else {
                let first = inodes.entry(meta.ino()).or_insert_with(|| rel.clone()).clone();
                format!("file {} {}", hex::encode(sha2::Sha256::digest(fs::read(&path).unwrap())), first)
            };
            out.insert(rel, format!("{what} {mode:o} {}:{}", meta.uid(), meta.gid()));
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out, &mut BTreeMap::new());
    out
}

/// Fills a volume with what a database leaves: data files, a directory, a hard link, a
/// symlink, odd modes and owners, a sparse file.
fn fill(root: &Path) {
    fs::create_dir_all(root.join("pg/base")).unwrap();
    for i in 0..6u64 {
        fs::write(root.join(format!("pg/base/{i}")), noise(i, 700 << 10)).unwrap();
    }
    fs::write(root.join("pg/base/same"), noise(3, 700 << 10)).unwrap();
    fs::hard_link(root.join("pg/base/0"), root.join("pg/base/0.link")).unwrap();
    std::os::unix::fs::symlink("base/1", root.join("pg/latest")).unwrap();
    fs::set_permissions(root.join("pg/base/2"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(root.join("pg/base/2"), Some(999), Some(999)).unwrap();
    let mut sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.seek(SeekFrom::Start(64 << 20)).unwrap();
    sparse.write_all(b"end").unwrap();
}

fn archive_dir(g: &Ganesha) -> PathBuf {
    g.export.join(".berth/archive")
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(entries(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn metric(b: &Berth, name: &str) -> f64 {
    let (_, body) = http_get(&b.metrics_address(), "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not on /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_restores_on_another_node_after_the_first_is_gone() {
    let test = "a_copy_restores_on_another_node_after_the_first_is_gone";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let Some(disk_a) = FsImage::new(&scratch, test, "btrfs", "400M") else { return };
    let Some(disk_b) = FsImage::new(&scratch, test, "xfs", "400M") else { return };

    // node-a: a volume with data, snapshotted with a copy to the shared pool.
    let dir_a = scratch.path().join("node-a");
    let mut a =
        node(dir_a.clone(), &node_config(&dir_a, &g, &hostpath_line(&disk_a.mount.join("pool"))), "node-a").await;
    let vol = data_volume(&mut a).await;
    let paths = stage_publish(&mut a, &dir_a, &vol, "writer", rwo()).await;
    fill(&paths.target);
    let before = tree_sums(&paths.target);
    let snap = copied_snapshot(&mut a, &vol, "nightly").await;
    assert!(!snap.ready_to_use, "not ready to use before its copy is checked");
    let snap = until_ready(&mut a, &snap.snapshot_id).await;
    assert_eq!(metric(&a, "berth_snapshot_copies_completed_total"), 1.0);
    let first_sent = metric(&a, "berth_snapshot_copy_sent_bytes_total");
    assert!(first_sent > 4.0 * 700.0 * 1024.0, "the first copy sends the data: {first_sent}");
    assert!(first_sent < 7.5 * 700.0 * 1024.0, "identical files and holes are not sent twice: {first_sent}");
    unpublish_unstage(&mut a, &vol, &paths).await;

    // node-a and its pool are gone.
    a.kill();
    drop(disk_a);
    fs::remove_dir_all(&dir_a).unwrap();

    // node-b restores it from the copy, into a pool on another filesystem.
    let dir_b = scratch.path().join("node-b");
    let mut b =
        node(dir_b.clone(), &node_config(&dir_b, &g, &hostpath_line(&disk_b.mount.join("pool"))), "node-b").await;
    let restore = volume_req("data-restored", "local", 100 << 20, Some(&snap.snapshot_id));
    let restored = until_answered(&mut b, &restore).await.expect("restore on node-b");
    let again = until_answered(&mut b, &restore).await.expect("the retry answers the same volume");
    assert_eq!(again.volume_id, restored.volume_id);
    let paths_b = stage_publish(&mut b, &dir_b, &restored.volume_id, "reader", rwo()).await;
    assert_eq!(tree_sums(&paths_b.target), before, "node-b reads what node-a wrote");
    assert!(fs::metadata(paths_b.target.join("sparse")).unwrap().blocks() * 512 < 1 << 20, "holes stay holes");
    fs::write(paths_b.target.join("pg/base/5"), noise(50, 7 << 10)).unwrap();
    unpublish_unstage(&mut b, &restored.volume_id, &paths_b).await;
    assert_eq!(metric(&b, "berth_snapshot_copy_restores_total"), 1.0);

    // A copy of the restored volume on node-b sends only what changed.
    let second = copied_snapshot(&mut b, &restored.volume_id, "nightly-b").await;
    until_ready(&mut b, &second.snapshot_id).await;
    let second_sent = metric(&b, "berth_snapshot_copy_sent_bytes_total");
    assert!(second_sent < 0.05 * first_sent, "second copy sent {second_sent} of {first_sent}");

    // A clone across nodes says what to do instead.
    let mut clone = create_req("clone", 100 << 20);
    clone.parameters.insert("pool".into(), "local".into());
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: vol.clone(),
        })),
    });
    let err = b.controller.create_volume(clone).await.expect_err("a clone of node-a's volume on node-b");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("copyTo"), "{}", err.message());

    // Deleting node-a's snapshot on node-b deletes its copy; node-b's own stays whole.
    let delete = |id: &str| pb::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    b.controller.delete_snapshot(delete(&snap.snapshot_id)).await.expect("delete node-a's snapshot");
    let manifests = entries(&archive_dir(&g).join("manifests"));
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let again = volume_req("data-again", "local", 100 << 20, Some(&second.snapshot_id));
    let err = b.controller.create_volume(volume_req("gone", "local", 100 << 20, Some(&snap.snapshot_id))).await;
    assert_eq!(code(err), Code::NotFound, "node-a's snapshot is gone everywhere");
    let again = until_answered(&mut b, &again).await.expect("node-b's copy still restores");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: again.volume_id, ..Default::default() })
        .await
        .expect("delete");
    b.controller.delete_snapshot(delete(&second.snapshot_id)).await.expect("delete node-b's snapshot");
    assert!(entries(&archive_dir(&g).join("manifests")).is_empty());
    assert!(entries(&archive_dir(&g).join("packs")).is_empty(), "no chunk outlives the last copy");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: restored.volume_id, ..Default::default() })
        .await
        .expect("delete");
    b.stop();
}

/// Restores `snapshot` on `b` until the answer is final; the failure.
async fn failed_restore(b: &mut Berth, snapshot: &str, name: &str) -> tonic::Status {
    let req = volume_req(name, "local", 100 << 20, Some(snapshot));
    let err = until_answered(b, &req).await.expect_err("a damaged copy does not restore");
    let volumes = b.socket.parent().unwrap().join("pool/volumes");
    let left: Vec<_> = fs::read_dir(&volumes).unwrap().collect();
    assert!(left.is_empty(), "nothing is left of the restore: {left:?}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_copy_is_refused_with_data_loss_naming_the_snapshot() {
    let test = "a_damaged_copy_is_refused_with_data_loss_naming_the_snapshot";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let dir_a = scratch.path().join("node-a");
    let mut a = node(dir_a.clone(), &node_config(&dir_a, &g, &hostpath_line(&dir_a.join("pool"))), "node-a").await;
    let vol = data_volume(&mut a).await;
    write_files(&mut a, &dir_a, &vol, &[("a", noise(1, 300 << 10)), ("b", noise(2, 300 << 10))]).await;
    let snap = copied_snapshot(&mut a, &vol, "s").await;
    let snap = until_ready(&mut a, &snap.snapshot_id).await;

    let dir_b = scratch.path().join("node-b");
    let mut b = node(dir_b.clone(), &node_config(&dir_b, &g, &hostpath_line(&dir_b.join("pool"))), "node-b").await;
    let root = archive_dir(&g);
    let name = entries(&root.join("manifests")).pop().expect("the manifest");
    let name = name.file_name().unwrap().to_str().unwrap();
    let store = berth::archive::store::DirStore::open(&root).unwrap();
    let chunks: Vec<_> = berth::archive::restore::load(&store, name).unwrap().chunks().map(|c| c.hash).collect();
    assert!(chunks.len() > 10, "{chunks:?}");

    // One chunk's bytes changed on the export.
    packs::flip(&root, &chunks[3], 0, 0xff);
    let err = failed_restore(&mut b, &snap.snapshot_id, "corrupt").await;
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&snap.snapshot_id) && err.message().contains("corrupted"), "{}", err.message());

    // One chunk missing.
    packs::rewrite(&root, &chunks[5], |_| None);
    packs::rewrite(&root, &chunks[3], |_| None);
    let err = failed_restore(&mut b, &snap.snapshot_id, "missing").await;
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&snap.snapshot_id) && err.message().contains("missing"), "{}", err.message());

    // The manifest cut short.
    let manifest = entries(&archive_dir(&g).join("manifests")).pop().expect("the manifest");
    let text = fs::read(&manifest).unwrap();
    fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let err = failed_restore(&mut b, &snap.snapshot_id, "truncated").await;
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&snap.snapshot_id) && err.message().contains("truncated"), "{}", err.message());
    b.stop();
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_block_volume_travels_as_its_image() {
    let test = "a_raw_block_volume_travels_as_its_image";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let dir_a = scratch.path().join("node-a");
    raw_volume_travels(&scratch, &g, &block_line(&dir_a.join("images"))).await;
}

/// A device pool's snapshot is an image of the whole disk: its copy restores into a
/// block pool on another node.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_volume_travels_as_its_disk_image() {
    let test = "a_device_volume_travels_as_its_disk_image";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let disks = Disks::new(scratch.path(), &[64]);
    let dir_a = scratch.path().join("node-a");
    let local = format!(
        "  - {{name: disks, type: device, devices: ['{}'], wipe: signatures, snapshotPool: img}}\n{}",
        disks.devices[0],
        block_line(&dir_a.join("images")).replace("name: disks", "name: img")
    );
    raw_volume_travels(&scratch, &g, &local).await;
}

/// A raw block volume of node-a's pool `disks` is written, snapshotted with a copy, and
/// node-a is gone; node-b's block pool `disks` restores the copy, which reads back.
async fn raw_volume_travels(scratch: &Scratch, g: &Ganesha, local_a: &str) {
    let raw = || pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Block(pb::volume_capability::BlockVolume {})),
        access_mode: rwo().access_mode,
    };
    let block_req = |name: &str, snapshot: Option<&str>| {
        let mut r = volume_req(name, "disks", 64 << 20, snapshot);
        r.volume_capabilities = vec![raw()];
        r
    };
    let dir_a = scratch.path().join("node-a");
    let mut a = node(dir_a.clone(), &node_config(&dir_a, g, local_a), "node-a").await;
    let vol = a.controller.create_volume(block_req("disk", None)).await.expect("create");
    let vol = vol.into_inner().volume.expect("volume").volume_id;
    let paths = stage_publish(&mut a, &dir_a, &vol, "writer", raw()).await;
    let written = noise(9, 3 << 20);
    let mut dev = fs::OpenOptions::new().write(true).open(&paths.target).unwrap();
    dev.write_all_at_start(&written);
    drop(dev);
    unpublish_unstage(&mut a, &vol, &paths).await;
    let snap = copied_snapshot(&mut a, &vol, "disk-snap").await;
    let snap = until_ready(&mut a, &snap.snapshot_id).await;
    a.kill();
    fs::remove_dir_all(&dir_a).unwrap();

    let dir_b = scratch.path().join("node-b");
    let mut b = node(dir_b.clone(), &node_config(&dir_b, g, &block_line(&dir_b.join("images"))), "node-b").await;
    let wrong = volume_req("as-dir", "disks", 64 << 20, Some(&snap.snapshot_id));
    let err = b.controller.create_volume(wrong).await.expect_err("a raw image restored as a filesystem volume");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let restored = until_answered(&mut b, &block_req("disk-b", Some(&snap.snapshot_id))).await.expect("restore");
    let paths = stage_publish(&mut b, &dir_b, &restored.volume_id, "reader", raw()).await;
    let mut read = vec![0u8; written.len()];
    fs::File::open(&paths.target).unwrap().read_exact(&mut read).unwrap();
    assert!(read == written, "node-b's device holds what node-a wrote");
    unpublish_unstage(&mut b, &restored.volume_id, &paths).await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: restored.volume_id, ..Default::default() })
        .await
        .expect("delete");
    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
        .await
        .expect("delete the snapshot where its node is gone");
    assert!(entries(&archive_dir(g).join("packs")).is_empty());
    b.stop();
}

trait WriteAtStart {
    fn write_all_at_start(&mut self, data: &[u8]);
}

impl WriteAtStart for fs::File {
    fn write_all_at_start(&mut self, data: &[u8]) {
        self.seek(SeekFrom::Start(0)).unwrap();
        self.write_all(data).unwrap();
        self.sync_all().unwrap();
    }
}

/// Retries CreateSnapshot, as the snapshotter does for a snapshot not ready to use,
/// until it is; every answer before says not ready or ABORTED.
async fn until_copied(b: &mut Berth, volume: &str, name: &str) -> pb::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match b.controller.create_snapshot(copy_req(volume, name)).await {
            Ok(r) => {
                let s = r.into_inner().snapshot.expect("snapshot");
                if s.ready_to_use {
                    return s;
                }
            }
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
        assert!(Instant::now() < deadline, "snapshot {name} not copied in time:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_killed_at_any_point_is_finished_by_the_retry_after_restart() {
    let test = "a_copy_killed_at_any_point_is_finished_by_the_retry_after_restart";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    if !cfg!(feature = "failpoints") {
        println!("SKIPPED: {test}: needs the failpoints feature");
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let dir_a = scratch.path().join("node-a");
    let mut a = node(dir_a.clone(), &node_config(&dir_a, &g, &hostpath_line(&dir_a.join("pool"))), "node-a").await;
    let vol = data_volume(&mut a).await;
    let before = write_files(&mut a, &dir_a, &vol, &[("a", noise(1, 600 << 10))]).await;

    let dir_b = scratch.path().join("node-b");
    let mut b = node(dir_b.clone(), &node_config(&dir_b, &g, &hostpath_line(&dir_b.join("pool"))), "node-b").await;
    for (n, point) in ["archive.copy.chunk=kill@5", "archive.copy.flushed=kill@1", "archive.copy.before-check=kill@1"]
        .iter()
        .enumerate()
    {
        a.stop();
        a.env = vec![("BERTH_FAILPOINTS".to_string(), point.to_string())];
        a.respawn().await;
        let name = format!("s{n}");
        let first = copied_snapshot(&mut a, &vol, &name).await;
        assert!(!first.ready_to_use);
        assert!(a.exited_within(Duration::from_secs(20)), "{point} was not reached:\n{}", a.logs());
        a.env.clear();
        a.respawn().await;
        let snap = until_copied(&mut a, &vol, &name).await;
        assert_eq!(snap.snapshot_id, first.snapshot_id, "{point}: the same snapshot, finished");

        let restored =
            until_answered(&mut b, &volume_req(&format!("r{n}"), "local", 100 << 20, Some(&snap.snapshot_id)))
                .await
                .unwrap_or_else(|e| panic!("{point}: restore: {e:?}"));
        let paths = stage_publish(&mut b, &dir_b, &restored.volume_id, &format!("r{n}"), rwo()).await;
        assert_eq!(tree_sums(&paths.target), before, "{point}");
        unpublish_unstage(&mut b, &restored.volume_id, &paths).await;
    }
    let manifests = entries(&archive_dir(&g).join("manifests"));
    assert_eq!(manifests.len(), 3, "one manifest a snapshot, none twice: {manifests:?}");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_that_goes_away_mid_copy_is_unavailable_and_the_snapshot_not_ready() {
    let test = "an_export_that_goes_away_mid_copy_is_unavailable_and_the_snapshot_not_ready";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    if !cfg!(feature = "failpoints") {
        println!("SKIPPED: {test}: needs the failpoints feature");
        return;
    }
    let Some(mut g) = Ganesha::start(scratch.path(), test) else { return };
    let dir_a = scratch.path().join("node-a");
    let mut a = node(dir_a.clone(), &node_config(&dir_a, &g, &hostpath_line(&dir_a.join("pool"))), "node-a").await;
    let vol = data_volume(&mut a).await;
    write_files(&mut a, &dir_a, &vol, &[("a", noise(1, 2 << 20))]).await;
    a.stop();
    a.env = vec![("BERTH_FAILPOINTS".to_string(), "archive.copy.chunk=sleep(20)".to_string())];
    a.respawn().await;
    let snap = copied_snapshot(&mut a, &vol, "s").await;
    assert!(!snap.ready_to_use);
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.stop();

    // The copy fails; the snapshotter's retry hears why, once, naming the snapshot.
    let err = until_copy_fails(&mut a, &vol, "s").await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&snap.snapshot_id), "{}", err.message());
    assert!(!listed_ready(&mut a, &snap.snapshot_id).await, "ready without its copy");
    let err = a
        .controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() })
        .await
        .expect_err("its copy cannot be deleted while the export is away");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(metric(&a, "berth_snapshot_copies_failed_total"), 1.0);
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_export_is_resource_exhausted_and_the_snapshot_is_never_ready_without_its_copy() {
    let test = "a_full_export_is_resource_exhausted_and_the_snapshot_is_never_ready_without_its_copy";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    // The export is a directory of a 32 MiB filesystem; the volume holds 40 MiB.
    let Some(small) = FsImage::new(&scratch, test, "ext4", "32M") else { return };
    let Some(g) = Ganesha::start(&small.mount, test) else { return };
    let dir_a = scratch.path().join("node-a");
    let mut a = node(dir_a.clone(), &node_config(&dir_a, &g, &hostpath_line(&dir_a.join("pool"))), "node-a").await;
    let vol = data_volume(&mut a).await;
    let paths = stage_publish(&mut a, &dir_a, &vol, "writer", rwo()).await;
    for i in 0..5 {
        fs::write(paths.target.join(format!("f{i}")), noise(i, 8 << 20)).unwrap();
    }
    let snap = copied_snapshot(&mut a, &vol, "s").await;
    let err = until_copy_fails(&mut a, &vol, "s").await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&snap.snapshot_id), "{}", err.message());

    assert!(!listed_ready(&mut a, &snap.snapshot_id).await, "ready without its copy");

    // Deleting it leaves no manifest and no lease of the failed copy. (Whether the space
    // comes back at once is the server's business: ganesha may hold deleted files open.)
    unpublish_unstage(&mut a, &vol, &paths).await;
    a.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() })
        .await
        .expect("delete the snapshot whose copy failed");
    assert!(entries(&archive_dir(&g).join("manifests")).is_empty());
    assert!(entries(&archive_dir(&g).join("pending")).is_empty(), "the failed copy's lease is gone");
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_values_that_cannot_work_are_refused_before_anything_is_recorded() {
    let test = "copy_to_values_that_cannot_work_are_refused_before_anything_is_recorded";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let dir = scratch.path().join("node-a");
    let pools = format!("{}{}", hostpath_line(&dir.join("pool")), block_line(&dir.join("images")));
    let mut a = node(dir.clone(), &node_config(&dir, &g, &pools), "node-a").await;
    let vol = data_volume(&mut a).await;
    for (copy_to, code, says) in [
        ("", Code::InvalidArgument, "names no pool"),
        ("nowhere", Code::InvalidArgument, "not configured"),
        ("../shared", Code::InvalidArgument, "not configured"),
        ("disks", Code::InvalidArgument, "shared (nfs) pool"),
    ] {
        let mut req = copy_req(&vol, &format!("s-{copy_to}"));
        req.parameters.insert("copyTo".into(), copy_to.into());
        let err = a.controller.create_snapshot(req).await.expect_err(copy_to);
        assert_eq!(err.code(), code, "{copy_to:?}: {err:?}");
        assert!(err.message().contains(says), "{copy_to:?}: {}", err.message());
    }
    let listed = a.controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("list").into_inner();
    assert!(listed.entries.is_empty(), "nothing recorded: {listed:?}");
    assert!(!archive_dir(&g).join("manifests").exists() || entries(&archive_dir(&g).join("manifests")).is_empty());

    // A StorageClass cannot make volumes in a pool of copies.
    let err =
        a.controller.create_volume(volume_req("in-copies", "shared", 1 << 20, None)).await.expect_err("copies only");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("copies only"), "{}", err.message());
    // A scrape never asks the server of a pool of copies (one that hangs would hold every
    // scrape for the client's deadline): no capacity for it, the local pool's is there.
    let (status, body) = http_get(&a.metrics_address(), "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("berth_pool_capacity_bytes{pool=\"local\""), "{body}");
    assert!(!body.contains("berth_pool_capacity_bytes{pool=\"shared\""), "{body}");
    a.stop();
}
