//! Long NFS copies (snapshot cuts, restores) against a real nfs-ganesha on 127.0.0.1 and
//! the real binary: every call answers within a bound while the copy goes on in the
//! background, deleting what a copy reads or writes stops it and leaves nothing behind,
//! SIGTERM stops it within the drain limit, and sparse files stay sparse.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use berth::csi::pb;
use common::ganesha::{Ganesha, nfs_config};
use common::*;
use tonic::Code;

const DRIVER: &[&str] = &[
    "--mode",
    "controller",
    "--driver-name",
    "nfs.berth.csi.io",
    "--drain-seconds",
    "5",
    "--metrics-address",
    "127.0.0.1:0",
];
/// How long berth waits for a copy before answering (the config's copyWaitMs).
const COPY_WAIT_MS: u64 = 300;
/// Every call must answer within this, whatever the copy behind it does.
const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// Slows every chunk a copy reads, so a copy of a few MiB takes seconds.
const SLOW: &str = "nfs.copy.chunk=sleep(150)";

async fn start(scratch: &Scratch, test: &str, env: &[(&str, &str)]) -> Option<(Ganesha, Berth)> {
    if !require_root(test) {
        return None;
    }
    let g = Ganesha::start(scratch.path(), test)?;
    let config =
        format!("copyWaitMs: {COPY_WAIT_MS}\n{}", nfs_config(&scratch.path().join("state"), &g, &[("shared", "")]));
    let mut b = Berth::start(scratch.path(), &config, "controller-0", DRIVER).await;
    if !env.is_empty() {
        b.stop();
        b.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        b.respawn().await;
    }
    Some((g, b))
}

fn volume_req(name: &str, bytes: i64, source: Option<pb::volume_content_source::Type>) -> pb::CreateVolumeRequest {
    let mut r = create_req(name, bytes);
    r.parameters.insert("pool".into(), "shared".into());
    r.volume_content_source = source.map(|t| pb::VolumeContentSource { r#type: Some(t) });
    r
}

fn from_snapshot(id: &str) -> Option<pb::volume_content_source::Type> {
    Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
        snapshot_id: id.to_string(),
    }))
}

/// Runs one call, failing the test when it does not answer within [`ANSWER_BOUND`].
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let answer = tokio::time::timeout(ANSWER_BOUND * 2, call).await.unwrap_or_else(|_| panic!("{what} hung"));
    assert!(started.elapsed() < ANSWER_BOUND, "{what} took {:?}", started.elapsed());
    answer
}

async fn snapshot(b: &mut Berth, source: &str, name: &str) -> pb::Snapshot {
    let req = pb::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
    bounded("CreateSnapshot", b.controller.create_snapshot(req))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("snapshot")
}

/// Polls ListSnapshots, as the CO does, until the snapshot is ready to use.
async fn until_ready(b: &mut Berth, id: &str, limit: Duration) -> pb::Snapshot {
    let deadline = Instant::now() + limit;
    loop {
        let req = pb::ListSnapshotsRequest { snapshot_id: id.into(), ..Default::default() };
        let listed = bounded("ListSnapshots", b.controller.list_snapshots(req)).await.expect("list").into_inner();
        let s = listed.entries.first().and_then(|e| e.snapshot.clone()).expect("a snapshot being cut is listed");
        if s.ready_to_use {
            return s;
        }
        assert!(Instant::now() < deadline, "snapshot {id} not ready within {limit:?}:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries CreateVolume as the CO does until it answers OK; every answer before is ABORTED
/// saying how far the copy is. Returns the volume and how many ABORTED answers came first.
async fn until_created(b: &mut Berth, req: &pb::CreateVolumeRequest, limit: Duration) -> (pb::Volume, usize) {
    let deadline = Instant::now() + limit;
    let mut aborted = 0;
    loop {
        match bounded("CreateVolume", b.controller.create_volume(req.clone())).await {
            Ok(r) => return (r.into_inner().volume.expect("volume"), aborted),
            Err(s) => {
                assert_eq!(s.code(), Code::Aborted, "{s:?}");
                assert!(s.message().contains("bytes of data copied"), "the answer says how far: {}", s.message());
                aborted += 1;
            }
        }
        assert!(Instant::now() < deadline, "CreateVolume {} not done within {limit:?}:\n{}", req.name, b.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    n.sort();
    n
}

/// A file of `chunks` MiB of non-zero data (one copy chunk each, at most).
fn data_file(path: &Path, chunks: usize) {
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251 + 1) as u8).collect();
    let mut all = Vec::with_capacity(chunks << 20);
    for _ in 0..chunks {
        all.extend_from_slice(&block);
    }
    fs::write(path, all).expect("write data");
}

#[tokio::test]
async fn a_huge_sparse_file_is_snapshotted_in_the_background_and_restored_sparse() {
    let test = "a_huge_sparse_file_is_snapshotted_in_the_background_and_restored_sparse";
    let scratch = Scratch::new();
    let Some((g, mut b)) = start(&scratch, test, &[]).await else { return };
    let v = bounded("CreateVolume", b.controller.create_volume(volume_req("src", 1 << 20, None)))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v");
    // Far larger than a copy can read while a call waits (NFSv3 reads every hole; see
    // backend/nfs/copy.rs), small enough that the background copy ends within the test.
    const SIZE: u64 = 4 << 30;
    let src = g.export.join("src");
    let sparse = fs::File::create(src.join("sparse")).expect("create");
    sparse.set_len(SIZE).expect("the export's filesystem takes a sparse file this large");
    sparse.write_at(b"head", 0).expect("write");
    sparse.write_at(b"middle", SIZE / 2 + 12345).expect("write");
    sparse.write_at(b"tail", SIZE - 4).expect("write");
    drop(sparse);

    let snap = snapshot(&mut b, &v.volume_id, "sparse-snap").await;
    assert!(!snap.ready_to_use, "a copy of {SIZE} bytes is not done within {COPY_WAIT_MS} ms");
    // The CO's retry is answered from the record, at once and idempotently.
    let again = snapshot(&mut b, &v.volume_id, "sparse-snap").await;
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let metrics = bounded("ListVolumes", b.controller.list_volumes(pb::ListVolumesRequest::default())).await;
    assert!(metrics.is_ok(), "other calls are served while the copy runs");
    let ready = until_ready(&mut b, &snap.snapshot_id, Duration::from_secs(240)).await;
    assert!(ready.size_bytes < 1 << 20, "the size counts data, not holes: {}", ready.size_bytes);
    let key = snap.snapshot_id.rsplit(':').next().expect("key");
    let stored = g.export.join(".berth-snapshots").join(key).join("sparse");

    let req = volume_req("restored", 1 << 20, from_snapshot(&snap.snapshot_id));
    let (restored, aborted) = until_created(&mut b, &req, Duration::from_secs(240)).await;
    assert!(aborted > 0, "the restore answered ABORTED while it copied");
    let sub = restored.volume_context.get("subDir").cloned().expect("subDir");
    let copy = g.export.join(sub).join("sparse");
    for path in [&stored, &copy] {
        let meta = fs::metadata(path).expect("copied");
        assert_eq!(meta.len(), SIZE, "{}", path.display());
        assert!(meta.blocks() * 512 < 1 << 20, "{} stays sparse: {} blocks", path.display(), meta.blocks());
        let f = fs::File::open(path).expect("open");
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf[..4], 0).expect("read");
        assert_eq!(&buf[..4], b"head");
        f.read_exact_at(&mut buf, SIZE / 2 + 12345).expect("read");
        assert_eq!(&buf, b"middle");
        f.read_exact_at(&mut buf[..4], SIZE - 4).expect("read");
        assert_eq!(&buf[..4], b"tail");
        let mut around = vec![0u8; 1 << 20];
        f.read_exact_at(&mut around, SIZE / 2 - (1 << 19)).expect("read");
        let nonzero: Vec<usize> = around.iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, _)| i).collect();
        assert_eq!(nonzero.len(), 6, "only the written bytes are data");
    }
    assert_eq!(names(&g.export.join(".berth/tmp")), Vec::<String>::new(), "no partial copies left");
    b.stop();
}

#[tokio::test]
async fn deleting_what_a_copy_reads_or_writes_stops_it_and_leaves_nothing() {
    let test = "deleting_what_a_copy_reads_or_writes_stops_it_and_leaves_nothing";
    let scratch = Scratch::new();
    let Some((g, mut b)) = start(&scratch, test, &[]).await else { return };
    let create = |name: &str| volume_req(name, 128 << 20, None);
    let v = b.controller.create_volume(create("src")).await.expect("create").into_inner().volume.expect("v");
    // Slowed, a copy of this takes 100 x 150 ms: far longer than any call may take.
    data_file(&g.export.join("src").join("data"), 100);
    // A snapshot cut at full speed, to restore from below.
    let base = snapshot(&mut b, &v.volume_id, "base").await;
    let base = until_ready(&mut b, &base.snapshot_id, Duration::from_secs(60)).await;
    b.stop();
    b.env = vec![("BERTH_FAILPOINTS".into(), SLOW.into())];
    b.respawn().await;

    // DeleteSnapshot of a snapshot being cut.
    let cut = snapshot(&mut b, &v.volume_id, "cut").await;
    assert!(!cut.ready_to_use, "the slowed cut is still running");
    let del = pb::DeleteSnapshotRequest { snapshot_id: cut.snapshot_id.clone(), ..Default::default() };
    bounded("DeleteSnapshot", b.controller.delete_snapshot(del)).await.expect("deleting a snapshot being cut");
    let listed = b
        .controller
        .list_snapshots(pb::ListSnapshotsRequest { snapshot_id: cut.snapshot_id.clone(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.entries.is_empty(), "no record of the stopped cut");

    // DeleteVolume of the source of a snapshot being cut.
    let cut = snapshot(&mut b, &v.volume_id, "cut-2").await;
    assert!(!cut.ready_to_use, "the slowed cut is still running");

    // DeleteVolume of a volume being restored into: the ID is in the ABORTED answer.
    let req = volume_req("restore", 128 << 20, from_snapshot(&base.snapshot_id));
    let status = bounded("CreateVolume", b.controller.create_volume(req.clone())).await.expect_err("in progress");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let target = status.message().split_whitespace().nth(1).expect("volume id").to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!names(&g.export.join(".berth/tmp")).is_empty(), "the restore's partial copy is in .berth/tmp");
    let del = pb::DeleteVolumeRequest { volume_id: target.clone(), ..Default::default() };
    bounded("DeleteVolume of a restore target", b.controller.delete_volume(del)).await.expect("deleted");
    let req = pb::ListSnapshotsRequest { snapshot_id: cut.snapshot_id.clone(), ..Default::default() };
    let listed = b.controller.list_snapshots(req).await.expect("list").into_inner();
    assert_eq!(listed.entries.len(), 1, "the cut is listed while it runs");
    assert!(!listed.entries[0].snapshot.as_ref().expect("s").ready_to_use, "and still running");
    let del = pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() };
    bounded("DeleteVolume of a snapshot source", b.controller.delete_volume(del)).await.expect("deleted");

    let del = pb::DeleteSnapshotRequest { snapshot_id: base.snapshot_id.clone(), ..Default::default() };
    bounded("DeleteSnapshot", b.controller.delete_snapshot(del)).await.expect("deleted");
    let listed = b.controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("list").into_inner();
    assert!(listed.entries.is_empty(), "no snapshot record: {listed:?}");
    let volumes = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert!(volumes.entries.is_empty(), "no volume record: {volumes:?}");
    let logs = b.logs();
    assert_eq!(names(&g.export.join(".berth-snapshots")), Vec::<String>::new(), "no snapshot trees\n{logs}");
    for meta in ["tmp", "volumes", "snapshots", "claims", "trash"] {
        assert_eq!(names(&g.export.join(".berth").join(meta)), Vec::<String>::new(), ".berth/{meta}\n{logs}");
    }
    let top: Vec<String> = names(&g.export).into_iter().filter(|n| n != ".berth" && n != ".berth-snapshots").collect();
    assert!(top.is_empty(), "no volume directories: {top:?}");
    b.stop();
}

#[tokio::test]
async fn a_restore_in_progress_answers_aborted_then_ok_and_survives_sigterm() {
    let test = "a_restore_in_progress_answers_aborted_then_ok_and_survives_sigterm";
    let scratch = Scratch::new();
    let Some((g, mut b)) = start(&scratch, test, &[]).await else { return };
    let v = b
        .controller
        .create_volume(volume_req("src", 64 << 20, None))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v");
    data_file(&g.export.join("src").join("data"), 30);
    let snap = snapshot(&mut b, &v.volume_id, "snap").await;
    let snap = until_ready(&mut b, &snap.snapshot_id, Duration::from_secs(60)).await;
    b.stop();
    b.env = vec![("BERTH_FAILPOINTS".into(), SLOW.into())];
    b.respawn().await;

    let req = volume_req("restored", 64 << 20, from_snapshot(&snap.snapshot_id));
    let first = bounded("CreateVolume", b.controller.create_volume(req.clone())).await.expect_err("in progress");
    assert_eq!(first.code(), Code::Aborted, "{first:?}");
    assert!(first.message().contains("copied"), "{}", first.message());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = bounded("CreateVolume", b.controller.create_volume(req.clone())).await.expect_err("in progress");
    assert_eq!(second.code(), Code::Aborted, "{second:?}");
    let copied = |m: &str| -> u64 {
        let words: Vec<&str> = m.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "bytes").expect("bytes");
        words[at - 1].parse().expect("a number")
    };
    assert!(copied(second.message()) > copied(first.message()), "progress: {} / {}", first.message(), second.message());
    let (status, metrics) = http_get(&b.metrics_address(), "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("berth_copies_in_progress 1"), "{metrics}");

    // SIGTERM stops the copy within the drain limit (5 s); the next start takes it up.
    let started = Instant::now();
    let exit = b.stop();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "stopped in {:?}", started.elapsed());
    assert!(b.logs().contains("copy stopped"), "{}", b.logs());
    b.env.clear();
    b.respawn().await;
    let (restored, _) = until_created(&mut b, &req, Duration::from_secs(60)).await;
    let sub = restored.volume_context.get("subDir").cloned().expect("subDir");
    assert_eq!(
        fs::read(g.export.join(sub).join("data")).expect("restored"),
        fs::read(g.export.join("src").join("data")).expect("source")
    );
    assert_eq!(names(&g.export.join(".berth/tmp")), Vec::<String>::new(), "no partial copies left");
    b.stop();
}
