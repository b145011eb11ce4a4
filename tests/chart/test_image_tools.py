"""The filesystem tools layer of berth's image (image/tools, image/packages,
image/programs), which the Dockerfile's tools stage and scripts/kube-cluster both build:
the programs it copies are exactly the ones berth runs, and, run on this machine, the
script copies each program with everything it loads, so the copy works on its own in a
chroot, and copies nothing that the base already has."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, skip_notice

IMAGE = REPO / "image"
TOOLS = IMAGE / "tools"

# Which Debian package each program berth may execute comes from.
PROGRAM_PACKAGES = {
    "blkid": "util-linux", "wipefs": "util-linux", "blkdiscard": "util-linux", "losetup": "mount",
    "mount": "mount", "umount": "mount",
    "mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "tune2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs", "xfs_growfs": "xfsprogs", "xfs_quota": "xfsprogs", "xfs_io": "xfsprogs",
    "mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs",
    "cryptsetup": "cryptsetup-bin",
    "du": "coreutils",
    "cp": "coreutils",
}


def entries(name: str) -> list[str]:
    out = []
    for line in (IMAGE / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def programs_berth_runs() -> set[str]:
    """Programs named in berth's sources outside test code: Command::new("x") anywhere;
    run("x", ...) and the mkfs table in src/mount/, where berth keeps what it executes.
    Inline test modules (#[cfg(test)] mod x { ...) and test files are left out."""
    programs = set()
    for path in (REPO / "src").rglob("*.rs"):
        rel = path.relative_to(REPO / "src")
        if path.name in ("tests.rs", "testutil.rs") or "tests" in rel.parts:
            continue
        text = re.split(r"(?m)^#\[cfg\(test\)\]\s*\nmod \w+ \{", path.read_text())[0]
        programs |= set(re.findall(r'Command::new\("([^"]+)"\)', text))
        if "mount" in rel.parts:
            programs |= set(re.findall(r'\brun\("([^"]+)"', text))
            programs |= set(re.findall(r'"(mkfs\.[a-z0-9]+)"', text))
    return programs


def test_programs_are_exactly_what_berth_runs():
    runs = programs_berth_runs()
    assert {"blkid", "mkfs.ext4", "xfs_growfs", "btrfs"} <= runs, f"the scan is broken: {sorted(runs)}"
    listed = {e for e in entries("programs") if not e.startswith("/")}
    assert listed == runs, (f"image/programs lacks {sorted(runs - listed)}; "
                            f"names {sorted(listed - runs)} that berth does not run")
    print(f"programs berth runs: {sorted(runs)}")


def test_every_program_has_its_package():
    packages = set(entries("packages"))
    for program in entries("programs"):
        if program.startswith("/"):
            continue
        assert program in PROGRAM_PACKAGES, f"{program}: add its Debian package to PROGRAM_PACKAGES"
        assert PROGRAM_PACKAGES[program] in packages, f"{program} needs {PROGRAM_PACKAGES[program]} in image/packages"
    assert packages <= set(PROGRAM_PACKAGES.values()), "a package no program needs"


def test_doctor_checks_the_same_tools():
    """berth doctor reports the tools of each filesystem type; they are all in the image."""
    checks = (REPO / "src" / "doctor" / "checks.rs").read_text()
    table = re.search(r"const FS_TOOLS[^=]*=\s*\[(.*?)\];", checks, re.S).group(1)
    named = set(re.findall(r'"([a-z0-9_.]+)"', table)) - {"ext4", "xfs", "btrfs"}
    doctor_programs = {n for n in named if n in PROGRAM_PACKAGES}
    assert doctor_programs, table
    assert doctor_programs <= set(entries("programs"))


def test_kube_cluster_uses_the_same_files():
    script = (REPO / "scripts" / "kube-cluster").read_text()
    assert "/image/tools snapshot" in script and "/image/tools install" in script and "/image/tools collect" in script
    assert "image/packages image/programs image/tools" in script, "the cached root filesystem is keyed on all three"
    # The Debian release comes from the Dockerfile's pinned base image, not a copy of it.
    assert re.search(r"^berth_release=\$\(sed .*Dockerfile\)$", script, re.M)
    assert not re.search(r"^berth_packages=", script, re.M)


# -- image/tools, run on this machine


def runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot)"
    for tool in ("ldd", "dpkg-query", "chroot", "unshare"):
        if not shutil.which(tool):
            return f"no {tool} on this machine"
    missing = [p for p in entries("programs") if not p.startswith("/") and not any(
        os.path.exists(os.path.join(d, p)) for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))]
    if missing:
        return f"this machine lacks {missing} (scripts/test installs e2fsprogs, xfsprogs, btrfs-progs, cryptsetup-bin)"
    return None


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """image/tools collect from this machine's root against an empty snapshot: the copy
    must then hold everything the programs load, the C library and loader too."""
    reason = runnable()
    if reason:
        skip_notice("image/tools on this machine", reason)
        return None
    work = tmp_path_factory.mktemp("tools")
    (work / "empty.list").write_text("")
    out = work / "out"
    result = subprocess.run([str(TOOLS), "collect", str(work / "empty.list"), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def in_chroot(root, *argv, check=True) -> subprocess.CompletedProcess:
    """Runs argv in root with /proc mounted, as in a container (e2fsprogs reads the mount
    table), in a mount namespace of its own so nothing stays mounted."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *argv],
                            capture_output=True, text=True)
    assert "error while loading shared libraries" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result


def test_collected_programs_work_alone_in_a_chroot(collected, tmp_path):
    if collected is None:
        return
    # The layer on a base that is only the merged /usr's symlinks.
    root = tmp_path / "root"
    shutil.copytree(collected, root, symlinks=True)
    for top in ("lib", "lib64", "bin", "sbin"):
        (root / top).symlink_to(f"usr/{top}")
    (root / "proc").mkdir()
    (root / "etc" / "mtab").symlink_to("../proc/self/mounts")
    (root / "work").mkdir()
    for name in ("e.img", "x.img", "b.img"):
        with open(root / "work" / name, "wb") as f:
            f.truncate(320 << 20)
    in_chroot(root, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", "/work/e.img")
    in_chroot(root, "e2fsck", "-f", "-p", "/work/e.img")
    with open(root / "work" / "e.img", "r+b") as f:
        f.truncate(400 << 20)
    in_chroot(root, "resize2fs", "/work/e.img")
    in_chroot(root, "mkfs.xfs", "-q", "-f", "-K", "/work/x.img")
    in_chroot(root, "mkfs.btrfs", "-q", "-f", "-K", "/work/b.img")
    types = in_chroot(root, "blkid", "-o", "value", "-s", "TYPE", "/work/e.img", "/work/x.img", "/work/b.img")
    assert types.stdout.split() == ["ext4", "xfs", "btrfs"]
    in_chroot(root, "wipefs", "--all", "/work/b.img")
    assert in_chroot(root, "blkid", "/work/b.img", check=False).returncode == 2, "wipefs erased the signature"
    # Growing needs a mounted filesystem; here the programs only have to start.
    assert "xfs_growfs version" in in_chroot(root, "xfs_growfs", "-V").stdout
    assert "btrfs-progs" in in_chroot(root, "btrfs", "--version").stdout


def test_collected_layer_keeps_the_base_symlinks_and_names_its_packages(collected):
    if collected is None:
        return
    root = collected
    # Physical paths only: /lib, /bin, /sbin, /lib64 stay the base's symlinks into /usr.
    for top in ("lib", "lib64", "bin", "sbin"):
        assert not (root / top).exists(), f"{top}/ would replace the base's symlink"
    status = root / "var" / "lib" / "dpkg" / "status.d"
    for package in ("e2fsprogs", "xfsprogs", "btrfs-progs"):
        record = (status / package).read_text()
        assert record.startswith(f"Package: {package}\n") and "\nVersion: " in record
        assert (root / "usr" / "share" / "doc" / package / "copyright").is_file()
    assert (root / "etc" / "mke2fs.conf").is_file()
    # Only what the programs need: not xfsprogs's other programs or its python scripts.
    assert not (root / "usr" / "sbin" / "xfs_scrub").exists()
    assert not list(root.glob("usr/lib/python3*"))


def test_collect_copies_nothing_the_base_already_has(collected, tmp_path):
    """With a snapshot (image/tools snapshot's format) that has every file the programs
    need, as this machine has them, nothing is copied; with one library changed, just it."""
    if collected is None:
        return
    lines = []
    for path in sorted(collected.rglob("*")):
        rel = "/" + str(path.relative_to(collected))
        if path.is_dir() or rel.startswith(("/var/lib/dpkg/status.d/", "/usr/share/doc/")):
            continue
        if path.is_symlink():
            lines.append(f"@{os.readlink(path)} {rel}")
        else:
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()} {rel}")
    snapshot = tmp_path / "base.list"
    snapshot.write_text("\n".join(lines) + "\n")
    result = subprocess.run([str(TOOLS), "collect", str(snapshot), str(tmp_path / "out")],
                            capture_output=True, text=True, check=True)
    assert re.search(r": 0 files copied from 0 packages \(\), [1-9]\d* already in the base", result.stderr), result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if not p.is_dir()]
    # A base whose libext2fs differs (an older build, say): that library is copied, with
    # its package's record, and nothing else.
    changed = [("0" * 64 + line[64:]) if re.search(r"/libext2fs\.so\.[0-9.]+$", line) and not line.startswith("@")
               else line for line in lines]
    assert changed != lines
    snapshot.write_text("\n".join(changed) + "\n")
    result = subprocess.run([str(TOOLS), "collect", str(snapshot), str(tmp_path / "again")],
                            capture_output=True, text=True, check=True)
    copied = sorted(str(p.relative_to(tmp_path / "again")) for p in (tmp_path / "again").rglob("*")
                    if not p.is_dir() and "var/lib/dpkg" not in str(p) and "usr/share/doc" not in str(p))
    assert len(copied) == 1 and re.search(r"/libext2fs\.so\.[0-9.]+$", copied[0]), copied
    assert [p.name for p in (tmp_path / "again" / "var" / "lib" / "dpkg" / "status.d").iterdir()][0].startswith("libext2fs")


def test_collect_refuses_an_unknown_program(tmp_path):
    """A program that is not there fails the build instead of leaving it out."""
    reason = runnable()
    if reason:
        skip_notice("image/tools refuses a missing program", reason)
        return
    image = tmp_path / "image"
    shutil.copytree(IMAGE, image)
    (image / "programs").write_text("mkfs.ext4\nno-such-program-berth\n")
    (tmp_path / "empty.list").write_text("")
    result = subprocess.run([str(image / "tools"), "collect", str(tmp_path / "empty.list"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no-such-program-berth: not found" in result.stderr
