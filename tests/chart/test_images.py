"""Image references: every container runs repository:tag by default, and
repository:tag@digest when its image has a digest (berth's `image.digest`, each
sidecar's `sidecars.<name>.digest`); the schema accepts only sha256 digests."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from conftest import CHART, NFS_POOL, cargo_version, chart, parse_manifests, render_values

DIGEST = "sha256:" + "0123456789abcdef" * 4
# The sidecars' value names and the container names they run as.
SIDECARS = {
    "provisioner": "csi-provisioner",
    "attacher": "csi-attacher",
    "resizer": "csi-resizer",
    "snapshotter": "csi-snapshotter",
    "nodeDriverRegistrar": "node-driver-registrar",
    "healthMonitor": "csi-health-monitor",
}


def defaults() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def every_container_values(extra: dict) -> dict:
    """Both drivers, so every sidecar (the attacher only serves NFS) runs somewhere."""
    return {"nfs": {"enabled": True}, "pools": defaults()["pools"] + [NFS_POOL], **extra}


def images(values: dict) -> dict[str, set[str]]:
    """Container name -> the images it runs with, over every workload."""
    found: dict[str, set[str]] = {}
    for obj in parse_manifests(render_values(values)):
        if obj["kind"] in ("DaemonSet", "Deployment"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                found.setdefault(c["name"], set()).add(c["image"])
    return found


def sidecar_images(found: dict[str, set[str]]) -> dict[str, set[str]]:
    """Value name -> images, the container names mapped back (the node's registrar
    carries a driver suffix for the second driver)."""
    out: dict[str, set[str]] = {}
    for container, refs in found.items():
        for value, name in SIDECARS.items():
            if container == name or container.startswith(name + "-"):
                out.setdefault(value, set()).update(refs)
    return out


def test_defaults_are_repository_colon_tag():
    found = images(every_container_values({}))
    sidecars = defaults()["sidecars"]
    by_value = sidecar_images(found)
    assert set(by_value) == set(SIDECARS), "every sidecar runs in this value set"
    for value, refs in by_value.items():
        assert refs == {f"{sidecars[value]['repository']}:{sidecars[value]['tag']}"}, value
    berth = {ref for name, refs in found.items() if name.startswith("berth") for ref in refs}
    assert berth == {f"berth:{cargo_version()}"}


def test_every_sidecar_digest_pins_its_image():
    sidecars = defaults()["sidecars"]
    values = every_container_values({"sidecars": {v: {"digest": DIGEST} for v in SIDECARS}})
    by_value = sidecar_images(images(values))
    for value in SIDECARS:
        assert by_value[value] == {f"{sidecars[value]['repository']}:{sidecars[value]['tag']}@{DIGEST}"}, value


@pytest.mark.parametrize("value", sorted(SIDECARS))
def test_one_sidecar_digest_changes_only_that_sidecar(value):
    values = every_container_values({"sidecars": {value: {"digest": DIGEST}}})
    by_value = sidecar_images(images(values))
    assert set(by_value) == set(SIDECARS)
    for other, refs in by_value.items():
        pinned = {r.endswith("@" + DIGEST) for r in refs}
        assert pinned == {other == value}, (other, refs)


def test_berth_digest_keeps_the_tag():
    found = images(every_container_values({"image": {"repository": "registry.example.com/berth", "digest": DIGEST}}))
    berth = {ref for name, refs in found.items() if name.startswith("berth") for ref in refs}
    assert berth == {f"registry.example.com/berth:{cargo_version()}@{DIGEST}"}
    found = images({"image": {"repository": "r.example.com/berth", "tag": "dev", "digest": DIGEST}})
    assert {r for n, refs in found.items() if n.startswith("berth") for r in refs} == {f"r.example.com/berth:dev@{DIGEST}"}


@pytest.mark.parametrize("digest", ["latest", "sha256:abc", "sha256:" + "A" * 64, "sha512:" + "0" * 128, DIGEST + " "])
@pytest.mark.parametrize("where", ["image", "provisioner", "nodeDriverRegistrar"])
def test_schema_refuses_what_is_not_a_sha256_digest(where, digest):
    values = {"image": {"repository": "berth", "digest": digest}} if where == "image" else \
        {"sidecars": {where: {"digest": digest}}}
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(chart().merge_values(values))


@pytest.mark.parametrize("where", ["image"] + sorted(SIDECARS))
def test_schema_accepts_a_sha256_digest_and_empty(where):
    for digest in (DIGEST, ""):
        values = {"image": {"repository": "berth", "digest": digest}} if where == "image" else \
            {"sidecars": {where: {"digest": digest}}}
        chart().validate_schema(chart().merge_values(values))
