"""The NFS controller runs as exactly one pod: its sidecars elect leaders each on their own
lease and berth caches the export's records, so a second replica would act on stale
records. The schema refuses any other replica count, the Deployment is replaced with
Recreate, and no document recommends more than one."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from conftest import CHART, DOCS, REPO, chart, one, rendered


@pytest.mark.parametrize("replicas", [0, 2, 3])
def test_schema_refuses_other_nfs_replica_counts(replicas):
    with pytest.raises(helm.HelmValuesError) as err:
        chart().validate_schema({"controller": {"nfs": {"replicas": replicas}}})
    assert "replicas" in str(err.value)


def test_schema_refuses_the_old_shared_replica_key():
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema({"controller": {"replicas": 2}})


def test_nfs_controller_is_one_pod_replaced_with_recreate():
    for value_set in ("nfs-only", "both", "custom-driver-names"):
        deploy = [o for o in rendered(value_set) if o["kind"] == "Deployment"
                  and o["metadata"]["name"].endswith("-nfs-controller")]
        assert len(deploy) == 1, value_set
        assert deploy[0]["spec"]["replicas"] == 1
        assert deploy[0]["spec"]["strategy"] == {"type": "Recreate"}


def test_local_expansion_controller_may_have_a_standby():
    local = one(rendered("both"), "Deployment", "berth-local-controller")
    assert local["spec"]["replicas"] == 2
    chart().validate_schema({"controller": {"local": {"replicas": 2}}})
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema({"controller": {"local": {"replicas": 3}}})


def test_no_document_recommends_two_nfs_controllers():
    texts = {p: p.read_text() for p in [CHART / "values.yaml", DOCS, REPO / "docs" / "nfs.md", REPO / "README.md"]}
    for path, text in texts.items():
        flat = " ".join(text.split())
        assert not re.search(r"warm standby|standby leader", flat), f"{path.name} recommends a standby"
        assert "controller.replicas" not in flat, f"{path.name} still documents the shared replica count"
    assert "`controller.nfs.replicas` | 1 | the NFS controller: exactly 1" in texts[DOCS]
