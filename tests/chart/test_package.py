"""The chart as it is published: Chart.yaml carries what chart repositories and Artifact
Hub show (home, sources, icon, maintainers, keywords, annotations), and
scripts/package-chart lints, packages and indexes it. The script runs with a real helm
binary (the one scripts/kube-cluster builds, or $HELM, or helm on PATH) into temporary
directories; the packaged archive must hold the chart and render like the work tree."""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pytest
import yaml

from conftest import (
    CHART,
    NFS_POOL,
    REPO,
    SNAPSHOT_API,
    cargo_package,
    cargo_version,
    parse_manifests,
    render_values,
    skip_notice,
)

SCRIPT = REPO / "scripts" / "package-chart"
PLACEHOLDER = "https://git.example.com/berth"


def chart_yaml() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def helm_binary() -> str | None:
    """The helm the script would use: $HELM, helm on PATH, or scripts/kube-cluster's."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    if shutil.which("helm"):
        return shutil.which("helm")
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    built = sorted(glob.glob(str(cache / "berth-kube" / "*" / "bin" / "helm")), key=os.path.getmtime)
    return built[-1] if built else None


def need_helm(what: str) -> str | None:
    helm = helm_binary()
    if helm is None:
        skip_notice(what, "no helm binary (set HELM, put helm on PATH, or run scripts/kube-cluster build)")
    return helm


def package(out: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HELM=helm_binary() or "")
    result = subprocess.run([str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# -- Chart.yaml


def test_chart_yaml_has_what_a_published_chart_shows():
    meta = chart_yaml()
    assert meta["home"].startswith("https://")
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["icon"].startswith("https://") and meta["icon"].endswith("/charts/berth/icon.svg"), \
        "the icon URL names the icon file in the repository"
    assert meta["maintainers"] and all(m.get("name") for m in meta["maintainers"])
    assert {"csi", "storage", "nfs", "hostpath"} <= set(meta["keywords"])
    assert meta["description"].strip()
    annotations = meta["annotations"]
    assert annotations["artifacthub.io/license"] == cargo_package()["license"]
    assert annotations["artifacthub.io/category"] == "storage"
    # 0.x is a prerelease; 1.0 and later are not.
    assert annotations["artifacthub.io/prerelease"] == ("true" if meta["version"].startswith("0.") else "false")
    # The placeholder is the only address used, so --project-url replaces every one.
    for url in [meta["home"], *meta["sources"], meta["icon"], *(m.get("url", "") for m in meta["maintainers"])]:
        assert not url or url.startswith(PLACEHOLDER), url


def test_artifacthub_images_are_the_images_the_defaults_run():
    meta = chart_yaml()
    listed = {i["image"] for i in yaml.safe_load(meta["annotations"]["artifacthub.io/images"])}
    # The defaults, plus the NFS driver (the only user of csi-attacher).
    pools = yaml.safe_load((CHART / "values.yaml").read_text())["pools"] + [NFS_POOL]
    objects = parse_manifests(render_values({"nfs": {"enabled": True}, "pools": pools}))
    running = set()
    for obj in objects:
        if obj["kind"] in ("DaemonSet", "Deployment"):
            running |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"]}
    assert f"berth:{cargo_version()}" in listed
    assert running == listed, f"rendered {sorted(running - listed)} not listed; listed {sorted(listed - running)} not run"


def test_icon_is_a_small_self_contained_svg():
    path = CHART / "icon.svg"
    text = path.read_text()
    assert len(text.encode()) < 4096, "keep the icon small"
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 64 64", "a square icon"
    for element in root.iter():
        assert not element.tag.endswith("}script"), "no scripts in the icon"
        for key, value in element.attrib.items():
            assert not (key.endswith("href") and not value.startswith("#")), f"external reference {value}"
    # .helmignore keeps it out of the archive: the icon is published by URL.
    assert "icon.svg" in (CHART / ".helmignore").read_text().split()


def test_dist_is_ignored_by_git():
    assert "dist/" in (REPO / ".gitignore").read_text().split()


# -- scripts/package-chart


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(output dir, the script's result) of one run with the defaults, or None."""
    if need_helm("scripts/package-chart") is None:
        return None
    out = tmp_path_factory.mktemp("dist")
    return out, package(out)


def test_package_writes_the_archive_and_prints_its_sha256(packaged):
    if packaged is None:
        return
    out, result = packaged
    archive = out / f"berth-{chart_yaml()['version']}.tgz"
    assert archive.is_file()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result.stdout.splitlines() == [f"{digest}  {archive}"], "stdout is sha256sum's line and nothing else"
    assert "helm lint" in result.stderr and "1 chart(s) linted, 0 chart(s) failed" in result.stderr


def test_archive_holds_the_chart(packaged):
    if packaged is None:
        return
    out, _ = packaged
    archive = out / f"berth-{chart_yaml()['version']}.tgz"
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    expected = {f"berth/{p.relative_to(CHART)}" for p in CHART.rglob("*") if p.is_file() and p.name != "icon.svg"}
    assert set(members) == expected
    # Without --project-url or --url the packaged files are the work tree's: byte for byte,
    # except Chart.yaml, which helm package writes anew from the same fields.
    for name, content in members.items():
        work_tree = (CHART / name.removeprefix("berth/")).read_bytes()
        if name == "berth/Chart.yaml":
            assert yaml.safe_load(content) == yaml.safe_load(work_tree)
        else:
            assert content == work_tree, name


def test_index_names_the_version_and_digest(packaged):
    if packaged is None:
        return
    out, _ = packaged
    meta = chart_yaml()
    index = yaml.safe_load((out / "index.yaml").read_text())
    entries = index["entries"]["berth"]
    assert [e["version"] for e in entries] == [meta["version"]]
    entry = entries[0]
    archive = out / f"berth-{meta['version']}.tgz"
    assert entry["digest"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert entry["urls"] == [archive.name]
    assert entry["appVersion"] == meta["appVersion"] == cargo_version()
    assert entry["icon"] == meta["icon"] and entry["home"] == meta["home"]


def test_packaged_archive_renders_like_the_work_tree(packaged):
    """`helm template` of the .tgz (the helm binary, as a user runs it) gives the objects
    the chart tests render from charts/berth in-process."""
    if packaged is None:
        return
    out, _ = packaged
    archive = out / f"berth-{chart_yaml()['version']}.tgz"
    result = subprocess.run([helm_binary(), "template", "berth", str(archive), "--namespace", "kube-system",
                             "--api-versions", SNAPSHOT_API], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from_archive = [d for d in yaml.safe_load_all(result.stdout) if d]
    from_tree = [{k: v for k, v in o.items() if k != "__template__"} for o in parse_manifests(render_values({}))]

    def key(o):
        return (o["kind"], o["metadata"]["name"])

    assert sorted(from_archive, key=key) == sorted(from_tree, key=key)
    assert any(o["kind"] == "DaemonSet" for o in from_archive)


def test_publication_writes_the_real_addresses(tmp_path):
    if need_helm("scripts/package-chart --url") is None:
        return
    before = (CHART / "Chart.yaml").read_bytes()
    package(tmp_path, "--url", "https://charts.example.org/berth/", "--project-url", "https://forge.example.org/berth")
    assert (CHART / "Chart.yaml").read_bytes() == before, "the work tree's chart stays as it is"
    entry = yaml.safe_load((tmp_path / "index.yaml").read_text())["entries"]["berth"][0]
    assert entry["urls"] == [f"https://charts.example.org/berth/berth-{entry['version']}.tgz"]
    assert entry["home"] == "https://forge.example.org/berth"
    assert entry["sources"] == ["https://forge.example.org/berth"]
    assert entry["maintainers"][0]["url"] == "https://forge.example.org/berth"
    # The icon is served from the chart repository, beside index.yaml.
    assert entry["icon"] == "https://charts.example.org/berth/berth.svg"
    assert (tmp_path / "berth.svg").read_bytes() == (CHART / "icon.svg").read_bytes()
    with tarfile.open(tmp_path / f"berth-{entry['version']}.tgz") as tar:
        packaged_meta = yaml.safe_load(tar.extractfile("berth/Chart.yaml").read())
    assert packaged_meta["icon"] == entry["icon"] and "git.example.com" not in yaml.safe_dump(packaged_meta)


def test_publication_refuses_the_placeholder(tmp_path):
    if need_helm("scripts/package-chart placeholder check") is None:
        return
    result = package(tmp_path, "--url", "https://charts.example.org/berth", check=False)
    assert result.returncode != 0
    assert "give --project-url" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing is written when the script refuses"


def test_index_keeps_versions_published_before(tmp_path):
    if need_helm("scripts/package-chart --merge") is None:
        return
    earlier = {"apiVersion": "v1", "entries": {"berth": [{
        "apiVersion": "v2", "name": "berth", "version": "0.0.9", "appVersion": "0.0.9",
        "digest": "0" * 64, "urls": ["https://charts.example.org/berth/berth-0.0.9.tgz"],
        "created": "2026-01-01T00:00:00Z"}]}, "generated": "2026-01-01T00:00:00Z"}
    (tmp_path / "index.yaml").write_text(yaml.safe_dump(earlier))
    package(tmp_path, "--url", "https://charts.example.org/berth", "--project-url", "https://forge.example.org/berth")
    versions = sorted(e["version"] for e in yaml.safe_load((tmp_path / "index.yaml").read_text())["entries"]["berth"])
    assert versions == sorted(["0.0.9", chart_yaml()["version"]])
