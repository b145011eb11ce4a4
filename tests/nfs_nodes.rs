//! What a node needs of the NFS server, against a real server (nfs-ganesha on 127.0.0.1)
//! and the real binary: `berth doctor` checks each requirement on its own and names what
//! is wrong (root squash, an absent export), a node plugin that cannot register logs the
//! cause, and ControllerPublishVolume's NOT_FOUND for such a node says what to look at.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
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
