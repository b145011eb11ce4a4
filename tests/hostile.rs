//! The hostile-input suite: every RPC gets the bad-input classes of shared/CSI-FACTS.md
//! and must answer each with its exact code, never panic, never restart, and never touch
//! anything outside berth's roots (sentinel files prove it). Secrets sent with every call
//! never reach the log.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use berth::csi::pb;
use common::*;
use tonic::Code;

const SECRET: &str = "SENTINEL-HOSTILE-SECRET-91";

#[derive(Default)]
struct Tally {
    sent: usize,
    matched: usize,
}

impl Tally {
    fn check<T: std::fmt::Debug>(&mut self, label: &str, got: Result<tonic::Response<T>, tonic::Status>, want: Code) {
        self.sent += 1;
        let code = match &got {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        assert_eq!(code, want, "{label}: {:?}", got.as_ref().err().map(tonic::Status::message));
        if let Err(s) = &got {
            assert!(!s.message().contains(SECRET), "{label}: a secret reached the error message");
        }
        self.matched += 1;
    }
}

fn secrets() -> HashMap<String, String> {
    [("password".to_string(), SECRET.to_string())].into()
}

/// Hostile ID strings and whether they are malformed (INVALID_ARGUMENT) or merely unknown.
fn hostile_ids() -> Vec<(&'static str, String, bool)> {
    vec![
        ("empty", String::new(), true),
        ("dot-dot", "..".into(), false),
        ("traversal", "../../etc/passwd".into(), false),
        ("slash", "/".into(), false),
        ("absolute", "/etc".into(), false),
        ("backslash", "a\\..\\b".into(), false),
        ("nul", "a\0b".into(), true),
        ("newline", "a\nb".into(), true),
        ("129 bytes", "x".repeat(129), true),
        ("10 KiB", "x".repeat(10 << 10), true),
        ("forged pool", "vol:..:0123456789abcdef0123456789abcdef".into(), false),
        ("forged key", "vol:default:../../../../../etc/passwd".into(), false),
        ("empty parts", "vol::".into(), false),
        ("well-formed unknown", "vol:default:0123456789abcdef0123456789abcdef".into(), false),
        ("csi-sanity style", "fake-vol-id-00c0ffee".into(), false),
    ]
}

fn mount_cap_with(fs_type: &str, flags: &[&str]) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume {
            fs_type: fs_type.into(),
            mount_flags: flags.iter().map(std::string::ToString::to_string).collect(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

async fn b_stage(n: &mut pb::node_client::NodeClient<tonic::transport::Channel>, id: &str, staging: &Path) {
    n.node_stage_volume(pb::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    })
    .await
    .expect("stage");
}

fn snapshot_of(pool: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![pool.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(_) => out.push((p.clone(), fs::read(&p).unwrap_or_default())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_rpc_answers_hostile_input_with_the_exact_code() {
    let test = "every_rpc_answers_hostile_input_with_the_exact_code";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let root = scratch.path();
    // Sentinels outside berth's roots: their bytes and the tree must not change.
    let sentinel = root.join("outside");
    fs::create_dir_all(sentinel.join("deep/er")).expect("mkdir");
    fs::write(sentinel.join("keep"), b"sentinel").expect("write");
    fs::write(sentinel.join("deep/er/keep"), b"sentinel 2").expect("write");
    let before = snapshot_of(&sentinel);
    let pool = root.join("pool");
    fs::create_dir_all(pool.join("shared/app")).expect("mkdir");
    fs::write(pool.join("shared/app/marker"), b"app").expect("write");
    std::os::unix::fs::symlink(&sentinel, pool.join("shared/to-outside")).expect("symlink");
    std::os::unix::fs::symlink("/", pool.join("shared/to-root")).expect("symlink");

    let mut b =
        Berth::start(root, &hostpath_config(&root.join("state"), &pool, "auto"), "node-a", &["--log-level", "trace"])
            .await;
    let mut t = Tally::default();
    let real = b
        .controller
        .create_volume(create_req("real", 1 << 20))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("v")
        .volume_id;
    let staging = root.join("stage");
    let pods = root.join("pods");
    fs::create_dir_all(&pods).expect("mkdir");
    let target = pods.join("t");
    let (c, n, g) = (&mut b.controller, &mut b.node, &mut b.group);

    // IDs, to every RPC that takes one.
    for (class, id, malformed) in hostile_ids() {
        let bad = if malformed { Code::InvalidArgument } else { Code::NotFound };
        let idem = if malformed { Code::InvalidArgument } else { Code::Ok };
        let l = |rpc: &str| format!("{rpc} with {class} id");
        t.check(
            &l("DeleteVolume"),
            c.delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), secrets: secrets() }).await,
            idem,
        );
        t.check(
            &l("ControllerPublish"),
            c.controller_publish_volume(pb::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: "node-a".into(),
                volume_capability: Some(rwo()),
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("ControllerUnpublish"),
            c.controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
                volume_id: id.clone(),
                node_id: "node-a".into(),
                secrets: secrets(),
            })
            .await,
            idem,
        );
        t.check(
            &l("Validate"),
            c.validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_capabilities: vec![rwo()],
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("GetVolume"),
            c.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: id.clone() }).await,
            bad,
        );
        t.check(
            &l("ControllerExpand"),
            c.controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(pb::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 }),
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("CreateSnapshot"),
            c.create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: id.clone(),
                name: "s".into(),
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("DeleteSnapshot"),
            c.delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: id.clone(), secrets: secrets() }).await,
            idem,
        );
        t.check(
            &l("GetSnapshot"),
            c.get_snapshot(pb::GetSnapshotRequest { snapshot_id: id.clone(), secrets: secrets() }).await,
            bad,
        );
        t.check(
            &l("CreateVolumeGroupSnapshot"),
            g.create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
                name: "g".into(),
                source_volume_ids: vec![id.clone()],
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("GetVolumeGroupSnapshot"),
            g.get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: id.clone(),
                snapshot_ids: vec![id.clone()],
                secrets: secrets(),
            })
            .await,
            bad,
        );
        t.check(
            &l("DeleteVolumeGroupSnapshot"),
            g.delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: id.clone(),
                snapshot_ids: Vec::new(),
                secrets: secrets(),
            })
            .await,
            idem,
        );
        let mut from_volume = create_req("from-hostile", 1 << 20);
        from_volume.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
                volume_id: id.clone(),
            })),
        });
        t.check(&l("CreateVolume from volume"), c.create_volume(from_volume).await, bad);
        let mut from_snap = create_req("from-hostile", 1 << 20);
        from_snap.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                snapshot_id: id.clone(),
            })),
        });
        t.check(&l("CreateVolume from snapshot"), c.create_volume(from_snap).await, bad);
        t.check(
            &l("NodeStage"),
            n.node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(rwo()),
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("NodeUnstage"),
            n.node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
            })
            .await,
            idem,
        );
        t.check(
            &l("NodePublish"),
            n.node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(rwo()),
                secrets: secrets(),
                ..Default::default()
            })
            .await,
            bad,
        );
        t.check(
            &l("NodeUnpublish"),
            n.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.display().to_string(),
            })
            .await,
            idem,
        );
        t.check(
            &l("NodeStats"),
            n.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: pods.display().to_string(),
                staging_target_path: String::new(),
            })
            .await,
            bad,
        );
        t.check(
            &l("NodeExpand"),
            n.node_expand_volume(pb::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: pods.display().to_string(),
                capacity_range: Some(pb::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 }),
                ..Default::default()
            })
            .await,
            bad,
        );
    }

    // Names are opaque: hostile but well-formed names create volumes whose storage is
    // named by berth's own key, never by the name.
    for (class, name, malformed) in hostile_ids() {
        let want = if malformed { Code::InvalidArgument } else { Code::Ok };
        let mut r = create_req(&name, 1 << 20);
        r.secrets = secrets();
        t.check(&format!("CreateVolume named {class}"), c.create_volume(r).await, want);
        t.check(
            &format!("CreateSnapshot named {class}"),
            c.create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: real.clone(),
                name: name.clone(),
                ..Default::default()
            })
            .await,
            want,
        );
    }
    for e in fs::read_dir(pool.join("volumes")).expect("ls").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(berth::ids::is_key(&name), "volume storage is named by a berth key, not a request: {name:?}");
    }

    // Paths where berth would mount, and paths that cannot hold a volume.
    let file_target = pods.join("a-file");
    fs::write(&file_target, b"").expect("file");
    let link_to_root = pods.join("link-to-root");
    std::os::unix::fs::symlink("/", &link_to_root).expect("symlink");
    let full_dir = pods.join("full");
    fs::create_dir_all(&full_dir).expect("mkdir");
    fs::write(full_dir.join("data"), b"x").expect("write");
    let via_link = pods.join("link-to-root/etc/x");
    let paths: Vec<(&str, String)> = vec![
        ("relative", "pods/t".into()),
        ("root", "/".into()),
        ("top level", "/mnt".into()),
        ("/etc", "/etc".into()),
        ("/etc child", "/etc/berth-x".into()),
        ("/proc", "/proc/self/root/x".into()),
        ("/dev node", "/dev/null".into()),
        ("dot-dot", format!("{}/../../etc", pods.display())),
        ("nul", format!("{}/a\0b", pods.display())),
        ("newline", format!("{}/a\nb", pods.display())),
        ("10 KiB", format!("/tmp/{}", "x".repeat(10 << 10))),
        ("symlink to /", link_to_root.display().to_string()),
        ("through a symlink into /etc", via_link.display().to_string()),
        ("a file", file_target.display().to_string()),
        ("a non-empty directory", full_dir.display().to_string()),
    ];
    let table =
        berth::mount::mountinfo::parse(&fs::read_to_string("/proc/self/mountinfo").expect("mountinfo")).expect("parse");
    let mounted_before: HashMap<&str, usize> =
        paths.iter().map(|(_, p)| (p.as_str(), berth::mount::mountinfo::at(&table, Path::new(p)).len())).collect();
    b_stage(n, &real, &staging).await;
    for (class, p) in &paths {
        let stage = pb::NodeStageVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: p.clone(),
            volume_capability: Some(rwo()),
            ..Default::default()
        };
        t.check(&format!("NodeStage at {class}"), n.node_stage_volume(stage).await, Code::InvalidArgument);
        let publish = pb::NodePublishVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: p.clone(),
            volume_capability: Some(rwo()),
            ..Default::default()
        };
        t.check(&format!("NodePublish onto {class}"), n.node_publish_volume(publish).await, Code::InvalidArgument);
    }
    for (class, p) in paths.iter().take(11) {
        let publish = pb::NodePublishVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: p.clone(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            ..Default::default()
        };
        t.check(
            &format!("NodePublish from staging {class}"),
            n.node_publish_volume(publish).await,
            Code::InvalidArgument,
        );
        t.check(
            &format!("NodeUnpublish at {class}"),
            n.node_unpublish_volume(pb::NodeUnpublishVolumeRequest { volume_id: real.clone(), target_path: p.clone() })
                .await,
            Code::InvalidArgument,
        );
        t.check(
            &format!("NodeUnstage at {class}"),
            n.node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: real.clone(),
                staging_target_path: p.clone(),
            })
            .await,
            Code::InvalidArgument,
        );
    }
    assert!(file_target.exists() && link_to_root.exists() && full_dir.join("data").exists(), "nothing was removed");
    t.check(
        "NodeUnpublish through a symlink",
        n.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: real.clone(),
            target_path: link_to_root.display().to_string(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(!target.exists(), "no hostile publish mounted anything");
    n.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: real.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .expect("unstage");

    // A staging directory that exists but is not mounted (a reboot) is never bound.
    fs::create_dir_all(&staging).expect("mkdir");
    t.check(
        "NodePublish from a bare staging dir",
        n.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(!target.exists());

    // Mount flags and filesystem types: only the allow-list passes.
    for flags in [
        &["remount"][..],
        &["bind"],
        &["rbind"],
        &["ro,exec"],
        &["uid=0"],
        &["context=system_u:object_r:x"],
        &[""],
        &["nosuid\n"],
        &["suid"],
        &["dev"],
        &["exec", "nosuid=1"],
    ] {
        let cap = mount_cap_with("", flags);
        let mut r = create_req("flags", 1 << 20);
        r.volume_capabilities = vec![cap.clone()];
        t.check(&format!("CreateVolume flags {flags:?}"), c.create_volume(r).await, Code::InvalidArgument);
        t.check(
            &format!("NodeStage flags {flags:?}"),
            n.node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: real.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
    }
    for fs_type in ["ext4;id", "../xfs", "nfs", "ext4 ", "EXT4", "ext4,ro", "tmpfs"] {
        let mut r = create_req("fstype", 1 << 20);
        r.volume_capabilities = vec![mount_cap_with(fs_type, &[])];
        t.check(&format!("CreateVolume fs_type {fs_type:?}"), c.create_volume(r).await, Code::InvalidArgument);
    }
    // Values that would land in a mount option string, and unknown parameters.
    for (k, v) in
        [("pool", "default,ro"), ("pool", "a=b"), ("pool", "../default"), ("mountOptions", "rw"), ("subPath", "x")]
    {
        let mut r = create_req("params", 1 << 20);
        r.parameters.insert(k.into(), v.into());
        t.check(&format!("CreateVolume parameter {k}={v}"), c.create_volume(r).await, Code::InvalidArgument);
    }
    // Encryption keys that are not 128 hex digits, built around the sentinel: refused
    // whatever the scheme and whether or not the pool can encrypt, and never echoed.
    let padded = |fill: char, len: usize| format!("{SECRET}{}", fill.to_string().repeat(len - SECRET.len()));
    for (scheme, key) in [("fscrypt", SECRET.to_string()), ("fscrypt", padded('a', 128)), ("luks2", padded('0', 127))] {
        let mut r = create_req("hostile-key", 1 << 20);
        r.parameters.insert("encryption".into(), scheme.into());
        r.secrets = [("encryptionKey".to_string(), key)].into();
        t.check(
            &format!("CreateVolume {scheme} with a malformed key"),
            c.create_volume(r).await,
            Code::InvalidArgument,
        );
    }
    // Maps over 4 KiB.
    let big: HashMap<String, String> = [("k".to_string(), "v".repeat(5000))].into();
    let mut r = create_req("big", 1 << 20);
    r.parameters = big.clone();
    t.check("CreateVolume parameters > 4 KiB", c.create_volume(r).await, Code::InvalidArgument);
    let mut r = create_req("big", 1 << 20);
    r.secrets = big.clone();
    t.check("CreateVolume secrets > 4 KiB", c.create_volume(r).await, Code::InvalidArgument);
    t.check(
        "NodeStage context > 4 KiB",
        n.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: big.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    t.check(
        "NodePublish context > 4 KiB",
        n.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: big.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    t.check(
        "ControllerPublish context > 4 KiB",
        c.controller_publish_volume(pb::ControllerPublishVolumeRequest {
            volume_id: real.clone(),
            node_id: "node-a".into(),
            volume_capability: Some(rwo()),
            volume_context: big.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );

    // Capacities and access types.
    for (class, req, lim, want) in [
        ("negative required", -1, 0, Code::InvalidArgument),
        ("negative limit", 0, -1, Code::InvalidArgument),
        ("inverted", 2 << 20, 1 << 20, Code::OutOfRange),
        ("maximal", i64::MAX, 0, Code::ResourceExhausted),
        ("maximal limit only", 0, i64::MAX, Code::Ok),
    ] {
        let mut r = create_req(&format!("cap-{class}"), 0);
        r.capacity_range = Some(pb::CapacityRange { required_bytes: req, limit_bytes: lim });
        t.check(&format!("CreateVolume {class} capacity"), c.create_volume(r).await, want);
    }
    let mut neither = create_req("neither", 1 << 20);
    neither.volume_capabilities = vec![pb::VolumeCapability { access_type: None, access_mode: rwo().access_mode }];
    t.check("CreateVolume with neither access type", c.create_volume(neither).await, Code::InvalidArgument);
    t.check(
        "NodeStage with neither access type",
        n.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(pb::VolumeCapability { access_type: None, access_mode: rwo().access_mode }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );

    // Page tokens.
    for token in ["garbage", "vol:../..:x", "snap:default:zz", &"x".repeat(10 << 10)] {
        t.check(
            "ListVolumes with a foreign token",
            c.list_volumes(pb::ListVolumesRequest { max_entries: 0, starting_token: token.to_string() }).await,
            Code::Aborted,
        );
        t.check(
            "ListSnapshots with a foreign token",
            c.list_snapshots(pb::ListSnapshotsRequest { starting_token: token.to_string(), ..Default::default() })
                .await,
            Code::Aborted,
        );
    }

    // Static subPaths and ephemeral attributes.
    for sub in [
        "..",
        "../outside",
        "shared/../../outside",
        "/etc",
        "shared\\app",
        "shared/to-outside",
        "shared/to-root",
        "shared//app",
        "",
        "volumes/x",
        "snapshots",
        "shared/app\0",
        "shared/\napp",
    ] {
        let stage = pb::NodeStageVolumeRequest {
            volume_id: "static-pv".into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: [("subPath".to_string(), sub.to_string())].into(),
            ..Default::default()
        };
        t.check(&format!("static subPath {sub:?}"), n.node_stage_volume(stage).await, Code::InvalidArgument);
    }
    for (k, v) in [("size", "-1"), ("size", "1K"), ("size", "1Zi"), ("pool", "../default"), ("colour", "red")] {
        let publish = pb::NodePublishVolumeRequest {
            volume_id: "csi-eph-hostile".into(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: [
                ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
                (k.to_string(), v.to_string()),
            ]
            .into(),
            ..Default::default()
        };
        t.check(&format!("ephemeral {k}={v}"), n.node_publish_volume(publish).await, Code::InvalidArgument);
    }
    assert!(mounts_below(root).is_empty(), "hostile input mounted something: {:?}", mounts_below(root));

    // A symlink swapped into a static volume while stage runs: berth mounts the real
    // directory or refuses; never what the symlink points at.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        let (app, parked) = (pool.join("shared/app"), pool.join("shared/app-parked"));
        let sentinel = sentinel.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = fs::rename(&app, &parked);
                let _ = std::os::unix::fs::symlink(&sentinel, &app);
                std::thread::yield_now();
                let _ = fs::remove_file(&app);
                let _ = fs::rename(&parked, &app);
            }
        })
    };
    let mut mounted = 0;
    for i in 0..200 {
        let st = root.join(format!("race-{i}"));
        let stage = pb::NodeStageVolumeRequest {
            volume_id: "static-race".into(),
            staging_target_path: st.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: [("subPath".to_string(), "shared/app".to_string())].into(),
            ..Default::default()
        };
        t.sent += 1;
        match n.node_stage_volume(stage).await {
            Ok(_) => {
                assert_eq!(fs::read(st.join("marker")).expect("the real directory is mounted"), b"app");
                assert!(!st.join("keep").exists(), "the symlink's target was mounted");
                mounted += 1;
                n.node_unstage_volume(pb::NodeUnstageVolumeRequest {
                    volume_id: "static-race".into(),
                    staging_target_path: st.display().to_string(),
                })
                .await
                .expect("unstage");
            }
            Err(s) => assert!(matches!(s.code(), Code::InvalidArgument | Code::NotFound), "{s:?}"),
        }
        t.matched += 1;
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().expect("swapper");

    // Nothing outside was touched; no panic; the same process answered everything.
    assert_eq!(snapshot_of(&sentinel), before, "a sentinel changed");
    // Other tests mount things concurrently: what matters is that nothing of berth's pool
    // is mounted outside this test's space, and that no hostile path became a mount.
    let table =
        berth::mount::mountinfo::parse(&fs::read_to_string("/proc/self/mountinfo").expect("mountinfo")).expect("parse");
    for bind in berth::mount::mountinfo::binds_of(&table, &pool) {
        assert!(
            bind.mount_point.starts_with(root),
            "pool content mounted outside the test: {}",
            bind.mount_point.display()
        );
    }
    for (class, p) in &paths {
        let now = berth::mount::mountinfo::at(&table, Path::new(p)).len();
        assert_eq!(now, *mounted_before.get(p.as_str()).unwrap_or(&0), "{class} {p:?} gained a mount");
    }
    assert!(mounts_below(root).is_empty());
    let logs = b.logs();
    assert_eq!(logs.matches("panicked").count(), 0, "a handler panicked");
    assert_eq!(logs.matches("serving CSI").count(), 1, "berth restarted");
    assert_eq!(logs.matches(SECRET).count(), 0, "a secret reached the log");
    assert!(!b.exited_within(std::time::Duration::from_millis(1)), "berth is still running");
    println!(
        "hostile: {} bad inputs sent, {} codes matched, 0 panics, 0 restarts, sentinels intact, race: {mounted}/200 stages mounted the real directory, the rest refused",
        t.sent, t.matched
    );
}

#[tokio::test]
async fn a_target_swapped_for_a_symlink_after_the_check_mounts_nothing_elsewhere() {
    let test = "a_target_swapped_for_a_symlink_after_the_check_mounts_nothing_elsewhere";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let root = scratch.path();
    let pool = root.join("pool");
    let mut b = Berth::start(root, &hostpath_config(&root.join("state"), &pool, "none"), "node-a", &[]).await;
    let id = b.controller.create_volume(create_req("pvc-swap", 1 << 20)).await.expect("create").into_inner();
    let id = id.volume.expect("volume").volume_id;
    let staging = root.join("staging");
    b.node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwo()),
            ..Default::default()
        })
        .await
        .expect("stage");
    // Half a second between berth's checks of the target and its mount.
    b.env.push(("BERTH_FAILPOINTS".into(), "node.publish.bind=sleep(500)".into()));
    b.restart().await;
    let pod = root.join("pod");
    let victim = root.join("victim");
    fs::create_dir_all(&pod).expect("mkdir");
    fs::create_dir_all(&victim).expect("mkdir");
    let target = pod.join("mount");
    let call = publish_paused(&b, &id, &staging, &target, "target").await;
    // The pod, which can write the target's parent, swaps the target for a symlink.
    fs::remove_dir(&target).expect("remove the target");
    std::os::unix::fs::symlink(&victim, &target).expect("symlink");
    let published = call.await.expect("join");
    assert!(published.is_err(), "the mount must not follow the swapped-in symlink");
    assert!(mounts_below(&victim).is_empty(), "the victim directory got a mount");
    fs::remove_file(&target).expect("rm symlink");
    b.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    b.stop();
    unmount_below(root);
}

/// Starts a NodePublishVolume of `id` at `target` (berth must run with a pause at
/// `node.publish.bind`) and returns once berth has made the target, while the call waits
/// between its checks and its mount. `what` names the round in messages.
async fn publish_paused(
    b: &Berth,
    id: &str,
    staging: &Path,
    target: &Path,
    what: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::NodePublishVolumeResponse>, tonic::Status>> {
    let mut node = b.node.clone();
    let publish = pb::NodePublishVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    };
    let call = tokio::spawn(async move { node.node_publish_volume(publish).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !target.is_dir() {
        assert!(std::time::Instant::now() < deadline, "{what}: berth never made the target");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    call
}

#[tokio::test]
async fn a_parent_directory_swapped_for_a_symlink_after_the_check_mounts_nothing_elsewhere() {
    let test = "a_parent_directory_swapped_for_a_symlink_after_the_check_mounts_nothing_elsewhere";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let root = scratch.path();
    let pool = root.join("pool");
    let mut b = Berth::start(root, &hostpath_config(&root.join("state"), &pool, "none"), "node-a", &[]).await;
    let id = b.controller.create_volume(create_req("pvc-swap-parent", 1 << 20)).await.expect("create").into_inner();
    let id = id.volume.expect("volume").volume_id;
    // Half a second between berth's checks of the paths and its bind mount.
    b.env.push(("BERTH_FAILPOINTS".into(), "node.publish.bind=sleep(500)".into()));
    b.restart().await;

    // Each round: the directory a process swaps, and where its symlink then leads.
    // A swapped target's parent would mount the volume over the victim; a swapped
    // staging path's parent would show the victim (a host directory) in the pod.
    for (round, swap_staging) in [("target", false), ("staging", true)] {
        let base = root.join(round);
        let (staging_parent, pod) = (base.join("plugins"), base.join("pod"));
        let (staging, target) = (staging_parent.join("staging"), pod.join("volumes/mount"));
        let victim = base.join("victim");
        fs::create_dir_all(pod.join("volumes")).expect("mkdir");
        fs::create_dir_all(victim.join("mount")).expect("mkdir");
        fs::create_dir_all(victim.join("staging")).expect("mkdir");
        fs::write(victim.join("staging/host-secret"), b"host").expect("write");
        fs::create_dir_all(&staging_parent).expect("mkdir");
        b.node
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(rwo()),
                ..Default::default()
            })
            .await
            .expect("stage");
        let call = publish_paused(&b, &id, &staging, &target, round).await;
        let swapped = if swap_staging { staging_parent.clone() } else { pod.join("volumes") };
        let kept = base.join("kept");
        fs::rename(&swapped, &kept).expect("move the real directory away");
        std::os::unix::fs::symlink(&victim, &swapped).expect("symlink");
        let published = call.await.expect("join");
        let status = published.expect_err("the mount must not follow the swapped-in symlink");
        assert!(status.message().contains("symbolic link"), "{round}: {}", status.message());
        assert!(mounts_below(&victim).is_empty(), "{round}: the victim directory got a mount");
        assert!(!target.join("host-secret").exists(), "{round}: the host directory shows at the target");
        fs::remove_file(&swapped).expect("rm symlink");
        fs::rename(&kept, &swapped).expect("put the real directory back");
        b.node
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .expect("unpublish");
        b.node
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .expect("unstage");
    }
    b.stop();
    unmount_below(root);
}
