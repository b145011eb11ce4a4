//! berth's own conformance suite: every RPC walked through the error cases the CSI spec
//! requires (see shared/CSI-FACTS.md), against the real binary. csi-sanity's list is the
//! floor; each case asserts the exact gRPC code.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use berth::csi::pb;
use berth::csi::pb::volume_capability::access_mode::Mode;
use common::*;
use tonic::Code;

/// Counts cases so the test prints what it verified.
#[derive(Default)]
struct Tally {
    cases: usize,
}

impl Tally {
    fn code<T: std::fmt::Debug>(&mut self, label: &str, result: Result<tonic::Response<T>, tonic::Status>, want: Code) {
        self.cases += 1;
        match result {
            Ok(r) if want == Code::Ok => drop(r),
            Ok(r) => panic!("{label}: expected {want:?}, got OK: {:?}", r.into_inner()),
            Err(s) => assert_eq!(s.code(), want, "{label}: {}", s.message()),
        }
    }

    fn ok<T>(&mut self, label: &str, result: Result<tonic::Response<T>, tonic::Status>) -> T {
        self.cases += 1;
        match result {
            Ok(r) => r.into_inner(),
            Err(s) => panic!("{label}: expected OK, got {:?}: {}", s.code(), s.message()),
        }
    }
}

fn with_mode(mode: Mode) -> pb::VolumeCapability {
    mount_cap(mode)
}

fn flags_cap(flags: &[&str]) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(std::string::ToString::to_string).collect(),
            volume_mount_group: String::new(),
        })),
        access_mode: Some(pb::volume_capability::AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

fn block_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Block(pb::volume_capability::BlockVolume {})),
        access_mode: Some(pb::volume_capability::AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

#[tokio::test]
async fn identity_and_controller_answer_every_spec_case() {
    let test = "identity_and_controller_answer_every_spec_case";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let sentinel = scratch.path().join("outside/sentinel");
    fs::create_dir_all(sentinel.parent().expect("parent")).expect("mkdir");
    fs::write(&sentinel, b"untouched").expect("write");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;
    let mut t = Tally::default();

    // Identity.
    let info = t.ok("GetPluginInfo", b.identity.get_plugin_info(pb::GetPluginInfoRequest {}).await);
    assert_eq!(info.name, "local.berth.csi.io");
    assert_eq!(info.vendor_version, berth::VERSION);
    let caps =
        t.ok("GetPluginCapabilities", b.identity.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}).await);
    assert_eq!(caps.capabilities.len(), 4, "controller and group controller services, topology, online expansion");
    assert_eq!(t.ok("Probe", b.identity.probe(pb::ProbeRequest {}).await).ready, Some(true));
    // The node-local driver's CSIDriver says attachRequired: false; it advertises no
    // attaching, so no provisioner watches VolumeAttachments for it.
    let caps = t.ok(
        "ControllerGetCapabilities",
        b.controller.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}).await,
    );
    let rpcs = common::controller_rpcs(&caps);
    use pb::controller_service_capability::rpc::Type as Rpc;
    for attaching in [Rpc::PublishUnpublishVolume, Rpc::PublishReadonly, Rpc::ListVolumesPublishedNodes] {
        assert!(!rpcs.contains(&attaching), "{attaching:?} advertised by the node-local driver: {rpcs:?}");
    }
    assert!(rpcs.contains(&Rpc::CreateDeleteSnapshot) && rpcs.contains(&Rpc::ExpandVolume), "{rpcs:?}");
    let group = t.ok(
        "GroupControllerGetCapabilities",
        b.group.group_controller_get_capabilities(pb::GroupControllerGetCapabilitiesRequest {}).await,
    );
    assert_eq!(group.capabilities.len(), 1, "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT");
    let g = &mut b.group;
    t.code(
        "CreateVolumeGroupSnapshot no name",
        g.create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
            source_volume_ids: vec!["vol:default:00000000000000000000000000000000".into()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    t.code(
        "GetVolumeGroupSnapshot unknown",
        g.get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "group:default:00000000000000000000000000000000".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    t.code(
        "DeleteVolumeGroupSnapshot unknown",
        g.delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "group:default:00000000000000000000000000000000".into(),
            ..Default::default()
        })
        .await,
        Code::Ok,
    );

    // CreateVolume: request validation.
    let c = &mut b.controller;
    t.code("CreateVolume no name", c.create_volume(create_req("", 1 << 20)).await, Code::InvalidArgument);
    t.code(
        "CreateVolume 129-byte name",
        c.create_volume(create_req(&"n".repeat(129), 1 << 20)).await,
        Code::InvalidArgument,
    );
    t.code("CreateVolume 128-byte name", c.create_volume(create_req(&"n".repeat(128), 1 << 20)).await, Code::Ok);
    let mut r = create_req("no-caps", 1 << 20);
    r.volume_capabilities.clear();
    t.code("CreateVolume no capabilities", c.create_volume(r).await, Code::InvalidArgument);
    let mut r = create_req("no-type", 1 << 20);
    r.volume_capabilities[0].access_type = None;
    t.code("CreateVolume capability without access type", c.create_volume(r).await, Code::InvalidArgument);
    let mut r = create_req("no-mode", 1 << 20);
    r.volume_capabilities[0].access_mode = None;
    t.code("CreateVolume capability without access mode", c.create_volume(r).await, Code::InvalidArgument);
    for mode in [Mode::MultiNodeMultiWriter, Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter] {
        let mut r = create_req("rwx", 1 << 20);
        r.volume_capabilities = vec![with_mode(mode)];
        t.code(&format!("CreateVolume {mode:?} on a node-local pool"), c.create_volume(r).await, Code::InvalidArgument);
    }
    // Messages name access modes as CSI and Kubernetes do, not as Rust does.
    let mut r = create_req("rwx", 1 << 20);
    r.volume_capabilities = vec![with_mode(Mode::MultiNodeMultiWriter)];
    let refused = c.create_volume(r).await.expect_err("RWX on a node-local pool");
    assert!(refused.message().contains("MULTI_NODE_MULTI_WRITER (ReadWriteMany)"), "{}", refused.message());
    assert!(!refused.message().contains("MultiNodeMultiWriter"), "{}", refused.message());
    let mut r = create_req("block", 1 << 20);
    r.volume_capabilities = vec![block_cap()];
    t.code("CreateVolume raw block on hostPath", c.create_volume(r).await, Code::InvalidArgument);
    for fs_type in ["ext4;id", "nfs", "../xfs", "ext4,ro"] {
        let mut r = create_req("fs", 1 << 20);
        if let Some(pb::volume_capability::AccessType::Mount(m)) = r.volume_capabilities[0].access_type.as_mut() {
            m.fs_type = fs_type.to_string();
        }
        t.code(&format!("CreateVolume fs_type {fs_type:?}"), c.create_volume(r).await, Code::InvalidArgument);
    }
    let mut r = create_req("param", 1 << 20);
    r.parameters.insert("colour".into(), "red".into());
    let err = c.create_volume(r).await.expect_err("unknown parameter");
    assert!(err.message().contains("colour"), "the message names the parameter: {}", err.message());
    t.code("CreateVolume unknown parameter", Err::<tonic::Response<()>, _>(err), Code::InvalidArgument);
    let mut r = create_req("pool", 1 << 20);
    r.parameters.insert("pool".into(), "nope".into());
    t.code("CreateVolume unknown pool", c.create_volume(r).await, Code::InvalidArgument);
    let mut r = create_req("bigmap", 1 << 20);
    r.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "x".repeat(5000));
    t.code("CreateVolume parameters over 4 KiB", c.create_volume(r).await, Code::InvalidArgument);
    let mut r = create_req("secrets", 1 << 20);
    r.secrets.insert("k".into(), "s".repeat(5000));
    t.code("CreateVolume secrets over 4 KiB", c.create_volume(r).await, Code::InvalidArgument);
    t.code("CreateVolume negative size", c.create_volume(create_req("neg", -1)).await, Code::InvalidArgument);
    let mut r = create_req("inverted", 2 << 20);
    r.capacity_range = Some(pb::CapacityRange { required_bytes: 2 << 20, limit_bytes: 1 << 20 });
    t.code("CreateVolume limit below required", c.create_volume(r).await, Code::OutOfRange);
    t.code(
        "CreateVolume more than the pool holds",
        c.create_volume(create_req("huge", i64::MAX)).await,
        Code::ResourceExhausted,
    );
    let mut r = create_req("elsewhere", 1 << 20);
    r.accessibility_requirements = Some(pb::TopologyRequirement {
        requisite: vec![pb::Topology {
            segments: [("topology.berth.csi.io/node".to_string(), "node-b".to_string())].into(),
        }],
        preferred: vec![],
    });
    t.code("CreateVolume requisite topology elsewhere", c.create_volume(r).await, Code::ResourceExhausted);
    let mut r = create_req("from-missing-snap", 1 << 20);
    r.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: "snap:default:0123456789abcdef0123456789abcdef".into(),
        })),
    });
    t.code("CreateVolume from a missing snapshot", c.create_volume(r).await, Code::NotFound);
    let mut r = create_req("from-missing-vol", 1 << 20);
    r.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: "fake-vol-id-00ff".into(),
        })),
    });
    t.code("CreateVolume from a missing volume", c.create_volume(r).await, Code::NotFound);

    // CreateVolume: idempotency.
    let vol = t.ok("CreateVolume", c.create_volume(create_req("pvc-1", 1 << 20)).await).volume.expect("volume");
    assert!(vol.volume_id.len() <= 128);
    assert_eq!(vol.accessible_topology[0].segments["topology.berth.csi.io/node"], "node-a");
    let again =
        t.ok("CreateVolume repeat", c.create_volume(create_req("pvc-1", 1 << 20)).await).volume.expect("volume");
    assert_eq!(again.volume_id, vol.volume_id);
    t.code(
        "CreateVolume same name, other size",
        c.create_volume(create_req("pvc-1", 2 << 20)).await,
        Code::AlreadyExists,
    );
    let id = vol.volume_id.clone();

    // ValidateVolumeCapabilities.
    let validate = |caps: Vec<pb::VolumeCapability>, id: &str| pb::ValidateVolumeCapabilitiesRequest {
        volume_id: id.to_string(),
        volume_capabilities: caps,
        ..Default::default()
    };
    t.code("Validate no id", c.validate_volume_capabilities(validate(vec![rwo()], "")).await, Code::InvalidArgument);
    t.code(
        "Validate no capabilities",
        c.validate_volume_capabilities(validate(vec![], &id)).await,
        Code::InvalidArgument,
    );
    t.code(
        "Validate unknown volume",
        c.validate_volume_capabilities(validate(vec![rwo()], "fake-vol-id-1")).await,
        Code::NotFound,
    );
    let ok = t.ok("Validate supported", c.validate_volume_capabilities(validate(vec![rwo()], &id)).await);
    assert!(ok.confirmed.is_some());
    let no = t.ok(
        "Validate RWX",
        c.validate_volume_capabilities(validate(vec![with_mode(Mode::MultiNodeMultiWriter)], &id)).await,
    );
    assert!(no.confirmed.is_none() && !no.message.is_empty());

    // ControllerPublish / Unpublish.
    let publish = |id: &str, node: &str, ro: bool| pb::ControllerPublishVolumeRequest {
        volume_id: id.to_string(),
        node_id: node.to_string(),
        volume_capability: Some(rwo()),
        readonly: ro,
        ..Default::default()
    };
    t.code(
        "Publish no volume id",
        c.controller_publish_volume(publish("", "node-a", false)).await,
        Code::InvalidArgument,
    );
    t.code("Publish no node id", c.controller_publish_volume(publish(&id, "", false)).await, Code::InvalidArgument);
    let mut r = publish(&id, "node-a", false);
    r.volume_capability = None;
    t.code("Publish no capability", c.controller_publish_volume(r).await, Code::InvalidArgument);
    t.code(
        "Publish unknown volume",
        c.controller_publish_volume(publish("fake-vol-id-1", "node-a", false)).await,
        Code::NotFound,
    );
    t.code(
        "Publish unknown node",
        c.controller_publish_volume(publish(&id, "some-fake-node-id", false)).await,
        Code::NotFound,
    );
    t.code("Publish", c.controller_publish_volume(publish(&id, "node-a", false)).await, Code::Ok);
    t.code("Publish repeat", c.controller_publish_volume(publish(&id, "node-a", false)).await, Code::Ok);
    t.code(
        "Publish readonly conflict",
        c.controller_publish_volume(publish(&id, "node-a", true)).await,
        Code::AlreadyExists,
    );
    let listed = t.ok("ListVolumes", c.list_volumes(pb::ListVolumesRequest::default()).await);
    let entry = listed.entries.iter().find(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id)).expect("listed");
    assert_eq!(entry.status.as_ref().expect("status").published_node_ids, vec!["node-a".to_string()]);
    t.code(
        "DeleteVolume while published",
        c.delete_volume(pb::DeleteVolumeRequest { volume_id: id.clone(), ..Default::default() }).await,
        Code::FailedPrecondition,
    );
    let unpublish = |id: &str| pb::ControllerUnpublishVolumeRequest {
        volume_id: id.to_string(),
        node_id: "node-a".into(),
        ..Default::default()
    };
    t.code("Unpublish no id", c.controller_unpublish_volume(unpublish("")).await, Code::InvalidArgument);
    t.code("Unpublish", c.controller_unpublish_volume(unpublish(&id)).await, Code::Ok);
    t.code("Unpublish repeat", c.controller_unpublish_volume(unpublish(&id)).await, Code::Ok);
    t.code("Unpublish unknown volume", c.controller_unpublish_volume(unpublish("fake-vol-id-1")).await, Code::Ok);

    // ListVolumes paging.
    for i in 0..4 {
        t.ok("CreateVolume for paging", c.create_volume(create_req(&format!("page-{i}"), 1 << 20)).await);
    }
    t.code(
        "ListVolumes negative max",
        c.list_volumes(pb::ListVolumesRequest { max_entries: -1, starting_token: String::new() }).await,
        Code::InvalidArgument,
    );
    t.code(
        "ListVolumes foreign token",
        c.list_volumes(pb::ListVolumesRequest { max_entries: 0, starting_token: "bogus".into() }).await,
        Code::Aborted,
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = t.ok(
            "ListVolumes page",
            c.list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: token.clone() }).await,
        );
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (6, 6), "six volumes, each listed once");

    // GetCapacity.
    let cap = t.ok("GetCapacity", c.get_capacity(pb::GetCapacityRequest::default()).await);
    assert!(cap.available_capacity > 0);
    let other = pb::GetCapacityRequest {
        accessible_topology: Some(pb::Topology {
            segments: [("topology.berth.csi.io/node".to_string(), "node-b".to_string())].into(),
        }),
        ..Default::default()
    };
    assert_eq!(t.ok("GetCapacity other node", c.get_capacity(other).await).available_capacity, 0);
    let rwx = pb::GetCapacityRequest {
        volume_capabilities: vec![with_mode(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    };
    assert_eq!(t.ok("GetCapacity RWX", c.get_capacity(rwx).await).available_capacity, 0);
    let bad =
        pb::GetCapacityRequest { parameters: [("colour".to_string(), "red".to_string())].into(), ..Default::default() };
    t.code("GetCapacity unknown parameter", c.get_capacity(bad).await, Code::InvalidArgument);

    // ControllerGetVolume.
    t.code(
        "GetVolume no id",
        c.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: String::new() }).await,
        Code::InvalidArgument,
    );
    t.code(
        "GetVolume unknown",
        c.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: "fake-vol-id-1".into() }).await,
        Code::NotFound,
    );
    let got =
        t.ok("GetVolume", c.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: id.clone() }).await);
    assert!(!got.status.expect("status").volume_condition.expect("condition").abnormal);

    // Snapshots.
    let snap_req = |src: &str, name: &str| pb::CreateSnapshotRequest {
        source_volume_id: src.to_string(),
        name: name.to_string(),
        ..Default::default()
    };
    t.code("CreateSnapshot no name", c.create_snapshot(snap_req(&id, "")).await, Code::InvalidArgument);
    t.code("CreateSnapshot no source", c.create_snapshot(snap_req("", "s")).await, Code::InvalidArgument);
    t.code("CreateSnapshot unknown source", c.create_snapshot(snap_req("fake-vol-id-1", "s")).await, Code::NotFound);
    let snap = t.ok("CreateSnapshot", c.create_snapshot(snap_req(&id, "snap-1")).await).snapshot.expect("snapshot");
    let again =
        t.ok("CreateSnapshot repeat", c.create_snapshot(snap_req(&id, "snap-1")).await).snapshot.expect("snapshot");
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let other_vol = seen.iter().find(|v| **v != id).expect("another volume").clone();
    t.code(
        "CreateSnapshot same name, other source",
        c.create_snapshot(snap_req(&other_vol, "snap-1")).await,
        Code::AlreadyExists,
    );
    t.code(
        "GetSnapshot no id",
        c.get_snapshot(pb::GetSnapshotRequest { snapshot_id: String::new(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    t.code(
        "GetSnapshot unknown",
        c.get_snapshot(pb::GetSnapshotRequest { snapshot_id: "fake-snap".into(), ..Default::default() }).await,
        Code::NotFound,
    );
    t.code(
        "GetSnapshot",
        c.get_snapshot(pb::GetSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() }).await,
        Code::Ok,
    );
    let list = |token: &str, snap_id: &str, src: &str| pb::ListSnapshotsRequest {
        max_entries: 0,
        starting_token: token.to_string(),
        source_volume_id: src.to_string(),
        snapshot_id: snap_id.to_string(),
        ..Default::default()
    };
    t.code("ListSnapshots foreign token", c.list_snapshots(list("bogus", "", "")).await, Code::Aborted);
    assert_eq!(t.ok("ListSnapshots by id", c.list_snapshots(list("", &snap.snapshot_id, "")).await).entries.len(), 1);
    assert_eq!(t.ok("ListSnapshots unknown id", c.list_snapshots(list("", "fake-snap", "")).await).entries.len(), 0);
    assert_eq!(t.ok("ListSnapshots by source", c.list_snapshots(list("", "", &id)).await).entries.len(), 1);
    assert_eq!(t.ok("ListSnapshots other source", c.list_snapshots(list("", "", &other_vol)).await).entries.len(), 0);
    let mut restore = create_req("restored", 1 << 20);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let restored = t.ok("CreateVolume from snapshot", c.create_volume(restore.clone()).await).volume.expect("volume");
    assert!(restored.content_source.is_some());
    t.code("CreateVolume from snapshot repeat", c.create_volume(restore).await, Code::Ok);
    let mut clone = create_req("restored", 1 << 20);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: id.clone(),
        })),
    });
    t.code("CreateVolume same name, other source", c.create_volume(clone).await, Code::AlreadyExists);
    t.code(
        "DeleteSnapshot no id",
        c.delete_snapshot(pb::DeleteSnapshotRequest::default()).await,
        Code::InvalidArgument,
    );
    let del_snap = pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
    t.code("DeleteSnapshot", c.delete_snapshot(del_snap.clone()).await, Code::Ok);
    t.code("DeleteSnapshot repeat", c.delete_snapshot(del_snap).await, Code::Ok);
    t.code(
        "DeleteSnapshot unknown",
        c.delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: "fake-snap".into(), ..Default::default() }).await,
        Code::Ok,
    );

    // ControllerExpandVolume.
    let expand = |id: &str, req: i64, lim: i64| pb::ControllerExpandVolumeRequest {
        volume_id: id.to_string(),
        capacity_range: Some(pb::CapacityRange { required_bytes: req, limit_bytes: lim }),
        ..Default::default()
    };
    t.code("Expand no id", c.controller_expand_volume(expand("", 1, 0)).await, Code::InvalidArgument);
    let mut r = expand(&id, 1, 0);
    r.capacity_range = None;
    t.code("Expand no range", c.controller_expand_volume(r).await, Code::InvalidArgument);
    t.code("Expand unknown", c.controller_expand_volume(expand("fake-vol-id-1", 2 << 20, 0)).await, Code::NotFound);
    t.code(
        "Expand limit below required",
        c.controller_expand_volume(expand(&id, 4 << 20, 2 << 20)).await,
        Code::OutOfRange,
    );
    let grown = t.ok("Expand", c.controller_expand_volume(expand(&id, 4 << 20, 0)).await);
    assert_eq!(grown.capacity_bytes, 4 << 20);
    let same = t.ok("Expand to a smaller size", c.controller_expand_volume(expand(&id, 1 << 20, 0)).await);
    assert_eq!(same.capacity_bytes, 4 << 20, "volumes never shrink");
    let modify = |id: &str, key: &str, value: &str| pb::ControllerModifyVolumeRequest {
        volume_id: id.to_string(),
        mutable_parameters: [(key.to_string(), value.to_string())].into(),
        ..Default::default()
    };
    // Only the keys a request names change anything: naming none changes nothing.
    t.code(
        "ModifyVolume naming nothing",
        c.controller_modify_volume(pb::ControllerModifyVolumeRequest { volume_id: id.clone(), ..Default::default() })
            .await,
        Code::Ok,
    );
    t.code(
        "ModifyVolume no id",
        c.controller_modify_volume(modify("", "compression", "zstd")).await,
        Code::InvalidArgument,
    );
    t.code(
        "ModifyVolume unknown",
        c.controller_modify_volume(modify("fake-vol-id-1", "compression", "zstd")).await,
        Code::NotFound,
    );
    t.code(
        "ModifyVolume unknown key",
        c.controller_modify_volume(modify(&id, "iops", "100")).await,
        Code::InvalidArgument,
    );

    // DeleteVolume.
    t.code("DeleteVolume no id", c.delete_volume(pb::DeleteVolumeRequest::default()).await, Code::InvalidArgument);
    t.code(
        "DeleteVolume unknown",
        c.delete_volume(pb::DeleteVolumeRequest { volume_id: "fake-vol-id-1".into(), ..Default::default() }).await,
        Code::Ok,
    );
    for v in seen.iter().chain([&restored.volume_id]) {
        let req = pb::DeleteVolumeRequest { volume_id: v.clone(), ..Default::default() };
        t.code("DeleteVolume", c.delete_volume(req.clone()).await, Code::Ok);
        t.code("DeleteVolume repeat", c.delete_volume(req).await, Code::Ok);
    }
    let left: Vec<_> = fs::read_dir(pool.join("volumes")).expect("ls").collect();
    assert!(left.is_empty(), "every volume directory is gone: {left:?}");
    assert_eq!(fs::read(&sentinel).expect("sentinel"), b"untouched");
    println!("conformance: identity+controller: {} cases, all codes matched", t.cases);
}

#[tokio::test]
async fn node_answers_every_spec_case() {
    let test = "node_answers_every_spec_case";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&scratch.path().join("state"), &pool, "auto"), "node-a", &[])
            .await;
    let mut t = Tally::default();
    let id = b
        .controller
        .create_volume(create_req("pvc-node", 1 << 20))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("vol")
        .volume_id;
    let root = scratch.path();
    let staging = root.join("staging");
    let pods = root.join("pods");
    fs::create_dir_all(&pods).expect("mkdir");
    let target = pods.join("t1");
    let n = &mut b.node;

    let info = t.ok("NodeGetInfo", n.node_get_info(pb::NodeGetInfoRequest {}).await);
    assert_eq!(info.node_id, "node-a");
    assert_eq!(info.accessible_topology.expect("topology").segments["topology.berth.csi.io/node"], "node-a");
    let caps = t.ok("NodeGetCapabilities", n.node_get_capabilities(pb::NodeGetCapabilitiesRequest {}).await);
    assert_eq!(caps.capabilities.len(), 5);

    let stage = |id: &str, path: &str, cap: Option<pb::VolumeCapability>| pb::NodeStageVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: path.to_string(),
        volume_capability: cap,
        ..Default::default()
    };
    let sp = staging.display().to_string();
    t.code("Stage no id", n.node_stage_volume(stage("", &sp, Some(rwo()))).await, Code::InvalidArgument);
    t.code("Stage no path", n.node_stage_volume(stage(&id, "", Some(rwo()))).await, Code::InvalidArgument);
    t.code("Stage no capability", n.node_stage_volume(stage(&id, &sp, None)).await, Code::InvalidArgument);
    t.code(
        "Stage relative path",
        n.node_stage_volume(stage(&id, "relative/dir", Some(rwo()))).await,
        Code::InvalidArgument,
    );
    t.code("Stage at /", n.node_stage_volume(stage(&id, "/", Some(rwo()))).await, Code::InvalidArgument);
    t.code(
        "Stage with ..",
        n.node_stage_volume(stage(&id, &format!("{sp}/../x"), Some(rwo()))).await,
        Code::InvalidArgument,
    );
    t.code("Stage unknown volume", n.node_stage_volume(stage("fake-vol-id-1", &sp, Some(rwo()))).await, Code::NotFound);
    assert!(!staging.exists(), "a failed stage leaves no staging directory behind");
    t.code("Stage raw block", n.node_stage_volume(stage(&id, &sp, Some(block_cap()))).await, Code::FailedPrecondition);
    t.code(
        "Stage RWX",
        n.node_stage_volume(stage(&id, &sp, Some(with_mode(Mode::MultiNodeMultiWriter)))).await,
        Code::FailedPrecondition,
    );
    t.code(
        "Stage disallowed flag",
        n.node_stage_volume(stage(&id, &sp, Some(flags_cap(&["remount"])))).await,
        Code::InvalidArgument,
    );
    t.code(
        "Stage option injection",
        n.node_stage_volume(stage(&id, &sp, Some(flags_cap(&["ro,exec"])))).await,
        Code::InvalidArgument,
    );
    let missing_parent = root.join("no/such/parent").display().to_string();
    t.code(
        "Stage under a missing parent",
        n.node_stage_volume(stage(&id, &missing_parent, Some(rwo()))).await,
        Code::NotFound,
    );
    let link = root.join("link-to-root");
    std::os::unix::fs::symlink("/", &link).expect("symlink");
    t.code(
        "Stage at a symlink to /",
        n.node_stage_volume(stage(&id, &link.display().to_string(), Some(rwo()))).await,
        Code::InvalidArgument,
    );
    for i in 0..10 {
        t.code(&format!("Stage #{i}"), n.node_stage_volume(stage(&id, &sp, Some(rwo()))).await, Code::Ok);
    }
    let other = b_create(&mut b.controller, "pvc-other").await;
    let n = &mut b.node;
    t.code(
        "Stage another volume at the same path",
        n.node_stage_volume(stage(&other, &sp, Some(rwo()))).await,
        Code::AlreadyExists,
    );

    let publish = |id: &str, staging: &str, target: &Path| pb::NodePublishVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: staging.to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwo()),
        ..Default::default()
    };
    t.code("Publish no id", n.node_publish_volume(publish("", &sp, &target)).await, Code::InvalidArgument);
    t.code("Publish no target", n.node_publish_volume(publish(&id, &sp, Path::new(""))).await, Code::InvalidArgument);
    let mut r = publish(&id, &sp, &target);
    r.volume_capability = None;
    t.code("Publish no capability", n.node_publish_volume(r).await, Code::InvalidArgument);
    t.code(
        "Publish unknown volume",
        n.node_publish_volume(publish("fake-vol-id-1", &sp, &target)).await,
        Code::NotFound,
    );
    t.code(
        "Publish without staging path",
        n.node_publish_volume(publish(&id, "", &target)).await,
        Code::FailedPrecondition,
    );
    let unstaged = root.join("not-staged");
    fs::create_dir_all(&unstaged).expect("mkdir");
    t.code(
        "Publish from a bare staging dir",
        n.node_publish_volume(publish(&id, &unstaged.display().to_string(), &target)).await,
        Code::FailedPrecondition,
    );
    let file_target = pods.join("a-file");
    fs::write(&file_target, b"").expect("file");
    t.code("Publish onto a file", n.node_publish_volume(publish(&id, &sp, &file_target)).await, Code::InvalidArgument);
    t.code("Publish onto a symlink to /", n.node_publish_volume(publish(&id, &sp, &link)).await, Code::InvalidArgument);
    t.code(
        "Publish onto /etc",
        n.node_publish_volume(publish(&id, &sp, Path::new("/etc"))).await,
        Code::InvalidArgument,
    );
    let full = pods.join("has-data");
    fs::create_dir_all(&full).expect("mkdir");
    fs::write(full.join("precious"), b"x").expect("write");
    t.code(
        "Publish onto a non-empty dir",
        n.node_publish_volume(publish(&id, &sp, &full)).await,
        Code::InvalidArgument,
    );
    assert_eq!(fs::read(full.join("precious")).expect("kept"), b"x");
    for i in 0..10 {
        t.code(&format!("Publish #{i}"), n.node_publish_volume(publish(&id, &sp, &target)).await, Code::Ok);
    }
    let mut ro = publish(&id, &sp, &target);
    ro.readonly = true;
    t.code("Publish same target, readonly differs", n.node_publish_volume(ro).await, Code::AlreadyExists);
    let mut single = publish(&id, &sp, &pods.join("t2"));
    single.volume_capability = Some(with_mode(Mode::SingleNodeSingleWriter));
    t.code("Publish single-writer second target", n.node_publish_volume(single).await, Code::FailedPrecondition);
    assert!(!pods.join("t2").exists(), "a failed publish removes the target directory it created");
    t.code(
        "Publish a second target (single-node-writer)",
        n.node_publish_volume(publish(&id, &sp, &pods.join("t3"))).await,
        Code::Ok,
    );

    let stats = |id: &str, path: &Path| pb::NodeGetVolumeStatsRequest {
        volume_id: id.to_string(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    };
    t.code("Stats no id", n.node_get_volume_stats(stats("", &target)).await, Code::InvalidArgument);
    t.code("Stats no path", n.node_get_volume_stats(stats(&id, Path::new(""))).await, Code::InvalidArgument);
    t.code("Stats missing path", n.node_get_volume_stats(stats(&id, &pods.join("nope"))).await, Code::NotFound);
    t.code("Stats relative path", n.node_get_volume_stats(stats(&id, Path::new("some/path"))).await, Code::NotFound);
    t.code(
        "Stats unknown volume, relative path",
        n.node_get_volume_stats(stats("fake-vol-id-1", Path::new("some/path"))).await,
        Code::NotFound,
    );
    t.code("Stats of another volume's path", n.node_get_volume_stats(stats(&other, &target)).await, Code::NotFound);
    t.code(
        "Stats unknown volume, a mount that is not berth's (nothing walked)",
        n.node_get_volume_stats(stats("fake-vol-id-1", Path::new("/sys"))).await,
        Code::NotFound,
    );
    t.code(
        "Stats unknown volume, unmounted path",
        n.node_get_volume_stats(stats("fake-vol-id-1", &pods)).await,
        Code::NotFound,
    );
    let s = t.ok("Stats", n.node_get_volume_stats(stats(&id, &target)).await);
    assert_eq!(s.usage[0].total, 1 << 20, "total is this volume's size");

    let expand = |id: &str, path: &Path| pb::NodeExpandVolumeRequest {
        volume_id: id.to_string(),
        volume_path: path.display().to_string(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 }),
        ..Default::default()
    };
    t.code("NodeExpand no id", n.node_expand_volume(expand("", &target)).await, Code::InvalidArgument);
    t.code("NodeExpand no path", n.node_expand_volume(expand(&id, Path::new(""))).await, Code::InvalidArgument);
    t.code("NodeExpand unknown volume", n.node_expand_volume(expand("fake-vol-id-1", &target)).await, Code::NotFound);
    t.code("NodeExpand missing path", n.node_expand_volume(expand(&id, &pods.join("nope"))).await, Code::NotFound);
    t.code(
        "NodeExpand relative path",
        n.node_expand_volume(expand("fake-vol-id-1", Path::new("some/path"))).await,
        Code::NotFound,
    );
    assert_eq!(t.ok("NodeExpand", n.node_expand_volume(expand(&id, &target)).await).capacity_bytes, 2 << 20);

    let unpublish = |id: &str, path: &Path| pb::NodeUnpublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: path.display().to_string(),
    };
    t.code("Unpublish no id", n.node_unpublish_volume(unpublish("", &target)).await, Code::InvalidArgument);
    t.code("Unpublish no target", n.node_unpublish_volume(unpublish(&id, Path::new(""))).await, Code::InvalidArgument);
    t.code("Unpublish a symlink", n.node_unpublish_volume(unpublish(&id, &link)).await, Code::InvalidArgument);
    let never = pods.join("never-mounted");
    fs::create_dir_all(&never).expect("mkdir");
    t.code("Unpublish a never-mounted dir", n.node_unpublish_volume(unpublish(&id, &never)).await, Code::Ok);
    assert!(!never.exists(), "the target is removed");
    t.code("Unpublish a missing path", n.node_unpublish_volume(unpublish(&id, &pods.join("gone"))).await, Code::Ok);
    for path in [&target, &pods.join("t3")] {
        for i in 0..10 {
            t.code(&format!("Unpublish #{i}"), n.node_unpublish_volume(unpublish(&id, path)).await, Code::Ok);
        }
        assert!(!path.exists());
    }
    let unstage = |id: &str, path: &str| pb::NodeUnstageVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: path.to_string(),
    };
    t.code("Unstage no id", n.node_unstage_volume(unstage("", &sp)).await, Code::InvalidArgument);
    t.code("Unstage no path", n.node_unstage_volume(unstage(&id, "")).await, Code::InvalidArgument);
    for i in 0..10 {
        t.code(&format!("Unstage #{i}"), n.node_unstage_volume(unstage(&id, &sp)).await, Code::Ok);
    }
    assert!(mounts_below(root).is_empty(), "no mount is left: {:?}", mounts_below(root));

    // A kubelet root reached through a symlink (moved to a data disk) works end to end.
    let real_root = root.join("data-disk/kubelet");
    fs::create_dir_all(real_root.join("pods")).expect("mkdir");
    let kubelet = root.join("kubelet-link");
    std::os::unix::fs::symlink(&real_root, &kubelet).expect("symlink");
    let (lsp, ltarget) = (kubelet.join("globalmount").display().to_string(), kubelet.join("pods/mount"));
    for _ in 0..2 {
        t.code("Stage via a symlinked root", n.node_stage_volume(stage(&id, &lsp, Some(rwo()))).await, Code::Ok);
        t.code("Publish via a symlinked root", n.node_publish_volume(publish(&id, &lsp, &ltarget)).await, Code::Ok);
    }
    t.code("Stats via a symlinked root", n.node_get_volume_stats(stats(&id, &ltarget)).await, Code::Ok);
    t.code("Unpublish via a symlinked root", n.node_unpublish_volume(unpublish(&id, &ltarget)).await, Code::Ok);
    t.code("Unstage via a symlinked root", n.node_unstage_volume(unstage(&id, &lsp)).await, Code::Ok);
    assert!(mounts_below(root).is_empty(), "no mount is left: {:?}", mounts_below(root));
    assert!(!real_root.join("globalmount").exists() && !real_root.join("pods/mount").exists());
    assert!(fs::read_link(&link).is_ok(), "the symlink was not followed or removed");
    println!("conformance: node: {} cases, all codes matched", t.cases);
}

async fn b_create(c: &mut pb::controller_client::ControllerClient<tonic::transport::Channel>, name: &str) -> String {
    c.create_volume(create_req(name, 1 << 20)).await.expect("create").into_inner().volume.expect("vol").volume_id
}
