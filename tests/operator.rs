//! What operators use every day, against the real binary: the metrics endpoint after a
//! known sequence of RPCs, structured logs without secrets, `berth doctor` on good and
//! broken machines, and a whole volume lifecycle driven by `berth csi` alone.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use berth::csi::pb;
use berth::metrics::exposition::{Sample, find, parse};
use common::*;

const MIB: i64 = 1 << 20;
const SENTINEL: &str = "SENTINEL-OPS-9c1e";

fn scrape(address: &str) -> (String, Vec<Sample>) {
    let (status, body) = http_get(address, "/metrics");
    assert_eq!(status, 200, "{body}");
    let samples = parse(&body).unwrap_or_else(|e| panic!("invalid exposition text: {e}\n{body}"));
    (body, samples)
}

fn requests(samples: &[Sample], method: &str, code: &str) -> f64 {
    find(samples, "berth_rpc_requests_total", &[("method", method), ("code", code)]).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_rpcs_by_code_time_them_and_measure_pools() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &["--metrics-address", "127.0.0.1:0"]).await;
    let address = b.metrics_address();

    let secrets: std::collections::HashMap<String, String> = [("password".to_string(), SENTINEL.to_string())].into();
    let mut first = create_req("pvc-m1", 8 * MIB);
    first.secrets = secrets.clone();
    first.parameters = [
        ("csi.storage.k8s.io/pvc/name".to_string(), "data".to_string()),
        ("csi.storage.k8s.io/pvc/namespace".to_string(), "shop".to_string()),
    ]
    .into();
    let kept = b.controller.create_volume(first).await.expect("create").into_inner().volume.expect("volume");
    let gone = b.controller.create_volume(create_req("pvc-m2", MIB)).await.expect("create").into_inner().volume;
    let mut bad = create_req("pvc-m3", MIB);
    bad.parameters.insert("colour".into(), "red".into());
    assert_eq!(code(b.controller.create_volume(bad).await), tonic::Code::InvalidArgument);
    let unknown = pb::ControllerGetVolumeRequest { volume_id: "fake-vol-id-1".into() };
    assert_eq!(code(b.controller.controller_get_volume(unknown).await), tonic::Code::NotFound);
    let gone_id = gone.expect("volume").volume_id;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: gone_id, secrets: secrets.clone() })
        .await
        .expect("delete");
    b.controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: kept.volume_id.clone(),
            name: "snap-m1".into(),
            secrets,
            ..Default::default()
        })
        .await
        .expect("snapshot");
    let key = kept.volume_id.rsplit(':').next().expect("key");
    fs::write(pool.join("volumes").join(key).join("data"), vec![7u8; 1 << 20]).expect("write into the volume");

    let (body, samples) = scrape(&address);
    assert_eq!(requests(&samples, "CreateVolume", "OK"), 2.0, "{body}");
    assert_eq!(requests(&samples, "CreateVolume", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(requests(&samples, "ControllerGetVolume", "NOT_FOUND"), 1.0);
    assert_eq!(requests(&samples, "DeleteVolume", "OK"), 1.0);
    assert_eq!(requests(&samples, "CreateSnapshot", "OK"), 1.0);
    assert!(requests(&samples, "Probe", "OK") >= 1.0, "the harness probed until ready");

    // The latency histogram of CreateVolume: three calls, cumulative buckets.
    let method = [("method", "CreateVolume")];
    assert_eq!(find(&samples, "berth_rpc_duration_seconds_count", &method), Some(3.0));
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == "berth_rpc_duration_seconds_bucket" && s.labels["method"] == "CreateVolume")
        .map(|s| (s.labels["le"].parse::<f64>().expect("le is a number or +Inf"), s.value))
        .collect();
    assert_eq!(buckets.len(), berth::metrics::LATENCY_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3.0)));
    let sum = find(&samples, "berth_rpc_duration_seconds_sum", &method).expect("sum");
    assert!(sum > 0.0 && sum < 60.0, "{sum}");

    assert_eq!(find(&samples, "berth_rpc_in_flight", &[]), Some(0.0));
    assert_eq!(find(&samples, "berth_ready", &[]), Some(1.0));
    // The counting allocator: every call allocates, so both totals only grow.
    let allocations = find(&samples, "berth_heap_allocations_total", &[]).expect("allocations counted");
    let bytes = find(&samples, "berth_heap_allocated_bytes_total", &[]).expect("bytes counted");
    assert!(allocations > 1000.0 && bytes > allocations, "{allocations} {bytes}");
    let (status, heap) = http_get(&address, "/metrics?collect=heap");
    assert_eq!(status, 200, "{heap}");
    let heap = parse(&heap).expect("valid exposition text");
    let names: Vec<&str> = heap.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["berth_heap_allocations_total", "berth_heap_allocated_bytes_total"]);
    assert!(find(&heap, "berth_heap_allocations_total", &[]) > Some(allocations), "the count grew since");
    let pool_label = [("pool", "default")];
    assert_eq!(find(&samples, "berth_pool_volumes", &pool_label), Some(1.0));
    assert_eq!(find(&samples, "berth_pool_snapshots", &pool_label), Some(1.0));
    let total = find(&samples, "berth_pool_capacity_bytes", &pool_label).expect("capacity");
    let free = find(&samples, "berth_pool_free_bytes", &pool_label).expect("free");
    assert!(total > 0.0 && free > 0.0 && free <= total, "{total} {free}");
    let pvc = [("volume_id", kept.volume_id.as_str()), ("pvc_namespace", "shop"), ("pvc_name", "data")];
    assert_eq!(find(&samples, "berth_volume_capacity_bytes", &pvc), Some((8 * MIB) as f64));
    let used = find(&samples, "berth_volume_used_bytes", &pvc).expect("per-volume usage");
    assert!(used >= MIB as f64, "{used}");
    for kind in berth::metrics::ERROR_KINDS {
        assert_eq!(find(&samples, "berth_errors_total", &[("kind", kind)]), Some(0.0), "{kind}");
    }
    assert!(!body.contains(SENTINEL), "a secret reached the metrics");

    let (status, health) = http_get(&address, "/healthz");
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    let (status, _) = http_get(&address, "/nothing");
    assert_eq!(status, 404);

    // A scrape is not an RPC and changes no count.
    let (_, again) = scrape(&address);
    assert_eq!(requests(&again, "CreateVolume", "OK"), 2.0);
    assert!(b.stop().success());
}

#[tokio::test]
async fn metrics_measure_block_volumes_where_they_are_mounted() {
    let test = "metrics_measure_block_volumes_where_they_are_mounted";
    if !require_root(test) {
        return;
    }
    if !have("mkfs.ext4") {
        println!("SKIPPED: {test}: mkfs.ext4 is not installed");
        return;
    }
    let scratch = Scratch::new();
    let config = format!(
        "stateDir: {}\npools:\n  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        scratch.path().join("state").display(),
        scratch.path().join("img").display()
    );
    let mut b = Berth::start(scratch.path(), &config, "node-a", &["--metrics-address", "127.0.0.1:0"]).await;
    let address = b.metrics_address();
    let vol = b.controller.create_volume(create_req("pvc-blk", 64 * MIB)).await.expect("create").into_inner();
    let vol = vol.volume.expect("volume").volume_id;
    let staging = scratch.path().join("staging");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    };
    b.node.node_stage_volume(stage).await.expect("stage formats and mounts the image");
    fs::write(staging.join("data"), vec![3u8; 8 << 20]).expect("write into the filesystem");
    sh("sync", &[]);

    let (body, samples) = scrape(&address);
    let pool = [("pool", "img"), ("type", "block")];
    assert!(find(&samples, "berth_pool_capacity_bytes", &pool).is_some_and(|v| v > 0.0), "{body}");
    let used =
        find(&samples, "berth_volume_used_bytes", &[("volume_id", vol.as_str())]).expect("usage of the mounted volume");
    assert!(used >= (8 * MIB) as f64, "{used}");
    assert_eq!(find(&samples, "berth_volume_capacity_bytes", &[("volume_id", vol.as_str())]), Some((64 * MIB) as f64));
    assert_eq!(find(&samples, "berth_errors_total", &[("kind", "format")]), Some(0.0));
    assert_eq!(requests(&samples, "NodeStageVolume", "OK"), 1.0);

    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: vol.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: vol, ..Default::default() }).await.expect("delete");
}

#[tokio::test]
async fn json_logs_name_volume_node_and_paths_and_never_a_secret() {
    let test = "json_logs_name_volume_node_and_paths_and_never_a_secret";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let args = ["--log-level", "trace", "--log-format", "json", "--metrics-address", "127.0.0.1:0"];
    let mut b = Berth::start(scratch.path(), &config, "node-a", &args).await;
    let endpoint = format!("unix://{}", b.socket.display());
    let secrets: std::collections::HashMap<String, String> = [("token".to_string(), SENTINEL.to_string())].into();
    let context: std::collections::HashMap<String, String> =
        [("csi.storage.k8s.io/serviceAccount.tokens".to_string(), SENTINEL.to_string())].into();

    let vol = b.controller.create_volume(create_req("pvc-log", MIB)).await.expect("create").into_inner();
    let vol = vol.volume.expect("volume").volume_id;
    let staging = scratch.path().join("staging");
    let target = scratch.path().join("target");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets.clone(),
        volume_context: context.clone(),
        ..Default::default()
    };
    b.node.node_stage_volume(stage).await.expect("stage");
    let publish = pb::NodePublishVolumeRequest {
        volume_id: vol.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        secrets: secrets.clone(),
        volume_context: context.clone(),
        ..Default::default()
    };
    b.node.node_publish_volume(publish.clone()).await.expect("publish");
    let mut unknown = publish.clone();
    unknown.volume_id = "fake-vol-id-2".into();
    let status = b.node.node_publish_volume(unknown).await.expect_err("unknown volume");
    assert!(!status.message().contains(SENTINEL), "{}", status.message());

    // The same secrets through `berth csi`: a failing call and an echoed context.
    let token_flag = format!("csi.storage.k8s.io/serviceAccount.tokens={SENTINEL}");
    let secret_flag = format!("token={SENTINEL}");
    let target2 = scratch.path().join("target2").display().to_string();
    let staging_s = staging.display().to_string();
    let out = berth_cmd(&[
        "csi",
        "--endpoint",
        &endpoint,
        "node",
        "publish",
        "--volume-id",
        "fake-vol-id-3",
        "--staging-path",
        &staging_s,
        "--target-path",
        &target2,
        "--secret",
        &secret_flag,
        "--context",
        &token_flag,
    ]);
    assert!(!out.status.success());
    let cli_text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(cli_text.contains("NOT_FOUND"), "{cli_text}");
    let out = berth_cmd(&[
        "csi",
        "--endpoint",
        &endpoint,
        "controller",
        "validate",
        "--volume-id",
        &vol,
        "--context",
        &token_flag,
        "--secret",
        &secret_flag,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let validated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(validated["confirmed"]["volume_context"]["csi.storage.k8s.io/serviceAccount.tokens"], "<redacted>");
    let cli_text = format!("{cli_text}{}", String::from_utf8_lossy(&out.stdout));
    assert!(!cli_text.contains(SENTINEL), "berth csi printed a secret: {cli_text}");

    b.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: vol.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    let (metrics, _) = scrape(&b.metrics_address());
    assert!(!metrics.contains(SENTINEL), "a secret reached the metrics");

    let logs = b.logs();
    assert_eq!(logs.matches(SENTINEL).count(), 0, "a secret reached the log");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect();
    let outcome = |method: &str, message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["span"]["method"] == method)
            .unwrap_or_else(|| panic!("no {message:?} line for {method}:\n{logs}"))
            .clone()
    };
    let published = outcome("NodePublishVolume", "rpc finished");
    assert_eq!(published["code"], "OK");
    assert!(published["elapsed_ms"].as_f64().is_some());
    assert_eq!(published["span"]["volume.id"], vol.as_str());
    assert_eq!(published["span"]["node.id"], "node-a");
    assert_eq!(published["span"]["target.path"], target.display().to_string());
    assert_eq!(published["span"]["staging.path"], staging.display().to_string());
    let failed = outcome("NodePublishVolume", "rpc failed");
    assert_eq!(failed["code"], "NOT_FOUND");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("fake-vol-id-2")), "{failed}");
    let staged = outcome("NodeStageVolume", "rpc finished");
    assert!(staged["span"].get("target.path").is_none(), "empty fields stay out of the span: {staged}");
    unmount_below(scratch.path());
}

fn doctor_json(args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["doctor", "--output", "json"];
    all.extend_from_slice(args);
    let out = berth_cmd(&all);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

fn verdict<'a>(report: &'a serde_json::Value, subject: &str, check: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["subject"] == subject && c["check"] == check))
        .unwrap_or_else(|| panic!("no check {subject}/{check} in {report:#}"))
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn doctor_passes_a_good_machine_and_fails_a_broken_one() {
    let test = "doctor_passes_a_good_machine_and_fails_a_broken_one";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(btrfs) = FsImage::new(&scratch, test, "btrfs", "256M") else {
        return;
    };
    use berth::mount::Syscall;
    berth::mount::LinuxSyscall.btrfs_quota_enable(&btrfs.mount).expect("enable qgroups");
    // A kubelet directory on its own shared mount, and one on a private mount.
    let kubelet = scratch.path().join("kubelet");
    let private = scratch.path().join("kubelet-private");
    for (dir, propagation) in [(&kubelet, "--make-shared"), (&private, "--make-private")] {
        fs::create_dir_all(dir).expect("mkdir");
        sh("mount", &["-t", "tmpfs", "kubelet", dir.to_str().expect("utf8")]);
        sh("mount", &[propagation, dir.to_str().expect("utf8")]);
    }
    let state = scratch.path().join("state");
    let endpoint = format!("unix://{}/run/csi.sock", scratch.path().display());
    let kubelet_s = kubelet.display().to_string();

    let good = write_config(scratch.path(), "good.yaml", &hostpath_config(&state, &btrfs.mount, "required"));
    let (ok, report) = doctor_json(&["--config", &good, "--kubelet-dir", &kubelet_s, "--endpoint", &endpoint]);
    assert!(ok, "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["summary"]["fail"], 0);
    assert_eq!(verdict(&report, "pool default", "path")["verdict"], "ok");
    let fs_check = verdict(&report, "pool default", "filesystem");
    assert!(fs_check["detail"].as_str().is_some_and(|d| d.starts_with("btrfs")), "{fs_check}");
    assert_eq!(verdict(&report, "pool default", "capacity enforcement")["detail"], "btrfs qgroups are enabled");
    assert_eq!(verdict(&report, "pool default", "reflink")["verdict"], "ok");
    assert_eq!(verdict(&report, "kubelet", "mount propagation")["verdict"], "ok");
    assert_eq!(verdict(&report, "socket", "path")["verdict"], "ok");
    assert_eq!(verdict(&report, "machine", "state directory")["verdict"], "ok");
    assert!(
        fs::read_dir(&btrfs.mount).expect("ls").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with(".berth-doctor")),
        "the reflink probe cleaned up"
    );
    // A block pool beside it: its path and reflinks are checked, loop devices and the ext4
    // tools become needs.
    // Beside the hostPath pool, not inside it: pools must not overlap.
    let (volumes, images) = (btrfs.mount.join("volumes-pool"), btrfs.mount.join("images"));
    fs::create_dir_all(&volumes).expect("mkdir");
    fs::create_dir_all(&images).expect("mkdir");
    let with_block = format!(
        "{}  - name: img\n    type: block\n    path: {}\n    createPath: true\n",
        hostpath_config(&state, &volumes, "required"),
        images.display()
    );
    let with_block = write_config(scratch.path(), "block.yaml", &with_block);
    let (ok, report) = doctor_json(&["--config", &with_block, "--kubelet-dir", &kubelet_s, "--endpoint", &endpoint]);
    assert!(ok, "{report:#}");
    assert_eq!(verdict(&report, "pool img", "path")["verdict"], "ok");
    let clone = verdict(&report, "pool img", "reflink");
    assert!(clone["detail"].as_str().is_some_and(|d| d.starts_with("FICLONE works")), "{clone}");
    assert_eq!(verdict(&report, "machine", "loop devices")["verdict"], "ok");
    assert_eq!(verdict(&report, "machine", "ext4 tools")["verdict"], "ok");

    let table = berth_cmd(&["doctor", "--config", &good, "--kubelet-dir", &kubelet_s, "--endpoint", &endpoint]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert!(text.starts_with("SUBJECT") && text.contains(" 0 fail"), "{text}");

    // Broken: the pool path is missing, the kubelet dir does not propagate mounts.
    let missing = scratch.path().join("no-such-pool");
    // Without createPath: berth would not make the directory, so doctor fails it.
    let broken_config = hostpath_config(&state, &missing, "auto").replace("    createPath: true\n", "");
    let broken = write_config(scratch.path(), "broken.yaml", &broken_config);
    let private_s = private.display().to_string();
    let (ok, report) = doctor_json(&["--config", &broken, "--kubelet-dir", &private_s, "--endpoint", &endpoint]);
    assert!(!ok, "any fail exits non-zero");
    assert_eq!(report["ok"], false);
    let path = verdict(&report, "pool default", "path");
    assert_eq!(path["verdict"], "fail");
    assert!(path["fix"].as_str().is_some_and(|f| f.contains(&missing.display().to_string())), "{path}");
    assert_eq!(verdict(&report, "kubelet", "mount propagation")["verdict"], "fail");
    let table = berth_cmd(&["doctor", "--config", &broken, "--kubelet-dir", &private_s, "--endpoint", &endpoint]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(1), "{text}");
    assert!(text.contains("fail") && text.contains("fix: mount the pool's disk"), "{text}");

    // Required enforcement on ext4 without project quotas cannot work.
    let Some(ext4) = FsImage::new(&scratch, test, "ext4", "64M") else {
        return;
    };
    let plain = write_config(scratch.path(), "plain.yaml", &hostpath_config(&state, &ext4.mount, "required"));
    let (ok, report) = doctor_json(&["--config", &plain, "--kubelet-dir", &kubelet_s, "--endpoint", &endpoint]);
    assert!(!ok);
    let enforcement = verdict(&report, "pool default", "capacity enforcement");
    assert_eq!(enforcement["verdict"], "fail", "{enforcement}");
    assert!(enforcement["fix"].as_str().is_some_and(|f| f.contains("tune2fs")), "{enforcement}");
}

/// Runs `berth csi --output json` against `endpoint`, expecting success.
fn csi(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["csi", "--endpoint", endpoint, "--output", "json"];
    all.extend_from_slice(args);
    let out = berth_cmd(&all);
    assert!(
        out.status.success(),
        "berth {all:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("berth {all:?} printed no JSON: {e}"))
}

#[tokio::test]
async fn berth_csi_alone_drives_a_whole_volume_lifecycle() {
    let test = "berth_csi_alone_drives_a_whole_volume_lifecycle";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let ep = format!("unix://{}", b.socket.display());
    let ep = ep.as_str();

    assert_eq!(csi(ep, &["identity", "info"])["name"], "local.berth.csi.io");
    assert_eq!(csi(ep, &["identity", "probe"])["ready"], true);
    assert_eq!(csi(ep, &["node", "info"])["node_id"], "node-a");
    let caps = csi(ep, &["controller", "capabilities"]);
    assert!(caps["capabilities"].as_array().is_some_and(|c| c.iter().any(|x| x == "CREATE_DELETE_SNAPSHOT")));

    let created = csi(
        ep,
        &[
            "controller",
            "create-volume",
            "--name",
            "pvc-cli",
            "--capacity",
            "16Mi",
            "--param",
            "pool=default",
            "--access-mode",
            "single-node-writer",
        ],
    );
    let vol = created["volume"]["volume_id"].as_str().expect("volume id").to_string();
    assert_eq!(created["volume"]["capacity_bytes"], 16 * MIB);
    let staging = scratch.path().join("staging").display().to_string();
    let target = scratch.path().join("target");
    let target_s = target.display().to_string();
    csi(ep, &["node", "stage", "--volume-id", &vol, "--staging-path", &staging]);
    csi(ep, &["node", "publish", "--volume-id", &vol, "--staging-path", &staging, "--target-path", &target_s]);
    assert_eq!(mounts_below(&target).len(), 1, "the target is mounted");
    fs::write(target.join("hello.txt"), vec![b'x'; 2 << 20]).expect("a pod writes through the mount");

    let stats = csi(ep, &["node", "stats", "--volume-id", &vol, "--volume-path", &target_s]);
    let bytes = stats["usage"].as_array().and_then(|u| u.iter().find(|u| u["unit"] == "BYTES")).expect("bytes usage");
    assert!(bytes["used"].as_i64().is_some_and(|u| u >= 2 * MIB), "{stats}");
    assert_eq!(bytes["total"], 16 * MIB);
    assert_eq!(stats["volume_condition"]["abnormal"], false);
    let human = berth_cmd(&["csi", "--endpoint", ep, "node", "stats", "--volume-id", &vol, "--volume-path", &target_s]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("UNIT") && text.contains("BYTES") && text.contains("healthy"), "{text}");

    let snap = csi(ep, &["controller", "create-snapshot", "--source-volume-id", &vol, "--name", "snap-cli"]);
    let snap_id = snap["snapshot"]["snapshot_id"].as_str().expect("snapshot id").to_string();
    assert_eq!(snap["snapshot"]["ready_to_use"], true);
    let listed = csi(ep, &["controller", "list-snapshots", "--source-volume-id", &vol]);
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        csi(ep, &["controller", "get-snapshot", "--snapshot-id", &snap_id])["snapshot"]["source_volume_id"],
        vol.as_str()
    );

    // A restore from the snapshot, then paging over the two volumes.
    let restored = csi(
        ep,
        &["controller", "create-volume", "--name", "pvc-cli-2", "--capacity", "16Mi", "--from-snapshot", &snap_id],
    );
    let vol2 = restored["volume"]["volume_id"].as_str().expect("volume id").to_string();
    assert_eq!(restored["volume"]["content_source"]["snapshot_id"], snap_id.as_str());
    let all = csi(ep, &["controller", "list-volumes", "--page-size", "1"]);
    assert_eq!(all["entries"].as_array().map(Vec::len), Some(2), "every page is followed: {all}");
    assert_eq!(all["next_token"], "");
    let one = csi(ep, &["controller", "list-volumes", "--max-entries", "1"]);
    assert_eq!(one["entries"].as_array().map(Vec::len), Some(1));
    let token = one["next_token"].as_str().expect("token").to_string();
    assert!(!token.is_empty());
    let rest = csi(ep, &["controller", "list-volumes", "--starting-token", &token]);
    assert_eq!(rest["entries"].as_array().map(Vec::len), Some(1));
    assert_ne!(rest["entries"][0]["volume"]["volume_id"], one["entries"][0]["volume"]["volume_id"]);
    let expanded = csi(ep, &["controller", "expand", "--volume-id", &vol, "--capacity", "32Mi"]);
    assert_eq!(expanded["capacity_bytes"], 32 * MIB);

    csi(ep, &["node", "unpublish", "--volume-id", &vol, "--target-path", &target_s]);
    csi(ep, &["node", "unstage", "--volume-id", &vol, "--staging-path", &staging]);
    assert!(mounts_below(scratch.path()).is_empty(), "nothing stays mounted");
    assert!(!target.exists(), "the target path is removed");
    csi(ep, &["controller", "delete-volume", "--volume-id", &vol2]);
    csi(ep, &["controller", "delete-snapshot", "--snapshot-id", &snap_id]);
    csi(ep, &["controller", "delete-volume", "--volume-id", &vol]);
    assert_eq!(csi(ep, &["controller", "list-volumes"])["entries"].as_array().map(Vec::len), Some(0));

    let out = berth_cmd(&["csi", "--endpoint", ep, "controller", "get-volume", "--volume-id", &vol]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("berth csi: NOT_FOUND: ") && err.contains(&vol), "{err}");
    let out =
        berth_cmd(&["csi", "--endpoint", ep, "--output", "json", "controller", "get-volume", "--volume-id", &vol]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(doc["error"]["code"], "NOT_FOUND");
    let out = berth_cmd(&["csi", "--endpoint", "unix:///nonexistent/csi.sock", "identity", "probe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAVAILABLE: no socket at /nonexistent/csi.sock"));
}

/// Starts `berth serve` with `config`, expecting it to refuse: returns what it printed.
fn refused_start(dir: &Path, config: &str) -> String {
    let socket = format!("unix://{}/refused.sock", dir.display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config", config, "--endpoint", &socket, "--node-id", "node-a"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth served on damaged records");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "berth must not start on damaged records");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn damaged_records_stop_the_start_and_salvage_brings_back_all_it_can() {
    let scratch = Scratch::new();
    let state = scratch.path().join("state");
    let pool = scratch.path().join("pool");
    let text = hostpath_config(&state, &pool, "none");
    let mut b = Berth::start(scratch.path(), &text, "node-a", &[]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let vol = b.controller.create_volume(create_req(&format!("pvc-{i}"), MIB)).await.expect("create");
        ids.push(vol.into_inner().volume.expect("volume").volume_id);
    }
    // A crash, so the six changes are in the journal rather than a shutdown checkpoint.
    b.kill();
    let config = b.config.display().to_string();
    let journal = state.join("state/journal");
    let records = state.join("state/records");
    let (good_journal, good_records) = (fs::read(&journal).expect("read"), fs::read(&records).expect("read"));

    // Frames hold two changes each (Creating, then Ready): one bit of volume 1's first.
    let mut damaged = good_journal.clone();
    damaged[2 * 4096 + 200] ^= 0x10;
    fs::write(&journal, &damaged).expect("flip a bit");
    let err = refused_start(scratch.path(), &config);
    assert!(err.contains("frame 2 (at byte 8192) is damaged") && err.contains("berth doctor"), "{err}");
    let (ok, report) = doctor_json(&["--config", &config]);
    assert!(!ok);
    let check = verdict(&report, "machine", "records");
    assert_eq!(check["verdict"], "fail", "{check}");
    assert!(check["fix"].as_str().is_some_and(|f| f.contains("berth salvage")), "{check}");

    // A journal cut to nothing.
    fs::write(&journal, b"").expect("truncate");
    let err = refused_start(scratch.path(), &config);
    assert!(err.contains("is 0 bytes, but was"), "{err}");
    fs::write(&journal, &good_journal).expect("restore");
    assert_eq!(fs::read(&records).expect("read"), good_records, "refused starts change nothing");

    // Salvage of the flipped bit: every volume but the one whose change was lost.
    fs::write(&journal, &damaged).expect("flip a bit");
    let out = berth_cmd(&["salvage", "--config", &config]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("kept 6 volume and 0 snapshot records"), "the later Ready change brings it back: {said}");
    assert!(said.contains("lost: frame 2, which seems to have said: volume"), "{said}");
    b.restart().await;
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.entries.len(), 6);

    // A clean stop checkpoints the six; one changed digit of a key there stops the start.
    b.stop();
    let good_records = fs::read(&records).expect("read");
    let key = ids[3].rsplit(':').next().expect("key");
    let changed_key = format!("{}{}", if key.starts_with('0') { '1' } else { '0' }, &key[1..]);
    let changed = String::from_utf8(good_records.clone()).expect("utf8").replacen(key, &changed_key, 1);
    assert_ne!(changed.as_bytes(), good_records, "the checkpoint names the key");
    fs::write(&records, changed).expect("change a digit");
    let err = refused_start(scratch.path(), &config);
    assert!(err.contains("do not match its checksum"), "{err}");
    fs::write(&records, &good_records).expect("restore");
    b.restart().await;
    b.stop();
}

#[test]
fn overlapping_roots_are_refused_at_start_and_by_doctor() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    fs::create_dir_all(pool.join("real")).expect("mkdir");
    std::os::unix::fs::symlink(pool.join("real"), scratch.path().join("link")).expect("symlink");
    let cases = [
        // berth's records where a static volume of the pool could publish them
        (hostpath_config(&pool.join("berth-state"), &pool, "none"), "is inside pool \"default\""),
        // a second pool inside the first, reached through a symbolic link
        (
            format!(
                "{}  - {{name: inner, type: block, path: {}, createPath: true}}\n",
                hostpath_config(&scratch.path().join("state"), &pool, "none"),
                scratch.path().join("link/inner").display()
            ),
            "overlap",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let config = write_config(scratch.path(), &format!("roots-{i}.yaml"), text);
        let err = refused_start(scratch.path(), &config);
        assert!(err.contains(want), "{text}: {err}");
        let (ok, report) = doctor_json(&["--config", &config]);
        assert!(!ok, "{report:#}");
        let failed = report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["verdict"] == "fail" && c["detail"].as_str().is_some_and(|d| d.contains(want)));
        assert!(failed, "doctor names it: {report:#}");
    }
    assert!(!pool.join("berth-state").exists(), "a refused start writes nothing");
}

#[tokio::test]
async fn a_full_state_disk_stops_no_change_and_least_of_all_deletes() {
    let test = "a_full_state_disk_stops_no_change_and_least_of_all_deletes";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let state = scratch.path().join("state");
    fs::create_dir_all(&state).expect("mkdir");
    sh("mount", &["-t", "tmpfs", "-o", "size=16m", "berth-state", state.to_str().expect("utf8")]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let pool = scratch.path().join("pool");
    let mut b = Berth::start(scratch.path(), &hostpath_config(&state, &pool, "none"), "node-a", &[]).await;
    let create = async |b: &mut Berth, name: &str| {
        let v = b.controller.create_volume(create_req(name, MIB)).await.expect("create");
        v.into_inner().volume.expect("volume").volume_id
    };
    let first = create(&mut b, "pvc-0").await;

    // Something else fills the state filesystem to the last byte.
    let filler = state.join("filler");
    let mut f = fs::File::create(&filler).expect("filler");
    let chunk = vec![7u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    let second = create(&mut b, "pvc-1").await;
    // The checkpoint at a clean stop has no room: the reserve gives it some.
    b.stop();
    assert!(b.logs().contains("used berth's reserve for a checkpoint"), "{}", b.logs());
    b.restart().await;
    let third = create(&mut b, "pvc-2").await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: first, ..Default::default() })
        .await
        .expect("a delete on a full state disk");
    // With the reserve gone too (taken by the filler), a checkpoint fails, and changes
    // still go on in the journal.
    b.stop();
    fs::remove_file(state.join("state/reserve")).expect("the reserve was made again");
    let mut f = fs::OpenOptions::new().append(true).open(&filler).expect("filler");
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    b.restart().await;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: second, ..Default::default() })
        .await
        .expect("a delete with neither room nor reserve");
    b.stop();
    assert!(b.logs().contains("cannot checkpoint the records"), "{}", b.logs());
    b.restart().await;
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    let ids: Vec<String> = listed.entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)).collect();
    assert_eq!(ids, vec![third], "every change kept");
    b.stop();
    fs::remove_file(&filler).expect("free the space");
}

#[tokio::test]
async fn a_flood_of_idle_connections_is_capped_and_the_idlest_make_room_for_new_clients() {
    let test = "a_flood_of_idle_connections_is_capped_and_the_idlest_make_room_for_new_clients";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "none");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &["--metrics-address", "127.0.0.1:0"]).await;
    // Every volume creation takes 8 s: a call that stays in flight through the flood.
    b.env.push(("BERTH_FAILPOINTS".into(), "hostpath.create=sleep(8000)".into()));
    b.restart().await;
    let address = b.metrics_address();
    let gauge = |name: &str| {
        let (_, samples) = scrape(&address);
        find(&samples, name, &[]).unwrap_or(-1.0)
    };
    let mut busy = b.controller.clone();
    let in_flight = tokio::spawn(async move { busy.create_volume(create_req("pvc-busy", 1 << 20)).await });
    // A moment for the call to reach berth before the flood.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let max = berth::server::MAX_CONNECTIONS;
    // Idle clients that connect and never speak, more than the socket serves at once.
    let mut idle: Vec<std::os::unix::net::UnixStream> =
        (0..max + 40).map(|_| std::os::unix::net::UnixStream::connect(&b.socket).expect("connect")).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gauge("berth_connections_refused_total") + gauge("berth_connections_evicted_total") < 40.0 {
        assert!(std::time::Instant::now() < deadline, "the connections beyond the maximum were not closed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(gauge("berth_connections_max"), max as f64);
    let fds = fs::read_dir(format!("/proc/{}/fd", b.pid().expect("pid"))).expect("fds").count();
    assert!(fds < max + 64, "{fds} descriptors open for {} connections attempted", max + 40);

    // While the flood still holds its connections, a new client is served: the connection
    // idle longest makes room (a connection counts as idle after a second without a call).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (evicted, refused) = (gauge("berth_connections_evicted_total"), gauge("berth_connections_refused_total"));
    for _ in 0..3 {
        let channel = common::connect(&b.socket).await.expect("connect while the socket is full");
        let probe = berth::csi::pb::identity_client::IdentityClient::new(channel)
            .probe(pb::ProbeRequest {})
            .await
            .expect("a new client is served while idle connections fill the socket");
        assert_eq!(probe.into_inner().ready, Some(true));
    }
    assert!(
        gauge("berth_connections_evicted_total") >= evicted + 1.0
            && gauge("berth_connections_refused_total") == refused,
        "the new clients took idle connections' places: evicted {evicted} then {}; refused {refused} then {}",
        gauge("berth_connections_evicted_total"),
        gauge("berth_connections_refused_total"),
    );
    // The evicted ones are the flood's: berth closed them (a read sees end of stream).
    for s in &mut idle {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let closed = idle.iter_mut().map(|s| std::io::Read::read(s, &mut [0u8; 1])).filter(|r| matches!(r, Ok(0))).count();
    assert!(closed >= 1, "{closed} idle connections closed by berth");
    // The call that was in flight all along was never cut.
    in_flight.await.expect("join").expect("the call in flight through the flood finished");
    assert!(gauge("berth_connections") <= max as f64 + 1.0);
    drop(idle);
    b.stop();
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_waits_instead_of_spinning() {
    let test = "out_of_descriptors_the_accept_loop_waits_instead_of_spinning";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "none");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let pid = b.pid().expect("pid");
    // Few descriptors to spare: the connections below exhaust them (EMFILE at accept).
    let open = fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").count();
    // The soft limit only: raising a limit again would need CAP_SYS_RESOURCE.
    sh("prlimit", &["--pid", &pid.to_string(), &format!("--nofile={}:", open + 8)]);
    let clients: Vec<std::os::unix::net::UnixStream> =
        (0..64).map(|_| std::os::unix::net::UnixStream::connect(&b.socket).expect("connect")).collect();
    let cpu = || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = cpu();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let ticks = cpu() - before;
    // Clock ticks are 1/100 s: a spinning loop burns about 200 in two seconds.
    assert!(ticks < 40, "berth used {ticks} clock ticks in 2 s with its descriptors exhausted");
    assert!(strip_ansi(&b.logs()).contains("cannot accept connections now"), "{}", b.logs());
    drop(clients);
    b.stop();
}
