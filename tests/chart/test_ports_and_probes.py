"""Health and metrics endpoints: every berth container serves its own /healthz and /readyz
(--health-address) and the kubelet probes exactly those, never CSI Probe through a
livenessprobe sidecar (Probe answers "not ready" while berth finishes interrupted work, and
a liveness probe on it would restart berth over and over); on the host network the health
endpoints listen on loopback (where the kubelet probes them) and no port takes the sidecars'
usual 9808-9811 or 9090/9091; metrics listen dual-stack so IPv6 scrapes work; every
leader-elected sidecar serves --http-endpoint and is probed on /healthz/leader-election;
every sidecar's metrics reach the ServiceMonitor; grace periods cover berth's drain time;
timeouts fit copies."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import (CHART, NFS_POOL, VALUE_SETS, chart, flag, is_berth, merged_values, of_kind, one,
                      parse_manifests, pod_spec, render_values, rendered, workloads)

CLASHING = {9808, 9809, 9810, 9811, 9090, 9091}
LEADER_ELECTED = {"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "csi-health-monitor"}
# The flags the chart passes to each sidecar, each checked in the sidecar's source at the
# version values.yaml pins (external-provisioner v6.3.0, external-attacher v4.12.0,
# external-snapshotter v8.6.0, external-resizer at the v2.3.0 line, csi-lib-utils'
# standardflags for --http-endpoint).
SIDECAR_FLAGS = {
    "csi-provisioner": {"csi-address", "node-deployment", "enable-capacity", "capacity-poll-interval",
                        "capacity-ownerref-level", "extra-create-metadata", "strict-topology",
                        "immediate-topology", "timeout", "http-endpoint", "leader-election",
                        "leader-election-namespace", "kube-api-qps", "kube-api-burst"},
    "csi-attacher": {"csi-address", "leader-election", "leader-election-namespace", "timeout", "http-endpoint"},
    "csi-resizer": {"csi-address", "leader-election", "leader-election-namespace", "timeout", "http-endpoint"},
    "csi-snapshotter": {"csi-address", "node-deployment", "leader-election", "leader-election-namespace",
                        "timeout", "feature-gates", "http-endpoint"},
    "node-driver-registrar": {"csi-address", "kubelet-registration-path", "http-endpoint"},
    # external-health-monitor v0.18.0, cmd/csi-external-health-monitor-controller/main.go.
    "csi-health-monitor": {"csi-address", "leader-election", "leader-election-namespace", "timeout",
                           "list-volumes-interval", "monitor-interval", "http-endpoint"},
}


def objects_of(values):
    return parse_manifests(render_values(values))


def node_pod(objects):
    (ds,) = of_kind(objects, "DaemonSet")
    return pod_spec(ds)


def containers(spec):
    return {c["name"]: c for c in spec["containers"]}


def probe_port(container, spec, probe="livenessProbe"):
    """The port number an httpGet probe of this container asks, named ports resolved."""
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    return named[port]


def listen(value):
    host, _, port = value.rpartition(":")
    return host, int(port)


def test_every_sidecar_flag_exists_at_the_pinned_version(value_set):
    for w in workloads(rendered(value_set)):
        for c in pod_spec(w)["containers"]:
            if is_berth(c):
                continue
            base = c["name"].removesuffix("-nfs")
            for arg in c["args"]:
                name = arg[2:].split("=", 1)[0]
                assert name in SIDECAR_FLAGS[base], f"{value_set}: {c['name']} has no --{name}"


def test_no_node_port_takes_the_usual_sidecar_or_prometheus_ports(value_set):
    for w in workloads(rendered(value_set)):
        spec = pod_spec(w)
        if not spec.get("hostNetwork"):
            continue
        for c in spec["containers"]:
            for p in c.get("ports", []):
                assert p["containerPort"] not in CLASHING, f"{value_set}: {c['name']} {p}"
            for arg in c.get("args", []):
                if arg.startswith(("--http-endpoint=", "--metrics-address=")):
                    assert listen(arg.split("=", 1)[1])[1] not in CLASHING, f"{value_set}: {c['name']} {arg}"


def test_health_endpoints_on_the_host_network_listen_on_loopback_and_are_probed_there(value_set):
    values = merged_values(value_set)
    spec = node_pod(rendered(value_set))
    host_network = spec["hostNetwork"]
    # Every address something in the pod listens on for HTTP.
    endpoints = [listen(flag(s, f))[1] for s in spec["containers"] for f in ("http-endpoint", "health-address")
                 if flag(s, f)]
    for c in spec["containers"]:
        address = flag(c, "health-address") if is_berth(c) else \
            flag(c, "http-endpoint") if c["name"].startswith("node-driver-registrar") else None
        if address is not None:
            host, port = listen(address)
            if host_network:
                assert host == values["node"]["healthAddress"] == "127.0.0.1", f"{value_set}: {c['name']} on {host}"
            else:
                assert host == "", "in the pod's own network every address is the pod's"
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in c and "httpGet" in c[probe]:
                get = c[probe]["httpGet"]
                assert get.get("host") == ("127.0.0.1" if host_network else None), f"{value_set}: {c['name']} {get}"
                # The probe asks the port something listens on.
                assert probe_port(c, spec, probe) in endpoints, f"{value_set}: {c['name']} probes a port nothing serves"


def test_ipv6_loopback_for_health_endpoints():
    spec = node_pod(objects_of({"node": {"hostNetwork": True, "healthAddress": "::1"}}))
    c = containers(spec)
    assert flag(c["berth"], "health-address") == "[::1]:26800"
    assert flag(c["node-driver-registrar"], "http-endpoint") == "[::1]:26801"
    assert c["node-driver-registrar"]["livenessProbe"]["httpGet"]["host"] == "::1"
    assert c["berth"]["livenessProbe"]["httpGet"]["host"] == "::1"
    assert c["berth"]["readinessProbe"]["httpGet"]["host"] == "::1"


def test_health_address_must_be_an_ip_address():
    with pytest.raises(helm.HelmValuesError):
        render_values({"node": {"healthAddress": "localhost"}})


def test_metrics_listen_dual_stack_by_default_and_where_asked():
    objects = objects_of({"metrics": {"enabled": True}})
    c = containers(node_pod(objects))
    assert flag(c["berth"], "metrics-address") == "[::]:26810"
    assert flag(c["csi-provisioner"], "http-endpoint") == "[::]:26802"
    assert flag(c["csi-snapshotter"], "http-endpoint") == "[::]:26803"
    ipv4 = containers(node_pod(objects_of({"metrics": {"enabled": True, "bindAddress": "0.0.0.0"}})))
    assert flag(ipv4["berth"], "metrics-address") == "0.0.0.0:26810"
    off = containers(node_pod(objects_of({})))
    assert flag(off["csi-provisioner"], "http-endpoint") is None, "no leader election, no metrics: no endpoint"


def test_leader_elected_sidecars_serve_http_and_are_probed_on_leader_election(value_set):
    for deploy in of_kind(rendered(value_set), "Deployment"):
        spec = pod_spec(deploy)
        for c in spec["containers"]:
            if c["name"] not in LEADER_ELECTED:
                continue
            host, port = listen(flag(c, "http-endpoint"))
            assert host == "", "the controller pod's own network: every address"
            probe = c["livenessProbe"]["httpGet"]
            assert probe["path"] == "/healthz/leader-election"
            assert probe_port(c, spec) == port
            role = {"health-monitor": "monitor"}.get(c["name"].removeprefix("csi-"), c["name"].removeprefix("csi-"))
            assert {"name": f"sc-{role}", "containerPort": port, "protocol": "TCP"} in c["ports"]


def test_every_sidecar_metrics_port_reaches_the_service_monitor():
    objects = rendered("both")
    (svc,) = of_kind(objects, "Service")
    (sm,) = of_kind(objects, "ServiceMonitor")
    scraped = {e["port"] for e in sm["spec"]["endpoints"]}
    service_ports = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    served = set()
    for w in workloads(objects):
        for c in pod_spec(w)["containers"]:
            for p in c.get("ports", []):
                if p["name"].startswith(("sc-", "metrics-")):
                    served.add(p["name"])
    assert served == scraped == set(service_ports), (served, scraped, service_ports)
    assert {"sc-provisioner", "sc-attacher", "sc-resizer", "sc-snapshotter", "sc-monitor", "metrics-local",
            "metrics-nfs"} <= scraped


def test_grace_periods_cover_the_drain_time(value_set):
    drain = merged_values(value_set)["drainSeconds"]
    for w in workloads(rendered(value_set)):
        spec = pod_spec(w)
        assert spec["terminationGracePeriodSeconds"] >= drain, w["metadata"]["name"]
        for c in spec["containers"]:
            if is_berth(c):
                assert flag(c, "drain-seconds") == str(drain)


@pytest.mark.parametrize("component", ["node", "controller"])
def test_a_grace_period_below_the_drain_time_is_refused(component):
    with pytest.raises(helm.HelmRenderError) as err:
        render_values({component: {"terminationGracePeriodSeconds": 10}})
    assert "shorter than drainSeconds" in str(err.value)


def test_every_pod_runs_under_the_runtime_default_seccomp_profile(value_set):
    for w in workloads(rendered(value_set)):
        assert pod_spec(w)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, w["metadata"]["name"]


def test_copies_get_a_long_timeout(value_set):
    values = merged_values(value_set)
    assert values["sidecars"]["copyTimeout"] == "1200s"
    for w in workloads(rendered(value_set)):
        for c in pod_spec(w)["containers"]:
            if c["name"] in ("csi-provisioner", "csi-snapshotter"):
                assert flag(c, "timeout") == "1200s", f"{value_set}: {w['metadata']['name']} {c['name']}"
            elif c["name"] in ("csi-attacher", "csi-resizer"):
                assert flag(c, "timeout") == values["sidecars"]["timeout"]


# Configurations beyond the value sets that change what the node and controller pods hold.
MORE_CONFIGURATIONS = {
    "metrics": {"nfs": {"enabled": True}, "pools": chart().merge_values({})["pools"] + [NFS_POOL],
                "metrics": {"enabled": True}},
    "host-network": {"node": {"hostNetwork": True}},
    "root-sidecars": {"node": {"sidecarUser": None}},
    "no-health-monitor": {"healthMonitor": {"enabled": False}, "snapshots": {"enabled": False}},
    "groups": {"node": {"groups": [{"name": "fast", "nodeSelector": {"disks": "nvme"},
                                    "pools": [{"name": "nvme", "type": "hostpath", "path": "/mnt/nvme"}]}]}},
}


def every_configuration():
    for value_set in sorted(VALUE_SETS):
        yield value_set, rendered(value_set), merged_values(value_set)
    for name, values in MORE_CONFIGURATIONS.items():
        yield name, objects_of(values), chart().merge_values(values)


def test_every_berth_container_is_probed_on_its_own_health_address():
    """Liveness asks berth's /healthz, readiness its /readyz, both on the port and address
    berth's --health-address serves: the node's per-driver health port (on
    node.healthAddress in the host network), the controllers' controller.ports.health on
    every address of the pod."""
    for config, objects, values in every_configuration():
        local_driver = values["local"]["driverName"]
        for w in workloads(objects):
            spec = pod_spec(w)
            host_network = spec.get("hostNetwork", False)
            berths = [c for c in spec["containers"] if is_berth(c)]
            assert berths, f"{config}: {w['metadata']['name']} has no berth"
            for c in berths:
                where = f"{config}: {w['metadata']['name']}/{c['name']}"
                host, port = listen(flag(c, "health-address"))
                if w["kind"] == "DaemonSet":
                    ports = values["node"]["ports"]
                    want = ports["localHealth"] if flag(c, "driver-name") == local_driver else ports["nfsHealth"]
                    want_host = values["node"]["healthAddress"] if host_network else ""
                else:
                    want, want_host = values["controller"]["ports"]["health"], ""
                assert (host, port) == (want_host, want), f"{where}: --health-address={flag(c, 'health-address')}"
                # The port is declared by berth itself, so the port-uniqueness checks see it.
                own = {p["name"]: p["containerPort"] for p in c["ports"]}
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    assert set(c[probe]) & {"httpGet", "exec", "grpc", "tcpSocket"} == {"httpGet"}, f"{where}: {probe}"
                    get = c[probe]["httpGet"]
                    assert get["path"] == path, f"{where}: {probe} asks {get['path']}"
                    assert own.get(get["port"]) == port, f"{where}: {probe} asks port {get['port']}, berth serves {port}"
                    assert get.get("host", "") == want_host, f"{where}: {probe} asks host {get.get('host')}"
                if values["metrics"]["enabled"]:
                    assert listen(flag(c, "metrics-address"))[1] != port, f"{where}: metrics and health on one port"


def test_probes_wait_out_a_recovery_and_a_drain():
    """/healthz answers 200 while berth recovers, so liveness may stay strict; it answers 503
    once berth stops, so liveness gives up only after the drain time. Readiness follows
    /readyz closely: a node pod that is not ready yet holds the DaemonSet's rolling update."""
    values = merged_values("both")
    for w in workloads(rendered("both")):
        for c in pod_spec(w)["containers"]:
            if not is_berth(c):
                continue
            live, ready = c["livenessProbe"], c["readinessProbe"]
            assert live["periodSeconds"] * live["failureThreshold"] > values["drainSeconds"], c["name"]
            assert ready["periodSeconds"] <= live["periodSeconds"], c["name"]
            assert ready.get("successThreshold", 1) == 1
    (ds,) = of_kind(rendered("both"), "DaemonSet")
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_no_livenessprobe_sidecar_in_any_configuration():
    """The livenessprobe sidecar turned Probe's "not ready" into a failed liveness probe:
    no configuration renders it, no value names it."""
    for config, objects, _ in every_configuration():
        for w in workloads(objects):
            for c in pod_spec(w)["containers"]:
                assert not c["name"].startswith("liveness-probe"), f"{config}: {w['metadata']['name']}/{c['name']}"
                assert "livenessprobe" not in c["image"], f"{config}: {c['name']} runs {c['image']}"
    assert "livenessProbe" not in chart().merge_values({})["sidecars"]
    assert "livenessprobe" not in (CHART / "Chart.yaml").read_text()


def test_metrics_service_lists_pods_that_are_not_ready():
    """A berth that recovers is not ready, and that is when its metrics tell most."""
    (svc,) = of_kind(objects_of({"metrics": {"enabled": True}}), "Service")
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_each_node_provisioner_gets_the_api_rate_of_the_values(value_set):
    """The node csi-provisioner makes about three API requests per claim created or
    deleted; at the sidecar's own 5/s with a burst of 10, 50 deleted claims took 38 s to
    be gone (docs/performance.md). Every node-local provisioner, node groups' included,
    carries the chart's rate."""
    values = merged_values(value_set)
    if not values.get("local", {}).get("enabled", True):
        return
    expected = values.get("local", {}).get("provisionerApi", {"qps": 20, "burst": 50})
    found = 0
    for w in workloads(rendered(value_set)):
        for c in pod_spec(w)["containers"]:
            if c["name"] != "csi-provisioner" or flag(c, "node-deployment") != "true":
                continue
            found += 1
            assert (flag(c, "kube-api-qps"), flag(c, "kube-api-burst")) == (
                str(expected["qps"]), str(expected["burst"])), w["metadata"]["name"]
    assert found, f"{value_set}: no node csi-provisioner"


def test_the_provisioner_api_rate_follows_the_values():
    objects = objects_of({"local": {"provisionerApi": {"qps": 7.5, "burst": 30}}})
    c = containers(node_pod(objects))["csi-provisioner"]
    assert (flag(c, "kube-api-qps"), flag(c, "kube-api-burst")) == ("7.5", "30")
