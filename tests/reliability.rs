//! Reliability under stale mounts and concurrency: a mount whose daemon died never hangs
//! an RPC; identical calls in parallel give one result; conflicting calls never both
//! succeed; 1,000 concurrent publish/unpublish calls leave no error and no mount behind.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn pool_config(scratch: &Path) -> String {
    hostpath_config(&scratch.join("state"), &scratch.join("pool"), "auto")
}

fn stage_req(id: &str, staging: &Path) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    }
}

fn publish_req(id: &str, staging: &Path, target: &Path, readonly: bool) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        readonly,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dead_mount_never_hangs_unpublish_unstage_or_stats() {
    let test = "a_dead_mount_never_hangs_unpublish_unstage_or_stats";
    if !require_root(test) {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        println!("SKIPPED: {test}: /dev/fuse is missing");
        return;
    }
    let scratch = Scratch::new();
    let mut b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    let id = b
        .controller
        .create_volume(create_req("pvc", MIB))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v")
        .volume_id;
    let staging = scratch.path().join("staging");
    fs::create_dir_all(scratch.path().join("pod")).expect("mkdir");
    let target = scratch.path().join("pod/mount");
    b.node.node_stage_volume(stage_req(&id, &staging)).await.expect("stage");
    b.node.node_publish_volume(publish_req(&id, &staging, &target, false)).await.expect("publish");
    mount_dead_fuse(&target).expect("dead mount over the target");
    mount_dead_fuse(&staging).expect("dead mount over the staging path");
    let err = fs::metadata(&target).expect_err("the mount is dead");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));

    let start = Instant::now();
    let stats = b
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats answer")
        .into_inner();
    assert!(stats.volume_condition.expect("condition").abnormal, "a dead mount is reported abnormal");
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish of a dead mount");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage of a dead mount");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert!(mounts_below(scratch.path()).is_empty(), "nothing is left mounted: {:?}", mounts_below(scratch.path()));
    assert!(!target.exists() && !staging.exists());
    println!("stale mounts: stats, unpublish and unstage answered in {:?}", start.elapsed());
}

/// Ten copies of one call at once: each is OK or ABORTED (the kubelet retries those), at
/// least one is OK, and every OK carries the same answer.
async fn ten_at_once<T, F, Fut>(make: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..10).map(|_| tokio::spawn(make())).collect();
    let mut oks = Vec::new();
    for h in handles {
        match h.await.expect("join") {
            Ok(r) => oks.push(r.into_inner()),
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert!(!oks.is_empty(), "at least one call succeeded");
    oks
}

#[tokio::test]
async fn identical_parallel_calls_give_one_result_and_conflicts_never_both_succeed() {
    let test = "identical_parallel_calls_give_one_result_and_conflicts_never_both_succeed";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    let (c, n) = (b.controller.clone(), b.node.clone());

    let created = ten_at_once(|| {
        let mut c = c.clone();
        async move { c.create_volume(create_req("same", MIB)).await }
    })
    .await;
    let ids: BTreeSet<_> = created.iter().map(|r| r.volume.as_ref().expect("v").volume_id.clone()).collect();
    assert_eq!(ids.len(), 1, "every success names the same volume");
    let id = ids.into_iter().next().expect("id");
    assert_eq!(fs::read_dir(scratch.path().join("pool/volumes")).expect("ls").count(), 1, "one directory");

    let snaps = ten_at_once(|| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            c.create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: id,
                name: "s".into(),
                ..Default::default()
            })
            .await
        }
    })
    .await;
    let snap_ids: BTreeSet<_> = snaps.iter().map(|r| r.snapshot.as_ref().expect("s").snapshot_id.clone()).collect();
    assert_eq!(snap_ids.len(), 1);

    let staging = scratch.path().join("staging");
    ten_at_once(|| {
        let mut n = n.clone();
        let req = stage_req(&id, &staging);
        async move { n.node_stage_volume(req).await }
    })
    .await;
    assert_eq!(mounts_below(&staging).len(), 1, "one staging mount");
    fs::create_dir_all(scratch.path().join("pod")).expect("mkdir");
    let target = scratch.path().join("pod/mount");
    ten_at_once(|| {
        let mut n = n.clone();
        let req = publish_req(&id, &staging, &target, false);
        async move { n.node_publish_volume(req).await }
    })
    .await;
    assert_eq!(mounts_below(&target).len(), 1, "one publish mount");

    // Conflicting publishes of a second target: read-only and read-write at once.
    let other = scratch.path().join("pod/other");
    let (mut n1, mut n2) = (n.clone(), n.clone());
    let (ro, rw) = tokio::join!(
        n1.node_publish_volume(publish_req(&id, &staging, &other, true)),
        n2.node_publish_volume(publish_req(&id, &staging, &other, false))
    );
    assert!(!(ro.is_ok() && rw.is_ok()), "two incompatible publishes of one target both succeeded");
    let mounted = mounts_below(&other);
    assert_eq!(mounted.len(), usize::from(ro.is_ok() || rw.is_ok()));
    if let Some(m) = mounted.first() {
        assert_eq!(m.read_only(), ro.is_ok(), "the mount matches the call that succeeded");
    }

    for t in [&target, &other] {
        ten_at_once(|| {
            let mut n = n.clone();
            let req = pb::NodeUnpublishVolumeRequest { volume_id: id.clone(), target_path: t.display().to_string() };
            async move { n.node_unpublish_volume(req).await }
        })
        .await;
    }
    ten_at_once(|| {
        let mut n = n.clone();
        let req =
            pb::NodeUnstageVolumeRequest { volume_id: id.clone(), staging_target_path: staging.display().to_string() };
        async move { n.node_unstage_volume(req).await }
    })
    .await;
    assert!(mounts_below(scratch.path()).is_empty());
    let snap_id = snap_ids.into_iter().next().expect("snap");
    ten_at_once(|| {
        let mut c = c.clone();
        let req = pb::DeleteSnapshotRequest { snapshot_id: snap_id.clone(), ..Default::default() };
        async move { c.delete_snapshot(req).await }
    })
    .await;
    ten_at_once(|| {
        let mut c = c.clone();
        let req = pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() };
        async move { c.delete_volume(req).await }
    })
    .await;
    assert_eq!(fs::read_dir(scratch.path().join("pool/volumes")).expect("ls").count(), 0);
    println!(
        "concurrency: 10 identical calls x 8 RPCs gave one result each; conflicting publishes never both succeeded"
    );
}

/// Retries ABORTED with a short backoff, as the kubelet does; any other error is final.
async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for attempt in 0..200 {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == Code::Aborted => tokio::time::sleep(Duration::from_millis(2 + attempt)).await,
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
    panic!("{what}: still busy after 200 attempts");
}

#[tokio::test]
async fn a_thousand_concurrent_publishes_over_a_hundred_volumes_leak_nothing() {
    let test = "a_thousand_concurrent_publishes_over_a_hundred_volumes_leak_nothing";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &["--log-level", "warn"]).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let mut c = b.controller.clone();
        let id = c
            .create_volume(create_req(&format!("v{i}"), MIB))
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("v")
            .volume_id;
        let staging = scratch.path().join(format!("staging/{i}"));
        fs::create_dir_all(staging.parent().expect("parent")).expect("mkdir");
        let mut n = b.node.clone();
        n.node_stage_volume(stage_req(&id, &staging)).await.expect("stage");
        ids.push((id, staging));
    }
    let pods = scratch.path().join("pods");
    fs::create_dir_all(&pods).expect("mkdir");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for call in 0..1000 {
        let (id, staging) = ids[call % 100].clone();
        let target = pods.join(format!("t{call}"));
        let n = b.node.clone();
        tasks.push(tokio::spawn(async move {
            let req = publish_req(&id, &staging, &target, false);
            with_retry("publish", || {
                let mut n = n.clone();
                let req = req.clone();
                async move { n.node_publish_volume(req).await }
            })
            .await;
            let req =
                pb::NodeUnpublishVolumeRequest { volume_id: id.clone(), target_path: target.display().to_string() };
            with_retry("unpublish", || {
                let mut n = n.clone();
                let req = req.clone();
                async move { n.node_unpublish_volume(req).await }
            })
            .await;
        }));
    }
    for t in tasks {
        t.await.expect("no call failed");
    }
    let elapsed = start.elapsed();
    assert!(mounts_below(&pods).is_empty(), "leaked mounts: {}", mounts_below(&pods).len());
    assert_eq!(fs::read_dir(&pods).expect("ls").count(), 0, "every target was removed");
    for (id, staging) in &ids {
        let mut n = b.node.clone();
        n.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    }
    assert!(mounts_below(scratch.path()).is_empty());
    println!("concurrency: 1000 publish+unpublish pairs over 100 volumes in {elapsed:?}, 0 errors, 0 leaked mounts");
}

/// Every volume ID berth lists, across pages.
async fn listed(b: &Berth) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut token = String::new();
    loop {
        let mut c = b.controller.clone();
        let page = c
            .list_volumes(pb::ListVolumesRequest { max_entries: 16, starting_token: token })
            .await
            .expect("list")
            .into_inner();
        ids.extend(page.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id));
        if page.next_token.is_empty() {
            return ids;
        }
        token = page.next_token;
    }
}

/// The number of journal frames the last start replayed.
fn frames_replayed(b: &Berth) -> usize {
    let logs = strip_ansi(&b.logs());
    let line = logs.lines().rfind(|l| l.contains("records loaded")).expect("a start logs its load");
    let (_, count) = line.split_once("journal.frames=").expect("count logged");
    count.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
}

#[tokio::test]
async fn the_journal_keeps_every_change_through_a_crash_and_a_clean_stop_checkpoints() {
    let test = "the_journal_keeps_every_change_through_a_crash_and_a_clean_stop_checkpoints";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let mut b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    let records = scratch.path().join("state/state/records");
    let checkpoint = fs::read(&records).expect("a start writes the first checkpoint");
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        let mut c = b.controller.clone();
        let v = c.create_volume(create_req(&format!("pvc-{i}"), MIB)).await.expect("create").into_inner();
        expected.insert(v.volume.expect("v").volume_id);
    }
    for id in expected.iter().take(3).cloned().collect::<Vec<_>>() {
        let mut c = b.controller.clone();
        c.delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await.expect("delete");
        expected.remove(&id);
    }
    // A crash: no shutdown gets to checkpoint, and nothing did before.
    b.kill();
    assert_eq!(fs::read(&records).expect("read"), checkpoint, "every change is in the journal only");
    b.respawn().await;
    assert_eq!(listed(&b).await, expected, "every change survived the crash");
    let replayed = frames_replayed(&b);
    assert!(replayed >= 43, "each create and delete was journaled ({replayed} frames)");

    // A clean stop checkpoints, so the next start replays nothing.
    b.restart().await;
    assert_eq!(listed(&b).await, expected);
    assert_eq!(frames_replayed(&b), 0, "the records came from the checkpoint alone");
    assert_ne!(fs::read(&records).expect("read"), checkpoint);
    println!("journal: 37 volumes through a SIGKILL ({replayed} frames replayed) and a clean restart (0)");
}

#[tokio::test]
async fn a_second_berth_on_the_same_state_refuses_to_start_and_names_the_first() {
    let test = "a_second_berth_on_the_same_state_refuses_to_start_and_names_the_first";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    let mut c = b.controller.clone();
    let vol = c.create_volume(create_req("pvc-first", MIB)).await.expect("create").into_inner();

    // Same config, another socket: it waits for the state, then gives up.
    let socket = scratch.path().join("second.sock");
    let config = scratch.path().join("berth.yaml");
    let out = berth_cmd(&[
        "serve",
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--config",
        config.to_str().expect("utf8"),
        "--node-id",
        "node-a",
    ]);
    let text = strip_ansi(&format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert!(!out.status.success(), "the second berth must not run:\n{text}");
    let pid = b.pid().expect("pid");
    assert!(text.contains(&format!("is held by another berth (pid {pid})")), "{text}");
    assert!(!socket.exists(), "the second berth never served");

    // The first is untouched.
    let ids = listed(&b).await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![vol.volume.expect("v").volume_id]);
}

#[tokio::test]
async fn a_change_whose_write_failed_never_comes_back_after_a_crash() {
    let test = "a_change_whose_write_failed_never_comes_back_after_a_crash";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let mut b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    // The next process's third journal write fails after its frame reached the disk, as
    // an I/O error reported late would.
    b.stop();
    b.env = vec![("BERTH_FAILPOINTS".to_string(), "state.journal.after-write=error@3".to_string())];
    b.respawn().await;
    let mut c = b.controller.clone();
    let vol = c.create_volume(create_req("pvc-kept", MIB)).await.expect("create").into_inner().volume.expect("v");
    let delete = pb::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() };
    let Err(status) = c.delete_volume(delete.clone()).await else {
        println!("SKIPPED: {test}: berth was built without --features failpoints");
        return;
    };
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");

    // A crash now: the failed delete's intent is on disk, and must not be replayed.
    b.kill();
    b.env.clear();
    b.respawn().await;
    assert_eq!(listed(&b).await, [vol.volume_id.clone()].into(), "the volume the failed delete left stays");
    assert!(!strip_ansi(&b.logs()).contains("finished an interrupted DeleteVolume"));
    let mut c = b.controller.clone();
    c.delete_volume(delete).await.expect("a retried delete succeeds");
    assert!(listed(&b).await.is_empty());
}

/// Storage keys of the volume directories in the hostPath pool under `scratch`.
fn volume_dirs(scratch: &Path) -> BTreeSet<String> {
    let entries = fs::read_dir(scratch.join("pool/volumes")).into_iter().flatten();
    entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
}

#[tokio::test]
async fn sigkills_at_any_moment_under_concurrent_load_leave_records_and_storage_in_agreement() {
    let test = "sigkills_at_any_moment_under_concurrent_load_leave_records_and_storage_in_agreement";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let mut b = Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &[]).await;
    // Kill points are not chosen: each round lets 8 clients create and delete for a while,
    // then kills berth wherever its calls happen to be.
    let mut interrupted = 0;
    for (round, run_ms) in [150u64, 40, 320, 90, 230, 60, 180, 25, 270, 110].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let (mut c, stop) = (b.controller.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("pvc-{round}-{client}-{i}");
                        let Ok(created) = c.create_volume(create_req(&name, MIB)).await else { break };
                        // Every fourth volume stays, so later rounds run among existing ones.
                        if i % 4 != 0 {
                            let id = created.into_inner().volume.expect("volume").volume_id;
                            let delete = pb::DeleteVolumeRequest { volume_id: id, ..Default::default() };
                            if c.delete_volume(delete).await.is_err() {
                                break;
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        b.kill();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.expect("client task");
        }
        let logged = strip_ansi(&b.logs()).len();
        b.respawn().await;
        let start = strip_ansi(&b.logs())[logged..].to_string();
        if start.contains("reconciled state at start") {
            interrupted += 1;
        }

        let keys: BTreeSet<String> =
            listed(&b).await.iter().map(|id| id.rsplit(':').next().expect("key").to_string()).collect();
        assert_eq!(keys, volume_dirs(scratch.path()), "round {round}: records and volume directories differ");
        assert!(!start.contains("accounts for; left in place"), "round {round}: unaccounted storage:\n{start}");
        // The level is the second field of a log line ("NO_ERROR" in a frame is no error).
        let errors = start.lines().any(|l| l.split_whitespace().nth(1) == Some("ERROR"));
        assert!(!errors, "round {round}: the restart logged an error:\n{start}");
    }
    // Everything that survived can still be deleted, and nothing is left behind.
    for id in listed(&b).await {
        let mut c = b.controller.clone();
        c.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.expect("delete");
    }
    assert!(volume_dirs(scratch.path()).is_empty());
    println!(
        "crashes: 10 SIGKILLs under 8 clients, {interrupted} restarts finished interrupted calls, records and storage agreed"
    );
}

/// A volume holding `files` small files, for the slow copies below; its ID.
async fn source_with_files(b: &mut common::Berth, pool: &Path, files: usize) -> String {
    let source = b.controller.create_volume(common::create_req("pvc-src", 8 << 20)).await.expect("create");
    let source = source.into_inner().volume.expect("volume").volume_id;
    let key = source.rsplit(':').next().expect("key");
    for i in 0..files {
        fs::write(pool.join("volumes").join(key).join(format!("f{i}")), b"x").expect("write");
    }
    source
}

/// CreateVolume of a clone of `source`.
fn clone_of(source: &str) -> pb::CreateVolumeRequest {
    let mut req = common::create_req("pvc-clone", 8 << 20);
    req.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: source.to_string(),
        })),
    });
    req
}

#[tokio::test]
async fn sigterm_releases_the_state_within_the_drain_limit_even_with_a_copy_in_flight() {
    let test = "sigterm_releases_the_state_within_the_drain_limit_even_with_a_copy_in_flight";
    if !common::require_root(test) {
        return;
    }
    let scratch = common::Scratch::new();
    let Some((_disk, pool, mut b)) =
        common::hostpath_on(&scratch, test, ("ext4", "128M"), "auto", &["--drain-seconds", "1"]).await
    else {
        return;
    };
    let source = source_with_files(&mut b, &pool, 100).await;
    // Each file copied takes 300 ms: the clone needs half a minute.
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.copy=sleep(300)".into()));
    b.restart().await;
    let req = clone_of(&source);
    // A client that gives up after a second, as sidecars do with their timeouts.
    let mut controller = b.controller.clone();
    let mut call = tonic::Request::new(req.clone());
    call.set_timeout(Duration::from_secs(1));
    let gave_up = controller.create_volume(call).await;
    assert_eq!(gave_up.expect_err("timed out").code(), tonic::Code::Cancelled);

    let stopping = Instant::now();
    b.stop();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "berth held on for {took:?} after SIGTERM");
    assert!(b.logs().contains("stopping with operations unfinished"), "{}", b.logs());
    // The replacement starts at once and finishes the clone when it is asked again.
    b.env.clear();
    b.restart().await;
    let clone = b.controller.create_volume(req).await.expect("the retried clone").into_inner();
    let clone_key = clone.volume.expect("volume").volume_id.rsplit(':').next().expect("key").to_string();
    assert_eq!(std::fs::read_dir(pool.join("volumes").join(clone_key)).expect("ls").count(), 100);
    b.stop();
}

#[tokio::test]
async fn a_start_that_finishes_interrupted_work_serves_probe_at_once() {
    let test = "a_start_that_finishes_interrupted_work_serves_probe_at_once";
    if !common::require_root(test) {
        return;
    }
    use berth::csi::pb::controller_client::ControllerClient;
    use berth::csi::pb::identity_client::IdentityClient;
    let scratch = common::Scratch::new();
    // The kubelet's liveness probe asks berth's health address, which every start serves.
    let health = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        free.local_addr().expect("address").to_string()
    };
    let args = ["--health-address", health.as_str()];
    let Some((_disk, pool, mut b)) = common::hostpath_on(&scratch, test, ("ext4", "128M"), "auto", &args).await else {
        return;
    };
    let source = source_with_files(&mut b, &pool, 60).await;
    // The clone dies half-way (a crash), and its next start copies slowly (50 ms a file).
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.copy=kill@30".into()));
    b.restart().await;
    let req = clone_of(&source);
    assert!(b.controller.create_volume(req.clone()).await.is_err(), "killed mid-copy");
    assert!(b.exited_within(Duration::from_secs(10)));
    // Each file copied passes the fault point once: the log counts what the restart copies.
    let copied_log = scratch.path().join("copied.log");
    b.env = vec![
        ("BERTH_FAILPOINTS".into(), "hostpath.copy=sleep(50)".into()),
        ("BERTH_FAILPOINT_LOG".into(), copied_log.display().to_string()),
    ];

    let socket = b.socket.clone();
    let watch = async {
        // The first answer comes while the copy is being finished: not ready yet.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no Probe answer during recovery");
            if socket.exists()
                && let Some(channel) = common::connect(&socket).await
                && let Ok(probe) = IdentityClient::new(channel.clone()).probe(pb::ProbeRequest {}).await
            {
                assert_eq!(probe.into_inner().ready, Some(false), "the first answer comes during recovery");
                let early =
                    ControllerClient::new(channel).create_volume(common::create_req("pvc-early", 1 << 20)).await;
                assert_eq!(early.expect_err("not ready").code(), tonic::Code::Unavailable);
                // Alive, so a liveness probe does not restart the copy; not ready yet.
                let health = health.clone();
                let (alive, ready) = tokio::task::spawn_blocking(move || {
                    (common::http_get(&health, "/healthz"), common::http_get(&health, "/readyz"))
                })
                .await
                .expect("join");
                assert_eq!(alive.0, 200, "/healthz during recovery: {}", alive.1);
                assert!(alive.1.contains("interrupted"), "{}", alive.1);
                assert_eq!(ready.0, 503, "/readyz during recovery: {}", ready.1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::join!(b.respawn(), watch);
    let clone = b.controller.create_volume(req).await.expect("the finished clone").into_inner();
    let clone_key = clone.volume.expect("volume").volume_id.rsplit(':').next().expect("key").to_string();
    assert_eq!(std::fs::read_dir(pool.join("volumes").join(clone_key)).expect("ls").count(), 60);
    // The restart resumed the partial copy: the files the killed process had finished
    // were kept, not copied again. Each file copied passes the point twice (progress
    // during and after its data): the killed process had finished at least 14 of the 60
    // files at its 30th pass, so a resumed copy passes at most 2 x 46 times, one that
    // starts over 120 times.
    let passes = std::fs::read_to_string(&copied_log).expect("log").lines().filter(|l| *l == "hostpath.copy").count();
    assert!((1..=92).contains(&passes), "the restart passed the copy point {passes} times");
    assert_eq!(common::http_get(&health, "/readyz").0, 200, "ready once recovered");
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_volume_stats_leaves_the_workers_to_other_calls() {
    let test = "a_flood_of_slow_volume_stats_leaves_the_workers_to_other_calls";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let mut b =
        Berth::start(scratch.path(), &pool_config(scratch.path()), "node-a", &["--metrics-address", "127.0.0.1:0"])
            .await;
    // Every walk of a volume's tree takes 8 s, as a pod's million files would make it.
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.walk=sleep(8000)".into()));
    b.restart().await;
    let id = b.controller.create_volume(create_req("pvc-walked", 8 * MIB)).await.expect("create").into_inner();
    let id = id.volume.expect("volume").volume_id;
    let (staging, target) = (scratch.path().join("staging"), scratch.path().join("pod/mount"));
    fs::create_dir_all(scratch.path().join("pod")).expect("mkdir");
    b.node.node_stage_volume(stage_req(&id, &staging)).await.expect("stage");
    b.node.node_publish_volume(publish_req(&id, &staging, &target, false)).await.expect("publish");

    // 70 stats calls over three connections (each allows 32 streams), more than the 64 workers.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut calls = Vec::new();
    for i in 0..70 {
        if i % 30 == 0 {
            let channel = connect(&b.socket).await.expect("connect");
            calls.push((berth::csi::pb::node_client::NodeClient::new(channel), None));
        }
        let (client, _) = calls.last().expect("client");
        let mut node = client.clone();
        let request = pb::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        };
        let answered = Arc::clone(&answered);
        let call = tokio::spawn(async move {
            let result = node.node_get_volume_stats(request).await;
            answered.fetch_add(1, Ordering::SeqCst);
            result
        });
        calls.push((client.clone(), Some(call)));
    }
    // The first call walks (8 s); all but berth_rpc_slow_max of the rest wait for a turn
    // without a worker. A moment for the calls to arrive (the walk lasts much longer).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Meanwhile an unrelated call gets a worker at once: it is answered before any stats call.
    b.controller.create_volume(create_req("pvc-other", 8 * MIB)).await.expect("create while stats wait");
    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish while stats wait");
    assert_eq!(answered.load(Ordering::SeqCst), 0, "the other calls did not wait for the walk");

    for (_, call) in calls {
        if let Some(call) = call {
            // The volume was unpublished meanwhile: each stats call answers, OK or NOT_FOUND.
            let result = call.await.expect("join");
            assert!(result.as_ref().map_or_else(|s| s.code() == Code::NotFound, |_| true), "{result:?}");
        }
    }
    let metrics = b.metrics_address();
    let gauge = |name: &str| {
        let (_, body) = http_get(&metrics, "/metrics");
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).map(|v| v.trim().to_string()))
    };
    assert_eq!(gauge("berth_rpc_slow_max").as_deref(), Some("4"));
    assert_eq!(gauge("berth_rpc_slow_waiting").as_deref(), Some("0"));
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id,
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    b.stop();
}
