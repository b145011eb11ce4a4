"""The examples apply as they are, in the order README.md gives, on the default install:
each names a class the default values render (or one it brings), a raw block claim gets a
pool that can serve it, a clone or restore is never smaller than its source at any point
of the sequence, no pod needs a node name filled in to find its source, and no container
writes to a mount it made read-only."""

from __future__ import annotations

import re

import yaml

from conftest import EXAMPLES, REPO, of_kind, rendered

# README.md, "Install on Kubernetes": the workflows in the order users try them.
ORDER = [
    ("a PVC and pod", "pvc-and-pod.yaml"),
    ("a StatefulSet", "statefulset.yaml"),
    ("raw block", "raw-block.yaml"),
    ("a snapshot", "snapshot.yaml"),
    ("a restore", "restore-from-snapshot.yaml"),
    ("a clone", "clone.yaml"),
    ("expansion", "expand-pvc.yaml"),
    ("a ReadWriteOncePod claim", "read-write-once-pod.yaml"),
    ("a Delete/Retain pair of classes", "reclaim-policies.yaml"),
    ("a static PV", "static-pv.yaml"),
    ("an inline ephemeral volume", "inline-ephemeral.yaml"),
    ("a VolumeAttributesClass", "volume-attributes.yaml"),
]
# Not part of the default install: the NFS driver is off by default.
NEEDS_NFS = {"nfs-shared.yaml"}
# Group snapshots are opt-in (snapshots.groups) and need their CRDs: test_group_snapshots.py.
NEEDS_GROUPS = {"group-snapshot.yaml"}
# Snapshot copies need a shared pool the local driver copies to (snapshots.copyPools).
NEEDS_COPIES = {"snapshot-copy.yaml"}
# Alerts on the restore drill need it on (drill.*) and prometheus-operator: test_drill.py.
NEEDS_DRILL = {"drill-alerts.yaml"}
# A static PV publishes a directory that exists on one named node: the node is the point.
NAMES_ITS_NODE = {"static-pv.yaml"}
# Inline ephemeral volumes are an opt-in of the driver and the pool (off by default).
OPT_IN = {"inline-ephemeral.yaml": ("local.inlineEphemeral", "ephemeral: true")}


def docs(name):
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    return int(m.group(1)) * units.get(m.group(2), 1)


def pods(objects):
    out = [o for o in objects if o["kind"] == "Pod"]
    out += [o["spec"]["template"] | {"kind": "PodTemplate"} for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    return out


def test_readme_lists_every_example_in_this_order():
    readme = " ".join((REPO / "README.md").read_text().split())
    readme = readme[readme.index("`examples/` holds"):]
    positions = [readme.index(phrase) for phrase, _ in ORDER]
    assert positions == sorted(positions), "README.md lists the examples in another order"
    files = {p.name for p in EXAMPLES.glob("*.yaml")}
    expected = {f for _, f in ORDER} | NEEDS_NFS | NEEDS_GROUPS | NEEDS_COPIES | NEEDS_DRILL
    assert files == expected, files ^ expected


def test_examples_use_classes_and_pools_of_the_default_install():
    objects = rendered("default")
    classes = {o["metadata"]["name"]: o for o in of_kind(objects, "StorageClass")}
    config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    pools = {p["name"]: p for p in config["pools"]}
    for _, name in ORDER:
        objs = docs(name)
        own = {o["metadata"]["name"]: o for o in objs if o["kind"] == "StorageClass"}
        for o in objs:
            if o["kind"] == "StorageClass":
                assert o["metadata"]["name"] not in classes, f"{name} redefines the chart's class {o['metadata']['name']}"
                assert o["parameters"]["pool"] in pools, name
        claims = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
        for s in (o for o in objs if o["kind"] == "StatefulSet"):
            claims += s["spec"]["volumeClaimTemplates"]
        for claim in claims:
            cls = claim["spec"].get("storageClassName")
            if cls == "":
                continue  # binds a pre-created PersistentVolume
            sc = classes.get(cls) or own.get(cls)
            assert sc, f"{name}: class {cls} is neither in the default install nor in the file"
            pool = pools[sc["parameters"]["pool"]]
            if claim["spec"].get("volumeMode") == "Block":
                assert pool["type"] in ("block", "device"), f"{name}: raw block on a {pool['type']} pool"
        for o in objs:
            for vol in (o.get("spec", {}).get("volumes") or []):
                if "csi" in vol:
                    assert vol["csi"]["volumeAttributes"].get("pool", "default") in pools, name


def test_clones_and_restores_fit_their_source_at_every_step():
    sizes = {}  # claim name -> largest size any example asks for
    for _, name in ORDER:
        for o in docs(name):
            if o["kind"] == "PersistentVolumeClaim":
                size = quantity(o["spec"]["resources"]["requests"]["storage"])
                sizes[o["metadata"]["name"]] = max(size, sizes.get(o["metadata"]["name"], 0))
    snapshots = {o["metadata"]["name"]: o["spec"]["source"]["persistentVolumeClaimName"]
                 for o in docs("snapshot.yaml") if o["kind"] == "VolumeSnapshot"}
    checked = 0
    for _, name in ORDER:
        for o in docs(name):
            if o["kind"] != "PersistentVolumeClaim" or "dataSource" not in o["spec"]:
                continue
            source = o["spec"]["dataSource"]
            claim = source["name"] if source["kind"] == "PersistentVolumeClaim" else snapshots[source["name"]]
            want = quantity(o["spec"]["resources"]["requests"]["storage"])
            assert want >= sizes[claim], f"{name}: {want} bytes is smaller than {claim} may grow ({sizes[claim]})"
            checked += 1
    assert checked == 2


def test_no_node_name_to_fill_in():
    for _, name in ORDER:
        if name in NAMES_ITS_NODE:
            continue
        for pod in pods(docs(name)):
            spec = pod["spec"]
            assert "nodeName" not in spec and "nodeSelector" not in spec, f"{name} pins a node"
            assert "nodeAffinity" not in spec.get("affinity", {}), f"{name} pins a node"


def test_pods_that_follow_a_source_follow_a_pod_that_exists():
    labels = [p["metadata"].get("labels", {}) for p in pods(docs("pvc-and-pod.yaml"))]
    for name in ("clone.yaml", "restore-from-snapshot.yaml"):
        (pod,) = pods(docs(name))
        (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert any(term["labelSelector"]["matchLabels"].items() <= l.items() for l in labels), name


WRITES = re.compile(r"(>>?|\btouch\b|\bdd\b[^|&;]*\bof=|\bmkdir\b|\brm\b)\s*(\S+)")


def test_no_container_writes_to_a_read_only_mount():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for pod in pods([d for d in yaml.safe_load_all(path.read_text()) if d]):
            for c in pod["spec"]["containers"]:
                script = " ".join(c.get("command", []) + c.get("args", []))
                read_only = [m["mountPath"] for m in c.get("volumeMounts", []) if m.get("readOnly")]
                for _, target in WRITES.findall(script):
                    for root in read_only:
                        assert not target.startswith(root), f"{path.name}: {c['name']} writes {target} on read-only {root}"


def test_read_write_once_pod_and_reclaim_pair_exist():
    (claim,) = [o for o in docs("read-write-once-pod.yaml") if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    policies = {o["reclaimPolicy"] for o in docs("reclaim-policies.yaml") if o["kind"] == "StorageClass"}
    assert policies == {"Delete", "Retain"}


def test_examples_that_need_an_opt_in_say_which():
    from conftest import render_values, parse_manifests
    (driver,) = [o for o in rendered("default") if o["kind"] == "CSIDriver"]
    assert "Ephemeral" not in driver["spec"]["volumeLifecycleModes"], "the default install has no inline volumes"
    for name, needs in OPT_IN.items():
        header = (EXAMPLES / name).read_text().split("apiVersion:")[0]
        for need in needs:
            assert need in header, f"{name} does not say it needs {need}"
    # With the opt-in the example's volume is served.
    values = {"local": {"inlineEphemeral": True},
              "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default",
                         "capacityEnforcement": "required", "ephemeral": True},
                        {"name": "block", "type": "block", "path": "/var/lib/berth/pools/block"}]}
    (driver,) = [o for o in parse_manifests(render_values(values)) if o["kind"] == "CSIDriver"]
    assert "Ephemeral" in driver["spec"]["volumeLifecycleModes"]
