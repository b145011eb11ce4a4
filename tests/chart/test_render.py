"""The chart renders with Helm v4 for every value set, passes helm lint, and renders what
each set asks for: the right drivers, components and classes, and nothing else."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from conftest import (
    CHART,
    VALUE_SETS,
    cargo_version,
    chart,
    merged_values,
    notes,
    of_kind,
    one,
    render_values,
    rendered,
)

KUBE_VERSION = "v1.37.0"


def test_helm_is_v4():
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()


def test_chart_metadata_matches_the_crate():
    meta = chart().metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "berth"
    assert meta["appVersion"] == cargo_version(), "appVersion must equal the version in Cargo.toml"


def test_every_value_set_renders(value_set):
    objects = rendered(value_set)
    assert objects, f"{value_set}: nothing rendered"
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
    # Namespaced objects land in the release namespace.
    namespace = VALUE_SETS[value_set][2]
    cluster_scoped = {"CSIDriver", "StorageClass", "VolumeSnapshotClass", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == namespace, (obj["kind"], obj["metadata"]["name"])


def test_no_duplicate_objects(value_set):
    seen = set()
    for obj in rendered(value_set):
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert key not in seen, f"{value_set}: {key} rendered twice"
        seen.add(key)


def test_recommended_labels_everywhere(value_set):
    release = VALUE_SETS[value_set][1]
    for obj in rendered(value_set):
        labels = obj["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == release
        assert labels["app.kubernetes.io/version"] == cargo_version()


@pytest.mark.parametrize("value_set_name", sorted(VALUE_SETS))
def test_helm_lint_has_no_errors_or_warnings(value_set_name):
    values, _, namespace = VALUE_SETS[value_set_name]
    report = helm.lint(CHART, values, strict=True, namespace=namespace, kube_version=KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report
    assert report["total_charts_linted"] == 1


def test_lint_rejects_a_misspelt_key():
    """The same lint that passes above fails on a typo, so the lint is really checking."""
    report = helm.lint(CHART, {"kubeletdir": "/var/lib/kubelet"}, strict=True)
    assert report["errors"], report
    assert any("kubeletdir" in e for e in report["errors"])


def names(objects, kind):
    return sorted(o["metadata"]["name"] for o in of_kind(objects, kind))


def test_default_install_is_the_local_driver_only():
    objects = rendered("default")
    assert names(objects, "CSIDriver") == ["local.berth.csi.io"]
    assert names(objects, "DaemonSet") == ["berth-node"]
    assert names(objects, "Deployment") == ["berth-local-controller"]
    assert names(objects, "StorageClass") == ["berth-block", "berth-local"]
    assert names(objects, "VolumeSnapshotClass") == ["berth-local"]
    assert names(objects, "ConfigMap") == ["berth-local-config"]
    assert names(objects, "ServiceAccount") == ["berth-local-controller", "berth-node"]
    # Metrics are opt-in.
    assert not of_kind(objects, "Service") and not of_kind(objects, "ServiceMonitor")
    assert merged_values("default")["metrics"]["enabled"] is False
    assert merged_values("default")["nfs"]["enabled"] is False


def test_nfs_only_has_no_node_local_pieces():
    objects = rendered("nfs-only")
    assert names(objects, "CSIDriver") == ["nfs.berth.csi.io"]
    assert names(objects, "Deployment") == ["berth-nfs-controller"]
    assert names(objects, "StorageClass") == ["berth-nfs"]
    assert names(objects, "ConfigMap") == ["berth-nfs-config"]
    ds = one(objects, "DaemonSet", "berth-node")
    containers = [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]
    assert containers == ["berth-nfs", "node-driver-registrar-nfs"]
    # Nothing in the node pod talks to the API server without the local driver.
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-capacity")]


def test_both_drivers():
    objects = rendered("both")
    assert names(objects, "CSIDriver") == ["local.berth.csi.io", "nfs.berth.csi.io"]
    assert names(objects, "Deployment") == ["berth-local-controller", "berth-nfs-controller"]
    assert names(objects, "StorageClass") == ["berth-block-xfs", "berth-devices", "berth-local", "berth-nfs"]
    assert names(objects, "ServiceMonitor") == ["berth"]
    assert one(objects, "Deployment", "berth-local-controller")["spec"]["replicas"] == 2
    assert one(objects, "Deployment", "berth-nfs-controller")["spec"]["replicas"] == 1


def test_custom_names_reach_every_object():
    objects = rendered("custom-driver-names")
    assert names(objects, "CSIDriver") == ["disk.storage.example.org", "share.storage.example.org"]
    for obj in objects:
        if obj["kind"] not in ("CSIDriver", "StorageClass", "VolumeSnapshotClass"):
            assert obj["metadata"]["name"].startswith("disks"), obj["metadata"]["name"]
    assert not any("berth.csi.io" in yaml.safe_dump(o) for o in objects)


def test_disabled_drivers_classes_are_skipped():
    # The default class list names an NFS class; it only appears with the NFS driver.
    assert "berth-nfs" not in names(rendered("default"), "StorageClass")
    assert "berth-nfs" in names(rendered("nfs-only"), "StorageClass")


def test_minimal_set_leaves_out_expansion_and_snapshots():
    objects = rendered("minimal")
    assert not of_kind(objects, "Deployment"), "no central resizer without local.expansion"
    assert not of_kind(objects, "VolumeSnapshotClass")
    ds = one(objects, "DaemonSet", "berth-node")
    containers = [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]
    assert "csi-snapshotter" not in containers
    assert one(objects, "StorageClass", "berth-local")["allowVolumeExpansion"] is False
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    assert ds["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith(("-resizer", "-snapshotter"))]


def test_storage_class_defaults_follow_the_driver():
    local = one(rendered("custom-kubelet-dir"), "StorageClass", "berth-local")
    nfs = one(rendered("custom-kubelet-dir"), "StorageClass", "berth-nfs")
    assert local["volumeBindingMode"] == "WaitForFirstConsumer"
    assert nfs["volumeBindingMode"] == "Immediate"
    assert local["reclaimPolicy"] == nfs["reclaimPolicy"] == "Delete"
    assert local["allowVolumeExpansion"] is True
    assert "parameters" not in local, "one pool: no pool parameter needed"
    default_class = one(rendered("local-only"), "StorageClass", "berth-local")
    assert default_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    block = one(rendered("both"), "StorageClass", "berth-block-xfs")
    assert block["parameters"] == {"pool": "fast", "csi.storage.k8s.io/fstype": "xfs"}
    assert block["mountOptions"] == ["noatime"]


def test_notes_tell_what_was_installed_and_how_to_start():
    text = notes("default")
    assert "local.berth.csi.io" in text and "berth-local" in text
    assert "kind: PersistentVolumeClaim" in text and "storageClassName: berth-local" in text
    assert "--enable-distributed-snapshotting" in text
    nfs = notes("nfs-only")
    assert "ReadWriteMany" in nfs and "nfs.example.com:/exports/k8s" in nfs


@pytest.mark.parametrize(
    "values, message",
    [
        ({"local": {"enabled": False}}, "enable at least one driver"),
        ({"nfs": {"enabled": True}}, "nfs.enabled needs at least one pool of type nfs"),
        ({"pools": [{"name": "n", "type": "nfs", "server": "s", "export": "/e"}]},
         "local.enabled needs at least one pool"),
        ({"nfs": {"enabled": True, "driverName": "local.berth.csi.io"},
          "pools": [{"name": "a", "type": "hostpath", "path": "/a"}, {"name": "n", "type": "nfs", "server": "s", "export": "/e"}]},
         "each driver needs its own name"),
        ({"storageClasses": [{"name": "x", "driver": "local", "pool": "nope"}]}, "names pool \"nope\""),
        ({"storageClasses": [{"name": "x", "driver": "local", "pool": "default", "fsType": "xfs"}]},
         "only block and device pools format filesystems"),
        ({"pools": [{"name": "a", "type": "hostpath", "path": "/a"}, {"name": "b", "type": "hostpath", "path": "/b"}],
          "storageClasses": [{"name": "x", "driver": "local"}]}, "must set `pool`"),
        ({"pools": [{"name": "a", "type": "hostpath", "path": "/a"}, {"name": "a", "type": "hostpath", "path": "/b"}],
          "storageClasses": []}, "two pools named \"a\""),
        ({"pools": [{"name": "a", "type": "hostpath", "path": "/var/lib/berth/state/a"}], "storageClasses": []},
         "inside berth's records directory"),
        ({"local": {"expansion": {"enabled": False}},
          "storageClasses": [{"name": "x", "driver": "local", "allowVolumeExpansion": True}]},
         "local.expansion.enabled is false"),
        ({"pools": [{"name": "a", "type": "hostpath", "path": "/a"},
                    {"name": "d", "type": "device", "devices": ["/dev/sdb"], "snapshotPool": "a"}],
          "storageClasses": []}, "snapshotPool \"a\" must name a block pool"),
        ({"kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet",
          "local": {"driverName": "a-rather-long-driver-name.storage.department.example.org"}},
         "a unix socket path must be at most 107"),
        ({"nfs": {"enabled": True, "stateDir": "/var/lib/berth"},
          "pools": [{"name": "a", "type": "hostpath", "path": "/a"}, {"name": "n", "type": "nfs", "server": "s", "export": "/e"}],
          "storageClasses": []}, "must differ"),
    ],
)
def test_inconsistent_values_fail_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render_values(values)
    assert message in str(err.value)
