"""VolumeSnapshotClasses render only where the cluster serves their API: an install on a
cluster without the VolumeSnapshot CRDs (kind, kubeadm, k3s out of the box) must not stop
at "no matches for kind VolumeSnapshotClass", and NOTES.txt says what is missing."""

from __future__ import annotations

from conftest import DOCS, SNAPSHOT_API, of_kind, parse_manifests, render_values


def render(values=None, api_versions=()):
    manifests = render_values(values or {}, api_versions=api_versions)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    return parse_manifests(manifests), notes


def test_no_snapshot_class_without_the_api():
    objects, notes = render()
    assert not of_kind(objects, "VolumeSnapshotClass")
    assert "no VolumeSnapshotClass was created" in notes
    assert "snapshot.storage.k8s.io/v1" in notes and "helm upgrade" in notes
    # The snapshotter sidecar stays: it waits for the CRDs without failing the install.
    ds = of_kind(objects, "DaemonSet")[0]
    assert "csi-snapshotter" in [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]


def test_snapshot_classes_with_the_api():
    objects, notes = render(api_versions=(SNAPSHOT_API,))
    assert [o["metadata"]["name"] for o in of_kind(objects, "VolumeSnapshotClass")] == ["berth-local"]
    assert "no VolumeSnapshotClass was created" not in notes
    assert "--enable-distributed-snapshotting" in notes


def test_always_renders_the_classes_without_the_api():
    objects, notes = render({"snapshots": {"createClasses": "always"}})
    assert [o["metadata"]["name"] for o in of_kind(objects, "VolumeSnapshotClass")] == ["berth-local"]
    assert "no VolumeSnapshotClass was created" not in notes


def test_snapshots_disabled_renders_no_class_and_no_warning():
    objects, notes = render({"snapshots": {"enabled": False}}, api_versions=(SNAPSHOT_API,))
    assert not of_kind(objects, "VolumeSnapshotClass")
    assert "no VolumeSnapshotClass was created" not in notes


def test_docs_explain_the_guard_and_the_snapshot_controller_flag():
    doc = DOCS.read_text()
    assert "--enable-distributed-snapshotting" in doc
    assert "snapshots.createClasses" in doc
    assert f"--api-versions {SNAPSHOT_API}" in doc
