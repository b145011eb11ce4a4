"""Snapshot copies (docs/migration.md) are opt-in: without snapshots.copyPools the local
driver's configuration holds its own pools only; with it, the named nfs pools join it
marked copiesOnly (the node writes and reads copies there, and makes no volume in it),
a local class's copyTo becomes its parameter, and values that cannot work fail the
install with a reason."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from conftest import HOSTPATH_POOL, NFS_POOL, of_kind, one, parse_manifests, render_values

SNAPSHOT_API = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass"
BOTH = {"nfs": {"enabled": True}, "pools": [HOSTPATH_POOL, NFS_POOL], "storageClasses": []}


def render(values):
    return parse_manifests(render_values(values, api_versions=(SNAPSHOT_API,)))


def local_pools(objects):
    config = next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-local-config"))
    return {p["name"]: p for p in yaml.safe_load(config["data"]["config.yaml"])["pools"]}


def copying(**cls):
    classes = [{"name": "berth-local-copied", "driver": "local", "copyTo": "shared"} | cls]
    return BOTH | {"snapshots": {"copyPools": ["shared"]}, "volumeSnapshotClasses": classes}


def test_off_the_local_driver_has_its_own_pools_only():
    pools = local_pools(render(BOTH))
    assert set(pools) == {"default"}
    for cls in of_kind(render(BOTH), "VolumeSnapshotClass"):
        assert "copyTo" not in (cls.get("parameters") or {})


def test_copy_pools_join_the_local_configuration_as_copies_only():
    objects = render(copying())
    pools = local_pools(objects)
    assert set(pools) == {"default", "shared"}
    shared = pools["shared"]
    assert shared["copiesOnly"] is True and shared["type"] == "nfs"
    assert {k: v for k, v in shared.items() if k != "copiesOnly"} == NFS_POOL
    cls = one(objects, "VolumeSnapshotClass", "berth-local-copied")
    assert cls["driver"] == "local.berth.csi.io"
    assert cls["parameters"] == {"copyTo": "shared"}


def test_copy_to_and_the_encryption_secret_share_the_parameters():
    objects = render(copying(encryptionSecret={"name": "keys", "namespace": "apps"}))
    cls = one(objects, "VolumeSnapshotClass", "berth-local-copied")
    assert cls["parameters"] == {
        "copyTo": "shared",
        "csi.storage.k8s.io/snapshotter-secret-name": "keys",
        "csi.storage.k8s.io/snapshotter-secret-namespace": "apps",
    }


@pytest.mark.parametrize(
    "values, message",
    [
        (BOTH | {"snapshots": {"copyPools": ["default"]}},
         'snapshots.copyPools names "default", which is not a pool of type nfs'),
        (BOTH | {"volumeSnapshotClasses": [{"name": "c", "driver": "local", "copyTo": "shared"}]},
         'VolumeSnapshotClass c: copyTo "shared" must be one of snapshots.copyPools'),
        (copying(driver="nfs"), "VolumeSnapshotClass berth-local-copied: copyTo is for the local driver"),
    ],
)
def test_values_that_cannot_copy_fail_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render_values(values, api_versions=(SNAPSHOT_API,))
    assert message in str(err.value)


def test_the_drill_checks_a_pool_of_copies_with_the_local_configuration():
    values = copying() | {"nfs": {"enabled": False}, "drill": {"enabled": True, "pool": "shared"}}
    objects = render(values)
    (job,) = of_kind(objects, "CronJob")
    volumes = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    config = next(v for v in volumes if v["name"] == "config")
    assert config["configMap"]["name"] == "berth-local-config"
    assert local_pools(objects)["shared"]["copiesOnly"] is True
    args = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pool=shared" in args or ["--pool", "shared"] == args[args.index("--pool"):args.index("--pool") + 2]
