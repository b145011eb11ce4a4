//! The storage workflows users try first, run end to end against the real berth binaries
//! through the Kubernetes harness in `tests/kube` (docs/harness.md). Each test prints one
//! line, `workflow N: <what it verified>`; parts that cannot run here (no NFS server, no
//! kernel NFS client) print `SKIPPED: <test>/<part>: <reason>` instead, and the rest runs.
//!
//! "The pod writes" means the test writes through the pod's publish target, which is what a
//! container sees at its mount point.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kube;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth::csi::pb;
use berth::engine::TOPOLOGY_KEY;
use kube::*;

const MIB: u64 = 1 << 20;

/// Whether this kernel can mount NFS (`/proc/filesystems` lists nfs or nfs4).
fn kernel_nfs() -> bool {
    fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| matches!(l.split_whitespace().last(), Some("nfs" | "nfs4")))
}

/// A ganesha export for a workflow's NFS part, in its own scratch directory (kept alive
/// with the server). `None`, with a SKIPPED line for `part`, when ganesha cannot run here.
fn start_nfs_server(part: &str) -> Option<(common::Scratch, common::ganesha::Ganesha)> {
    if !common::require_root(part) {
        return None;
    }
    let scratch = common::Scratch::new();
    let g = common::ganesha::Ganesha::start(scratch.path(), part)?;
    Some((scratch, g))
}

/// What the NFS node plugins have mounted below a node's kubelet root.
fn nfs_mounts(k: &Cluster, node: &str) -> Vec<berth::mount::mountinfo::MountEntry> {
    common::mounts_below(&k.node(node).kubelet_root).into_iter().filter(|m| m.fs_type.starts_with("nfs")).collect()
}

/// Writes `mib` MiB to `path`, 1 MiB at a time with fsync, so a quota stops it promptly.
fn write_mib(path: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    let chunk = vec![0x5au8; MIB as usize];
    for _ in 0..mib {
        f.write_all(&chunk)?;
        f.sync_all()?;
    }
    Ok(())
}

/// Writes `text` to `path` and fsyncs it, as an application that cares about its data does.
fn write_synced(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write");
    f.sync_all().expect("fsync");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_mounted(path: &Path) -> bool {
    common::mounts_below(path).iter().any(|m| m.mount_point == path)
}

/// The IDs of the volumes berth on `node` reports (ListVolumes).
async fn volumes_on(k: &Cluster, node: &str) -> Vec<String> {
    let mut controller = k.node(node).berth.controller.clone();
    let listed = controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("ListVolumes").into_inner();
    listed.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id).collect()
}

/// The directory in `node`'s pool that holds the volume with `handle`.
fn data_dir(k: &Cluster, node: &str, handle: &str) -> PathBuf {
    let key = handle.rsplit(':').next().expect("volume key");
    k.node(node).pool.join("volumes").join(key)
}

/// Entries in the pool's volumes directory of `node`.
fn pool_volume_dirs(k: &Cluster, node: &str) -> usize {
    fs::read_dir(k.node(node).pool.join("volumes")).map_or(0, std::iter::Iterator::count)
}

fn quota_error(result: std::io::Result<()>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EDQUOT) || e.raw_os_error() == Some(libc::ENOSPC))
}

#[tokio::test]
async fn workflow_1_dynamic_provisioning() {
    let test = "workflow_1_dynamic_provisioning";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a", "node-b"])).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER).mount_options(&["noexec", "nodev"])).await;

    k.create_pvc(Pvc::new("data", "berth-local", 16 * MIB)).await;
    assert_eq!(k.pvc("data").phase, ClaimPhase::Pending, "WaitForFirstConsumer: nothing happens before a pod");
    for node in ["node-a", "node-b"] {
        assert!(volumes_on(&k, node).await.is_empty(), "no volume before the pod is scheduled");
    }

    k.create_pod(Pod::new("app").claim("data", "data")).await;
    let node = k.running("app").node.clone().expect("scheduled");
    let other = if node == "node-a" { "node-b" } else { "node-a" };
    let pvc = k.pvc("data").clone();
    assert_eq!(pvc.phase, ClaimPhase::Bound);
    assert_eq!(pvc.selected_node.as_deref(), Some(node.as_str()));
    assert_eq!(pvc.capacity, 16 * MIB);
    let pv = k.pv_of("data").clone();
    assert_eq!(pv.name, format!("pvc-{}", pvc.uid), "csi-provisioner names volumes pvc-<claim uid>");
    assert_eq!(k.node_of_pv(&pv).as_deref(), Some(node.as_str()), "PV node affinity names the selected node");
    assert_eq!(volumes_on(&k, &node).await, vec![pv.handle.clone()]);
    assert!(volumes_on(&k, other).await.is_empty(), "nothing provisioned on {other}");

    let staging = k.staging_path(&node, "data");
    let target = k.volume_path("app", "data");
    let root = &k.node(&node).kubelet_root;
    assert!(staging.starts_with(root.join("plugins/kubernetes.io/csi").join(DRIVER)), "{}", staging.display());
    assert!(target.ends_with(format!("volumes/kubernetes.io~csi/{}/mount", pv.name)), "{}", target.display());
    assert!(is_mounted(&staging) && is_mounted(&target), "staged once, published for the pod");
    let options = common::mounts_below(&target).pop().expect("target mount").options;
    assert!(options.contains("noexec") && options.contains("nodev"), "class mountOptions apply: {options}");
    write_synced(&target.join("greeting"), "hello from app");
    write_mib(&target.join("blob"), 4).expect("4 MiB fit in 16 MiB");
    assert_eq!(read(&data_dir(&k, &node, &pv.handle).join("greeting")), "hello from app", "on the node's disk");

    k.delete_pod("app").await;
    assert!(!target.exists(), "NodeUnpublish removed the target");
    assert!(!is_mounted(&staging) && !staging.exists(), "the last pod left: NodeUnstage");
    assert_eq!(volumes_on(&k, &node).await, vec![pv.handle.clone()], "the volume outlives the pod");

    k.create_pod(Pod::new("app").claim("data", "data")).await;
    let again = k.running("app").clone();
    assert_eq!(again.node.as_deref(), Some(node.as_str()), "the new pod follows the volume to {node}");
    let target2 = k.volume_path("app", "data");
    assert_ne!(target2, target, "a new pod UID, a new publish path");
    assert_eq!(read(&target2.join("greeting")), "hello from app");
    assert_eq!(fs::metadata(target2.join("blob")).expect("blob").len(), 4 * MIB);

    k.delete_pod("app").await;
    k.delete_pvc("data").await;
    assert!(k.pvs.is_empty() && volumes_on(&k, &node).await.is_empty(), "reclaim Delete removed the volume");
    println!(
        "workflow 1: claim provisioned only once its pod was scheduled, on that node ({node}) and not on {other}; \
         the pod's 4 MiB and greeting survived pod deletion (unpublish, unstage) and came back to a recreated pod"
    );
}

#[tokio::test]
async fn workflow_2_static_provisioning() {
    let test = "workflow_2_static_provisioning";
    let part = format!("{test}/nfs-export");
    let server = start_nfs_server(&part);
    let mut spec = ClusterSpec::btrfs_nodes(&["node-a"]);
    if let Some((_, g)) = &server {
        spec = spec.with_nfs(NfsSpec::on(g, &[("shared", "")]));
    }
    let Some(mut k) = Cluster::start(test, spec).await else { return };
    // The administrator prepares content in the pool, plus things that must stay out of reach.
    let pool = k.node("node-a").pool.clone();
    fs::create_dir_all(pool.join("exports/site")).expect("mkdir");
    fs::create_dir_all(pool.join("exports/private")).expect("mkdir");
    fs::write(pool.join("exports/site/index.html"), "<h1>static</h1>").expect("write");
    fs::write(pool.join("exports/private/secret.txt"), "do not serve").expect("write");
    std::os::unix::fs::symlink("../private/secret.txt", pool.join("exports/site/peek")).expect("symlink");
    std::os::unix::fs::symlink("/etc", pool.join("exports/etc-link")).expect("symlink");

    let static_pv = |name: &str, sub_path: &str| {
        Pv::new(name, DRIVER, &format!("static-{name}"), 64 * MIB)
            .attribute("subPath", sub_path)
            .node_affinity(TOPOLOGY_KEY, "node-a")
    };
    k.create_pv(static_pv("site", "exports/site")).await;
    k.create_pvc(Pvc::new("site", "", 64 * MIB).volume_name("site")).await;
    assert_eq!(k.pvc("site").phase, ClaimPhase::Bound);
    assert_eq!(k.pv("site").phase, VolumePhase::Bound);

    k.create_pod(Pod::new("web").claim("html", "site")).await;
    let target = k.volume_path("web", "html");
    assert_eq!(read(&target.join("index.html")), "<h1>static</h1>");
    write_synced(&target.join("visits"), "1");
    assert_eq!(read(&pool.join("exports/site/visits")), "1", "the pod writes into the admin's directory");
    let mut names: Vec<String> =
        fs::read_dir(&target).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, ["index.html", "peek", "visits"], "the pod sees exactly the directory");
    assert!(fs::read(target.join("peek")).is_err(), "a symlink out of the directory leads nowhere from the pod");

    // PVs that try to reach outside the pool or through a symlink mount nothing.
    for (pv, sub_path) in [("dotdot", "exports/../../.."), ("linked", "exports/etc-link")] {
        k.create_pv(static_pv(pv, sub_path)).await;
        k.create_pvc(Pvc::new(pv, "", 64 * MIB).volume_name(pv)).await;
        k.create_pod(Pod::new(&format!("evil-{pv}")).claim("x", pv)).await;
        match &k.pod(&format!("evil-{pv}")).phase {
            PodPhase::ContainerCreating(e) => assert!(e.contains("InvalidArgument"), "{pv}: {e}"),
            other => panic!("{pv}: a pod with subPath {sub_path:?} must not start: {other:?}"),
        }
    }
    let mounts = common::mounts_below(&k.node("node-a").kubelet_root);
    assert_eq!(mounts.len(), 2, "only web's staging and publish mounts: {mounts:#?}");

    let nfs = match &server {
        Some((_, g)) => static_nfs(&mut k, g, test).await,
        None => "the NFS part was skipped (no NFS server)".to_string(),
    };

    for pod in ["web", "evil-dotdot", "evil-linked"] {
        k.delete_pod(pod).await;
    }
    k.delete_pvc("site").await;
    assert_eq!(k.pv("site").phase, VolumePhase::Released, "Retain: the PV stays");
    assert_eq!(read(&pool.join("exports/site/visits")), "1", "the directory and its data stay");
    assert!(common::mounts_below(&k.node("node-a").kubelet_root).is_empty());
    println!(
        "workflow 2: an admin PV naming pool directory exports/site was bound to its claim and mounted read-write; \
         the pod saw only that directory, PVs with a ../ or symlinked subPath mounted nothing (INVALID_ARGUMENT), \
         and the data stayed after the claim was deleted; {nfs}"
    );
}

/// Workflow 2's NFS part: an administrator's PV naming a directory of the export
/// (`server`, `export`, `subDir`). Hostile subDir values are refused at NodeStage before any
/// mount; the real mount runs only where the kernel has an NFS client.
async fn static_nfs(k: &mut Cluster, g: &common::ganesha::Ganesha, test: &str) -> String {
    let export = g.export.display().to_string();
    fs::create_dir_all(g.export.join("sites/blog")).expect("mkdir");
    fs::create_dir_all(g.export.join("sites/private")).expect("mkdir");
    fs::write(g.export.join("sites/blog/index.html"), "<h1>nfs</h1>").expect("write");
    fs::write(g.export.join("sites/private/secret.txt"), "do not serve").expect("write");
    let static_pv = |name: &str, sub_dir: &str| {
        let mut pv = Pv::new(name, NFS_DRIVER, &format!("static-{name}"), 64 * MIB)
            .attribute("server", "127.0.0.1")
            .attribute("export", &export)
            .attribute("subDir", sub_dir);
        pv.access_modes = vec![AccessMode::ReadWriteMany];
        pv
    };
    let claim = |name: &str| Pvc::new(name, "", 64 * MIB).access(&[AccessMode::ReadWriteMany]).volume_name(name);

    // The CSIDriver says attachRequired, so csi-attacher calls ControllerPublishVolume for
    // the static PV first: the central controller accepts a static volume by its validated
    // attributes for a node that registered with the pool (it keeps no record of it).
    k.create_pv(static_pv("blog", "sites/blog")).await;
    k.create_pvc(claim("blog")).await;
    assert_eq!((k.pvc("blog").phase, k.pv("blog").phase.clone()), (ClaimPhase::Bound, VolumePhase::Bound));
    k.create_pod(Pod::new("blog").claim("html", "blog")).await;
    assert!(
        !matches!(&k.pod("blog").phase, PodPhase::ContainerCreating(e) if e.contains("ControllerPublishVolume")),
        "the static NFS PV must attach: {:?}",
        k.pod("blog").phase
    );

    // Hostile subDir values: the node plugin refuses them before mounting anything.
    let hostile = [("nfs-up", "../.."), ("nfs-abs", "/etc"), ("nfs-records", ".berth"), ("nfs-sneak", "sites/../..")];
    let mut refused_at = std::collections::BTreeSet::new();
    for (name, sub_dir) in hostile {
        k.create_pv(static_pv(name, sub_dir)).await;
        k.create_pvc(claim(name)).await;
        assert_eq!(k.pvc(name).phase, ClaimPhase::Bound);
        k.create_pod(Pod::new(&format!("evil-{name}")).claim("x", name)).await;
        match &k.pod(&format!("evil-{name}")).phase {
            PodPhase::ContainerCreating(e) => {
                assert!(e.contains("InvalidArgument"), "{name}: {e}");
                refused_at.insert(if e.contains("ControllerPublishVolume") {
                    "ControllerPublishVolume"
                } else {
                    "NodeStage"
                });
            }
            other => panic!("{name}: a pod with subDir {sub_dir:?} must not start: {other:?}"),
        }
        assert!(nfs_mounts(k, "node-a").is_empty(), "{name}: nothing mounted");
        let staging = k.staging_path("node-a", name);
        assert!(!staging.exists(), "{name}: the kubelet removed its staging directory after a final error");
    }

    let mounted = if kernel_nfs() {
        let target = k.volume_path("blog", "html");
        assert_eq!(read(&target.join("index.html")), "<h1>nfs</h1>");
        write_synced(&target.join("visits"), "1");
        assert_eq!(read(&g.export.join("sites/blog/visits")), "1", "the pod writes into the admin's directory");
        assert_eq!(names_in(&target), ["index.html", "visits"], "the pod sees exactly the directory");
        "the admin's PV for sites/blog was mounted and the pod saw exactly that directory"
    } else {
        match &k.pod("blog").phase {
            PodPhase::ContainerCreating(e) => {
                assert!(e.contains("NodeStageVolume: FailedPrecondition") && e.contains("NFS client"), "{e}");
            }
            other => panic!("the NFS pod cannot run without a kernel NFS client: {other:?}"),
        }
        println!("SKIPPED: {test}/nfs-export-mount: kernel has no NFS client");
        "the admin's PV for sites/blog was bound and accepted up to NodeStage, which answered FAILED_PRECONDITION \
         (no kernel NFS client; mount part skipped)"
    };
    for pod in ["blog", "evil-nfs-up", "evil-nfs-abs", "evil-nfs-records", "evil-nfs-sneak"] {
        k.delete_pod(pod).await;
    }
    k.delete_pvc("blog").await;
    assert_eq!(k.pv("blog").phase, VolumePhase::Released, "Retain: the PV stays");
    assert_eq!(read(&g.export.join("sites/blog/index.html")), "<h1>nfs</h1>", "the export's data stays");
    assert!(nfs_mounts(k, "node-a").is_empty());
    let refused: Vec<_> = refused_at.into_iter().collect();
    format!(
        "NFS: the admin's static PV was attached (ControllerPublishVolume by its attributes); PVs whose subDir was \
         ../.., /etc, .berth or sites/../.. were refused at {} (INVALID_ARGUMENT) with nothing mounted; {mounted}; \
         the data stayed after the claim was deleted",
        refused.join(" and ")
    )
}

#[tokio::test]
async fn workflow_3_reclaim_delete_and_retain() {
    let test = "workflow_3_reclaim_delete_and_retain";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a"])).await else { return };
    k.create_class(StorageClass::new("standard", DRIVER).binding(Binding::Immediate)).await;
    k.create_class(StorageClass::new("premium", DRIVER).reclaim(Reclaim::Retain)).await;

    k.create_pvc(Pvc::new("scratch", "standard", 16 * MIB)).await;
    assert_eq!(k.pvc("scratch").phase, ClaimPhase::Bound, "Immediate: provisioned before any pod");
    k.create_pvc(Pvc::new("records", "premium", 16 * MIB)).await;
    k.create_pod(Pod::new("app").claim("scratch", "scratch").claim("records", "records")).await;
    write_synced(&k.volume_path("app", "scratch").join("tmp"), "temporary");
    write_synced(&k.volume_path("app", "records").join("ledger"), "balance=42");
    let scratch_pv = k.pv_of("scratch").clone();
    let records_pv = k.pv_of("records").clone();
    let scratch_dir = data_dir(&k, "node-a", &scratch_pv.handle);
    let records_dir = data_dir(&k, "node-a", &records_pv.handle);
    assert!(scratch_dir.join("tmp").exists() && records_dir.join("ledger").exists());

    k.delete_pvc("scratch").await;
    k.delete_pvc("records").await;
    assert!(k.pvc("scratch").terminating && k.pvcs.contains_key("records"), "pvc-protection while the pod runs");
    assert_eq!(read(&k.volume_path("app", "scratch").join("tmp")), "temporary", "the running pod keeps its data");

    k.delete_pod("app").await;
    assert!(!k.pvcs.contains_key("scratch") && !k.pvcs.contains_key("records"));
    assert!(!k.pvs.contains_key(&scratch_pv.name), "standard: the PV is deleted");
    assert!(!scratch_dir.exists(), "standard: DeleteVolume removed the data");
    assert_eq!(k.pv(&records_pv.name).phase, VolumePhase::Released, "premium: the PV stays, Released");
    assert_eq!(read(&records_dir.join("ledger")), "balance=42", "premium: the data stays");
    assert_eq!(volumes_on(&k, "node-a").await, vec![records_pv.handle.clone()]);

    // The administrator hands the retained volume to a new claim; the data is all there.
    k.make_available(&records_pv.name).await;
    k.create_pvc(Pvc::new("records-restored", "premium", 16 * MIB).volume_name(&records_pv.name)).await;
    assert_eq!(k.pvc("records-restored").phase, ClaimPhase::Bound);
    k.create_pod(Pod::new("auditor").claim("records", "records-restored")).await;
    assert_eq!(read(&k.volume_path("auditor", "records").join("ledger")), "balance=42");
    k.delete_pod("auditor").await;
    println!(
        "workflow 3: deleting the claims (held by pvc-protection until the pod left) removed the standard \
         (Delete) volume and its data from the pool, and kept the premium (Retain) PV Released with its data, \
         which a new claim bound to it read back"
    );
}

#[tokio::test]
async fn workflow_4_statefulset() {
    let test = "workflow_4_statefulset";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a", "node-b"])).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;
    k.create_statefulset(StatefulSet {
        name: "web".into(),
        replicas: 3,
        template: ("data".into(), "berth-local".into(), 16 * MIB),
    })
    .await;
    let mut homes = Vec::new();
    for i in 0..3 {
        let pod = format!("web-{i}");
        let node = k.running(&pod).node.clone().expect("node");
        write_synced(&k.volume_path(&pod, "data").join("identity"), &pod);
        homes.push(node);
    }
    assert!(homes.contains(&"node-a".to_string()) && homes.contains(&"node-b".to_string()), "{homes:?}");

    k.scale_statefulset("web", 1).await;
    assert!(k.pods.contains_key("web-0") && !k.pods.contains_key("web-1") && !k.pods.contains_key("web-2"));
    for (i, home) in homes.iter().enumerate().skip(1) {
        let claim = format!("data-web-{i}");
        assert_eq!(k.pvc(&claim).phase, ClaimPhase::Bound, "{claim} stays after scale-down");
        let pv = k.pv_of(&claim).clone();
        assert!(volumes_on(&k, home).await.contains(&pv.handle));
        assert_eq!(read(&data_dir(&k, home, &pv.handle).join("identity")), format!("web-{i}"));
    }

    k.scale_statefulset("web", 3).await;
    for (i, home) in homes.iter().enumerate() {
        let pod = format!("web-{i}");
        assert_eq!(k.running(&pod).node.as_ref(), Some(home), "{pod} goes back to its volume's node");
        assert_eq!(read(&k.volume_path(&pod, "data").join("identity")), pod, "{pod} finds its own data");
    }

    let old_uid = k.pod("web-1").uid.clone();
    k.delete_pod("web-1").await;
    let reborn = k.running("web-1").clone();
    assert_ne!(reborn.uid, old_uid, "the StatefulSet controller made a new pod");
    assert_eq!(read(&k.volume_path("web-1", "data").join("identity")), "web-1");
    println!(
        "workflow 4: StatefulSet web got one volume per replica (on {homes:?}); scaling to 1 kept the other claims \
         and their data; scaling back to 3 gave each pod its own identity file; a deleted pod came back to its data"
    );
}

#[tokio::test]
async fn workflow_5_snapshot_drill() {
    let test = "workflow_5_snapshot_drill";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a"])).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;
    k.create_pvc(Pvc::new("counter", "berth-local", 16 * MIB)).await;
    k.create_pod(Pod::new("writer").claim("data", "counter")).await;
    let counter = k.volume_path("writer", "data").join("counter");
    for i in 1..=200 {
        write_synced(&counter, &i.to_string());
        if i == 100 {
            k.create_snapshot("at-100", "counter").await;
            let snap = k.snapshot("at-100");
            assert!(snap.ready && snap.error.is_empty(), "{snap:?}");
        }
    }
    let snap = k.snapshot("at-100").clone();
    assert!(snap.restore_size <= 16 * MIB, "{snap:?}");

    k.create_pvc(Pvc::new("restored", "berth-local", 16 * MIB).restore("at-100")).await;
    k.create_pvc(Pvc::new("cloned", "berth-local", 16 * MIB).clone_of("counter")).await;
    k.create_pod(Pod::new("reader").claim("data", "restored").claim("clone", "cloned")).await;
    let restored = k.volume_path("reader", "data").join("counter");
    assert_eq!(read(&restored), "100", "the restore shows the counter at the snapshot");
    assert_eq!(read(&counter), "200", "the original went on to 200");
    assert_eq!(read(&k.volume_path("reader", "clone").join("counter")), "200", "a clone copies the present");
    write_synced(&restored, "999");
    assert_eq!(read(&counter), "200", "the restored volume is independent");

    // The source claim goes (reclaim Delete); the snapshot still restores.
    k.delete_pod("writer").await;
    k.delete_pvc("counter").await;
    k.create_pvc(Pvc::new("second-restore", "berth-local", 32 * MIB).restore("at-100")).await;
    k.create_pod(Pod::new("auditor").claim("data", "second-restore")).await;
    assert_eq!(read(&k.volume_path("auditor", "data").join("counter")), "100", "snapshots outlive their source");
    assert_eq!(k.volume_size("auditor", "data").await, (32 * MIB) as i64, "a restore may be larger");

    k.delete_snapshot("at-100").await;
    let mut controller = k.node("node-a").berth.controller.clone();
    let left = controller.list_snapshots(pb::ListSnapshotsRequest::default()).await.expect("ListSnapshots");
    assert!(left.into_inner().entries.is_empty(), "DeleteSnapshot removed it");
    assert_eq!(read(&k.volume_path("reader", "data").join("counter")), "999", "restores outlive their snapshot");
    println!(
        "workflow 5: a VolumeSnapshot taken at counter 100 restored to a new claim showing exactly 100 while the \
         original showed 200; a clone showed 200; the restore was independent, the snapshot restored again (into \
         32 MiB) after its source claim was deleted, and restores outlived the snapshot"
    );
}

#[tokio::test]
async fn workflow_6_online_expansion() {
    let test = "workflow_6_online_expansion";
    let mut spec = ClusterSpec::btrfs_nodes(&["node-a"]);
    spec.central_controller = true;
    let Some(mut k) = Cluster::start(test, spec).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;
    k.create_pvc(Pvc::new("grow", "berth-local", 16 * MIB)).await;
    k.create_pod(Pod::new("app").claim("data", "grow")).await;
    let dir = k.volume_path("app", "data");
    assert_eq!(k.volume_size("app", "data").await, (16 * MIB) as i64);
    write_mib(&dir.join("base"), 8).expect("8 MiB fit in 16 MiB");
    assert!(quota_error(write_mib(&dir.join("big"), 24)), "24 MiB more do not fit in 16 MiB");
    fs::remove_file(dir.join("big")).expect("rm");

    // The pod keeps writing while the claim grows.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, writes, log) = (stop.clone(), writes.clone(), dir.join("log"));
        std::thread::spawn(move || -> std::io::Result<()> {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write_mib(&log, 1)?;
                writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        })
    };
    let count = || writes.load(std::sync::atomic::Ordering::SeqCst);
    while count() < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = count();
    k.resize_pvc("grow", 48 * MIB).await.expect("resize");
    let during = count();
    while count() < during + 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer thread").expect("the pod's writes never failed during the expansion");

    let pvc = k.pvc("grow");
    assert!(!pvc.resize_pending, "the kubelet finished the expansion");
    assert_eq!((pvc.capacity, k.pv_of("grow").capacity), (48 * MIB, 48 * MIB), "claim and PV show 48 MiB");
    assert_eq!(k.volume_size("app", "data").await, (48 * MIB) as i64, "the pod sees 48 MiB");
    write_mib(&dir.join("big"), 24).expect("24 MiB more fit in 48 MiB");
    assert!(quota_error(write_mib(&dir.join("bigger"), 24)), "another 24 MiB do not fit in 48 MiB");
    fs::remove_file(dir.join("bigger")).expect("rm");

    // Offline: the claim grows while no pod uses it; the kubelet expands it at the next mount.
    k.delete_pod("app").await;
    k.resize_pvc("grow", 64 * MIB).await.expect("resize");
    assert!(k.pvc("grow").resize_pending, "FileSystemResizePending until a node mounts it");
    assert_eq!(k.pvc("grow").capacity, 48 * MIB);
    k.create_pod(Pod::new("app").claim("data", "grow")).await;
    assert!(!k.pvc("grow").resize_pending && k.pvc("grow").capacity == 64 * MIB, "expanded at mount");
    assert_eq!(k.volume_size("app", "data").await, (64 * MIB) as i64);
    write_mib(&k.volume_path("app", "data").join("bigger"), 24).expect("24 MiB more fit in 64 MiB");
    println!(
        "workflow 6: a 16 MiB claim grew to 48 MiB (csi-resizer → central ControllerExpandVolume → kubelet \
         NodeExpandVolume) while the pod kept writing ({} writes, none failed, {before} before); the pod saw \
         48 MiB and the quota moved from 16 MiB to 48 MiB; grown again to 64 MiB with no pod, it was expanded \
         at the next mount (NodeExpandVolume after NodeStage)",
        count()
    );
}

#[tokio::test]
async fn workflow_7_access_modes() {
    let test = "workflow_7_access_modes";
    let rwx = format!("{test}/rwx-nfs");
    // Declared before the cluster, so the cluster (and its mounts) goes first.
    let server = start_nfs_server(&rwx);
    let mut spec = ClusterSpec::btrfs_nodes(&["node-a", "node-b"]);
    if let Some((_, g)) = &server {
        spec = spec.with_nfs(NfsSpec::on(g, &[("shared", ""), ("keep", "onDelete: archive")]));
    }
    let Some(mut k) = Cluster::start(test, spec).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;

    // ReadWriteOncePod: one pod, whatever the node.
    k.create_pvc(Pvc::new("solo", "berth-local", 16 * MIB).access(&[AccessMode::ReadWriteOncePod])).await;
    k.create_pod(Pod::new("solo-1").claim("data", "solo")).await;
    let home = k.running("solo-1").node.clone().expect("node");
    k.create_pod(Pod::new("solo-2").claim("data", "solo")).await;
    assert!(matches!(&k.pod("solo-2").phase, PodPhase::Pending(r) if r.contains("ReadWriteOncePod")));
    k.create_pod(Pod::new("solo-3").claim("data", "solo").node_name(&home)).await;
    match &k.pod("solo-3").phase {
        PodPhase::ContainerCreating(e) => assert!(e.contains("NodePublishVolume: FailedPrecondition"), "{e}"),
        other => panic!("a second RWOP pod that bypassed the scheduler must not start: {other:?}"),
    }
    k.delete_pod("solo-1").await;
    k.running("solo-3");
    assert!(matches!(k.pod("solo-2").phase, PodPhase::Pending(_)), "solo-3 holds the claim now");
    for pod in ["solo-2", "solo-3"] {
        k.delete_pod(pod).await;
    }

    // ReadWriteOnce: pods of one node share it; other nodes cannot have it.
    k.create_pvc(Pvc::new("shared", "berth-local", 16 * MIB)).await;
    k.create_pod(Pod::new("rwo-1").claim("data", "shared")).await;
    let home = k.running("rwo-1").node.clone().expect("node");
    let away = if home == "node-a" { "node-b" } else { "node-a" };
    write_synced(&k.volume_path("rwo-1", "data").join("note"), "from rwo-1");
    k.create_pod(Pod::new("rwo-2").claim("data", "shared")).await;
    assert_eq!(k.running("rwo-2").node.as_deref(), Some(home.as_str()));
    assert_eq!(read(&k.volume_path("rwo-2", "data").join("note")), "from rwo-1", "two pods, one node, one volume");
    k.create_pod(Pod::new("rwo-3").claim("data", "shared").on_node(away)).await;
    assert!(matches!(&k.pod("rwo-3").phase, PodPhase::Pending(r) if r.contains("volume node affinity conflict")));
    k.create_pod(Pod::new("rwo-4").claim("data", "shared").node_name(away)).await;
    match &k.pod("rwo-4").phase {
        PodPhase::ContainerCreating(e) => assert!(e.contains("NodeStageVolume: NotFound"), "{e}"),
        other => panic!("a pod forced onto {away} must not get the volume: {other:?}"),
    }
    assert!(common::mounts_below(&k.node(away).kubelet_root).is_empty(), "nothing mounted on {away}");
    // What csi-attacher would meet for a CSIDriver with attachRequired: the controller of
    // the volume's node has never seen the other node.
    let pv = k.pv_of("shared").clone();
    let err = k.attach(&pv, away).await.expect_err("ControllerPublishVolume to the wrong node");
    assert!(err.contains("ControllerPublishVolume: NotFound") && err.contains(away), "{err}");

    // ReadOnlyMany cannot be provisioned on node-local storage; read-only mounts cannot write.
    k.create_pvc(Pvc::new("rox", "berth-local", 16 * MIB).access(&[AccessMode::ReadOnlyMany])).await;
    k.create_pod(Pod::new("rox-1").claim("data", "rox")).await;
    assert_eq!(k.pvc("rox").phase, ClaimPhase::Pending);
    assert!(k.pvc("rox").last_event().contains("CreateVolume: InvalidArgument"), "{:?}", k.pvc("rox").events);
    assert!(matches!(k.pod("rox-1").phase, PodPhase::Pending(_)));
    k.create_pod(Pod::new("reader").claim_read_only("data", "shared")).await;
    let ro = k.volume_path("reader", "data");
    assert_eq!(read(&ro.join("note")), "from rwo-1");
    let denied = fs::write(ro.join("note"), "overwrite").expect_err("a read-only mount refuses writes");
    assert_eq!(denied.raw_os_error(), Some(libc::EROFS), "{denied}");
    write_synced(&k.volume_path("rwo-1", "data").join("note"), "still writable");
    assert_eq!(read(&ro.join("note")), "still writable", "the reader sees the writer's data");
    let nfs = match &server {
        Some((_, g)) => rwx_on_nfs(&mut k, g, test).await,
        None => "RWX on NFS skipped (no NFS server)".to_string(),
    };
    println!(
        "workflow 7: RWOP: a second pod was unschedulable and one that bypassed the scheduler was refused by \
         NodePublish until the first left; RWO: two pods on {home} shared the volume while {away} was refused by the \
         scheduler (node affinity), NodeStage (NOT_FOUND) and ControllerPublish (NOT_FOUND); ROX claims are refused at \
         provisioning on node-local pools and read-only mounts got EROFS; {nfs}"
    );
}

/// The names in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| d.filter_map(std::result::Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Workflow 7's ReadWriteMany part on the NFS driver (ganesha). Everything up to the kernel
/// mount runs for real; the mount and the data sharing between nodes only where the kernel
/// has an NFS client. Returns what it verified.
async fn rwx_on_nfs(k: &mut Cluster, g: &common::ganesha::Ganesha, test: &str) -> String {
    let nfs_class =
        |name: &str, pool: &str| StorageClass::new(name, NFS_DRIVER).param("pool", pool).binding(Binding::Immediate);
    k.create_class(nfs_class("berth-nfs", "shared")).await;
    k.create_class(nfs_class("berth-nfs-archive", "keep")).await;

    // csi-provisioner (central, Immediate): the subdirectory appears on the export.
    k.create_pvc(Pvc::new("team", "berth-nfs", 64 * MIB).access(&[AccessMode::ReadWriteMany])).await;
    assert_eq!(k.pvc("team").phase, ClaimPhase::Bound, "{:?}", k.pvc("team").events);
    let team = k.pv_of("team").clone();
    assert_eq!(team.driver, NFS_DRIVER);
    assert!(team.node_affinity.is_empty(), "NFS volumes have no topology: {:?}", team.node_affinity);
    let sub = team.attributes.get("subDir").cloned().expect("subDir in the volume context");
    assert_eq!(sub, team.name, "the default subDir is the PV name");
    let team_dir = g.export.join(&sub);
    assert!(team_dir.is_dir(), "{} on the export", team_dir.display());

    // csi-attacher: MULTI_NODE_MULTI_WRITER is published to both nodes, and recorded.
    for node in ["node-a", "node-b"] {
        k.attach(&team, node).await.unwrap_or_else(|e| panic!("ControllerPublishVolume to {node}: {e}"));
    }
    let records: String = fs::read_dir(g.export.join(".berth/volumes"))
        .expect("records")
        .filter_map(std::result::Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains(&team.handle))
        .collect();
    assert!(records.contains("node-a") && records.contains("node-b"), "both nodes recorded: {records}");

    // RWO on NFS: a second node is refused, naming the first.
    k.create_pvc(Pvc::new("own", "berth-nfs-archive", 16 * MIB)).await;
    assert_eq!(k.pvc("own").phase, ClaimPhase::Bound, "{:?}", k.pvc("own").events);
    let own = k.pv_of("own").clone();
    let own_dir = g.export.join(own.attributes.get("subDir").expect("subDir"));
    assert!(own_dir.is_dir());
    k.attach(&own, "node-a").await.expect("ControllerPublishVolume of an RWO NFS volume to node-a");
    let err = k.attach(&own, "node-b").await.expect_err("an RWO NFS volume on a second node");
    assert!(err.contains("ControllerPublishVolume: FailedPrecondition") && err.contains("node-a"), "{err}");

    // The kubelets: a pod on each node.
    k.create_pod(Pod::new("nfs-a").claim("data", "team").on_node("node-a")).await;
    k.create_pod(Pod::new("nfs-b").claim("data", "team").on_node("node-b")).await;
    let mounted = if kernel_nfs() {
        k.running("nfs-a");
        k.running("nfs-b");
        write_synced(&k.volume_path("nfs-a", "data").join("from-a"), "written on node-a");
        write_synced(&k.volume_path("nfs-b", "data").join("from-b"), "written on node-b");
        assert_eq!(read(&k.volume_path("nfs-b", "data").join("from-a")), "written on node-a");
        assert_eq!(read(&k.volume_path("nfs-a", "data").join("from-b")), "written on node-b");
        assert_eq!(read(&team_dir.join("from-a")), "written on node-a", "the data is on the export");
        for node in ["node-a", "node-b"] {
            assert!(!nfs_mounts(k, node).is_empty(), "{node} mounted the export");
        }
        "pods on node-a and node-b mounted it and read each other's writes"
    } else {
        for pod in ["nfs-a", "nfs-b"] {
            match &k.pod(pod).phase {
                PodPhase::ContainerCreating(e) => {
                    assert!(e.contains("NodeStageVolume: FailedPrecondition") && e.contains("NFS client"), "{e}");
                }
                other => panic!("{pod} cannot run without a kernel NFS client: {other:?}"),
            }
        }
        for node in ["node-a", "node-b"] {
            assert!(nfs_mounts(k, node).is_empty(), "nothing NFS mounted on {node}");
        }
        println!("SKIPPED: {test}/rwx-nfs-mount: kernel has no NFS client");
        "the kubelets' NodeStage answered FAILED_PRECONDITION (no kernel NFS client; mount part skipped)"
    };

    // Pods gone: the kubelets unstage, the attach/detach controller detaches; deleting the
    // claims removes one directory (onDelete: delete) and archives the other.
    for pod in ["nfs-a", "nfs-b"] {
        k.delete_pod(pod).await;
    }
    assert!(k.attachments.keys().all(|(h, _)| *h != team.handle && *h != own.handle), "{:?}", k.attachments);
    k.delete_pvc("team").await;
    k.delete_pvc("own").await;
    assert!(
        !k.pvs.contains_key(&team.name) && !k.pvs.contains_key(&own.name),
        "DeleteVolume succeeded: {:#?}",
        k.events
    );
    assert!(!team_dir.exists(), "onDelete delete: the directory is gone");
    assert!(!own_dir.exists(), "onDelete archive: renamed away");
    let own_name = own_dir.file_name().expect("name").to_string_lossy().into_owned();
    let archived: Vec<String> = names_in(own_dir.parent().expect("parent"))
        .into_iter()
        .filter(|n| n.starts_with(&format!("archived-{own_name}-")))
        .collect();
    assert_eq!(archived.len(), 1, "onDelete archive keeps the data as archived-<name>-<time>");
    format!(
        "RWX on NFS: a claim was provisioned centrally as {sub}/ on the ganesha export, ControllerPublish to \
         node-a and node-b both succeeded and were recorded on the export, an RWO NFS claim on node-b was refused \
         (FAILED_PRECONDITION naming node-a); {mounted}; deleting the claims detached them, removed one directory \
         and archived the other as {}",
        archived[0]
    )
}

#[tokio::test]
async fn workflow_8_capacity() {
    let test = "workflow_8_capacity";
    let spec = ClusterSpec {
        driver: Driver::chart(),
        nodes: vec![NodeSpec::btrfs("big"), NodeSpec::ext4("small", "64M")],
        central_controller: false,
        nfs: None,
    };
    let Some(mut k) = Cluster::start(test, spec).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;
    let want = 128 * MIB;
    let small = k.get_capacity("small", "berth-local").await.expect("GetCapacity small");
    let big = k.get_capacity("big", "berth-local").await.expect("GetCapacity big");
    assert!((small.available_capacity as u64) < want, "small reports {} bytes", small.available_capacity);
    assert!(small.maximum_volume_size.is_some_and(|m| (m as u64) < want));
    assert!(big.available_capacity as u64 >= want, "big reports {} bytes", big.available_capacity);

    k.create_pvc(Pvc::new("dataset", "berth-local", want)).await;
    k.create_pod(Pod::new("pinned").claim("data", "dataset").on_node("small")).await;
    assert!(matches!(&k.pod("pinned").phase, PodPhase::Pending(r) if r.contains("did not have enough free storage")));
    assert!(volumes_on(&k, "small").await.is_empty(), "no CreateVolume was sent to small");

    // Capacity tracking stale or off (an admin drops storageCapacity from the CSIDriver):
    // the scheduler sends the claim to small and berth there refuses it.
    k.driver.storage_capacity = false;
    k.sync().await;
    let pvc = k.pvc("dataset").clone();
    assert!(pvc.events.iter().any(|e| e.contains("CreateVolume: ResourceExhausted")), "{:?}", pvc.events);
    assert_eq!((pvc.phase, pvc.selected_node), (ClaimPhase::Pending, None), "rescheduled, not bound");
    assert!(volumes_on(&k, "small").await.is_empty() && pool_volume_dirs(&k, "small") == 0, "nothing left on small");
    k.driver.storage_capacity = true;

    k.delete_pod("pinned").await;
    k.create_pod(Pod::new("app").claim("data", "dataset")).await;
    assert_eq!(k.running("app").node.as_deref(), Some("big"));
    write_mib(&k.volume_path("app", "data").join("payload"), 100).expect("100 MiB fit in the 128 MiB volume");
    println!(
        "workflow 8: GetCapacity reported {} bytes on small and {} on big for a {want}-byte claim; the scheduler \
         kept the pinned pod off small, CreateVolume on small answered RESOURCE_EXHAUSTED and left nothing, and \
         the claim landed on big where the pod wrote 100 MiB",
        small.available_capacity, big.available_capacity
    );
}

#[tokio::test]
async fn workflow_9_node_restart() {
    let test = "workflow_9_node_restart";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a"])).await else { return };
    k.create_class(StorageClass::new("berth-local", DRIVER)).await;
    for claim in ["db", "cache", "shared", "batch"] {
        k.create_pvc(Pvc::new(claim, "berth-local", 16 * MIB)).await;
    }
    k.create_pod(Pod::new("db").claim("data", "db").claim("shared", "shared")).await;
    k.create_pod(Pod::new("cache").claim("data", "cache").claim("shared", "shared")).await;
    k.create_pod(Pod::new("batch").claim("data", "batch").csi_ephemeral("tmp", DRIVER, &[("size", "8Mi")])).await;
    write_synced(&k.volume_path("db", "data").join("rows"), "42 rows");
    write_synced(&k.volume_path("cache", "data").join("hot"), "hot keys");
    write_synced(&k.volume_path("db", "shared").join("config"), "shared config");
    write_synced(&k.volume_path("batch", "data").join("result"), "batch result");
    let batch_targets = [k.volume_path("batch", "data"), k.volume_path("batch", "tmp")];
    let batch_staging = k.staging_path("node-a", "batch");
    let root = k.node("node-a").kubelet_root.clone();
    let live_mounts = 7; // db, cache, shared staged once each; four pod mounts of db and cache
    assert_eq!(common::mounts_below(&root).len(), live_mounts + 3, "plus batch: staging, publish, ephemeral");
    assert_eq!(volumes_on(&k, "node-a").await.len(), 5, "four claims and batch's ephemeral volume");

    // A kubelet restart replays stage and publish on live mounts: nothing stacks.
    k.restart_kubelet("node-a").await;
    assert_eq!(common::mounts_below(&root).len(), live_mounts + 3, "replay is a no-op on live mounts");

    // A node reboot: every mount vanishes; batch is force-deleted while the node is down.
    k.shutdown_node("node-a").await;
    k.force_delete_pod("batch").await;
    k.boot_node("node-a").await;
    for pod in ["db", "cache"] {
        k.running(pod);
    }
    assert_eq!(common::mounts_below(&root).len(), live_mounts, "every mount of the running pods is back");
    for claim in ["db", "cache", "shared"] {
        assert!(is_mounted(&k.staging_path("node-a", claim)), "{claim} staged again");
    }
    assert_eq!(read(&k.volume_path("db", "data").join("rows")), "42 rows");
    assert_eq!(read(&k.volume_path("cache", "data").join("hot")), "hot keys");
    assert_eq!(read(&k.volume_path("cache", "shared").join("config")), "shared config");
    let dir = k.volume_path("db", "data");
    assert!(quota_error(write_mib(&dir.join("big"), 24)), "sizes are still enforced after the reboot");
    fs::remove_file(dir.join("big")).expect("rm");
    write_synced(&dir.join("rows"), "43 rows");
    // The orphaned pod's volumes were torn down on boot: its ephemeral volume is gone, its
    // claim is unstaged and keeps its data.
    assert!(batch_targets.iter().all(|t| !t.exists()) && !batch_staging.exists(), "orphan cleaned up");
    let batch_pv = k.pv_of("batch").clone();
    assert_eq!(volumes_on(&k, "node-a").await.len(), 4, "the orphan's ephemeral volume was deleted");
    assert_eq!(read(&data_dir(&k, "node-a", &batch_pv.handle).join("result")), "batch result");

    for pod in ["db", "cache"] {
        k.delete_pod(pod).await;
    }
    assert!(common::mounts_below(&root).is_empty(), "pods deleted after the reboot unmount cleanly");
    println!(
        "workflow 9: a kubelet restart replayed stage and publish without stacking mounts; after a reboot \
         (all mounts gone, pool disk remounted, berth restarted) the kubelet's replay brought back all \
         {live_mounts} mounts, both pods found their data and quotas still held; a pod force-deleted while the \
         node was down had its volumes torn down on boot (ephemeral one deleted, claim kept)"
    );
}

#[tokio::test]
async fn workflow_10_inline_ephemeral() {
    let test = "workflow_10_inline_ephemeral";
    let Some(mut k) = Cluster::start(test, ClusterSpec::btrfs_nodes(&["node-a"])).await else { return };
    let scratch = |name: &str| Pod::new(name).csi_ephemeral("scratch", DRIVER, &[("size", "8Mi")]);
    k.create_pod(scratch("builder")).await;
    let target = k.volume_path("builder", "scratch");
    assert!(target.ends_with("volumes/kubernetes.io~csi/scratch/mount") && is_mounted(&target));
    let ids = volumes_on(&k, "node-a").await;
    assert_eq!(ids.len(), 1, "the volume was created with the pod");
    assert_eq!(k.volume_size("builder", "scratch").await, (8 * MIB) as i64);
    write_synced(&target.join("artifact"), "built");
    assert!(quota_error(write_mib(&target.join("big"), 16)), "the 8Mi size is enforced");

    k.delete_pod("builder").await;
    assert!(!target.exists(), "unpublished");
    assert!(volumes_on(&k, "node-a").await.is_empty(), "the volume went with the pod");
    assert_eq!(pool_volume_dirs(&k, "node-a"), 0, "and its data with it");

    k.create_pod(scratch("builder")).await;
    assert!(!k.volume_path("builder", "scratch").join("artifact").exists(), "a new pod gets a fresh volume");
    k.delete_pod("builder").await;
    assert!(volumes_on(&k, "node-a").await.is_empty());
    println!(
        "workflow 10: an inline ephemeral volume (size 8Mi) was created at NodePublish with the pod, enforced \
         its size, and was deleted with its data at NodeUnpublish; the next pod got a fresh one"
    );
}

#[tokio::test]
async fn workflow_11_raw_block() {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let test = "workflow_11_raw_block";
    if !common::have("losetup") {
        println!("SKIPPED: {test}: losetup is not installed");
        return;
    }
    let spec = ClusterSpec {
        driver: Driver::chart(),
        nodes: vec![NodeSpec::btrfs("node-a").block_pool("img")],
        central_controller: false,
        nfs: None,
    };
    let Some(mut k) = Cluster::start(test, spec).await else { return };
    k.create_class(StorageClass::new("raw", DRIVER).param("pool", "img")).await;
    k.create_pvc(Pvc::new("disk", "raw", 16 * MIB).block()).await;
    let device = |k: &Cluster, pod: &str| {
        let path = k.volume_path(pod, "data");
        let pv = k.pv_of("disk");
        let uid = &k.pod(pod).uid;
        assert_eq!(path, k.node("node-a").block_publish_path(&pv.name, uid), "volumeDevices/publish/<pv>/<pod uid>");
        let kind = fs::metadata(&path).expect("stat the device").file_type();
        assert!(kind.is_block_device(), "the pod sees a block device at {}", path.display());
        path
    };
    let offset = 5 * MIB + 123;
    k.create_pod(Pod::new("db").claim("data", "disk")).await;
    let dev = device(&k, "db");
    let pv = k.pv_of("disk").clone();
    let staging = k.node("node-a").block_staging_path(&pv.name);
    assert!(staging.exists(), "staged at volumeDevices/staging/<pv>");
    {
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&dev).expect("open the device");
        let size = f.seek(SeekFrom::End(0)).expect("size");
        assert_eq!(size, 16 * MIB, "the device has the claim's size");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(b"raw bytes at an offset").expect("write");
        f.sync_all().expect("sync");
    }
    k.delete_pod("db").await;
    assert!(!dev.exists(), "NodeUnpublish removed the device file");
    assert!(common::mounts_below(&k.node("node-a").kubelet_root).is_empty(), "nothing left bound");
    let disk = k.node("node-a").disk.mount.join("img");
    let loops = common::sh("losetup", &["-n", "-O", "BACK-FILE", "-l"]);
    assert!(!loops.contains(disk.to_str().expect("utf8")), "NodeUnstage detached the loop device: {loops}");

    k.create_pod(Pod::new("db-2").claim("data", "disk")).await;
    let dev = device(&k, "db-2");
    let mut back = vec![0u8; 22];
    {
        let mut f = fs::File::open(&dev).expect("open the device");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.read_exact(&mut back).expect("read");
    }
    assert_eq!(&back, b"raw bytes at an offset", "the data survived the pod");
    k.delete_pod("db-2").await;
    k.delete_pvc("disk").await;
    assert!(!k.pvs.contains_key(&pv.name), "DeleteVolume succeeded: {:#?}", k.events);
    assert!(volumes_on(&k, "node-a").await.is_empty(), "the volume is gone");
    println!(
        "workflow 11: a volumeMode: Block claim on a block pool was staged at volumeDevices/staging/<pv> and \
         published to the pod as a 16 MiB block device at volumeDevices/publish/<pv>/<pod uid>; bytes written at \
         offset {offset} were read back by the next pod; deleting the claim deleted the volume"
    );
}
