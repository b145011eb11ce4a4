"""Group snapshots are opt-in (snapshots.groups): off, every snapshotter keeps the feature
gate off and no group rule or class renders; on, the node's snapshotter (the local driver)
turns it on with the groupsnapshot.storage.k8s.io rules upstream's manifests give, its
classes render where the API is served, and the NFS controller's snapshotter keeps it off
(NFS volumes cannot be frozen together). The example names a class the chart renders and
a class whose volumes berth can freeze."""

from __future__ import annotations

import yaml

from conftest import DOCS, EXAMPLES, HOSTPATH_POOL, NFS_POOL, flag, of_kind, one, parse_manifests, pod_spec, render_values

GROUP_API = "groupsnapshot.storage.k8s.io/v1/VolumeGroupSnapshotClass"
# Both drivers: the node's snapshotter and the NFS controller's.
BOTH = {"nfs": {"enabled": True}, "pools": [HOSTPATH_POOL, NFS_POOL], "storageClasses": []}


def render(values=None, api_versions=()):
    return parse_manifests(render_values(values or {}, api_versions=api_versions))


def snapshotters(objects):
    """(workload kind, csi-snapshotter container) for every workload that runs one."""
    out = []
    for w in of_kind(objects, "DaemonSet") + of_kind(objects, "Deployment"):
        for c in pod_spec(w)["containers"]:
            if c["name"] == "csi-snapshotter":
                out.append((w["kind"], c))
    return out


def group_rules(objects):
    role = next(r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-snapshotter"))
    return [r for r in role["rules"] if "groupsnapshot.storage.k8s.io" in r["apiGroups"]]


def test_off_by_default():
    objects = render(BOTH, (GROUP_API,))
    gates = [flag(c, "feature-gates") for _, c in snapshotters(objects)]
    assert gates and all(g == "CSIVolumeGroupSnapshot=false" for g in gates), gates
    assert not group_rules(objects)
    assert not of_kind(objects, "VolumeGroupSnapshotClass")


def test_on_turns_the_node_snapshotter_on_with_its_rules_and_class():
    values = {"snapshots": {"groups": True}} | BOTH
    objects = render(values, (GROUP_API,))
    gates = {kind: flag(c, "feature-gates") for kind, c in snapshotters(objects)}
    assert gates == {"DaemonSet": "CSIVolumeGroupSnapshot=true", "Deployment": "CSIVolumeGroupSnapshot=false"}, gates
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in group_rules(objects)}
    assert rules == {
        ("volumegroupsnapshotclasses",): {"get", "list", "watch"},
        ("volumegroupsnapshotcontents",): {"get", "list", "watch", "update", "patch"},
        ("volumegroupsnapshotcontents/status",): {"update", "patch"},
    }
    cls = one(objects, "VolumeGroupSnapshotClass", "berth-local-group")
    assert cls["apiVersion"] == "groupsnapshot.storage.k8s.io/v1"
    assert cls["driver"] == "local.berth.csi.io" and cls["deletionPolicy"] == "Delete"


def test_classes_wait_for_the_api_unless_always():
    assert not of_kind(render({"snapshots": {"groups": True}}), "VolumeGroupSnapshotClass")
    always = render({"snapshots": {"groups": True, "createClasses": "always"}})
    assert [c["metadata"]["name"] for c in of_kind(always, "VolumeGroupSnapshotClass")] == ["berth-local-group"]


def test_the_example_uses_a_rendered_group_class_and_a_freezable_class():
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "group-snapshot.yaml").read_text()) if d]
    objects = render({"snapshots": {"groups": True}}, (GROUP_API,))
    group = next(d for d in docs if d["kind"] == "VolumeGroupSnapshot")
    assert group["spec"]["volumeGroupSnapshotClassName"] in {
        c["metadata"]["name"] for c in of_kind(objects, "VolumeGroupSnapshotClass")
    }
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    selected = group["spec"]["source"]["selector"]["matchLabels"]
    assert len(claims) == 2 and all(selected.items() <= c["metadata"]["labels"].items() for c in claims)
    classes = {c["metadata"]["name"]: c for c in of_kind(objects, "StorageClass")}
    config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    pools = {p["name"]: p["type"] for p in config["pools"]}
    for claim in claims:
        pool = classes[claim["spec"]["storageClassName"]]["parameters"]["pool"]
        assert pools[pool] in ("block", "device"), f"{claim['metadata']['name']}: a {pools[pool]} pool cannot be frozen"


def test_docs_explain_the_labelling_gap():
    doc = " ".join(DOCS.read_text().split())
    assert "snapshots.groups=true" in doc
    assert "kubectl label volumegroupsnapshotcontent" in doc
    assert "snapshot.storage.kubernetes.io/managed-by: <node>" in doc, "the per-node class label"
