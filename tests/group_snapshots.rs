//! Group snapshots for real: block volumes (ext4 on loop devices, their images on an xfs
//! pool that reflinks) written by a writer that appends increasing, fsync'ed sequence
//! numbers to each member in turn while groups are taken. Every restored group shows one
//! point of that sequence on all of its members. Directory volumes bound to a pod are
//! refused, and a kill at every fault point of a group snapshot leaves nothing frozen and
//! nothing recorded after the restart.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn config(state: &Path, block: &Path, dirs: &Path) -> String {
    format!(
        "stateDir: {}\npools:\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n  - name: dirs\n    type: hostpath\n    path: {}\n    createPath: true\n",
        state.display(),
        block.display(),
        dirs.display()
    )
}

fn cap() -> pb::VolumeCapability {
    rwo()
}

async fn create(b: &mut Berth, name: &str, pool: &str, source: Option<&str>) -> String {
    let mut req = create_req(name, 64 * MIB);
    req.volume_capabilities = vec![cap()];
    req.parameters.insert("pool".into(), pool.into());
    req.volume_content_source = source.map(|s| pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: s.into(),
        })),
    });
    b.controller.create_volume(req).await.expect("create").into_inner().volume.expect("volume").volume_id
}

/// A volume staged and published at `<root>/pod-<tag>/vol`.
struct Published {
    id: String,
    paths: Paths,
}

async fn publish(b: &mut Berth, root: &Path, id: &str, tag: &str) -> Published {
    Published { id: id.to_string(), paths: stage_publish(b, root, id, tag, cap()).await }
}

async fn unpublish(b: &mut Berth, p: &Published) {
    unpublish_unstage(b, &p.id, &p.paths).await;
}

async fn delete_volume(b: &mut Berth, id: &str) {
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() })
        .await
        .expect("delete volume");
}

async fn take(b: &mut Berth, name: &str, sources: &[String]) -> Result<pb::VolumeGroupSnapshot, tonic::Status> {
    b.group
        .create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
            name: name.into(),
            source_volume_ids: sources.to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().group_snapshot.expect("group snapshot"))
}

async fn delete_group(b: &mut Berth, g: &pb::VolumeGroupSnapshot) {
    b.group
        .delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            snapshot_ids: g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect(),
            ..Default::default()
        })
        .await
        .expect("delete group");
}

/// The last whole number in a member's sequence file (0 when it has none).
fn last_number(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find_map(|l| l.parse().ok()).unwrap_or(0)
}

/// Appends 1, 2, 3, ... to `seq` on every member in turn, each line fsync'ed before the
/// next member's: a write to member k of round i is acknowledged before the write to
/// member k+1 of round i starts, and so on round after round.
fn writer(targets: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut files: Vec<fs::File> = targets
            .iter()
            .map(|t| fs::OpenOptions::new().create(true).append(true).open(t.join("seq")).expect("open seq"))
            .collect();
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            for f in &mut files {
                writeln!(f, "{round}").expect("append");
                f.sync_data().expect("fsync");
            }
        }
        round
    })
}

/// One point of the writer's sequence: the members' last numbers never rise along the
/// members and differ by at most one (the round in flight at the instant of the group).
fn one_point(values: &[u64]) -> bool {
    values.windows(2).all(|w| w[0] >= w[1]) && values[0] - values[values.len() - 1] <= 1
}

#[tokio::test]
async fn each_restored_group_shows_one_point_of_a_writers_sequence_on_every_member() {
    let test = "each_restored_group_shows_one_point_of_a_writers_sequence_on_every_member";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "xfs", "2G") else { return };
    let (block, dirs) = (pool_fs.mount.join("block"), pool_fs.mount.join("dirs"));
    let mut b =
        Berth::start(scratch.path(), &config(&scratch.path().join("state"), &block, &dirs), "node-a", &[]).await;
    // Each member's snapshot is followed by a pause (where berth is built with fault
    // points, as the test command builds it): without the freeze, the writer would run
    // on through it and the members would land rounds apart.
    b.env = vec![("BERTH_FAILPOINTS".into(), "group.create.member-taken=sleep(40)".into())];
    b.restart().await;

    for members in [2usize, 3] {
        let mut published = Vec::new();
        for k in 0..members {
            let id = create(&mut b, &format!("m{members}-{k}"), "img", None).await;
            published.push(publish(&mut b, scratch.path(), &id, &format!("m{members}-{k}")).await);
        }
        let sources: Vec<String> = published.iter().map(|p| p.id.clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = writer(published.iter().map(|p| p.paths.target.clone()).collect(), Arc::clone(&stop));
        let mut groups = Vec::new();
        for n in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            groups.push(take(&mut b, &format!("g{members}-{n}"), &sources).await.expect("group snapshot"));
        }
        stop.store(true, Ordering::Relaxed);
        let rounds = handle.join().expect("writer");
        assert!(rounds > 10, "the writer ran ({rounds} rounds)");

        for (n, g) in groups.iter().enumerate() {
            assert!(g.ready_to_use);
            assert_eq!(g.snapshots.len(), members);
            let mut values = Vec::new();
            for (k, s) in g.snapshots.iter().enumerate() {
                assert_eq!(s.source_volume_id, sources[k], "members in the order of the request");
                assert_eq!(s.group_snapshot_id, g.group_snapshot_id);
                // Members restore one by one, as Kubernetes restores them.
                let id = create(&mut b, &format!("r{members}-{n}-{k}"), "img", Some(&s.snapshot_id)).await;
                let p = publish(&mut b, scratch.path(), &id, &format!("r{members}-{n}-{k}")).await;
                values.push(last_number(&p.paths.target.join("seq")));
                unpublish(&mut b, &p).await;
                delete_volume(&mut b, &id).await;
            }
            println!("group {n} of {members}: last numbers {values:?}");
            assert!(values[0] > 0, "group {n} holds the writer's data: {values:?}");
            assert!(one_point(&values), "group {n} of {members} members is not one point in time: {values:?}");
            delete_group(&mut b, g).await;
        }
        for p in &published {
            unpublish(&mut b, p).await;
            delete_volume(&mut b, &p.id).await;
        }
    }
    let left = b.controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("list").into_inner();
    assert!(left.entries.is_empty(), "every group deleted: {:?}", left.entries);
    // How long the members were held still (with the 40 ms pause after each member).
    let logs = strip_ansi(&b.logs());
    let held: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("group snapshot created"))
        .filter_map(|l| l.split("held_ms=").nth(1)?.split(['.', ' ']).next())
        .collect();
    println!("members held still for (ms): {held:?}");
    assert_eq!(held.len(), 8, "every group logs how long it held its members");
}

#[test]
fn the_check_tells_one_point_from_two() {
    assert!(one_point(&[7, 7, 7]));
    assert!(one_point(&[8, 7, 7]));
    assert!(one_point(&[8, 8, 7]));
    assert!(!one_point(&[7, 8, 8]), "a later member ahead of an earlier one");
    assert!(!one_point(&[9, 7]), "two rounds apart");
}

#[tokio::test]
async fn a_directory_volume_bound_to_a_pod_is_refused_and_an_idle_one_joins_the_group() {
    let test = "a_directory_volume_bound_to_a_pod_is_refused_and_an_idle_one_joins_the_group";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "btrfs", "1G") else { return };
    let (block, dirs) = (pool_fs.mount.join("block"), pool_fs.mount.join("dirs"));
    let mut b =
        Berth::start(scratch.path(), &config(&scratch.path().join("state"), &block, &dirs), "node-a", &[]).await;

    let disk = create(&mut b, "disk", "img", None).await;
    let dir = create(&mut b, "dir", "dirs", None).await;
    let disk_p = publish(&mut b, scratch.path(), &disk, "disk").await;
    let dir_p = publish(&mut b, scratch.path(), &dir, "dir").await;
    fs::write(dir_p.paths.target.join("note"), b"directory data").expect("write");
    let sources = vec![disk.clone(), dir.clone()];

    let refused = take(&mut b, "app", &sources).await.expect_err("a bound directory volume");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&dir) && refused.message().contains("btrfs"), "{}", refused.message());
    let listed = b.controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("list").into_inner();
    assert!(listed.entries.is_empty(), "a refused group records nothing");

    // Unpublished, nothing can write to it: it joins the frozen block volume's group.
    unpublish(&mut b, &dir_p).await;
    let g = take(&mut b, "app", &sources).await.expect("group with an idle directory volume");
    let restored = create(&mut b, "restored-dir", "dirs", Some(&g.snapshots[1].snapshot_id)).await;
    let p = publish(&mut b, scratch.path(), &restored, "restored").await;
    assert_eq!(fs::read(p.paths.target.join("note")).expect("read"), b"directory data");
    unpublish(&mut b, &p).await;
    delete_volume(&mut b, &restored).await;

    // Get checks the member list; a foreign snapshot ID in it is a mismatch.
    let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let got = b
        .group
        .get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            snapshot_ids: ids.clone(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .group_snapshot
        .expect("group");
    assert_eq!(got.snapshots.len(), 2);
    let mismatch = b
        .group
        .get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            snapshot_ids: vec![ids[0].clone()],
            ..Default::default()
        })
        .await;
    assert_eq!(code(mismatch), Code::InvalidArgument);
    delete_group(&mut b, &g).await;
    unpublish(&mut b, &disk_p).await;
    delete_volume(&mut b, &disk).await;
    delete_volume(&mut b, &dir).await;
}

/// Writes to `target` from another thread; true when the write returned within `limit`
/// (a frozen filesystem blocks it).
fn writable_within(target: &Path, limit: Duration) -> bool {
    let path = target.join("after-restart");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let done = fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
            f.write_all(b"x")?;
            f.sync_data()
        });
        let _ = tx.send(done.is_ok());
    });
    rx.recv_timeout(limit).unwrap_or(false)
}

#[tokio::test]
async fn a_kill_at_every_fault_point_of_a_group_leaves_nothing_frozen_or_recorded() {
    let test = "a_kill_at_every_fault_point_of_a_group_leaves_nothing_frozen_or_recorded";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(pool_fs) = FsImage::new(&scratch, test, "xfs", "1G") else { return };
    let (block, dirs) = (pool_fs.mount.join("block"), pool_fs.mount.join("dirs"));
    let log = scratch.path().join("points.log");
    let mut b =
        Berth::start(scratch.path(), &config(&scratch.path().join("state"), &block, &dirs), "node-a", &[]).await;
    b.env = vec![("BERTH_FAILPOINT_LOG".into(), log.display().to_string())];
    b.restart().await;
    let started = fs::read_to_string(&log).unwrap_or_default();
    let a = create(&mut b, "a", "img", None).await;
    if fs::read_to_string(&log).unwrap_or_default().len() == started.len() {
        println!("SKIPPED: {test}: berth was built without --features failpoints");
        delete_volume(&mut b, &a).await;
        return;
    }
    let c = create(&mut b, "c", "img", None).await;
    let pa = publish(&mut b, scratch.path(), &a, "a").await;
    let pc = publish(&mut b, scratch.path(), &c, "c").await;
    let sources = vec![a.clone(), c.clone()];

    // The points one group snapshot passes, in order.
    fs::write(&log, "").expect("truncate");
    let g = take(&mut b, "probe", &sources).await.expect("group");
    delete_group(&mut b, &g).await;
    let mut points: Vec<String> = Vec::new();
    for p in fs::read_to_string(&log).expect("log").lines() {
        if !points.iter().any(|q| q == p) {
            points.push(p.to_string());
        }
    }
    for must in ["group.create.after-intent", "block.frozen", "group.create.member-taken", "group.create.before-ready"]
    {
        assert!(points.iter().any(|p| p == must), "{must} is reached: {points:?}");
    }
    println!("fault points of a group snapshot: {points:?}");

    let images = block.join("snapshots");
    for point in &points {
        // Counted from the start of the process: the group is its first call of interest,
        // so the kill comes at the point's first hit after start.
        let before = started.lines().filter(|l| l == point).count();
        b.env = vec![("BERTH_FAILPOINTS".into(), format!("{point}=kill@{}", before + 1))];
        b.restart().await;
        let died = take(&mut b, "crash", &sources).await;
        b.env.clear();
        b.restart().await;
        assert!(
            writable_within(&pa.paths.target, Duration::from_secs(10))
                && writable_within(&pc.paths.target, Duration::from_secs(10)),
            "after a kill at {point} ({died:?}) and a restart, both filesystems take writes"
        );
        let listed = b.controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("list").into_inner();
        if died.is_ok() {
            // Killed after the answer: the group is whole.
            assert_eq!(listed.entries.len(), 2, "kill at {point}");
        } else {
            assert!(listed.entries.is_empty(), "kill at {point} left {:?}", listed.entries);
            let left: Vec<_> =
                fs::read_dir(&images).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            assert!(left.is_empty(), "kill at {point} left snapshot data {left:?}");
        }
        let g = take(&mut b, "crash", &sources).await.unwrap_or_else(|e| panic!("retry after a kill at {point}: {e}"));
        assert!(g.ready_to_use && g.snapshots.len() == 2);
        delete_group(&mut b, &g).await;
    }
    unpublish(&mut b, &pa).await;
    unpublish(&mut b, &pc).await;
    delete_volume(&mut b, &a).await;
    delete_volume(&mut b, &c).await;
}
