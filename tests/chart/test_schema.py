"""values.schema.json rejects misspelt keys and wrong types, at every level, and
values.yaml documents every key it sets."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml

from conftest import CHART, DOCS, VALUE_SETS, chart, render_values

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_defaults_and_every_value_set_pass_the_schema():
    chart().validate_schema({})
    for values, _, _ in VALUE_SETS.values():
        chart().validate_schema(values)


def walk(schema, path="$"):
    yield path, schema
    for key, sub in schema.get("definitions", {}).items():
        yield from walk(sub, f"{path}#{key}")
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    for i, branch in enumerate(schema.get("allOf", [])):
        if "then" in branch:
            yield from walk(branch["then"], f"{path}<{i}>")


def test_every_object_with_declared_keys_refuses_others():
    for path, node in walk(SCHEMA):
        if "properties" not in node:
            continue
        if "allOf" in node:
            # A pool: dispatched on `type`; each branch closes its own keys.
            branches = [b["then"] for b in node["allOf"]]
            assert branches and all(b.get("additionalProperties") is False for b in branches), path
            continue
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


@pytest.mark.parametrize(
    "values, where",
    [
        ({"kubeletdir": "/var/lib/kubelet"}, "kubeletdir"),
        ({"local": {"drivername": "x.example.org"}}, "drivername"),
        ({"nfs": {"enable": True}}, "enable"),
        ({"node": {"toleration": []}}, "toleration"),
        ({"controller": {"replica": 2}}, "replica"),
        ({"sidecars": {"provisioner": {"repository": "r", "tag": "t", "version": "v1"}}}, "version"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
        ({"pools": [{"name": "a", "type": "hostpath", "path": "/a", "capacityEnforcment": "auto"}]}, "capacityEnforcment"),
        ({"pools": [{"name": "a", "type": "nfs", "server": "s", "export": "/e", "mountOption": ["x"]}]}, "mountOption"),
        ({"pools": [{"name": "a", "type": "block", "path": "/a", "devices": ["/dev/sda"]}]}, "devices"),
        ({"pools": [{"name": "a", "type": "device", "devices": ["/dev/sda"], "snapshotpool": "b"}]}, "snapshotpool"),
        ({"storageClasses": [{"name": "x", "driver": "local", "isDefault": True}]}, "isDefault"),
        ({"volumeSnapshotClasses": [{"name": "x", "driver": "local", "deletePolicy": "Delete"}]}, "deletePolicy"),
    ],
)
def test_misspelt_keys_are_rejected(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        chart().validate_schema(values)
    assert where in str(err.value)
    # And an install (render) refuses them too, not just the explicit check.
    with pytest.raises(helm.HelmValuesError):
        render_values(values)


@pytest.mark.parametrize(
    "values",
    [
        {"kubeletDir": "var/lib/kubelet"},
        {"local": {"enabled": "yes"}},
        {"local": {"defaultVolumeSize": "1.5GB"}},
        {"local": {"maxVolumesPerNode": -1}},
        {"local": {"provisionerApi": {"qps": 0, "burst": 50}}},
        {"local": {"provisionerApi": {"qps": 20, "burst": 0}}},
        {"logFormat": "xml"},
        {"pools": [{"name": "Default", "type": "hostpath", "path": "/a"}]},
        {"pools": [{"name": "-a", "type": "hostpath", "path": "/a"}]},
        {"pools": [{"name": "a" * 41, "type": "hostpath", "path": "/a"}]},
        {"pools": [{"name": "a", "type": "tape", "path": "/a"}]},
        {"pools": [{"name": "a", "type": "hostpath", "path": "relative"}]},
        {"pools": [{"name": "a", "type": "hostpath", "path": "/a", "capacityEnforcement": "always"}]},
        {"pools": [{"name": "a", "type": "device", "devices": [], "wipe": "signatures"}]},
        {"pools": [{"name": "a", "type": "device", "devices": ["/dev/sdb"], "wipe": "shred"}]},
        {"pools": [{"name": "a", "type": "device", "devices": ["/etc/passwd"]}]},
        {"pools": [{"name": "a", "type": "device", "devices": ["/dev/../etc/x"]}]},
        {"pools": [{"name": "a", "type": "device", "devices": ["/dev/*/sda"]}]},
        {"pools": [{"name": "a", "type": "device", "devices": ["/dev/sdb"], "snapshotPool": "Bad"}]},
        {"pools": [{"name": "a", "type": "nfs", "server": "s", "export": "/e", "onDelete": "keep"}]},
        {"pools": [{"name": "a", "type": "nfs", "server": "s", "export": "/e", "permissions": 770}]},
        {"pools": [{"name": "a", "type": "nfs", "export": "/e"}]},
        {"storageClasses": [{"name": "x", "driver": "ceph"}]},
        {"storageClasses": [{"name": "x", "driver": "local", "fsType": "ntfs"}]},
        {"storageClasses": [{"name": "x", "driver": "local", "volumeBindingMode": "Later"}]},
        {"node": {"ports": {"localHealth": 70000, "localRegistrar": 1, "nfsHealth": 2, "nfsRegistrar": 3}}},
        {"sidecars": {"timeout": "sixty"}},
        {"image": {"repository": "berth", "digest": "latest"}},
    ],
)
def test_wrong_types_and_values_are_rejected(values):
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(values)


def documented_keys():
    """(dotted path, documented?) for every key values.yaml sets that the schema declares.

    A key counts as documented when a comment sits right above it, above its parent, or
    above the first key of its mapping (one comment for a small group)."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    root = yaml.compose(text)

    def commented(line_no):  # 0-based line of a key
        return line_no > 0 and lines[line_no - 1].lstrip().startswith("#")

    def visit(node, schema, path, parent_documented):
        if node.tag != "tag:yaml.org,2002:map" or "properties" not in schema:
            return
        first_documented = bool(node.value) and commented(node.value[0][0].start_mark.line)
        for key, value in node.value:
            name = key.value
            sub = schema["properties"].get(name, {})
            documented = commented(key.start_mark.line) or parent_documented or first_documented
            yield f"{path}{name}", documented
            yield from visit(value, sub, f"{path}{name}.", commented(key.start_mark.line))

    yield from visit(root, SCHEMA, "", False)


def test_values_yaml_documents_every_key():
    keys = list(documented_keys())
    assert len(keys) > 60
    undocumented = [path for path, ok in keys if not ok]
    assert not undocumented, f"keys without a comment in values.yaml: {undocumented}"


def test_every_values_key_is_declared_in_the_schema():
    def declared(values, schema, path=""):
        for key, value in values.items():
            props = schema.get("properties", {})
            assert key in props, f"values.yaml sets {path}{key}, which the schema does not declare"
            if isinstance(value, dict) and "properties" in props[key]:
                declared(value, props[key], f"{path}{key}.")

    declared(yaml.safe_load((CHART / "values.yaml").read_text()), SCHEMA)


def test_deployment_doc_covers_the_values_that_matter():
    doc = DOCS.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for key, value in values.items():
        if f"`{key}" not in doc:
            missing.append(key)
        if isinstance(value, dict):
            missing += [f"{key}.{sub}" for sub in value if f"`{key}.{sub}" not in doc]
    assert not missing, f"docs/deployment.md does not mention: {missing}"
