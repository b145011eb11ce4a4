//! NFS pools against a real NFS server (nfs-ganesha on 127.0.0.1) and the real binary:
//! the controller works through its userspace client, so everything here runs without
//! an NFS client in the kernel. Node mounts need one; where /proc/filesystems lacks nfs
//! the real mount test says SKIPPED (the mount(2) arguments are checked with the
//! recording fake in the engine's unit tests).

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use berth::csi::pb;
use berth::csi::pb::volume_capability::access_mode::Mode;
use common::ganesha::{Ganesha, nfs_config};
use common::*;
use tonic::Code;

const DRIVER: &[&str] = &["--mode", "controller", "--driver-name", "nfs.berth.csi.io"];

fn req(name: &str, params: &[(&str, &str)]) -> pb::CreateVolumeRequest {
    let mut r = create_req(name, 1 << 20);
    r.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r
}

fn pvc(ns: &str, name: &str, pool: &str) -> Vec<(&'static str, String)> {
    vec![
        ("pool", pool.to_string()),
        ("csi.storage.k8s.io/pvc/namespace", ns.to_string()),
        ("csi.storage.k8s.io/pvc/name", name.to_string()),
        ("csi.storage.k8s.io/pv/name", format!("pvc-{name}")),
    ]
}

fn with<'a>(params: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    params.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn start(scratch: &Scratch, test: &str, pools: &[(&str, &str)]) -> Option<(Ganesha, Berth)> {
    if !require_root(test) {
        return None;
    }
    let g = Ganesha::start(scratch.path(), test)?;
    let config = nfs_config(&scratch.path().join("state"), &g, pools);
    let b = Berth::start(scratch.path(), &config, "controller-0", DRIVER).await;
    Some((g, b))
}

/// Removes `rel` on the export as another NFS client would (through the server, so the
/// server's caches see it).
fn nfs_remove(g: &Ganesha, rel: &str) {
    let ep = g.endpoint();
    let mut c = berth::nfs::Client::connect(&ep).expect("connect");
    let root = c.root.clone();
    let (parent_rel, leaf) = rel.rsplit_once('/').unwrap_or(("", rel));
    let (parent, _) = berth::backend::nfs::export::walk(&mut c, &root, parent_rel).expect("walk").expect("parent");
    berth::backend::nfs::copy::remove_tree(&mut c, &parent, leaf.as_bytes()).expect("remove");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn volumes_are_directories_that_delete_archive_or_stay() {
    let test = "volumes_are_directories_that_delete_archive_or_stay";
    let scratch = Scratch::new();
    let pools = [
        ("gone", "subDir: 'del/${pvc.metadata.namespace}-${pvc.metadata.name}', permissions: '0750'"),
        ("kept", "subDir: 'keep/${pvc.metadata.name}', onDelete: retain"),
        ("arch", "subDir: 'arch/${pvc.metadata.name}', onDelete: archive"),
    ];
    let Some((g, mut b)) = start(&scratch, test, &pools).await else { return };

    // A shared pool's volumes are attached: the NFS driver advertises ControllerPublish.
    let caps = b.controller.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}).await.expect("caps");
    let rpcs = common::controller_rpcs(&caps.into_inner());
    assert!(rpcs.contains(&pb::controller_service_capability::rpc::Type::PublishUnpublishVolume), "{rpcs:?}");
    assert!(rpcs.contains(&pb::controller_service_capability::rpc::Type::ListVolumesPublishedNodes), "{rpcs:?}");

    let v =
        b.controller.create_volume(req("pvc-a", &with(&pvc("shop", "db", "gone")))).await.expect("create").into_inner();
    let v = v.volume.expect("volume");
    assert!(v.accessible_topology.is_empty(), "an NFS volume is reachable from every node");
    assert_eq!(v.volume_context.get("subDir").map(String::as_str), Some("del/shop-db"));
    assert_eq!(v.volume_context.get("berth.csi.io/capacity-enforcement").map(String::as_str), Some("none"));
    assert!(v.volume_id.starts_with("vol:gone:"));
    let dir = g.export.join("del/shop-db");
    let meta = fs::metadata(&dir).expect("the volume is a directory on the export");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert!(g.export.join(".berth/volumes").read_dir().expect("records").count() == 1, "the record is on the export");

    // Idempotent by name; another size under the same name is ALREADY_EXISTS.
    let again = b.controller.create_volume(req("pvc-a", &with(&pvc("shop", "db", "gone")))).await.expect("again");
    assert_eq!(again.into_inner().volume.expect("v").volume_id, v.volume_id);
    let mut bigger = req("pvc-a", &with(&pvc("shop", "db", "gone")));
    bigger.capacity_range = Some(pb::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 });
    assert_eq!(code(b.controller.create_volume(bigger).await), Code::AlreadyExists);

    fs::write(dir.join("data"), b"bytes").expect("write into the volume");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() })
        .await
        .expect("delete");
    assert!(!dir.exists(), "deleted volumes disappear");
    assert!(listing(&g.export.join(".berth/trash")).is_empty());
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() })
        .await
        .expect("idempotent");

    // A volume of the deleting pool is kept after all: its onDelete changed while it lived.
    let m = b.controller.create_volume(req("pvc-m", &with(&pvc("shop", "m", "gone")))).await.expect("create");
    let m_id = m.into_inner().volume.expect("v").volume_id;
    let keep = pb::ControllerModifyVolumeRequest {
        volume_id: m_id.clone(),
        mutable_parameters: [("onDelete".to_string(), "retain".to_string())].into(),
        ..Default::default()
    };
    b.controller.controller_modify_volume(keep).await.expect("modify onDelete");
    let compress = pb::ControllerModifyVolumeRequest {
        volume_id: m_id.clone(),
        mutable_parameters: [("compression".to_string(), "zstd".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(code(b.controller.controller_modify_volume(compress).await), Code::InvalidArgument);
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: m_id, ..Default::default() })
        .await
        .expect("delete");
    assert!(g.export.join("del/shop-m").is_dir(), "the volume's own onDelete kept it");

    let kept =
        b.controller.create_volume(req("pvc-k", &with(&pvc("shop", "k", "kept")))).await.expect("create").into_inner();
    let kept_id = kept.volume.expect("v").volume_id;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: kept_id.clone(), ..Default::default() })
        .await
        .expect("delete");
    assert!(g.export.join("keep/k").is_dir(), "retained volumes stay");
    // The retained directory is still claimed: a new claim with the same name cannot take it.
    let err = b.controller.create_volume(req("pvc-k2", &with(&pvc("shop", "k", "kept")))).await.expect_err("claimed");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&kept_id), "{}", err.message());

    let arch =
        b.controller.create_volume(req("pvc-z", &with(&pvc("shop", "z", "arch")))).await.expect("create").into_inner();
    fs::write(g.export.join("arch/z/keepme"), b"x").expect("write");
    let arch_id = arch.volume.expect("v").volume_id;
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: arch_id, ..Default::default() })
        .await
        .expect("delete");
    let archived = listing(&g.export.join("arch"));
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert!(archived[0].starts_with("archived-z-") && archived[0].ends_with('Z'), "{archived:?}");
    assert!(g.export.join("arch").join(&archived[0]).join("keepme").exists());
    // The name is free again once archived.
    b.controller.create_volume(req("pvc-z2", &with(&pvc("shop", "z", "arch")))).await.expect("name reusable");
    b.stop();
}

#[tokio::test]
async fn hostile_names_and_collisions_create_nothing_outside() {
    let test = "hostile_names_and_collisions_create_nothing_outside";
    let scratch = Scratch::new();
    let pools = [("t", "subDir: '${pvc.metadata.namespace}/${pvc.metadata.name}'")];
    let Some((g, mut b)) = start(&scratch, test, &pools).await else { return };
    let sentinel = scratch.path().join("sentinel");
    fs::create_dir_all(&sentinel).expect("mkdir");

    for (i, bad) in ["..", ".", "", "a/b", "a\\b", "a\0b", "a\nb", "../../sentinel", "/etc"].iter().enumerate() {
        let p = pvc("ns", bad, "t");
        let err = b.controller.create_volume(req(&format!("bad-{i}"), &with(&p))).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {}", err.message());
        let p = pvc(bad, "ok", "t");
        let err = b.controller.create_volume(req(&format!("badns-{i}"), &with(&p))).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {bad:?}: {}", err.message());
    }
    // berth's own directories are reserved at the top of the export.
    let err = b.controller.create_volume(req("reserved", &with(&pvc(".berth", "x", "t")))).await.expect_err("reserved");
    assert_eq!(err.code(), Code::InvalidArgument);
    let missing = b.controller.create_volume(req("no-meta", &[("pool", "t")])).await.expect_err("no metadata");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("extra-create-metadata"), "{}", missing.message());
    assert_eq!(listing(&g.export).iter().filter(|n| n.as_str() != ".berth").count(), 0, "nothing was created");
    assert!(listing(&sentinel).is_empty());

    // Two volumes expanding to the same directory: the second is refused, naming the first.
    let first =
        b.controller.create_volume(req("one", &with(&pvc("ns", "same", "t")))).await.expect("create").into_inner();
    let first_id = first.volume.expect("v").volume_id;
    let err = b.controller.create_volume(req("two", &with(&pvc("ns", "same", "t")))).await.expect_err("collision");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&first_id), "{}", err.message());
    assert!(g.export.join("ns/same").is_dir(), "the first volume's directory is untouched by the refused one");

    // A directory berth did not create is never adopted.
    fs::create_dir_all(g.export.join("ns/foreign")).expect("mkdir");
    fs::write(g.export.join("ns/foreign/precious"), b"x").expect("write");
    let err = b.controller.create_volume(req("three", &with(&pvc("ns", "foreign", "t")))).await.expect_err("foreign");
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(g.export.join("ns/foreign/precious").exists());
    // ...and the refused volume left no claim behind: removing the directory frees the name.
    nfs_remove(&g, "ns/foreign");
    b.controller.create_volume(req("three", &with(&pvc("ns", "foreign", "t")))).await.expect("now free");

    // IDs stay short whatever the pool and export are called.
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert!(listed.entries.iter().all(|e| e.volume.as_ref().is_some_and(|v| v.volume_id.len() <= 128)));
    b.stop();
}

#[tokio::test]
async fn ids_stay_short_with_long_pool_and_export_names() {
    let test = "ids_stay_short_with_long_pool_and_export_names";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    // The export itself lives 300 bytes deep.
    let deep = scratch.path().join("x".repeat(100)).join("y".repeat(100)).join("z".repeat(100));
    fs::create_dir_all(&deep).expect("mkdir");
    let Some(g) = Ganesha::start(&deep, test) else { return };
    let pool = "p".repeat(40);
    let config = nfs_config(&scratch.path().join("state"), &g, &[(&pool, "")]);
    let mut b = Berth::start(scratch.path(), &config, "controller-0", DRIVER).await;
    let long_name = "n".repeat(128);
    let v = b.controller.create_volume(req(&long_name, &[])).await.expect("create").into_inner().volume.expect("v");
    assert!(v.volume_id.len() <= 128, "{} bytes", v.volume_id.len());
    assert!(g.export.join(&long_name).is_dir(), "the default template is the volume (PV) name");
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "s".repeat(128),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("s");
    assert!(snap.snapshot_id.len() <= 128);
    b.stop();
}

fn set_times(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .expect("utimensat");
}

/// Compares two trees entry by entry: type, mode, owner, mtime, size, link targets, and
/// for sparse files that the copy is sparse too.
fn assert_same_tree(a: &Path, b: &Path, skip: &[&str]) {
    let mut stack = vec![(a.to_path_buf(), b.to_path_buf())];
    while let Some((x, y)) = stack.pop() {
        let (mx, my) = (
            fs::symlink_metadata(&x).expect("a"),
            fs::symlink_metadata(&y).unwrap_or_else(|_| panic!("{} missing", y.display())),
        );
        let what = y.display();
        assert_eq!(mx.mode(), my.mode(), "mode of {what}");
        assert_eq!((mx.uid(), mx.gid()), (my.uid(), my.gid()), "owner of {what}");
        // Servers may refuse to set a symlink's own times (ganesha's VFS does).
        if !mx.file_type().is_symlink() {
            assert_eq!(mx.mtime(), my.mtime(), "mtime of {what}");
        }
        if mx.file_type().is_symlink() {
            assert_eq!(fs::read_link(&x).expect("link"), fs::read_link(&y).expect("link"), "target of {what}");
        } else if mx.is_file() {
            assert_eq!(fs::read(&x).expect("read"), fs::read(&y).expect("read"), "content of {what}");
            if mx.blocks() * 512 < mx.size() {
                assert!(
                    my.blocks() * 512 < my.size() / 2,
                    "{what} stays sparse: {} blocks for {} bytes",
                    my.blocks(),
                    my.size()
                );
            }
        } else if mx.is_dir() {
            for e in fs::read_dir(&x).expect("ls").flatten() {
                let name = e.file_name();
                if skip.iter().any(|s| name == *s) {
                    continue;
                }
                stack.push((x.join(&name), y.join(&name)));
            }
            assert_eq!(
                fs::read_dir(&x).expect("ls").count() - skip.iter().filter(|s| x.join(s).exists()).count(),
                fs::read_dir(&y).expect("ls").count() - skip.iter().filter(|s| y.join(s).exists()).count(),
                "entries of {what}"
            );
        }
    }
}

#[tokio::test]
async fn snapshots_restores_and_clones_keep_everything() {
    let test = "snapshots_restores_and_clones_keep_everything";
    let scratch = Scratch::new();
    let Some((g, mut b)) = start(&scratch, test, &[("s", "")]).await else { return };
    let v = b.controller.create_volume(req("src", &[])).await.expect("create").into_inner().volume.expect("v");
    let src = g.export.join("src");

    // Content that a careless copy gets wrong.
    fs::create_dir_all(src.join("deep/er")).expect("mkdir");
    fs::write(src.join("deep/er/file"), b"nested").expect("write");
    fs::write(src.join("owned"), b"owned by someone").expect("write");
    nix::unistd::chown(&src.join("owned"), Some(1234.into()), Some(5678.into())).expect("chown");
    fs::set_permissions(src.join("owned"), fs::Permissions::from_mode(0o4640)).expect("chmod");
    std::os::unix::fs::symlink("/etc/passwd", src.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("deep/er/file", src.join("inner")).expect("symlink");
    let sparse = fs::File::create(src.join("sparse")).expect("create");
    sparse.set_len(64 << 20).expect("truncate");
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 32 << 20).expect("write");
    std::os::unix::fs::FileExt::write_at(&sparse, b"end", (64 << 20) - 3).expect("write");
    drop(sparse);
    fs::hard_link(src.join("owned"), src.join("hardlink")).expect("link");
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::create_dir(src.join("readonly")).expect("mkdir");
    fs::write(src.join("readonly/inside"), b"in a read-only dir").expect("write");
    fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o555)).expect("chmod");
    for p in
        ["deep/er/file", "deep/er", "deep", "owned", "sparse", "fifo", "readonly/inside", "readonly", "inner", "escape"]
    {
        set_times(&src.join(p), 1_000_000_000);
    }

    // A writer keeps appending while the snapshot is taken.
    let growing = src.join("growing");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (growing, stop) = (growing.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 20_000 {
                use std::io::Write;
                let mut f = fs::OpenOptions::new().create(true).append(true).open(&growing).expect("open");
                f.write_all(format!("line {n}\n").as_bytes()).expect("append");
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let snap = b
        .controller
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("s");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(snap.ready_to_use);
    let key = snap.snapshot_id.rsplit(':').next().expect("key");
    let stored = g.export.join(".berth-snapshots").join(key);
    assert!(stored.is_dir(), "snapshots live in .berth-snapshots/<key>");
    let copied = fs::read(stored.join("growing")).expect("growing copied");
    assert!(copied.starts_with(b"line 0\n") && copied.ends_with(b"\n"), "a prefix of whole lines");
    // Size is the bytes copied: the data, not the 64 MiB of holes.
    assert!(snap.size_bytes > 20 && snap.size_bytes < 4 << 20, "size {}", snap.size_bytes);
    assert_same_tree(&src, &stored, &["growing"]);
    assert!(fs::symlink_metadata(stored.join("escape")).expect("link").file_type().is_symlink(), "not followed");

    let mut restore = req("restored", &[]);
    restore.capacity_range = Some(pb::CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 });
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    b.controller.create_volume(restore).await.expect("restore");
    assert_same_tree(&stored, &g.export.join("restored"), &[]);

    let mut clone = req("cloned", &[]);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: v.volume_id.clone(),
        })),
    });
    b.controller.create_volume(clone).await.expect("clone");
    assert_same_tree(&src, &g.export.join("cloned"), &["growing"]);
    assert_eq!(listing(&g.export.join(".berth/tmp")), Vec::<String>::new(), "no partial copies left");

    b.controller
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() })
        .await
        .expect("delete");
    assert!(!stored.exists());
    b.stop();
}

#[tokio::test]
async fn capacity_publish_and_condition_follow_the_export() {
    let test = "capacity_publish_and_condition_follow_the_export";
    let scratch = Scratch::new();
    let Some((g, mut b)) = start(&scratch, test, &[("shared", "")]).await else { return };

    let cap = b.controller.get_capacity(pb::GetCapacityRequest::default()).await.expect("capacity").into_inner();
    let st = nix::sys::statvfs::statvfs(&g.export).expect("statvfs");
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let avail = (st.blocks_available() as u64 * st.fragment_size() as u64) as i64;
    assert!((cap.available_capacity - avail).abs() < 256 << 20, "FSSTAT {} vs statvfs {avail}", cap.available_capacity);
    let elsewhere = pb::GetCapacityRequest {
        accessible_topology: Some(pb::Topology {
            segments: HashMap::from([("topology.berth.csi.io/node".into(), "any".into())]),
        }),
        ..Default::default()
    };
    let there = b.controller.get_capacity(elsewhere).await.expect("capacity").into_inner();
    assert!(there.available_capacity > 0, "capacity does not depend on the node");

    // Two node plugins announce themselves to the export.
    let node_dir = |n: &str| scratch.path().join(n);
    let mut nodes = Vec::new();
    for n in ["node-a", "node-b"] {
        fs::create_dir_all(node_dir(n)).expect("mkdir");
        let config = nfs_config(&node_dir(n).join("state"), &g, &[("shared", "")]);
        nodes.push(
            Berth::start(&node_dir(n), &config, n, &["--mode", "node", "--driver-name", "nfs.berth.csi.io"]).await,
        );
    }
    for _ in 0..100 {
        if g.export.join(".berth/nodes/node-a").exists() && g.export.join(".berth/nodes/node-b").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let rwo =
        b.controller.create_volume(req("rwo", &[])).await.expect("create").into_inner().volume.expect("v").volume_id;
    let mut rwx_req = req("rwx", &[]);
    rwx_req.volume_capabilities = vec![mount_cap(Mode::MultiNodeMultiWriter)];
    let rwx =
        b.controller.create_volume(rwx_req).await.expect("RWX is accepted").into_inner().volume.expect("v").volume_id;
    let publish = |id: &str, node: &str, mode: Mode, readonly: bool| pb::ControllerPublishVolumeRequest {
        volume_id: id.to_string(),
        node_id: node.to_string(),
        volume_capability: Some(mount_cap(mode)),
        readonly,
        ..Default::default()
    };
    assert_eq!(
        code(
            b.controller
                .controller_publish_volume(publish(&rwo, "some-fake-node-id", Mode::SingleNodeWriter, false))
                .await
        ),
        Code::NotFound
    );
    b.controller
        .controller_publish_volume(publish(&rwo, "node-a", Mode::SingleNodeWriter, false))
        .await
        .expect("first node");
    b.controller
        .controller_publish_volume(publish(&rwo, "node-a", Mode::SingleNodeWriter, false))
        .await
        .expect("idempotent");
    assert_eq!(
        code(b.controller.controller_publish_volume(publish(&rwo, "node-a", Mode::SingleNodeWriter, true)).await),
        Code::AlreadyExists
    );
    let err = b
        .controller
        .controller_publish_volume(publish(&rwo, "node-b", Mode::SingleNodeWriter, false))
        .await
        .expect_err("second node");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node-a"), "names the node that has it: {}", err.message());
    for n in ["node-a", "node-b"] {
        b.controller
            .controller_publish_volume(publish(&rwx, n, Mode::MultiNodeMultiWriter, false))
            .await
            .expect("RWX on many nodes");
    }
    let got = b
        .controller
        .controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: rwx.clone() })
        .await
        .expect("get")
        .into_inner();
    let status = got.status.expect("status");
    assert_eq!(status.published_node_ids.len(), 2);
    assert!(!status.volume_condition.expect("condition").abnormal);
    assert_eq!(
        code(
            b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: rwo.clone(), ..Default::default() }).await
        ),
        Code::FailedPrecondition,
        "published volumes stay"
    );
    b.controller
        .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
            volume_id: rwo.clone(),
            node_id: "node-a".into(),
            ..Default::default()
        })
        .await
        .expect("unpublish");
    b.controller
        .controller_publish_volume(publish(&rwo, "node-b", Mode::SingleNodeWriter, false))
        .await
        .expect("now free");

    // Another NFS client removes the directory behind berth's back: the condition says so.
    nfs_remove(&g, "rwx");
    let got = b
        .controller
        .controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: rwx.clone() })
        .await
        .expect("get")
        .into_inner();
    let condition = got.status.expect("status").volume_condition.expect("condition");
    assert!(condition.abnormal && condition.message.contains("missing"), "{condition:?}");

    // The controller's local records are a cache: wiped, they come back from the export,
    // including which nodes a volume is published to.
    b.kill();
    fs::remove_dir_all(scratch.path().join("state")).expect("wipe state");
    let _ = fs::remove_file(&b.socket);
    b.restart().await;
    let again = b.controller.create_volume(req("rwo", &[])).await.expect("idempotent after restart");
    assert_eq!(again.into_inner().volume.expect("v").volume_id, rwo);
    let err = b
        .controller
        .controller_publish_volume(publish(&rwo, "node-a", Mode::SingleNodeWriter, false))
        .await
        .expect_err("still on node-b");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let listed = b.controller.list_volumes(pb::ListVolumesRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.entries.len(), 2);
    for mut n in nodes {
        n.stop();
    }
    b.stop();
}

#[tokio::test]
async fn node_plugin_validates_static_attributes_before_mounting() {
    let test = "node_plugin_validates_static_attributes_before_mounting";
    let scratch = Scratch::new();
    if !require_root(test) {
        return;
    }
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    let config = nfs_config(&scratch.path().join("state"), &g, &[("shared", "")]);
    let mut b =
        Berth::start(scratch.path(), &config, "node-a", &["--mode", "node", "--driver-name", "nfs.berth.csi.io"]).await;
    let staging = scratch.path().join("staging");
    let export = g.export.display().to_string();
    let stage = |attrs: &[(&str, &str)]| pb::NodeStageVolumeRequest {
        volume_id: "static-pv-1".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        volume_context: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let hostile = ["..", "../etc", "a/../../b", "/abs", "a\\b", "a\0b", "a\nb", "", ".berth", "a//b"];
    for bad in hostile {
        let r = b.node.node_stage_volume(stage(&[("server", "127.0.0.1"), ("export", &export), ("subDir", bad)])).await;
        assert_eq!(code(r), Code::InvalidArgument, "subDir {bad:?}");
    }
    for bad_export in ["relative", "/x/../y", "/"] {
        let r =
            b.node.node_stage_volume(stage(&[("server", "127.0.0.1"), ("export", bad_export), ("subDir", "a")])).await;
        assert_eq!(code(r), Code::InvalidArgument, "export {bad_export:?}");
    }
    let r = b.node.node_stage_volume(stage(&[("server", "other.example"), ("export", &export), ("subDir", "a")])).await;
    assert_eq!(code(r), Code::InvalidArgument, "a server no pool serves");
    assert!(!staging.exists(), "nothing was created for refused requests");
    assert!(mounts_below(scratch.path()).is_empty());

    fs::create_dir_all(g.export.join("app/data")).expect("mkdir");
    let good =
        b.node.node_stage_volume(stage(&[("server", "127.0.0.1"), ("export", &export), ("subDir", "app/data")])).await;
    let kernel_nfs =
        fs::read_to_string("/proc/filesystems").unwrap_or_default().lines().any(|l| l.trim_end().ends_with("\tnfs"));
    if kernel_nfs {
        good.expect("static volume staged");
        let mounted = mounts_below(scratch.path());
        assert!(mounted.iter().any(|m| m.source.ends_with("/app/data") && m.fs_type.starts_with("nfs")), "{mounted:?}");
        b.node
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: "static-pv-1".into(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .expect("unstage");
    } else {
        assert_eq!(code(good), Code::FailedPrecondition, "this kernel cannot mount NFS");
        println!("SKIPPED: {test} (real mount part): kernel has no NFS client");
    }
    b.stop();
}

#[tokio::test]
async fn nfs_mount_for_real() {
    let test = "nfs_mount_for_real";
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("nfs")) {
        println!("SKIPPED: {test}: kernel has no NFS client");
        return;
    }
    let scratch = Scratch::new();
    let Some((g, mut ctl)) = start(&scratch, test, &[("shared", "")]).await else { return };
    let node_home = scratch.path().join("node");
    fs::create_dir_all(&node_home).expect("mkdir");
    let config = nfs_config(&node_home.join("state"), &g, &[("shared", "")]);
    let mut node =
        Berth::start(&node_home, &config, "node-a", &["--mode", "node", "--driver-name", "nfs.berth.csi.io"]).await;
    let v = ctl.controller.create_volume(req("real", &[])).await.expect("create").into_inner().volume.expect("v");
    let staging = scratch.path().join("staging");
    let target = scratch.path().join("target");
    node.node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("stage");
    node.node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwo()),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("publish");
    fs::write(target.join("hello"), b"through the kernel").expect("write through the mount");
    assert_eq!(fs::read(g.export.join("real/hello")).expect("on the export"), b"through the kernel");
    let stats = node
        .node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.usage.iter().any(|u| u.used > 0));
    node.node
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    node.node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
    assert!(mounts_below(scratch.path()).is_empty());
    node.stop();
    ctl.stop();
}

#[tokio::test]
async fn a_dead_server_is_unavailable_not_a_hang() {
    let test = "a_dead_server_is_unavailable_not_a_hang";
    let scratch = Scratch::new();
    let Some((mut g, mut b)) = start(&scratch, test, &[("shared", "")]).await else { return };
    let v = b.controller.create_volume(req("before", &[])).await.expect("create").into_inner().volume.expect("v");
    g.stop();
    let started = std::time::Instant::now();
    assert_eq!(code(b.controller.create_volume(req("after", &[])).await), Code::Unavailable);
    assert_eq!(code(b.controller.get_capacity(pb::GetCapacityRequest::default()).await), Code::Unavailable);
    let got =
        b.controller.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: v.volume_id.clone() }).await;
    let condition = got.expect("get").into_inner().status.expect("status").volume_condition.expect("condition");
    assert!(condition.abnormal, "{condition:?}");
    assert_eq!(
        code(
            b.controller
                .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() })
                .await
        ),
        Code::Unavailable,
        "retryable, and the record stays for the retry"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "answers came in {:?}", started.elapsed());
    assert!(g.export.join("before").is_dir());

    // A controller that starts while the server is down serves at once, and answers
    // UNAVAILABLE (never a wrong "deleted") until it can load the records.
    b.kill();
    let _ = fs::remove_file(&b.socket);
    fs::remove_dir_all(scratch.path().join("state")).expect("wipe state");
    b.restart().await;
    assert_eq!(
        code(
            b.controller
                .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() })
                .await
        ),
        Code::Unavailable
    );
    assert_eq!(code(b.controller.list_volumes(pb::ListVolumesRequest::default()).await), Code::Unavailable);
    assert_eq!(code(b.controller.create_volume(req("before", &[])).await), Code::Unavailable);
    b.stop();
}

#[test]
fn doctor_reaches_the_export_and_reports_a_dead_server() {
    let test = "doctor_reaches_the_export_and_reports_a_dead_server";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(mut g) = Ganesha::start(scratch.path(), test) else { return };
    let config = scratch.path().join("nfs.yaml");
    fs::write(&config, nfs_config(&scratch.path().join("state"), &g, &[("shared", "")])).expect("config");
    let doctor = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["doctor", "--output", "json", "--config"])
            .arg(&config)
            .output()
            .expect("run doctor");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let check = |name: &str| {
            report["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["subject"] == "pool shared" && c["check"] == name))
                .cloned()
                .unwrap_or_default()
        };
        (out.status.success(), check("write as root"), check("mount export"))
    };
    let (_, alive, _) = doctor();
    assert_eq!(alive["verdict"], "ok", "{alive}");
    assert!(alive["detail"].as_str().is_some_and(|d| d.contains("owned by uid 0")), "{alive}");
    assert!(
        fs::read_dir(g.export.join(".berth/nodes")).expect("ls").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with(".berth-doctor")),
        "the probe file was removed"
    );
    g.stop();
    let (ok, _, dead) = doctor();
    assert!(!ok, "a dead server fails the doctor");
    assert_eq!(dead["verdict"], "fail", "{dead}");
    assert!(dead["detail"].as_str().is_some_and(|d| d.contains("does not answer")), "{dead}");
}

#[tokio::test]
async fn pools_sharing_an_export_never_nest_one_volume_inside_another() {
    let test = "pools_sharing_an_export_never_nest_one_volume_inside_another";
    let scratch = Scratch::new();
    let pools = [
        ("flat", "subDir: '${pvc.metadata.name}'"),
        ("deep", "subDir: '${pvc.metadata.namespace}/${pvc.metadata.name}'"),
    ];
    let Some((g, mut b)) = start(&scratch, test, &pools).await else { return };
    let create = |name: &str, ns: &str, pvc_name: &str, pool: &str| req(name, &with(&pvc(ns, pvc_name, pool)));

    // A deep volume inside a flat one's directory.
    let outer = b.controller.create_volume(create("outer", "any", "shop", "flat")).await.expect("flat").into_inner();
    let outer_id = outer.volume.expect("v").volume_id;
    let err = b.controller.create_volume(create("inner", "shop", "data", "deep")).await.expect_err("nested");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&outer_id) && err.message().contains("contains shop/data"), "{}", err.message());
    assert_eq!(listing(&g.export.join("shop")), Vec::<String>::new(), "nothing inside the flat volume");

    // A flat volume whose directory would hold a deep one.
    let deep = b.controller.create_volume(create("items", "cart", "items", "deep")).await.expect("deep").into_inner();
    let deep_id = deep.volume.expect("v").volume_id;
    let err = b.controller.create_volume(create("cart", "any", "cart", "flat")).await.expect_err("around");
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert_eq!(listing(&g.export.join("cart")), ["items"], "the deep volume is untouched");

    // Once the outer volume is gone, its directory is free for a nested one.
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: outer_id, ..Default::default() })
        .await
        .expect("delete");
    b.controller.create_volume(create("inner", "shop", "data", "deep")).await.expect("no longer nested");
    b.controller
        .delete_volume(pb::DeleteVolumeRequest { volume_id: deep_id, ..Default::default() })
        .await
        .expect("delete");
    b.stop();
}

#[tokio::test]
async fn a_server_that_does_not_answer_holds_up_only_its_own_pool() {
    let test = "a_server_that_does_not_answer_holds_up_only_its_own_pool";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(g) = Ganesha::start(scratch.path(), test) else { return };
    // A server that takes connections and never answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let config = nfs_config(&scratch.path().join("state"), &g, &[("live", "")])
        + &format!(
            "  - {{name: stuck, type: nfs, server: 127.0.0.1, export: /exports/k8s, mountOptions: [port={port}, mountport={port}]}}\n"
        );
    let mut b = Berth::start(scratch.path(), &config, "controller-0", DRIVER).await;

    let mut stuck_client = b.controller.clone();
    let stuck = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = stuck_client.create_volume(req("on-stuck", &with(&pvc("ns", "a", "stuck")))).await;
        (r.map(|_| ()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    b.controller.create_volume(req("on-live", &with(&pvc("ns", "b", "live")))).await.expect("the live pool serves");
    let live_took = started.elapsed();
    let (stuck_result, stuck_took) = stuck.await.expect("join");
    assert_eq!(code(stuck_result), Code::Unavailable);
    assert!(stuck_took > live_took, "stuck {stuck_took:?}, live {live_took:?}");
    assert!(live_took < Duration::from_secs(3), "the live pool waited {live_took:?} for the silent server");
    drop(silent);
    b.stop();
}
