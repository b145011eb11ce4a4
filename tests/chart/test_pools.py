"""Pools fail loudly instead of quietly: a pool path outside the records directory must
exist on the node (hostPath type Directory, so a data disk that is not mounted yet never
becomes a pool on the root disk), and the default hostpath pool refuses sizes it cannot
enforce. The default install also has a block pool, which raw block volumes need."""

from __future__ import annotations

import yaml

from conftest import CHART, DISK_POOL, DOCS, merged_values, of_kind, one, pod_spec, render_values, rendered


def node_volumes(objects):
    (ds,) = of_kind(objects, "DaemonSet")
    return {v["name"]: v for v in pod_spec(ds)["volumes"]}


def local_config(objects):
    return yaml.safe_load(one(objects, "ConfigMap", "berth-local-config")["data"]["config.yaml"])


def test_pool_paths_outside_the_state_dir_must_exist():
    objects = rendered("local-only")
    vols = node_volumes(objects)
    assert vols["pool-disk1"]["hostPath"] == {"path": DISK_POOL["path"], "type": "Directory"}
    for value_set in ("both", "custom-driver-names"):
        for name, vol in node_volumes(rendered(value_set)).items():
            if name.startswith("pool-"):
                assert vol["hostPath"]["type"] == "Directory", (value_set, name)


def test_default_pools_enforce_sizes_and_include_a_block_pool():
    config = local_config(rendered("default"))
    pools = {p["name"]: p for p in config["pools"]}
    assert pools["default"]["type"] == "hostpath"
    assert pools["default"]["capacityEnforcement"] == "required"
    assert pools["block"]["type"] == "block"
    # Both live under the records directory, which berth creates: nothing to prepare.
    for pool in pools.values():
        assert pool["path"].startswith(config["stateDir"].rstrip("/") + "/")
    assert not [n for n in node_volumes(rendered("default")) if n.startswith("pool-")]
    block = one(rendered("default"), "StorageClass", "berth-block")
    assert block["parameters"] == {"pool": "block"}
    assert one(rendered("default"), "StorageClass", "berth-local")["parameters"] == {"pool": "default"}


def test_values_and_docs_say_what_required_means():
    values = (CHART / "values.yaml").read_text()
    assert "capacityEnforcement: required" in values and "capacity-enforcement: none" in values
    doc = " ".join(DOCS.read_text().split())
    assert "### Default pools" in DOCS.read_text()
    assert "capacityEnforcement: required" in doc and "ProvisioningFailed" in doc
    assert "hostPath of type `Directory`" in doc
    assert "5.14" in doc


def test_merged_defaults_match_what_the_docs_table_says():
    pools = merged_values("default")["pools"]
    assert [(p["name"], p["type"]) for p in pools] == [("default", "hostpath"), ("block", "block")]


def test_notes_warn_about_pools_that_require_enforcement():
    manifests = render_values({})
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert "Pool default enforces every volume's size or refuse it" in notes
    relaxed = render_values({"pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default",
                                        "capacityEnforcement": "auto"}],
                             "storageClasses": [{"name": "berth-local", "driver": "local"}]})
    notes = next(text for path, text in relaxed.items() if path.endswith("NOTES.txt"))
    assert "enforce every volume's size" not in notes
