"""The rendered objects fit together: each sidecar talks to the berth socket it should,
the kubelet finds each driver where the registrar says, classes name real drivers and
pools, berth's configuration is one berth accepts, and each ServiceAccount can do what
its sidecars do and no more than that set of sidecars needs."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import yaml

from conftest import (
    DOCS,
    VALUE_SETS,
    berth_binary,
    flag,
    is_berth,
    merged_values,
    of_kind,
    one,
    pod_spec,
    rendered,
    resolve_path,
    skip_notice,
    volume,
    workloads,
)

CONTROLLER_SIDECARS = {"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "csi-health-monitor"}
TOPOLOGY_KEY = "topology.berth.csi.io/node"


def drivers(value_set):
    return {d["metadata"]["name"]: d for d in of_kind(rendered(value_set), "CSIDriver")}


def berth_sockets(spec):
    """(volume, path in volume) -> the berth container serving there."""
    sockets = {}
    for c in spec["containers"]:
        if not is_berth(c):
            continue
        endpoint = flag(c, "endpoint")
        assert endpoint and endpoint.startswith("unix:///"), f"{c['name']}: endpoint {endpoint}"
        where = resolve_path(c, endpoint[len("unix://"):])
        assert where not in sockets, f"two berth containers serve {where}"
        sockets[where] = c
    return sockets


def sidecar_target(spec, container):
    address = flag(container, "csi-address")
    assert address, f"{container['name']} has no --csi-address"
    address = address.removeprefix("unix://")
    where = resolve_path(container, address)
    served = berth_sockets(spec)
    assert where in served, f"{container['name']} dials {address} ({where}), where no berth listens: {list(served)}"
    return served[where]


def env_field(container, name):
    for env in container.get("env", []):
        if env["name"] == name:
            return env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    return None


def test_every_sidecar_dials_a_socket_berth_listens_on(value_set):
    for w in workloads(rendered(value_set)):
        spec = pod_spec(w)
        for c in spec["containers"]:
            if is_berth(c):
                continue
            berth = sidecar_target(spec, c)
            mode = flag(berth, "mode")
            if c["name"].split("-nfs")[0] in CONTROLLER_SIDECARS:
                assert mode in ("all", "controller"), f"{c['name']} needs berth's Controller service, berth runs --mode={mode}"
            if c["name"].startswith("node-driver-registrar"):
                assert mode in ("all", "node"), f"the kubelet needs berth's Node service, berth runs --mode={mode}"


def test_each_driver_has_its_own_node_plugin_and_registrar(value_set):
    kubelet_dir = merged_values(value_set)["kubeletDir"].rstrip("/")
    (ds,) = of_kind(rendered(value_set), "DaemonSet")
    spec = pod_spec(ds)
    served = {}
    for (vol, path), berth in berth_sockets(spec).items():
        driver = flag(berth, "driver-name")
        assert driver in drivers(value_set), f"berth serves {driver}, which has no CSIDriver object"
        assert driver not in served, f"{driver} is served twice on each node"
        served[driver] = berth
        # The socket is on the host where the kubelet looks for this driver.
        host_dir = volume(spec, vol)["hostPath"]["path"].rstrip("/")
        assert host_dir == f"{kubelet_dir}/plugins/{driver}"
        assert path == "csi.sock"
        registrars = [c for c in spec["containers"] if c["name"].startswith("node-driver-registrar")
                      and sidecar_target(spec, c) is berth]
        assert len(registrars) == 1, f"{driver}: {len(registrars)} registrars"
        reg = registrars[0]
        assert flag(reg, "kubelet-registration-path") == f"{kubelet_dir}/plugins/{driver}/csi.sock"
        reg_vol, reg_path = resolve_path(reg, "/registration/x")
        assert volume(spec, reg_vol)["hostPath"]["path"] == f"{kubelet_dir}/plugins_registry"
        # The kubelet probes berth itself, on the address it serves /healthz and /readyz.
        port = int(flag(berth, "health-address").rsplit(":", 1)[1])
        named = {p["name"]: p["containerPort"] for p in berth.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            assert named[berth[probe]["httpGet"]["port"]] == port, f"{driver}: {probe} asks another port"
    assert set(served) == set(drivers(value_set)), "every CSIDriver is served on every node"


def test_kubelet_dirs_where_berth_mounts_are_bidirectional_and_only_those(value_set):
    """berth mounts publish targets under <kubeletDir>/pods and staging paths (and raw
    block devices) under <kubeletDir>/plugins/kubernetes.io/csi: exactly those two
    directories come from the host with Bidirectional propagation, not the whole
    kubelet directory."""
    kubelet_dir = merged_values(value_set)["kubeletDir"].rstrip("/")
    wanted = {f"{kubelet_dir}/pods", f"{kubelet_dir}/plugins/kubernetes.io/csi"}
    for ds in of_kind(rendered(value_set), "DaemonSet"):
        spec = pod_spec(ds)
        for c in spec["containers"]:
            mounts = c.get("volumeMounts", [])
            if is_berth(c):
                bidirectional = {m["mountPath"].rstrip("/"): m for m in mounts if m.get("mountPropagation") == "Bidirectional"}
                assert set(bidirectional) == wanted, f"{c['name']}: Bidirectional mounts {sorted(bidirectional)}"
                for path, m in bidirectional.items():
                    assert volume(spec, m["name"])["hostPath"]["path"] == path
                assert not [m for m in mounts if m["mountPath"].rstrip("/") == kubelet_dir], "the whole kubelet dir"
                # The kubelet's own targets resolve to these two mounts.
                assert resolve_path(c, f"{kubelet_dir}/pods/u/volumes/kubernetes.io~csi/pv/mount")[0] == bidirectional[f"{kubelet_dir}/pods"]["name"]
                assert resolve_path(c, f"{kubelet_dir}/plugins/kubernetes.io/csi/volumeDevices/publish/pv/u")[0] == \
                    bidirectional[f"{kubelet_dir}/plugins/kubernetes.io/csi"]["name"]
                assert c["securityContext"]["privileged"] is True
            for m in mounts:
                if m.get("mountPropagation") == "Bidirectional":
                    # Kubernetes allows Bidirectional only in privileged containers.
                    assert c.get("securityContext", {}).get("privileged") is True, c["name"]


def test_node_plugin_settings(value_set):
    values = merged_values(value_set)
    for ds in of_kind(rendered(value_set), "DaemonSet"):
        spec = pod_spec(ds)
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["hostPID"] is False
        assert spec["hostNetwork"] == (values["node"]["hostNetwork"] or values["nfs"]["enabled"])
        assert spec["tolerations"] if values["node"]["tolerations"] else "tolerations" not in spec
        assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        assert spec["terminationGracePeriodSeconds"] == values["node"]["terminationGracePeriodSeconds"]
        ports = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
        assert len(ports) == len(set(ports)), f"port clash in the node pod: {ports}"
        for c in spec["containers"]:
            assert c.get("resources", {}).get("requests"), f"{c['name']} has no resource requests"


def test_berth_gets_the_kubernetes_node_name(value_set):
    for w in workloads(rendered(value_set)):
        for c in pod_spec(w)["containers"]:
            if is_berth(c):
                assert flag(c, "node-id") == "$(NODE_NAME)"
                assert env_field(c, "NODE_NAME") == "spec.nodeName"


def test_local_driver_provisions_on_each_node(value_set):
    values = merged_values(value_set)
    if not values["local"]["enabled"]:
        skip_notice(f"node-local provisioning [{value_set}]", "the local driver is disabled in this value set")
        return
    ds = of_kind(rendered(value_set), "DaemonSet")[0]
    spec = pod_spec(ds)
    containers = {c["name"]: c for c in spec["containers"]}
    prov = containers["csi-provisioner"]
    assert flag(sidecar_target(spec, prov), "driver-name") == values["local"]["driverName"]
    assert flag(prov, "node-deployment") == "true"
    assert flag(prov, "enable-capacity") == "true"
    assert flag(prov, "capacity-ownerref-level") == "1", "the DaemonSet owns the CSIStorageCapacity objects"
    assert flag(prov, "extra-create-metadata") == "true"
    assert flag(prov, "leader-election") is None, "each node provisions its own volumes: no leader"
    assert env_field(prov, "NODE_NAME") == "spec.nodeName"
    assert env_field(prov, "POD_NAME") == "metadata.name" and env_field(prov, "NAMESPACE") == "metadata.namespace"
    if values["snapshots"]["enabled"]:
        snap = containers["csi-snapshotter"]
        assert flag(snap, "node-deployment") == "true"
        # csi-snapshotter exits when --node-deployment meets --leader-election.
        assert flag(snap, "leader-election") is None
        assert env_field(snap, "NODE_NAME") == "spec.nodeName"
    local = drivers(value_set)[values["local"]["driverName"]]["spec"]
    assert local["attachRequired"] is False and local["storageCapacity"] is True
    # No central provisioner for the node-local driver: a driver is provisioned either
    # centrally or per node, not both.
    for deploy in of_kind(rendered(value_set), "Deployment"):
        spec = pod_spec(deploy)
        for c in spec["containers"]:
            if c["name"] in ("csi-provisioner", "csi-snapshotter", "csi-attacher"):
                assert flag(sidecar_target(spec, c), "driver-name") != values["local"]["driverName"]


def test_central_controllers_are_unprivileged(value_set):
    for deploy in of_kind(rendered(value_set), "Deployment"):
        spec = pod_spec(deploy)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert not [v for v in spec["volumes"] if "hostPath" in v], f"{deploy['metadata']['name']} uses hostPath"
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert not sc.get("privileged"), c["name"]
            assert sc.get("readOnlyRootFilesystem") is True, c["name"]
            assert sc.get("allowPrivilegeEscalation") is False, c["name"]
            if c["name"] in CONTROLLER_SIDECARS:
                assert flag(c, "leader-election") == "true", f"{c['name']} in a Deployment elects a leader"
                assert flag(c, "leader-election-namespace") == "$(NAMESPACE)"
                assert env_field(c, "NAMESPACE") == "metadata.namespace"
            if is_berth(c):
                assert flag(c, "mode") == "controller"
                state = yaml.safe_load(config_of(value_set, c, spec))["stateDir"]
                vol, _ = resolve_path(c, state + "/state")
                assert "emptyDir" in volume(spec, vol), "the controller's records live in an emptyDir"


def test_each_driver_gets_the_sidecars_its_csidriver_needs(value_set):
    """attachRequired means a csi-attacher; each class's driver has a provisioner; each
    snapshot class's driver a snapshotter; expansion-enabled classes a resizer."""
    by_driver = {}
    for w in workloads(rendered(value_set)):
        spec = pod_spec(w)
        for c in spec["containers"]:
            if not is_berth(c) and c["name"] in CONTROLLER_SIDECARS:
                by_driver.setdefault(flag(sidecar_target(spec, c), "driver-name"), set()).add(c["name"])
    for name, d in drivers(value_set).items():
        if d["spec"]["attachRequired"]:
            assert "csi-attacher" in by_driver.get(name, set()), f"{name} requires attach but has no csi-attacher"
        else:
            assert "csi-attacher" not in by_driver.get(name, set())
    for sc in of_kind(rendered(value_set), "StorageClass"):
        assert "csi-provisioner" in by_driver.get(sc["provisioner"], set()), sc["metadata"]["name"]
        if sc["allowVolumeExpansion"]:
            assert "csi-resizer" in by_driver.get(sc["provisioner"], set()), sc["metadata"]["name"]
    for vsc in of_kind(rendered(value_set), "VolumeSnapshotClass"):
        assert "csi-snapshotter" in by_driver.get(vsc["driver"], set()), vsc["metadata"]["name"]


def test_classes_name_rendered_drivers_and_existing_pools(value_set):
    ds = drivers(value_set)
    for sc in of_kind(rendered(value_set), "StorageClass"):
        assert sc["provisioner"] in ds, f"StorageClass {sc['metadata']['name']}: no CSIDriver {sc['provisioner']}"
        params = sc.get("parameters", {})
        for key in params:
            assert key == "pool" or key.startswith("csi.storage.k8s.io/"), f"berth refuses parameter {key}"
        pools = {p["name"]: p for p in driver_config(value_set, sc["provisioner"])["pools"]}
        if "pool" in params:
            assert params["pool"] in pools
        else:
            assert len(pools) == 1, "without `pool` the driver must have exactly one pool"
        if "csi.storage.k8s.io/fstype" in params:
            assert pools[params["pool"]]["type"] in ("block", "device")
        if sc["provisioner"] == merged_values(value_set)["local"]["driverName"]:
            # Node-local volumes wait for the pod's node in every value set here.
            assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    for vsc in of_kind(rendered(value_set), "VolumeSnapshotClass"):
        assert vsc["driver"] in ds
        assert vsc["deletionPolicy"] in ("Delete", "Retain")


# --- berth's configuration -------------------------------------------------------

POOL_KEYS = {
    "hostpath": ({"name", "type", "path"}, {"capacityEnforcement"}),
    "block": ({"name", "type", "path"}, {"preallocate"}),
    "device": ({"name", "type", "devices"}, {"wipe", "snapshotPool"}),
    "nfs": ({"name", "type", "server", "export"}, {"mountOptions", "subDir", "onDelete", "permissions"}),
}
POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(k|K|M|G|T|Ki|Mi|Gi|Ti|Pi)?$")


def config_of(value_set, container, spec):
    """The config file text a berth container reads, followed through its mounts."""
    path = flag(container, "config")
    vol, rel = resolve_path(container, path)
    source = volume(spec, vol)["configMap"]["name"]
    cm = one(rendered(value_set), "ConfigMap", source)
    assert rel in cm["data"], f"{container['name']} reads {path}, ConfigMap {source} has {list(cm['data'])}"
    return cm["data"][rel]


def driver_config(value_set, driver):
    """berth's parsed config for a driver, checked equal across all its containers."""
    texts = set()
    for w in workloads(rendered(value_set)):
        spec = pod_spec(w)
        for c in spec["containers"]:
            if is_berth(c) and flag(c, "driver-name") == driver:
                texts.add(config_of(value_set, c, spec))
    assert len(texts) == 1, f"{driver}: its berth containers read different configs"
    return yaml.safe_load(texts.pop())


def check_berth_config(config, allowed_types):
    """Mirror of src/config.rs: serde deny_unknown_fields and validate()."""
    assert set(config) <= {"stateDir", "defaultVolumeSize", "maxVolumesPerNode", "pools"}, set(config)
    assert config["stateDir"].startswith("/")
    assert QUANTITY.match(str(config["defaultVolumeSize"]))
    assert isinstance(config["maxVolumesPerNode"], int) and config["maxVolumesPerNode"] >= 0
    assert config["pools"], "at least one pool is required"
    names = set()
    for pool in config["pools"]:
        assert pool["type"] in allowed_types, f"pool {pool['name']} of type {pool['type']} in the wrong driver"
        required, optional = POOL_KEYS[pool["type"]]
        assert required <= set(pool) <= required | optional, f"pool {pool['name']}: keys {set(pool)}"
        assert POOL_NAME.match(pool["name"]) and pool["name"] not in names
        names.add(pool["name"])
        if "path" in pool:
            assert pool["path"].startswith("/") and len(pool["path"]) > 1
            assert not pool["path"].startswith(config["stateDir"].rstrip("/") + "/state")
        if pool["type"] == "device":
            for dev in pool["devices"]:
                assert dev.startswith("/dev/") and ".." not in dev.split("/")
            if "snapshotPool" in pool:
                assert any(p["name"] == pool["snapshotPool"] and p["type"] == "block" for p in config["pools"])
        if pool["type"] == "nfs" and "permissions" in pool:
            assert isinstance(pool["permissions"], str), "a mode must stay a string, not YAML's octal number"


def test_berth_config_parses_with_the_keys_berth_accepts(value_set):
    values = merged_values(value_set)
    for driver, cfg in drivers(value_set).items():
        config = driver_config(value_set, driver)
        local = driver == values["local"]["driverName"]
        check_berth_config(config, {"hostpath", "block", "device"} if local else {"nfs"})
        section = values["local" if local else "nfs"]
        assert config["stateDir"] == section["stateDir"]
        assert config["defaultVolumeSize"] == section["defaultVolumeSize"]
        wanted = [p for p in values["pools"] if (p["type"] != "nfs") == local]
        assert config["pools"] == wanted, "the pools reach berth exactly as written in values"


def test_pool_and_state_paths_reach_the_node_plugin(value_set):
    values = merged_values(value_set)
    if not values["local"]["enabled"]:
        skip_notice(f"pool mounts [{value_set}]", "no node-local pools in this value set")
        return
    ds = of_kind(rendered(value_set), "DaemonSet")[0]
    spec = pod_spec(ds)
    berth = next(c for c in spec["containers"] if c["name"] == "berth")
    config = driver_config(value_set, values["local"]["driverName"])
    for path in [config["stateDir"]] + [p["path"] for p in config["pools"] if "path" in p]:
        vol, rel = resolve_path(berth, path)
        host = volume(spec, vol)["hostPath"]["path"].rstrip("/")
        assert f"{host}/{rel}".rstrip("/") == path.rstrip("/"), f"{path} is mounted from {host}/{rel}"
    assert any(m["mountPath"] == "/dev" for m in berth["volumeMounts"]), "loop and block devices need /dev"


def test_metrics_flag_only_when_enabled(value_set):
    values = merged_values(value_set)
    objects = rendered(value_set)
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            if not is_berth(c):
                continue
            address = flag(c, "metrics-address")
            if not values["metrics"]["enabled"]:
                assert address is None, "metrics.enabled=false must not pass --metrics-address"
                continue
            port = int(address.rsplit(":", 1)[1])
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert port in [v for k, v in ports.items() if k.startswith("metrics-")]
    services = of_kind(objects, "Service")
    if not values["metrics"]["enabled"]:
        assert not services
        return
    (svc,) = services
    pod_ports = {p["name"] for w in workloads(objects) for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in pod_ports
    for sm in of_kind(objects, "ServiceMonitor"):
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}


def test_flags_exist_in_berth_serve_help():
    """Every flag the chart passes to berth is one `berth serve` has."""
    binary = berth_binary()
    if binary is None:
        skip_notice("berth serve --help cross-check", "no berth binary in the cargo target directory (build berth first, or set BERTH_BIN)")
        return
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"--([a-z][a-z-]+)", help_text))
    for value_set in VALUE_SETS:
        for w in workloads(rendered(value_set)):
            for c in pod_spec(w)["containers"]:
                if not is_berth(c):
                    continue
                for arg in c["args"][1:]:
                    name = arg[2:].split("=", 1)[0]
                    assert name in known, f"{value_set}: berth serve has no --{name}"
                    if name == "mode":
                        assert arg.split("=", 1)[1] in ("all", "controller", "node")


# --- RBAC ----------------------------------------------------------------------

def rules_of(objects, sa_name, namespace):
    """The rules a ServiceAccount gets through every binding."""
    rules = []
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s["namespace"] == namespace
                   for s in binding["subjects"]):
            continue
        role = one(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        rules += role["rules"]
    return rules


def allows(rules, group, resource, verb):
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


NEEDS = {
    "csi-provisioner": [("", "persistentvolumes", "create"), ("", "persistentvolumeclaims", "watch"),
                        ("storage.k8s.io", "storageclasses", "get"), ("", "events", "create"),
                        ("storage.k8s.io", "csinodes", "get"), ("", "nodes", "get"),
                        ("snapshot.storage.k8s.io", "volumesnapshots", "get")],
    "csi-attacher": [("storage.k8s.io", "volumeattachments", "patch"),
                     ("storage.k8s.io", "volumeattachments/status", "patch"), ("", "persistentvolumes", "patch")],
    "csi-resizer": [("", "persistentvolumes", "patch"), ("", "persistentvolumeclaims/status", "patch"),
                    ("", "pods", "list")],
    "csi-snapshotter": [("snapshot.storage.k8s.io", "volumesnapshotcontents", "update"),
                        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch"),
                        ("snapshot.storage.k8s.io", "volumesnapshotclasses", "list")],
    "csi-health-monitor": [("", "persistentvolumes", "watch"), ("", "persistentvolumeclaims", "get"),
                           ("", "events", "create"), ("", "events", "patch"), ("", "events", "watch")],
}


def test_each_service_account_can_do_what_its_sidecars_do(value_set):
    objects = rendered(value_set)
    namespace = VALUE_SETS[value_set][2]
    accounts = {sa["metadata"]["name"] for sa in of_kind(objects, "ServiceAccount")}
    for w in workloads(objects):
        spec = pod_spec(w)
        sa = spec["serviceAccountName"]
        assert sa in accounts, f"{w['metadata']['name']} runs as missing ServiceAccount {sa}"
        rules = rules_of(objects, sa, namespace)
        names = {c["name"] for c in spec["containers"]}
        for sidecar, needs in NEEDS.items():
            for group, resource, verb in needs:
                if sidecar in names:
                    assert allows(rules, group, resource, verb), f"{sa}: {sidecar} needs {verb} {resource}"
        if names & CONTROLLER_SIDECARS and w["kind"] == "Deployment":
            assert allows(rules, "coordination.k8s.io", "leases", "update"), f"{sa}: leader election"
        if "csi-provisioner" in names and w["kind"] == "DaemonSet":
            assert allows(rules, "storage.k8s.io", "csistoragecapacities", "create")
            assert allows(rules, "", "pods", "get"), "the owner lookup reads the pod"
        # Least privilege: no secrets, and nothing a pod without these sidecars would use.
        assert not allows(rules, "", "secrets", "get"), f"{sa} can read secrets"
        if "csi-provisioner" not in names:
            assert not allows(rules, "", "persistentvolumes", "create"), f"{sa} can create PVs without a provisioner"
        if "csi-attacher" not in names:
            assert not allows(rules, "storage.k8s.io", "volumeattachments", "patch"), sa
        if not names & CONTROLLER_SIDECARS:
            assert not rules, f"{sa} has rules but runs no sidecar that uses the API"


def test_bindings_point_at_existing_roles_and_accounts(value_set):
    objects = rendered(value_set)
    accounts = {(sa["metadata"]["name"], sa["metadata"]["namespace"]) for sa in of_kind(objects, "ServiceAccount")}
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        one(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for s in binding["subjects"]:
            assert (s["name"], s["namespace"]) in accounts, f"{binding['metadata']['name']} binds missing {s['name']}"
    for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
        assert any(b["roleRef"]["name"] == role["metadata"]["name"]
                   for b in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")), role["metadata"]["name"]


def test_topology_key_is_documented():
    assert TOPOLOGY_KEY in DOCS.read_text()


PENDING_POOL_TYPES = {"block", "device", "nfs"}


def test_berth_accepts_the_rendered_config():
    """The real binary loads each rendered config and starts serving. It runs as the
    central controller (--mode controller), which opens no node-local pool, with
    stateDir moved under a temporary directory; nothing else is changed."""
    binary = berth_binary()
    if binary is None:
        skip_notice("berth loads the rendered config", "no berth binary in the cargo target directory (build berth first, or set BERTH_BIN)")
        return
    checked = 0
    # A short directory: a unix socket path must fit in 108 bytes.
    short = pathlib.Path(tempfile.mkdtemp(prefix="berth-"))
    for n, value_set in enumerate(VALUE_SETS):
        for driver in drivers(value_set):
            config = driver_config(value_set, driver)
            work = short / f"{n}-{driver[:3]}"
            work.mkdir()
            config["stateDir"] = str(work / "state")
            (work / "config.yaml").write_text(yaml.safe_dump(config))
            socket = work / "csi.sock"
            proc = subprocess.Popen(
                [binary, "serve", "--mode=controller", f"--driver-name={driver}", "--node-id=test-node",
                 f"--config={work / 'config.yaml'}", f"--endpoint=unix://{socket}", "--log-format=json"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            try:
                for _ in range(100):
                    if socket.exists() or proc.poll() is not None:
                        break
                    time.sleep(0.05)
                started = socket.exists() and proc.poll() is None
            finally:
                proc.terminate()
                output = proc.communicate(timeout=10)[0]
            if started:
                checked += 1
                continue
            types = {p["type"] for p in config["pools"]}
            pending = sorted(t for t in types & PENDING_POOL_TYPES if f"unknown variant `{t}`" in output)
            if pending:
                skip_notice(f"berth loads the {driver} config [{value_set}]",
                            f"this berth has no pool type {', '.join(pending)} yet")
                continue
            raise AssertionError(f"{value_set}: berth refused the {driver} config:\n{output}")
    shutil.rmtree(short, ignore_errors=True)
    assert checked, "no rendered config was loaded by berth"


def test_inline_ephemeral_volumes_are_each_drivers_opt_in():
    from conftest import parse_manifests, render_values

    def modes(values):
        objects = parse_manifests(render_values(values))
        return {d["metadata"]["name"]: d["spec"]["volumeLifecycleModes"] for d in of_kind(objects, "CSIDriver")}

    nfs_pool = {"name": "shared", "type": "nfs", "server": "nfs.example.com", "export": "/exports/k8s"}
    values = {"nfs": {"enabled": True}, "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"}, nfs_pool],
              "storageClasses": []}
    assert modes(values) == {"local.berth.csi.io": ["Persistent"], "nfs.berth.csi.io": ["Persistent"]}
    values["local"] = {"inlineEphemeral": True}
    values["pools"][0]["ephemeral"] = True
    assert modes(values) == {"local.berth.csi.io": ["Persistent", "Ephemeral"], "nfs.berth.csi.io": ["Persistent"]}
