"""What the chart does not model goes through escape hatches, while the schema stays
strict for what it knows: per-container extraArgs, extraEnv, extraVolumeMounts, resources
and securityContext; extra volumes; pod securityContexts; scheduling per component; and
node groups, each with its own pools, DaemonSet and ConfigMap."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from conftest import DOCS, chart, flag, is_berth, of_kind, one, parse_manifests, pod_spec, render_values, resolve_path, volume

from test_wiring import check_berth_config

NFS_POOL = {"name": "shared", "type": "nfs", "server": "nfs.example.com", "export": "/exports/k8s"}


def objects_of(values):
    return parse_manifests(render_values(values))


def containers(workload):
    return {c["name"]: c for c in pod_spec(workload)["containers"]}


HATCH = {
    "extraArgs": ["--kube-api-qps=50"],
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra", "readOnly": True}],
    "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "1Gi"}},
    "securityContext": {"runAsUser": 1000},
}


def check_hatch(c, before):
    assert c["args"] == before["args"] + HATCH["extraArgs"], "extraArgs are appended"
    assert c["env"] == before.get("env", []) + HATCH["extraEnv"]
    assert c["volumeMounts"] == before["volumeMounts"] + HATCH["extraVolumeMounts"]
    assert c["resources"] == HATCH["resources"], "resources replace the chart's"
    assert c["securityContext"] == {**before["securityContext"], "runAsUser": 1000}, "securityContext is merged"


@pytest.mark.parametrize("name", ["berth", "csi-provisioner", "node-driver-registrar"])
def test_node_container_escape_hatches(name):
    before = containers(one(objects_of({}), "DaemonSet", "berth-node"))[name]
    objects = objects_of({"node": {"containers": {name: HATCH}, "extraVolumes": [{"name": "extra", "emptyDir": {}}]}})
    ds = one(objects, "DaemonSet", "berth-node")
    check_hatch(containers(ds)[name], before)
    assert volume(pod_spec(ds), "extra") == {"name": "extra", "emptyDir": {}}
    # Only that container changed.
    others = {n: c for n, c in containers(ds).items() if n != name}
    assert others == {n: c for n, c in containers(one(objects_of({}), "DaemonSet", "berth-node")).items() if n != name}


@pytest.mark.parametrize("name", ["berth", "csi-resizer"])
def test_controller_container_escape_hatches(name):
    before = containers(one(objects_of({}), "Deployment", "berth-local-controller"))[name]
    values = {"controller": {"containers": {name: HATCH}, "extraVolumes": [{"name": "extra", "emptyDir": {}}]}}
    deploy = one(objects_of(values), "Deployment", "berth-local-controller")
    check_hatch(containers(deploy)[name], before)
    assert volume(pod_spec(deploy), "extra")


def test_nfs_containers_have_their_own_keys():
    values = {"nfs": {"enabled": True}, "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"}, NFS_POOL],
              "storageClasses": [], "node": {"containers": {"berth-nfs": {"extraArgs": ["--log-level=debug"]}}},
              "controller": {"containers": {"csi-attacher": {"extraArgs": ["--worker-threads=20"]}}}}
    objects = objects_of(values)
    assert containers(one(objects, "DaemonSet", "berth-node"))["berth-nfs"]["args"][-1] == "--log-level=debug"
    assert containers(one(objects, "DaemonSet", "berth-node"))["berth"]["args"][-1] != "--log-level=debug"
    assert containers(one(objects, "Deployment", "berth-nfs-controller"))["csi-attacher"]["args"][-1] == "--worker-threads=20"


def test_pod_security_contexts_are_merged():
    values = {"node": {"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}},
              "controller": {"podSecurityContext": {"runAsUser": 12345, "supplementalGroups": [4242]}}}
    objects = objects_of(values)
    assert pod_spec(one(objects, "DaemonSet", "berth-node"))["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"}, "seLinuxOptions": {"type": "spc_t"}}
    sc = pod_spec(one(objects, "Deployment", "berth-local-controller"))["securityContext"]
    assert sc["runAsUser"] == 12345 and sc["supplementalGroups"] == [4242]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_scheduling_per_controller():
    values = {"nfs": {"enabled": True}, "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"}, NFS_POOL],
              "storageClasses": [],
              "controller": {"nodeSelector": {"shared": "yes"}, "tolerations": [{"key": "shared", "operator": "Exists"}],
                             "nfs": {"nodeSelector": {"infra": "true"}, "tolerations": [{"key": "infra", "operator": "Exists"}],
                                     "affinity": {"podAntiAffinity": {}}}}}
    objects = objects_of(values)
    local = pod_spec(one(objects, "Deployment", "berth-local-controller"))
    nfs = pod_spec(one(objects, "Deployment", "berth-nfs-controller"))
    # Helm merges a map value with the default (kubernetes.io/os: linux).
    assert local["nodeSelector"] == {"kubernetes.io/os": "linux", "shared": "yes"} and local["tolerations"][0]["key"] == "shared"
    assert nfs["nodeSelector"] == {"infra": "true"} and nfs["tolerations"][0]["key"] == "infra"
    assert "podAntiAffinity" in nfs["affinity"] and "affinity" not in local


@pytest.mark.parametrize(
    "values, where",
    [
        ({"node": {"containers": {"csi-attacher": {"extraArgs": []}}}}, "csi-attacher"),
        ({"node": {"containers": {"berth": {"extraArg": []}}}}, "extraArg"),
        ({"controller": {"containers": {"node-driver-registrar": {}}}}, "node-driver-registrar"),
        ({"node": {"groups": [{"name": "a", "nodeSelector": {"x": "y"}, "pools": [], "extra": 1}]}}, "extra"),
        ({"controller": {"local": {"nodeselector": {}}}}, "nodeselector"),
        # The livenessprobe sidecar is gone: old values that still name it are refused.
        ({"node": {"containers": {"liveness-probe": {}}}}, "liveness-probe"),
        ({"node": {"containers": {"liveness-probe-nfs": {}}}}, "liveness-probe-nfs"),
        ({"controller": {"containers": {"liveness-probe": {}}}}, "liveness-probe"),
        ({"sidecars": {"livenessProbe": {"repository": "r", "tag": "t"}}}, "livenessProbe"),
    ],
)
def test_the_schema_stays_strict_around_the_hatches(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        chart().validate_schema(values)
    assert where in str(err.value)


@pytest.mark.parametrize(
    "group",
    [
        {"name": "a", "nodeSelector": {}, "pools": [{"name": "p", "type": "hostpath", "path": "/p"}]},
        {"name": "a", "nodeSelector": {"x": "1", "y": "2"}, "pools": [{"name": "p", "type": "hostpath", "path": "/p"}]},
        {"name": "a", "nodeSelector": {"x": "1"}, "pools": []},
        {"name": "a", "nodeSelector": {"x": "1"}, "pools": [{"name": "n", "type": "nfs", "server": "s", "export": "/e"}]},
        {"name": "Bad_Name", "nodeSelector": {"x": "1"}, "pools": [{"name": "p", "type": "hostpath", "path": "/p"}]},
    ],
)
def test_node_groups_are_checked_by_the_schema(group):
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema({"node": {"groups": [group]}})


GROUPS = {
    "node": {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "groups": [
            {"name": "nvme", "nodeSelector": {"disks": "nvme"},
             "pools": [{"name": "fast", "type": "block", "path": "/mnt/nvme/berth"},
                       {"name": "scratch", "type": "hostpath", "path": "/mnt/nvme/scratch", "capacityEnforcement": "auto"}]},
            {"name": "hdd", "nodeSelector": {"tier": "cold"}, "tolerations": [{"key": "cold", "operator": "Exists"}],
             "pools": [{"name": "slow", "type": "hostpath", "path": "/mnt/hdd/berth"}]},
        ],
    },
    "storageClasses": [{"name": "berth-local", "driver": "local", "pool": "default"},
                       {"name": "berth-fast", "driver": "local", "pool": "fast"},
                       {"name": "berth-slow", "driver": "local", "pool": "slow"}],
}


def not_in(spec):
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [[(e["key"], e["values"]) for e in t["matchExpressions"] if e["operator"] == "NotIn"] for t in terms]


def test_each_node_group_gets_its_daemonset_and_config():
    objects = objects_of(GROUPS)
    sets = {d["metadata"]["name"]: d for d in of_kind(objects, "DaemonSet")}
    assert set(sets) == {"berth-node", "berth-node-nvme", "berth-node-hdd"}
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in sets.values()]
    assert len(set(selectors)) == 3, "no DaemonSet adopts another's pods"
    for d in sets.values():
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    main, nvme, hdd = (pod_spec(sets[n]) for n in ("berth-node", "berth-node-nvme", "berth-node-hdd"))
    # Where each runs: a node belongs to the first group whose label it has.
    assert main["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert not_in(main) == [[("disks", ["nvme"]), ("tier", ["cold"])]]
    assert nvme["nodeSelector"] == {"kubernetes.io/os": "linux", "disks": "nvme"} and not_in(nvme) == [[]]
    assert hdd["nodeSelector"] == {"kubernetes.io/os": "linux", "tier": "cold"} and not_in(hdd) == [[("disks", ["nvme"])]]
    # The user's own affinity term stays in each.
    for spec in (main, nvme, hdd):
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]} in term["matchExpressions"]
    assert hdd["tolerations"] == [{"key": "cold", "operator": "Exists"}] and main["tolerations"] == [{"operator": "Exists"}]
    # Each reads its own pools, and mounts each pool path from the host.
    for spec, pools in ((main, ["default", "block"]), (nvme, ["fast", "scratch"]), (hdd, ["slow"])):
        berth = next(c for c in spec["containers"] if c["name"] == "berth")
        cm = one(objects, "ConfigMap", volume(spec, "local-config")["configMap"]["name"])
        config = yaml.safe_load(cm["data"]["config.yaml"])
        check_berth_config(config, {"hostpath", "block", "device"})
        assert [p["name"] for p in config["pools"]] == pools
        for p in config["pools"]:
            vol, rel = resolve_path(berth, p["path"])
            host = volume(spec, vol)["hostPath"]
            assert f"{host['path'].rstrip('/')}/{rel}".rstrip("/") == p["path"]
            if not p["path"].startswith("/var/lib/berth/"):
                assert host["type"] == "Directory"
        assert flag(berth, "driver-name") == "local.berth.csi.io"
    # The expansion controller knows every pool's name.
    deploy = one(objects, "Deployment", "berth-local-controller")
    berth = next(c for c in pod_spec(deploy)["containers"] if is_berth(c))
    cm = one(objects, "ConfigMap", volume(pod_spec(deploy), "config")["configMap"]["name"])
    assert [p["name"] for p in yaml.safe_load(cm["data"]["config.yaml"])["pools"]] == ["default", "block", "fast", "scratch", "slow"]


def test_node_group_consistency_is_checked_at_install():
    bad_class = dict(GROUPS, storageClasses=[{"name": "x", "driver": "local", "pool": "nowhere"}])
    with pytest.raises(helm.HelmRenderError, match="does not have"):
        render_values(bad_class)
    twice = {"node": {"groups": [GROUPS["node"]["groups"][0], GROUPS["node"]["groups"][0]]}}
    with pytest.raises(helm.HelmRenderError, match="two node groups named"):
        render_values(twice)
    dup = {"node": {"groups": [{"name": "a", "nodeSelector": {"x": "1"},
                                "pools": [{"name": "p", "type": "hostpath", "path": "/p"}, {"name": "p", "type": "block", "path": "/q"}]}]}}
    with pytest.raises(helm.HelmRenderError, match="two pools named"):
        render_values(dup)


def test_docs_describe_the_hatches_and_groups():
    doc = DOCS.read_text()
    for text in ("### Node groups", "### Escape hatches", "extraArgs", "extraEnv", "extraVolumeMounts",
                 "<release>-node-<name>", "<release>-local-config-<name>"):
        assert text in doc, text


def test_notes_name_each_group_daemonset():
    manifests = render_values(GROUPS)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert "node group nvme: DaemonSet berth-node-nvme, pools: fast (block) scratch (hostpath)" in notes
    assert "node group hdd: DaemonSet berth-node-hdd, pools: slow (hostpath)" in notes
