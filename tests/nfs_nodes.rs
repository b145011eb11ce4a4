//! What a node needs of the NFS server, against a real server (nfs-ganesha on 127.0.0.1)
//! and the real binary: `berth doctor` checks each requirement on its own and names what
//! is wrong (root squash, an absent export), a node plugin that cannot register logs the
//! cause, and ControllerPublishVolume's NOT_FOUND for such a node says what to look at.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth::csi::pb;
use berth::csi::pb::volume_capability::access_mode::Mode;
use common::ganesha::Ganesha;
use common::*;
use tonic::Code;

/// An export with root squashed to ganesha's anonymous user.
const SQUASHED: (&str, &str) = ("squashed", "Squash = Root_Squash;");

/// A config with one NFS pool `shared` on `export`; `ports` names the server's ports in
/// mountOptions (else the client asks the portmapper).
fn config(state: &Path, g: &Ganesha, export: &Path, ports: bool) -> String {
    let options = if ports { g.mount_options() } else { "[]".to_string() };
    format!(
        "stateDir: {}\npools:\n  - {{name: shared, type: nfs, server: 127.0.0.1, export: {}, mountOptions: {options}}}\n",
        state.display(),
        export.display()
    )
}

/// Runs `berth doctor --output json` with `config`; the checks of pool `shared` by name.
fn doctor(dir: &Path, config: &str) -> Vec<(String, String, String, String)> {
    let path = dir.join(format!("doctor-{}.yaml", std::process::id()));
    fs::write(&path, config).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["doctor", "--output", "json", "--config"])
        .arg(&path)
        .output()
        .expect("run doctor");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["subject"] == "pool shared")
        .map(|c| (text(&c["check"]), text(&c["verdict"]), text(&c["detail"]), text(&c["fix"])))
        .collect()
}

fn find<'a>(checks: &'a [(String, String, String, String)], name: &str) -> &'a (String, String, String, String) {
    checks.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

#[test]
fn doctor_checks_each_server_requirement_from_a_node() {
    let test = "doctor_checks_each_server_requirement_from_a_node";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    // rpcbind names this server's ports while the test runs, so the portmapper path is real.
    let Some(g) = Ganesha::start_with(scratch.path(), test, &[SQUASHED], true) else { return };
    let state = scratch.path().join("state");

    // The normal export, through the portmapper: every requirement holds.
    let checks = doctor(scratch.path(), &config(&state, &g, &g.export, false));
    for name in ["config", "portmapper", "mount export", "nfsv3", "source port", "write as root"] {
        assert_eq!(find(&checks, name).1, "ok", "{name}: {checks:#?}");
    }
    assert!(find(&checks, "portmapper").2.contains(&format!("port {}", g.mount_port)), "{checks:#?}");
    assert!(find(&checks, "nfsv3").2.contains(&format!("port {}", g.nfs_port)), "{checks:#?}");
    assert!(find(&checks, "source port").2.contains("reserved port"), "{checks:#?}");
    assert!(find(&checks, "write as root").2.contains("owned by uid 0"), "{checks:#?}");
    let nodes = g.export.join(".berth/nodes");
    assert!(
        fs::read_dir(&nodes).expect("ls").all(|e| !e
            .expect("e")
            .file_name()
            .to_string_lossy()
            .starts_with(".berth-doctor")),
        "the probe file was removed"
    );

    // With the ports named, the portmapper is not asked.
    let checks = doctor(scratch.path(), &config(&state, &g, &g.export, true));
    assert!(find(&checks, "portmapper").2.contains("not asked"), "{checks:#?}");
    assert_eq!(find(&checks, "write as root").1, "ok", "{checks:#?}");

    // Root squash: uid 0 is refused in the export's root, which uid 0 owns.
    let squashed = scratch.path().join(SQUASHED.0);
    let checks = doctor(scratch.path(), &config(&state, &g, &squashed, true));
    assert_eq!(find(&checks, "mount export").1, "ok", "{checks:#?}");
    let (_, verdict, detail, fix) = find(&checks, "write as root");
    assert_eq!(verdict, "fail", "{checks:#?}");
    assert!(detail.contains("root squash") && detail.contains("uid 0 owns"), "{detail}");
    assert!(detail.contains("NFS3ERR_ACCES") || detail.contains("NFS3ERR_PERM"), "{detail}");
    assert!(fix.contains("no_root_squash"), "{fix}");

    // Root squash where .berth/nodes lets anyone write: the file's owner gives it away.
    fs::create_dir_all(squashed.join(".berth/nodes")).expect("mkdir");
    fs::set_permissions(squashed.join(".berth"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(squashed.join(".berth/nodes"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    let checks = doctor(scratch.path(), &config(&state, &g, &squashed, true));
    let (_, verdict, detail, _) = find(&checks, "write as root");
    assert_eq!(verdict, "warn", "{checks:#?}");
    assert!(detail.contains("root squash") && !detail.contains("owned by uid 0,"), "{detail}");

    // An export the server does not have: MOUNT says so, and nothing after it runs.
    let absent = scratch.path().join("absent");
    let checks = doctor(scratch.path(), &config(&state, &g, &absent, true));
    let (_, verdict, detail, _) = find(&checks, "mount export");
    assert_eq!(verdict, "fail", "{checks:#?}");
    assert!(detail.contains(&absent.display().to_string()) && detail.contains("does not export that path"), "{detail}");
    assert!(checks.iter().all(|c| c.0 != "write as root"), "{checks:#?}");
}

/// Waits until `f` holds, at most `secs` seconds.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

#[tokio::test]
async fn a_node_that_cannot_register_says_why_and_so_does_publish() {
    let test = "a_node_that_cannot_register_says_why_and_so_does_publish";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start_with(scratch.path(), test, &[SQUASHED], false) else { return };
    let dir = |n: &str| {
        let d = scratch.path().join(n);
        fs::create_dir_all(&d).expect("mkdir");
        d
    };
    let controller_config = config(&dir("controller").join("state"), &g, &g.export, true);
    let mut controller = Berth::start(
        &dir("controller"),
        &controller_config,
        "controller-0",
        &["--mode", "controller", "--driver-name", "nfs.berth.csi.io"],
    )
    .await;
    let volume = controller
        .controller
        .create_volume(create_req("v", 1 << 20))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;

    // A node whose root the server squashes: it cannot write its registration.
    let squashed = scratch.path().join(SQUASHED.0);
    let node_config = config(&dir("node-sq").join("state"), &g, &squashed, true);
    let node_args = ["--mode", "node", "--driver-name", "nfs.berth.csi.io"];
    let mut node = Berth::start(&dir("node-sq"), &node_config, "node-sq", &node_args).await;
    assert!(
        eventually(20, || strip_ansi(&node.logs()).contains("cannot register this node")).await,
        "no registration failure logged:\n{}",
        node.logs()
    );
    let logs = strip_ansi(&node.logs());
    let line = logs.lines().find(|l| l.contains("cannot register this node")).expect("line");
    assert!(line.contains("root squash") && line.contains("no_root_squash"), "{line}");

    let publish = |node: &str| pb::ControllerPublishVolumeRequest {
        volume_id: volume.clone(),
        node_id: node.to_string(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    let err = controller.controller.controller_publish_volume(publish("node-sq")).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no node has registered on this export at all"), "{}", err.message());
    assert!(err.message().contains(".berth/nodes/node-sq"), "{}", err.message());
    assert!(err.message().contains("berth doctor"), "{}", err.message());

    // Once another node registered, the message points at the node's own log instead.
    let ok_config = config(&dir("node-ok").join("state"), &g, &g.export, true);
    let mut ok = Berth::start(&dir("node-ok"), &ok_config, "node-ok", &node_args).await;
    assert!(eventually(20, || g.export.join(".berth/nodes/node-ok").exists()).await, "node-ok registered");
    let err = controller.controller.controller_publish_volume(publish("node-sq")).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("1 other node(s) did register"), "{}", err.message());
    assert!(err.message().contains("cannot register this node"), "{}", err.message());
    controller.controller.controller_publish_volume(publish("node-ok")).await.expect("registered node");
    ok.stop();
    node.stop();
    controller.stop();
}
