"""VolumeAttributesClasses (README, "Changing a live volume"): what the chart renders for
each driver, what it refuses, and the RBAC the provisioner and resizer need to read them."""

from __future__ import annotations

import pytest

from conftest import HOSTPATH_POOL, NFS_POOL, of_kind, one, parse_manifests, render_values

COMPRESSED = {"name": "berth-compressed", "driver": "local", "parameters": {"compression": "zstd"}}
KEPT = {"name": "berth-kept", "driver": "nfs", "parameters": {"onDelete": "retain"}}


def test_classes_name_their_driver_and_carry_their_parameters():
    objects = parse_manifests(render_values({"nfs": {"enabled": True}, "pools": [HOSTPATH_POOL, NFS_POOL], "storageClasses": [],
                                             "volumeAttributesClasses": [COMPRESSED, KEPT]}))
    local = one(objects, "VolumeAttributesClass", "berth-compressed")
    assert local["apiVersion"] == "storage.k8s.io/v1"
    assert (local["driverName"], local["parameters"]) == ("local.berth.csi.io", {"compression": "zstd"})
    nfs = one(objects, "VolumeAttributesClass", "berth-kept")
    assert (nfs["driverName"], nfs["parameters"]) == ("nfs.berth.csi.io", {"onDelete": "retain"})


def test_a_class_of_a_disabled_driver_is_not_rendered():
    objects = parse_manifests(render_values({"volumeAttributesClasses": [KEPT]}))
    assert not of_kind(objects, "VolumeAttributesClass")


@pytest.mark.parametrize("parameters", [{"iops": "100"}, {"compression": "brotli"}, {"onDelete": "shred"}, {}])
def test_keys_and_values_berth_does_not_take_are_refused(parameters):
    with pytest.raises(Exception, match="(?i)schema|additional|enum|minProperties|must"):
        render_values({"volumeAttributesClasses": [dict(COMPRESSED, parameters=parameters)]})


def test_the_provisioner_and_the_resizer_may_read_the_classes():
    objects = parse_manifests(render_values({"local": {"expansion": {"enabled": True}}}))
    for role in ("berth-provisioner", "berth-resizer"):
        rules = one(objects, "ClusterRole", role)["rules"]
        assert any("volumeattributesclasses" in r["resources"] and "get" in r["verbs"] for r in rules), role
