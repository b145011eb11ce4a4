//! ControllerModifyVolume with the real binary: a hostPath volume's btrfs compression
//! changed on the live volume (and set at creation), every refusal naming its key, and a
//! crash between recording a change and applying it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use berth::csi::pb;
use common::*;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn modify(id: &str, pairs: &[(&str, &str)]) -> pb::ControllerModifyVolumeRequest {
    pb::ControllerModifyVolumeRequest {
        volume_id: id.to_string(),
        mutable_parameters: pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        ..Default::default()
    }
}

/// What `btrfs property get` says of `path`'s compression ("" when unset).
fn compression(path: &Path) -> String {
    let out = sh("btrfs", &["property", "get", path.to_str().expect("utf8"), "compression"]);
    out.trim().strip_prefix("compression=").unwrap_or("").to_string()
}

async fn context(b: &mut Berth, id: &str) -> HashMap<String, String> {
    let got = b
        .controller
        .controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: id.to_string() })
        .await
        .expect("get volume")
        .into_inner();
    got.volume.expect("volume").volume_context
}

#[tokio::test]
async fn btrfs_compression_changes_on_a_live_volume_and_refusals_name_the_key() {
    let test = "btrfs_compression_changes_on_a_live_volume_and_refusals_name_the_key";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(fs) = FsImage::new(&scratch, test, "btrfs", "512M") else { return };
    let pool = fs.mount.join("pool");
    let config = hostpath_config(&scratch.path().join("state"), &pool, "auto");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;

    let caps = b
        .controller
        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert!(controller_rpcs(&caps).contains(&pb::controller_service_capability::rpc::Type::ModifyVolume));

    // Set at creation, as a VolumeAttributesClass named by the claim does.
    let mut create = create_req("pvc-logs", 16 * MIB);
    create.mutable_parameters = [("compression".to_string(), "zstd".to_string())].into();
    let id = b.controller.create_volume(create).await.expect("create").into_inner().volume.expect("vol").volume_id;
    let dir = pool.join("volumes").join(id.rsplit(':').next().expect("key"));
    assert_eq!(compression(&dir), "zstd");
    assert_eq!(context(&mut b, &id).await.get("compression").map(String::as_str), Some("zstd"));

    // Changed on the live volume: files written from now on inherit it.
    b.controller.controller_modify_volume(modify(&id, &[("compression", "lzo")])).await.expect("modify");
    assert_eq!(compression(&dir), "lzo");
    std::fs::write(dir.join("new.log"), "x".repeat(1 << 16)).expect("write");
    assert_eq!(compression(&dir.join("new.log")), "lzo", "a new file inherits the directory's compression");
    assert_eq!(context(&mut b, &id).await.get("compression").map(String::as_str), Some("lzo"));
    b.controller.controller_modify_volume(modify(&id, &[("compression", "lzo")])).await.expect("the same again");
    b.controller.controller_modify_volume(modify(&id, &[("compression", "none")])).await.expect("off");
    assert_eq!(compression(&dir), "none");

    // Refusals: each names what is wrong, and changes nothing.
    for (pairs, code, says) in [
        (&[("iops", "100")][..], Code::InvalidArgument, "\"iops\""),
        (&[("onDelete", "retain")][..], Code::InvalidArgument, "\"onDelete\""),
        (&[("compression", "brotli")][..], Code::InvalidArgument, "\"brotli\""),
    ] {
        let err = b.controller.controller_modify_volume(modify(&id, pairs)).await.expect_err("refused");
        assert_eq!((err.code(), err.message().contains(says)), (code, true), "{pairs:?}: {}", err.message());
    }
    let err = b
        .controller
        .controller_modify_volume(modify("vol:default:0123456789abcdef0123456789abcdef", &[("compression", "zstd")]))
        .await;
    assert_eq!(code(err), Code::NotFound);
    let mut bad_create = create_req("pvc-bad", 16 * MIB);
    bad_create.mutable_parameters = [("onDelete".to_string(), "retain".to_string())].into();
    assert_eq!(code(b.controller.create_volume(bad_create).await), Code::InvalidArgument);
    assert_eq!(compression(&dir), "none", "a refused change changed nothing");

    // A crash after the change is recorded and before it is applied: the next start applies it.
    b.env.push(("BERTH_FAILPOINTS".into(), "volume.modify.recorded=kill".into()));
    b.restart().await;
    assert!(b.controller.controller_modify_volume(modify(&id, &[("compression", "zlib")])).await.is_err());
    assert!(b.exited_within(std::time::Duration::from_secs(10)), "killed at the fault point");
    assert_eq!(compression(&dir), "none", "not applied before the crash");
    b.env.clear();
    b.respawn().await;
    assert_eq!(compression(&dir), "zlib", "the start after the crash applied the recorded change");
    assert_eq!(context(&mut b, &id).await.get("compression").map(String::as_str), Some("zlib"));

    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.expect("delete");
    b.stop();
}

#[tokio::test]
async fn pools_without_mutable_parameters_refuse_every_key() {
    let test = "pools_without_mutable_parameters_refuse_every_key";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let Some(fs) = FsImage::new(&scratch, test, "xfs", "512M") else { return };
    let config = hostpath_config(&scratch.path().join("state"), &fs.mount.join("pool"), "none");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let id = b
        .controller
        .create_volume(create_req("pvc-x", 16 * MIB))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("vol")
        .volume_id;
    let err = b.controller.controller_modify_volume(modify(&id, &[("compression", "zstd")])).await.expect_err("xfs");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"compression\"") && err.message().contains("takes: none"), "{}", err.message());
    // Naming nothing changes nothing, on a volume that exists; an unknown one is NOT_FOUND.
    b.controller.controller_modify_volume(modify(&id, &[])).await.expect("an empty change");
    let unknown =
        b.controller.controller_modify_volume(modify("vol:default:00000000000000000000000000000000", &[])).await;
    assert_eq!(code(unknown), Code::NotFound);
    b.controller.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await.expect("delete");
    b.stop();
}
