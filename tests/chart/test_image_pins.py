"""scripts/update-image-pins, which re-pins the Dockerfile's base images by digest, run on a
copy of the Dockerfile without a registry: $SKOPEO is a stand-in that serves image indexes
from files, or a wrapper that points real skopeo at a local OCI layout."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, skip_notice

SCRIPT = REPO / "scripts" / "update-image-pins"
DOCKERFILE = REPO / "Dockerfile"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def key(name: str) -> str:
    return re.sub(r"[/:]", "_", name)


def index(platforms=(("linux", "amd64"), ("linux", "arm64")), media_type=OCI_INDEX, salt="") -> bytes:
    manifests = [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(f"{o}/{a}{salt}".encode()).hexdigest(),
                  "size": 500, "platform": {"os": o, "architecture": a}} for o, a in platforms]
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}, indent=3).encode()


@pytest.fixture
def registry(tmp_path):
    """A stand-in skopeo: `inspect --raw docker://NAME` prints served/<NAME with / and :
    as _>, or fails as skopeo does for an unknown name. Returns (served dir, env)."""
    served = tmp_path / "served"
    served.mkdir()
    stub = tmp_path / "skopeo"
    stub.write_text(f"""#!{sys.executable}
import pathlib, re, sys
args = sys.argv[1:]
assert args[:2] == ["inspect", "--raw"] and args[2].startswith("docker://"), args
path = pathlib.Path({str(served)!r}) / re.sub(r"[/:]", "_", args[2][len("docker://"):])
if not path.exists():
    sys.stderr.write("manifest unknown: " + args[2] + "\\n")
    sys.exit(1)
sys.stdout.buffer.write(path.read_bytes())
""")
    stub.chmod(0o755)
    return served, {"SKOPEO": str(stub), "PATH": "/usr/bin:/bin"}


def dockerfile_copy(tmp_path) -> pathlib.Path:
    copy = tmp_path / "Dockerfile"
    shutil.copy(DOCKERFILE, copy)
    return copy


def pinned(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """ARG name -> (repository:tag, digest) of the pins."""
    return {m["arg"]: (m["name"], m["digest"]) for m in re.finditer(
        r"^ARG (?P<arg>\w+_IMAGE)=(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$", path.read_text(), re.M)}


def run(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_the_dockerfile_pins_two_images_by_index_digest():
    pins = pinned(DOCKERFILE)
    assert set(pins) == {"RUST_IMAGE", "DEBIAN_IMAGE"}
    assert pins["RUST_IMAGE"][0].startswith("docker.io/library/rust:")
    assert pins["DEBIAN_IMAGE"][0].startswith("docker.io/library/debian:")
    text = DOCKERFILE.read_text()
    assert "FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder" in text
    assert text.count("FROM ${DEBIAN_IMAGE}") == 2


def test_rewrites_each_pin_to_the_index_digest_and_nothing_else(tmp_path, registry):
    served, env = registry
    dockerfile = dockerfile_copy(tmp_path)
    before = pinned(dockerfile)
    for arg, (name, _) in before.items():
        (served / key(name)).write_bytes(index(salt=arg))
    result = run("--dockerfile", str(dockerfile), env=env)
    assert result.returncode == 0, result.stderr
    after = pinned(dockerfile)
    for arg, (name, digest) in after.items():
        assert name == before[arg][0], "the tag stays"
        assert digest == "sha256:" + hashlib.sha256((served / key(name)).read_bytes()).hexdigest()
        assert f"{arg}: {name}: {before[arg][1]} -> {digest}" in result.stdout
    # Only the two pin lines changed.
    old_lines, new_lines = DOCKERFILE.read_text().splitlines(), dockerfile.read_text().splitlines()
    changed = [n for n, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert len(old_lines) == len(new_lines) and len(changed) == 2
    assert all(new_lines[n].startswith("ARG ") for n in changed)
    # Now current: --check agrees, and a second run changes nothing.
    check = run("--check", "--dockerfile", str(dockerfile), env=env)
    assert check.returncode == 0 and check.stdout.count("is current") == 2, check.stdout + check.stderr
    text = dockerfile.read_text()
    assert run("--dockerfile", str(dockerfile), env=env).returncode == 0
    assert dockerfile.read_text() == text


def test_check_reports_stale_pins_and_changes_nothing(tmp_path, registry):
    served, env = registry
    dockerfile = dockerfile_copy(tmp_path)
    for name, _ in pinned(dockerfile).values():
        (served / key(name)).write_bytes(index())
    result = run("--check", "--dockerfile", str(dockerfile), env=env)
    assert result.returncode == 1 and "2 pin(s) stale" in result.stderr
    assert dockerfile.read_bytes() == DOCKERFILE.read_bytes()


def test_a_tag_only_reference_gets_pinned(tmp_path, registry):
    served, env = registry
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE=docker.io/library/debian:trixie-slim\nFROM ${BASE_IMAGE}\n")
    (served / key("docker.io/library/debian:trixie-slim")).write_bytes(index())
    assert run("--dockerfile", str(dockerfile), env=env).returncode == 0
    digest = "sha256:" + hashlib.sha256(index()).hexdigest()
    assert dockerfile.read_text() == f"ARG BASE_IMAGE=docker.io/library/debian:trixie-slim@{digest}\nFROM ${{BASE_IMAGE}}\n"


@pytest.mark.parametrize("served_bytes, message", [
    (index(platforms=(("linux", "amd64"),)), "no image for linux/arm64"),
    (index(media_type="application/vnd.docker.distribution.manifest.v2+json"), "is not a multi-platform index"),
    (b"<html>rate limited</html>", "is not JSON"),
    (None, "manifest unknown"),
])
def test_refuses_what_cannot_be_pinned_and_writes_nothing(tmp_path, registry, served_bytes, message):
    served, env = registry
    dockerfile = dockerfile_copy(tmp_path)
    names = [name for name, _ in pinned(dockerfile).values()]
    # The first image is fine, the second is not: nothing may be written at all.
    (served / key(names[0])).write_bytes(index())
    if served_bytes is not None:
        (served / key(names[1])).write_bytes(served_bytes)
    result = run("--dockerfile", str(dockerfile), env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert dockerfile.read_bytes() == DOCKERFILE.read_bytes()


def test_refuses_a_dockerfile_without_pins(tmp_path, registry):
    _, env = registry
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian:trixie-slim\nARG LATE_IMAGE=debian:trixie\n")
    result = run("--dockerfile", str(dockerfile), env=env)
    assert result.returncode == 2 and "no ARG" in result.stderr


def test_without_skopeo_it_says_how_to_get_it(tmp_path):
    result = run("--check", "--dockerfile", str(dockerfile_copy(tmp_path)),
                 env={"SKOPEO": str(tmp_path / "no-skopeo"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "apt-get install skopeo" in result.stderr


# -- with the real skopeo, against an OCI layout made here


def write_blob(layout: pathlib.Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(layout: pathlib.Path, refs: list[str]) -> dict[str, str]:
    """An OCI layout with, for each ref name, a two-platform index of empty images.
    Returns ref -> the index's digest."""
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    top = []
    digests = {}
    for ref in refs:
        manifests = []
        for arch in ("amd64", "arm64"):
            config = write_blob(layout, json.dumps({"architecture": arch, "os": "linux", "rootfs": {
                "type": "layers", "diff_ids": []}, "config": {}, "created": "2026-01-01T00:00:00Z", "ref": ref}).encode())
            manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                                   "layers": []}).encode()
            manifests.append({"mediaType": OCI_MANIFEST, **write_blob(layout, manifest),
                              "platform": {"os": "linux", "architecture": arch}})
        blob = write_blob(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                                             indent=2).encode())
        digests[ref] = blob["digest"]
        top.append({"mediaType": OCI_INDEX, **blob, "annotations": {"org.opencontainers.image.ref.name": ref}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": top}))
    return digests


def test_real_skopeo_against_a_local_oci_layout(tmp_path):
    skopeo = shutil.which("skopeo")
    if not skopeo:
        skip_notice("update-image-pins with real skopeo", "skopeo is not installed (scripts/kube-cluster installs it)")
        return
    dockerfile = dockerfile_copy(tmp_path)
    names = [name for name, _ in pinned(dockerfile).values()]
    layout = tmp_path / "layout"
    digests = oci_layout(layout, [key(n) for n in names])
    wrapper = tmp_path / "skopeo-local"
    # docker://NAME -> oci:LAYOUT:<NAME with / and : as _>; the rest as given.
    wrapper.write_text(f"""#!{sys.executable}
import os, re, sys
args = ["oci:{layout}:" + re.sub(r"[/:]", "_", a[len("docker://"):]) if a.startswith("docker://") else a
        for a in sys.argv[1:]]
os.execv({skopeo!r}, [{skopeo!r}, *args])
""")
    wrapper.chmod(0o755)
    result = run("--dockerfile", str(dockerfile), env={"SKOPEO": str(wrapper), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    for name, digest in pinned(dockerfile).values():
        assert digest == digests[key(name)], "the pin is the index's digest as the layout records it"
    # skopeo's own view of the same digest.
    check = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:{key(names[1])}"], capture_output=True)
    assert "sha256:" + hashlib.sha256(check.stdout).hexdigest() == digests[key(names[1])]
