"""Node sidecars that need only berth's socket and the API server run as a non-root user
(node.sidecarUser), and berth lets that user's group use its socket (BERTH_SOCKET_GROUP,
mode 0660); node-driver-registrar stays root because it writes the kubelet's registration
directory. With node.sidecarUser null, every sidecar keeps its old root identity and
berth's socket stays owner-only."""

from __future__ import annotations

import pytest

from conftest import VALUE_SETS, is_berth, merged_values, of_kind, pod_spec, render_values, parse_manifests, rendered

NON_ROOT = {"csi-provisioner", "csi-snapshotter", "csi-health-monitor"}


def node_containers(objects):
    for ds in of_kind(objects, "DaemonSet"):
        for c in pod_spec(ds)["containers"]:
            yield ds["metadata"]["name"], c


def socket_group(container):
    return next((e.get("value") for e in container.get("env", []) if e["name"] == "BERTH_SOCKET_GROUP"), None)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_sidecars_that_need_only_the_socket_run_as_the_socket_group(value_set):
    values = merged_values(value_set)
    user = values["node"]["sidecarUser"]
    seen = set()
    for ds, c in node_containers(rendered(value_set)):
        sc = c.get("securityContext", {})
        if is_berth(c):
            assert socket_group(c) == str(user), f"{ds}/{c['name']}: berth must share its socket with {user}"
            assert sc.get("privileged") is True
        elif any(c["name"].startswith(name) for name in NON_ROOT):
            seen.add(c["name"])
            assert (sc.get("runAsNonRoot"), sc.get("runAsUser"), sc.get("runAsGroup")) == (True, user, user), (
                f"{ds}/{c['name']}: {sc}")
            assert sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"]
        elif c["name"].startswith("node-driver-registrar"):
            assert "runAsUser" not in sc, f"{ds}: the registrar writes /registration as root: {sc}"
    # Only the node-local driver runs sidecars beside berth that need no more than its socket.
    if values["local"]["enabled"]:
        assert "csi-provisioner" in seen, f"{value_set}: no node provisioner rendered"


def test_a_null_sidecar_user_keeps_root_sidecars_and_an_owner_only_socket():
    objects = parse_manifests(render_values({"node": {"sidecarUser": None}}))
    for ds, c in node_containers(objects):
        assert socket_group(c) is None, f"{ds}/{c['name']}"
        assert "runAsUser" not in c.get("securityContext", {}), f"{ds}/{c['name']}"


@pytest.mark.parametrize("bad", [0, -1, "65532", 1.5])
def test_the_sidecar_user_is_a_positive_integer(bad):
    with pytest.raises(Exception, match="sidecarUser"):
        render_values({"node": {"sidecarUser": bad}})
