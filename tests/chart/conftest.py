"""Shared pieces of the chart tests: the value sets, rendering with Helm v4 in-process
(helm-python-sdk binds Helm's Go SDK through libhelm_c, so no helm binary is involved),
and small helpers to find objects, containers and mounts in what Helm rendered."""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import tomllib
from typing import Any

import helm_python as helm
from helm_python import _native as helm_native
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "berth"
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs" / "deployment.md"

NFS_POOL = {
    "name": "shared",
    "type": "nfs",
    "server": "nfs.example.com",
    "export": "/exports/k8s",
    "mountOptions": ["nfsvers=4.2", "hard"],
    "onDelete": "archive",
    "permissions": "0770",
}
HOSTPATH_POOL = {
    "name": "default",
    "type": "hostpath",
    "path": "/var/lib/berth/pools/default",
    "capacityEnforcement": "auto",
}
# Pools outside berth's state directory: each gets its own hostPath mount.
DISK_POOL = {"name": "disk1", "type": "hostpath", "path": "/mnt/disk1/berth", "capacityEnforcement": "required"}
BLOCK_POOL = {"name": "fast", "type": "block", "path": "/mnt/nvme/berth", "preallocate": False}
DEVICE_POOL = {"name": "disks", "type": "device", "devices": ["/dev/disk/by-id/nvme-*", "/dev/sdc"],
               "wipe": "signatures", "snapshotPool": "fast"}

# Every value set the chart is rendered, linted and validated with. Each entry:
# (values overriding the defaults, release name, namespace).
VALUE_SETS: dict[str, tuple[dict[str, Any], str, str]] = {
    "default": ({}, "berth", "kube-system"),
    "local-only": (
        {
            "local": {"enabled": True},
            "nfs": {"enabled": False},
            "pools": [HOSTPATH_POOL, DISK_POOL],
            "storageClasses": [
                {"name": "berth-local", "driver": "local", "pool": "default", "isDefaultClass": True},
                {"name": "berth-disk1", "driver": "local", "pool": "disk1", "reclaimPolicy": "Retain"},
            ],
        },
        "storage",
        "berth-system",
    ),
    "nfs-only": (
        {
            "local": {"enabled": False},
            "nfs": {"enabled": True},
            "pools": [NFS_POOL],
        },
        "berth",
        "storage",
    ),
    "both": (
        {
            "nfs": {"enabled": True},
            "pools": [HOSTPATH_POOL, DISK_POOL, BLOCK_POOL, DEVICE_POOL, NFS_POOL],
            "storageClasses": [
                {"name": "berth-local", "driver": "local", "pool": "default"},
                {"name": "berth-block-xfs", "driver": "local", "pool": "fast", "fsType": "xfs",
                 "mountOptions": ["noatime"]},
                {"name": "berth-devices", "driver": "local", "pool": "disks", "fsType": "ext4"},
                {"name": "berth-nfs", "driver": "nfs", "pool": "shared", "mountOptions": ["nfsvers=4.2"],
                 "labels": {"team": "storage"}, "annotations": {"note": "shared"}},
            ],
            "volumeSnapshotClasses": [
                {"name": "berth-local", "driver": "local", "isDefaultClass": True},
                {"name": "berth-nfs", "driver": "nfs", "deletionPolicy": "Retain"},
            ],
            "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
            "controller": {"local": {"replicas": 2}},
        },
        "berth",
        "kube-system",
    ),
    "custom-kubelet-dir": (
        {
            "kubeletDir": "/var/lib/k0s/kubelet",
            "nfs": {"enabled": True},
            "pools": [HOSTPATH_POOL, NFS_POOL],
            "storageClasses": [
                {"name": "berth-local", "driver": "local"},
                {"name": "berth-nfs", "driver": "nfs"},
            ],
        },
        "berth",
        "kube-system",
    ),
    "custom-driver-names": (
        {
            "fullnameOverride": "disks",
            "local": {"driverName": "disk.storage.example.org", "stateDir": "/srv/disk-records"},
            "nfs": {"enabled": True, "driverName": "share.storage.example.org", "stateDir": "/srv/share-records"},
            "pools": [DISK_POOL, NFS_POOL],
            "storageClasses": [
                {"name": "fast-local", "driver": "local", "pool": "disk1"},
                {"name": "shared", "driver": "nfs"},
            ],
            "volumeSnapshotClasses": [
                {"name": "fast-local", "driver": "local"},
                {"name": "shared", "driver": "nfs"},
            ],
            "metrics": {"enabled": True},
        },
        "prod",
        "storage",
    ),
    "nfs-drill": (
        {
            "local": {"enabled": False},
            "nfs": {"enabled": True},
            "pools": [NFS_POOL],
            "drill": {
                "enabled": True,
                "metricsDir": "/var/lib/node-exporter/textfile",
                "scratchSizeLimit": "20Gi",
                "nodeSelector": {"kubernetes.io/hostname": "storage-1"},
                "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "imagePullSecrets": [{"name": "registry"}],
        },
        "backup",
        "storage",
    ),
    "minimal": (
        {
            "local": {"expansion": {"enabled": False}},
            "snapshots": {"enabled": False},
            "storageClasses": [{"name": "berth-local", "driver": "local", "pool": "default"}],
            "node": {"hostNetwork": True, "tolerations": [], "nodeSelector": {"storage": "local"}},
        },
        "berth",
        "kube-system",
    ),
}


NOTICES: list[str] = []


def skip_notice(what: str, reason: str) -> None:
    """Says out loud that a check did not run, so nothing passes silently: the line is
    printed with the test's output and again in the summary at the end of the run."""
    line = f"SKIPPED: {what}: {reason}"
    print(line)
    if line not in NOTICES:
        NOTICES.append(line)


def pytest_terminal_summary(terminalreporter):
    if NOTICES:
        terminalreporter.section("checks that did not run")
        for line in NOTICES:
            terminalreporter.write_line(line)


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


# What a cluster with the VolumeSnapshot CRDs reports to Helm (`helm template
# --api-versions` passes the same). The value sets render as on such a cluster.
SNAPSHOT_API = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass"
WITH_SNAPSHOT_API = (SNAPSHOT_API,)


def render_with(values: dict[str, Any], release: str, namespace: str, api_versions: tuple[str, ...]) -> dict[str, str]:
    """Chart.render with the cluster's API versions (.Capabilities.APIVersions): the
    Python binding does not expose the option yet, libhelm_c's render options do."""
    opts = {"name": release, "namespace": namespace, "is_install": True, "api_versions": list(api_versions)}
    return json.loads(helm_native.call_string("helm_render", chart()._raw(), json.dumps(copy.deepcopy(values)),
                                              json.dumps(opts)))


@functools.cache
def _render(value_set: str) -> dict[str, str]:
    values, release, namespace = VALUE_SETS[value_set]
    return render_with(values, release, namespace, WITH_SNAPSHOT_API)


def render_values(values: dict[str, Any], release: str = "berth", namespace: str = "kube-system",
                  api_versions: tuple[str, ...] = WITH_SNAPSHOT_API) -> dict[str, str]:
    return render_with(values, release, namespace, api_versions)


def parse_manifests(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every object Helm rendered, NOTES.txt left out."""
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                objects.append(doc)
    return objects


@functools.cache
def rendered(value_set: str) -> tuple[dict[str, Any], ...]:
    return tuple(parse_manifests(_render(value_set)))


def notes(value_set: str) -> str:
    return next(text for path, text in _render(value_set).items() if path.endswith("NOTES.txt"))


def merged_values(value_set: str) -> dict[str, Any]:
    return chart().merge_values(copy.deepcopy(VALUE_SETS[value_set][0]))


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "__template__"}


def of_kind(objects, kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("DaemonSet", "Deployment", "StatefulSet")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def flag(container: dict[str, Any], name: str) -> str | None:
    """The value of --name=value (or True for a bare --name) in a container's args."""
    for arg in container.get("args", []):
        if arg == f"--{name}":
            return "true"
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def is_berth(container: dict[str, Any]) -> bool:
    return container.get("args", [None])[0] == "serve"


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [v for v in spec.get("volumes", []) if v["name"] == name]
    assert len(matches) == 1, f"volume {name}: {len(matches)} definitions"
    return matches[0]


def resolve_path(container: dict[str, Any], path: str) -> tuple[str, str]:
    """Which volume a path inside the container lies on, and the path relative to the
    volume's root: the longest matching mountPath wins, as in the kubelet."""
    best = None
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            if best is None or len(root) > len(best[1]):
                best = (mount["name"], root)
    assert best is not None, f"{container['name']}: {path} is on no volume"
    return best[0], path[len(best[1]):].lstrip("/")


@functools.cache
def cargo_version() -> str:
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


@functools.cache
def cargo_package() -> dict[str, Any]:
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]


def berth_binary() -> pathlib.Path | None:
    """A berth binary built from this checkout, if there is one (CI builds it first, into
    CARGO_TARGET_DIR when that is set)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    for candidate in (os.environ.get("BERTH_BIN"), target / "debug" / "berth", target / "release" / "berth"):
        if candidate and pathlib.Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return pathlib.Path(candidate)
    return None


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request) -> str:
    return request.param
