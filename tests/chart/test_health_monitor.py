"""csi-external-health-monitor-controller (healthMonitor): one per node beside the berth that
holds the node-local volumes' records, without leader election; one in the NFS controller,
leader elected and probed like its other sidecars; none in the node-local expansion
controller, whose berth holds no records. Its flags, ports, RBAC and off switches."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import DOCS, VALUE_SETS, flag, merged_values, of_kind, one, parse_manifests, pod_spec, render_values, workloads

NFS_POOL = {"name": "shared", "type": "nfs", "server": "nfs.example.com", "export": "/exports/k8s"}
WITH_NFS = {"nfs": {"enabled": True},
            "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"}, NFS_POOL],
            "storageClasses": []}
NAME = "csi-health-monitor"
IMAGE = "registry.k8s.io/sig-storage/csi-external-health-monitor-controller:v0.18.0"
# Exactly what the sidecar does with the API without its node watcher (external-health-monitor
# v0.18.0: PV, PVC and event informers, an event recorder that creates and patches).
RULES = [
    {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch"]},
]


def objects_of(values):
    return parse_manifests(render_values(values))


def containers(workload):
    return {c["name"]: c for c in pod_spec(workload)["containers"]}


def monitors(objects):
    """{workload name: the health monitor container} for every workload that runs one."""
    return {w["metadata"]["name"]: containers(w)[NAME] for w in workloads(objects) if NAME in containers(w)}


def test_default_runs_one_per_node_and_none_in_the_expansion_controller():
    objects = objects_of({})
    found = monitors(objects)
    assert set(found) == {"berth-node"}
    c = found["berth-node"]
    assert c["image"] == IMAGE
    assert flag(c, "csi-address") == "/csi/csi.sock"
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]} == {"local-socket-dir": "/csi"}
    # Each node's copy reports its own node's volumes: no lease to share.
    assert flag(c, "leader-election") is None
    assert flag(c, "timeout") == "60s"
    assert flag(c, "list-volumes-interval") == "5m"
    assert flag(c, "monitor-interval") == "1m"
    # Like the node's provisioner: no leader election, so an endpoint only for metrics.
    assert flag(c, "http-endpoint") is None and "ports" not in c and "livenessProbe" not in c
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    ds = one(objects, "DaemonSet", "berth-node")
    assert pod_spec(ds)["automountServiceAccountToken"] is True


def test_nfs_controller_runs_it_leader_elected_and_probed():
    objects = objects_of(WITH_NFS)
    found = monitors(objects)
    assert set(found) == {"berth-node", "berth-nfs-controller"}
    c = found["berth-nfs-controller"]
    assert flag(c, "leader-election") == "true"
    assert flag(c, "leader-election-namespace") == "$(NAMESPACE)"
    assert flag(c, "http-endpoint") == ":9813"
    assert c["ports"] == [{"name": "sc-monitor", "containerPort": 9813, "protocol": "TCP"}]
    probe = c["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz/leader-election", "port": "sc-monitor"}
    # It dials the NFS controller's berth, which holds every NFS volume's records.
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]} == {"socket-dir": "/csi"}
    # The node pod's NFS side has no Controller service: no monitor on its socket.
    node = found["berth-node"]
    assert [m["name"] for m in node["volumeMounts"]] == ["local-socket-dir"]


def test_values_reach_the_flags_and_the_image():
    values = {**WITH_NFS, "healthMonitor": {"listVolumesInterval": "30s", "monitorInterval": "15s", "timeout": "2m"},
              "sidecars": {"healthMonitor": {"repository": "mirror.example.com/hm", "tag": "v9", "digest": "sha256:" + "a" * 64}}}
    for c in monitors(objects_of(values)).values():
        assert flag(c, "list-volumes-interval") == "30s"
        assert flag(c, "monitor-interval") == "15s"
        assert flag(c, "timeout") == "2m"
        assert c["image"] == "mirror.example.com/hm:v9@sha256:" + "a" * 64


@pytest.mark.parametrize("values", [{"healthMonitor": {"enabled": False}}, {**WITH_NFS, "healthMonitor": {"enabled": False}}])
def test_disabled_renders_no_container_and_no_role(values):
    objects = objects_of(values)
    assert monitors(objects) == {}
    assert not [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-health-monitor")]
    assert not [b for b in of_kind(objects, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-health-monitor")]


def test_node_local_off_keeps_the_nfs_controllers():
    objects = objects_of({**WITH_NFS, "healthMonitor": {"nodeLocal": False}})
    assert set(monitors(objects)) == {"berth-nfs-controller"}
    binding = one(objects, "ClusterRoleBinding", "berth-health-monitor")
    assert [s["name"] for s in binding["subjects"]] == ["berth-nfs-controller"]
    # Without it the local side of the DaemonSet keeps its own sidecars' rights only.
    assert not monitors(objects_of({"healthMonitor": {"nodeLocal": False}}))


def test_rbac_is_exactly_what_it_uses_and_bound_where_it_runs(value_set):
    objects = parse_manifests(render_values(VALUE_SETS[value_set][0], VALUE_SETS[value_set][1], VALUE_SETS[value_set][2]))
    running = {pod_spec(w)["serviceAccountName"] for w in workloads(objects) if NAME in containers(w)}
    roles = [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-health-monitor")]
    if not running:
        assert not roles
        return
    (role,) = roles
    assert role["rules"] == RULES
    (binding,) = [b for b in of_kind(objects, "ClusterRoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    namespace = VALUE_SETS[value_set][2]
    assert {s["name"] for s in binding["subjects"]} == running
    assert all(s["namespace"] == namespace for s in binding["subjects"])
    # The leader-elected copy can hold its lease in the release namespace.
    for w in workloads(objects):
        c = containers(w).get(NAME)
        if c is not None and flag(c, "leader-election"):
            sa = pod_spec(w)["serviceAccountName"]
            assert any(s["name"] == sa for b in of_kind(objects, "RoleBinding") if b["roleRef"]["name"].endswith("-leader-election")
                       for s in b["subjects"]), sa


def test_ports_do_not_clash_with_the_other_sidecars(value_set):
    values = merged_values(value_set)
    values["metrics"]["enabled"] = True
    release, namespace = VALUE_SETS[value_set][1:]
    objects = parse_manifests(render_values(values, release, namespace))
    for w in workloads(objects):
        spec = pod_spec(w)
        ports = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
        names = [p["name"] for c in spec["containers"] for p in c.get("ports", [])]
        endpoints = [a.split("=", 1)[1].rpartition(":")[2] for c in spec["containers"] for a in c.get("args", [])
                     if a.startswith(("--http-endpoint=", "--metrics-address=", "--health-address="))]
        assert len(ports) == len(set(ports)), f"{value_set}: {w['metadata']['name']} {sorted(ports)}"
        assert len(names) == len(set(names)), f"{value_set}: {w['metadata']['name']} {sorted(names)}"
        assert len(endpoints) == len(set(endpoints)), f"{value_set}: {w['metadata']['name']} {sorted(endpoints)}"
        c = containers(w).get(NAME)
        if c is not None and w["kind"] == "DaemonSet":
            port = values["node"]["ports"]["localHealthMonitor"]
            assert flag(c, "http-endpoint") == f"[::]:{port}"
            assert c["ports"] == [{"name": "sc-monitor", "containerPort": port, "protocol": "TCP"}]


def test_metrics_service_and_monitor_scrape_it():
    objects = objects_of({**WITH_NFS, "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}})
    (svc,) = of_kind(objects, "Service")
    assert {"name": "sc-monitor", "port": 9813, "targetPort": "sc-monitor", "protocol": "TCP"} in svc["spec"]["ports"]
    (sm,) = of_kind(objects, "ServiceMonitor")
    assert "sc-monitor" in {e["port"] for e in sm["spec"]["endpoints"]}
    off = objects_of({"metrics": {"enabled": True}, "healthMonitor": {"enabled": False}})
    (svc,) = of_kind(off, "Service")
    assert "sc-monitor" not in {p["name"] for p in svc["spec"]["ports"]}


def test_escape_hatches_reach_it():
    hatch = {"extraArgs": ["--worker-threads=4"], "resources": {"requests": {"cpu": "5m"}}}
    values = {**WITH_NFS, "node": {"containers": {NAME: hatch}}, "controller": {"containers": {NAME: hatch}}}
    for c in monitors(objects_of(values)).values():
        assert c["args"][-1] == "--worker-threads=4"
        assert c["resources"] == hatch["resources"]


@pytest.mark.parametrize("values", [{"healthMonitor": {"enable": True}}, {"healthMonitor": {"timeout": "soon"}},
                                    {"sidecars": {"healthMonitor": {"digest": "latest"}}}])
def test_schema_refuses_misspelt_or_malformed_values(values):
    with pytest.raises(helm.HelmValuesError):
        render_values(values)


def test_docs_say_where_it_runs():
    doc = DOCS.read_text()
    section = doc[doc.index("### Volume health") + 1:]
    section = section[:section.index("\n#")]
    for needed in ("VolumeConditionAbnormal", "ListVolumes", "leader", "DaemonSet", "`healthMonitor.nodeLocal`",
                   "expansion controller"):
        assert needed in section, needed
