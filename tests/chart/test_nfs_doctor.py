"""With the NFS driver, NOTES.txt tells how to run `berth doctor` in every node's berth-nfs
container and in the NFS controller (each node registers itself on the export, so the
server must allow it). The commands must name containers, paths and flags that exist."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from conftest import DOCS, berth_binary, flag, is_berth, notes, of_kind, one, pod_spec, rendered, resolve_path, skip_notice, volume


def doctor_commands(text: str) -> list[list[str]]:
    """Each `kubectl ... exec ... -- berth doctor ...` command in `text`, as words."""
    return [shlex.split(line.strip()) for line in text.splitlines() if re.search(r"kubectl .*exec .*-- berth doctor", line)]


def after(words: list[str], flag_name: str) -> str:
    return words[words.index(flag_name) + 1]


@pytest.mark.parametrize("value_set", ["nfs-only", "both"])
def test_notes_run_the_doctor_in_each_nfs_container_with_its_config(value_set):
    text = notes(value_set)
    commands = doctor_commands(text)
    assert len(commands) == 2, text
    objects = rendered(value_set)
    node, controller = commands
    # Every node plugin pod has the container the loop execs into, with the config the
    # command names, from the NFS driver's ConfigMap.
    daemonsets = of_kind(objects, "DaemonSet")
    assert daemonsets
    for ds in daemonsets:
        spec = pod_spec(ds)
        container = next(c for c in spec["containers"] if c["name"] == after(node, "-c"))
        assert is_berth(container) and flag(container, "mode") == "node"
        config = after(node, "--config")
        assert flag(container, "config") == config
        name, rel = resolve_path(container, config)
        assert volume(spec, name)["configMap"]["name"].endswith("-nfs-config") and rel == "config.yaml"
        assert flag(container, "endpoint") == after(node, "--endpoint")
    assert "awk '/ berth-nfs( |$)/" in text, "the loop picks the pods that have the berth-nfs container"
    # The controller command names the Deployment and its berth container.
    deployment = one(objects, "Deployment", after(controller, "exec").removeprefix("deploy/"))
    container = next(c for c in pod_spec(deployment)["containers"] if c["name"] == after(controller, "-c"))
    assert flag(container, "driver-name") == "nfs.berth.csi.io" and flag(container, "mode") == "controller"
    assert flag(container, "config") == after(controller, "--config")
    assert "What the" in text and "docs/nfs.md" in text


def test_notes_without_nfs_do_not_mention_the_nfs_doctor():
    assert not doctor_commands(notes("local-only"))


def test_docs_give_the_same_doctor_commands():
    """docs/deployment.md runs the doctor in the same containers with the same flags (its
    namespace and pod names are placeholders)."""
    documented = [" ".join(c[c.index("-c"):]) for c in doctor_commands(DOCS.read_text())]
    for words in doctor_commands(notes("nfs-only")):
        tail = " ".join(words[words.index("-c"):])
        assert tail in documented, f"docs/deployment.md lacks: {tail}"


def test_the_doctor_knows_the_flags_the_notes_use():
    binary = berth_binary()
    if binary is None:
        skip_notice("test_the_doctor_knows_the_flags_the_notes_use", "no berth binary built")
        pytest.skip("no berth binary built")
    help_text = subprocess.run([binary, "doctor", "--help"], capture_output=True, text=True, check=True).stdout
    for words in doctor_commands(notes("nfs-only")):
        for word in words[words.index("doctor") + 1:]:
            if word.startswith("--"):
                assert word in help_text, f"berth doctor has no {word}"
