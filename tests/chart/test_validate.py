"""Every rendered object and every manifest in examples/ is valid against the Kubernetes
schemas, in strict mode (unknown fields are errors), for a current Kubernetes release.

kubernetes-validate ships the schemas of Kubernetes' own kinds only. For the custom
kinds this chart and the examples use:
- ServiceMonitor and PrometheusRule are checked against prometheus-operator's published
  CRD schemas, as the typed models of cloudcoil-models-prometheus-operator (generated from
  those CRDs); a field the model does not know is caught by comparing the object with its
  round trip.
- VolumeSnapshotClass and VolumeSnapshot, VolumeGroupSnapshotClass and
  VolumeGroupSnapshot have no published schema in any package this machine can install:
  the schema check is reported as SKIPPED by kind, and the fields the snapshot CRDs
  require are checked by hand instead.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import kubernetes_validate
import kubernetes_validate.utils as kv
import pytest
import yaml

from conftest import EXAMPLES, rendered, skip_notice, strip

KUBE_VERSION = kv.latest_version()
SNAPSHOT_KINDS = {"VolumeSnapshotClass", "VolumeSnapshot", "VolumeSnapshotContent"}
GROUP_SNAPSHOT_KINDS = {"VolumeGroupSnapshotClass", "VolumeGroupSnapshot"}
PROMETHEUS_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_validates_against_a_current_kubernetes():
    major, minor = (int(x) for x in KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 34), f"kubernetes-validate only knows Kubernetes {KUBE_VERSION}"
    print(f"validating against Kubernetes {KUBE_VERSION} (kubernetes-validate {kubernetes_validate.__version__})")


def check_prometheus_object(obj):
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"]).model_validate(obj)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert back == obj, f"{obj['kind']} has fields its CRD does not define:\n{obj}\n!=\n{back}"


def check_snapshot_object(obj, where):
    """The fields snapshot.storage.k8s.io/v1 requires, checked by hand."""
    print(f"{where}: {obj['kind']} {obj['metadata']['name']}: fields checked by hand")
    skip_notice(f"schema validation of kind {obj['kind']}",
                "kubernetes-validate has no schema for this CRD kind and no installable package ships one; "
                "its required fields are checked by hand instead")
    assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
    if obj["kind"] == "VolumeSnapshotClass":
        assert set(obj) <= {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
        assert obj["driver"] and obj["deletionPolicy"] in ("Delete", "Retain")
    elif obj["kind"] == "VolumeSnapshot":
        assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
        assert set(obj["spec"]) <= {"source", "volumeSnapshotClassName"}
        source = obj["spec"]["source"]
        assert len(source) == 1 and set(source) <= {"persistentVolumeClaimName", "volumeSnapshotContentName"}
    else:
        raise AssertionError(f"unexpected snapshot kind {obj['kind']}")


def check_group_snapshot_object(obj, where):
    """The fields groupsnapshot.storage.k8s.io/v1 requires, checked by hand."""
    print(f"{where}: {obj['kind']} {obj['metadata']['name']}: fields checked by hand")
    skip_notice(f"schema validation of kind {obj['kind']}",
                "kubernetes-validate has no schema for this CRD kind and no installable package ships one; "
                "its required fields are checked by hand instead")
    assert obj["apiVersion"] == "groupsnapshot.storage.k8s.io/v1"
    if obj["kind"] == "VolumeGroupSnapshotClass":
        assert set(obj) <= {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
        assert obj["driver"] and obj["deletionPolicy"] in ("Delete", "Retain")
    else:
        assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
        assert set(obj["spec"]) <= {"source", "volumeGroupSnapshotClassName"}
        source = obj["spec"]["source"]
        assert len(source) == 1 and set(source) <= {"selector", "volumeGroupSnapshotContentName"}
        if "selector" in source:
            assert set(source["selector"]) <= {"matchLabels", "matchExpressions"} and source["selector"]


def validate(obj, where):
    obj = strip(obj)
    kind = obj["kind"]
    if kind in PROMETHEUS_KINDS:
        check_prometheus_object(obj)
    elif kind in SNAPSHOT_KINDS:
        check_snapshot_object(obj, where)
    elif kind in GROUP_SNAPSHOT_KINDS:
        check_group_snapshot_object(obj, where)
    else:
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{where}: {kind} {obj['metadata'].get('name')}: {e.message} at {list(e.absolute_path)}")
        except kv.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message}")


def test_rendered_objects_are_valid(value_set):
    kinds = set()
    for obj in rendered(value_set):
        validate(obj, f"value set {value_set}")
        kinds.add(obj["kind"])
    print(f"{value_set}: validated {sorted(kinds)}")


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLE_FILES) >= 8, EXAMPLE_FILES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_valid(path: pathlib.Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no object"
    for obj in docs:
        validate(obj, path.name)


def test_kubernetes_validate_cli_accepts_the_plain_examples(tmp_path):
    """The command-line tool itself, --strict, on every example without custom kinds."""
    files = []
    custom = SNAPSHOT_KINDS | GROUP_SNAPSHOT_KINDS | PROMETHEUS_KINDS
    for path in EXAMPLE_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not any(d["kind"] in custom for d in docs):
            files.append(str(path))
    assert files
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBE_VERSION, *files],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_catches_a_wrong_field():
    """The validator is really strict: a misspelt field in a rendered object fails."""
    ds = next(o for o in rendered("default") if o["kind"] == "DaemonSet")
    broken = strip(ds)
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBE_VERSION, strict=True)


def test_example_classes_and_drivers_match_the_chart_defaults():
    """Examples use the default class and driver names, or define their own class."""
    default_classes = {o["metadata"]["name"]: o for o in rendered("default") if o["kind"] == "StorageClass"}
    nfs_classes = {o["metadata"]["name"]: o for o in rendered("nfs-only") if o["kind"] == "StorageClass"}
    known = {**default_classes, **nfs_classes}
    drivers = {"local.berth.csi.io", "nfs.berth.csi.io"}
    for path in EXAMPLE_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        own = {d["metadata"]["name"] for d in docs if d["kind"] == "StorageClass"}
        for d in docs:
            text = yaml.safe_dump(d)
            if d["kind"] == "StorageClass":
                assert d["provisioner"] in drivers
            for line in text.splitlines():
                if "storageClassName:" in line:
                    name = line.split(":", 1)[1].strip()
                    if name == "''":
                        continue  # binds a pre-created PersistentVolume, no class
                    assert name in known or name in own, f"{path.name}: unknown StorageClass {name}"
                if line.strip().startswith("driver:"):
                    assert line.split(":", 1)[1].strip() in drivers, f"{path.name}: {line}"

