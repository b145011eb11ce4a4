"""The restore drill CronJob (drill.*): off by default; when on, it runs `berth drill` with
the NFS driver's configuration against an NFS pool of it, restores into a scratch
emptyDir, writes its metrics file into node-exporter's textfile directory only when
drill.metricsDir is set, runs as root with only the capabilities a restore needs, and
never retries a failed drill. Inconsistent values fail the install with a reason, the
schema refuses misspelt keys and bad values, the flags exist in `berth drill --help`,
and docs/deployment.md names every metric berth writes."""

from __future__ import annotations

import re
import subprocess

import helm_python as helm
import pytest

from conftest import (
    DOCS,
    NFS_POOL,
    REPO,
    VALUE_SETS,
    berth_binary,
    cargo_version,
    chart,
    flag,
    of_kind,
    one,
    parse_manifests,
    render_values,
    rendered,
    resolve_path,
    skip_notice,
    volume,
)

SECOND_NFS_POOL = {**NFS_POOL, "name": "archive", "export": "/exports/archive"}


def drill_values(**drill) -> dict:
    return {"local": {"enabled": False}, "nfs": {"enabled": True}, "pools": [NFS_POOL],
            "drill": {"enabled": True, **drill}}


def cron_jobs(objects) -> list[dict]:
    return of_kind(objects, "CronJob")


def pod(cron: dict) -> dict:
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(cron: dict) -> dict:
    (c,) = pod(cron)["containers"]
    return c


def test_off_by_default_and_in_every_value_set_that_does_not_ask():
    for name, (values, _, _) in VALUE_SETS.items():
        asked = values.get("drill", {}).get("enabled", False)
        assert bool(cron_jobs(rendered(name))) == asked, name


def test_the_drill_runs_berth_drill_on_the_nfs_pool_with_the_nfs_config():
    objects = rendered("nfs-drill")
    cron = one(objects, "CronJob", "backup-berth-drill")
    assert cron["metadata"]["namespace"] == "storage"
    assert cron["spec"]["schedule"] == "17 3 * * *"
    c = container(cron)
    spec = pod(cron)
    assert c["args"][0] == "drill"
    assert flag(c, "pool") == "shared"
    assert flag(c, "latest") == "3"
    # The same configuration file the NFS driver's berth containers read.
    config = flag(c, "config")
    name, rel = resolve_path(c, config)
    assert volume(spec, name)["configMap"]["name"] == "backup-berth-nfs-config" and rel == "config.yaml"
    one(objects, "ConfigMap", "backup-berth-nfs-config")
    controller = one(objects, "Deployment", "backup-berth-nfs-controller")
    berth = next(x for x in controller["spec"]["template"]["spec"]["containers"] if x["name"] == "berth")
    assert flag(berth, "config") == config
    assert c["image"] == berth["image"] == f"berth:{cargo_version()}"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    # Restores go to an emptyDir of the asked size.
    name, rel = resolve_path(c, flag(c, "scratch"))
    assert volume(spec, name)["emptyDir"] == {"sizeLimit": "20Gi"} and rel == ""
    # The metrics file lands in the textfile collector's directory on the node.
    name, rel = resolve_path(c, flag(c, "metrics-file"))
    assert volume(spec, name)["hostPath"] == {"path": "/var/lib/node-exporter/textfile", "type": "DirectoryOrCreate"}
    assert rel == "berth-drill-shared.prom"
    # The user's selector adds to the default one.
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/hostname": "storage-1"}
    assert spec["tolerations"] == [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}]


def test_the_drill_runs_as_root_with_only_the_capabilities_a_restore_needs():
    cron = one(rendered("nfs-drill"), "CronJob", "backup-berth-drill")
    spec = pod(cron)
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec
    sc = container(cron)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert sc["capabilities"]["drop"] == ["ALL"]
    # Within the baseline Pod Security Standard's allowed additions.
    baseline = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
    added = set(sc["capabilities"]["add"])
    assert {"CHOWN", "FOWNER", "DAC_OVERRIDE"} <= added <= baseline
    # Every writable path is a volume: the root filesystem is read-only.
    assert {m["name"] for m in container(cron)["volumeMounts"] if not m.get("readOnly")} == {"scratch", "textfile"}


def test_a_failed_drill_is_not_retried_and_runs_never_overlap():
    cron = one(rendered("nfs-drill"), "CronJob", "backup-berth-drill")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] == 21600
    assert pod(cron)["restartPolicy"] == "Never"
    labels = job["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "drill"


def test_without_metrics_dir_there_is_no_file_and_no_host_path():
    values = drill_values(schedule="@daily", latest=1)
    cron = one(parse_manifests(render_values(values)), "CronJob", "berth-drill")
    c = container(cron)
    assert flag(c, "metrics-file") is None
    assert flag(c, "latest") == "1"
    assert cron["spec"]["schedule"] == "@daily"
    assert not [v for v in pod(cron)["volumes"] if "hostPath" in v]
    assert volume(pod(cron), "scratch")["emptyDir"] in ({}, None)


def test_the_pool_is_the_only_nfs_pool_or_the_one_named():
    values = drill_values(pool="archive")
    values["pools"] = [NFS_POOL, SECOND_NFS_POOL]
    values["storageClasses"] = [{"name": "berth-nfs", "driver": "nfs", "pool": "shared"}]
    cron = one(parse_manifests(render_values(values)), "CronJob", "berth-drill")
    assert flag(container(cron), "pool") == "archive"
    assert flag(container(cron), "metrics-file") is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"drill": {"enabled": True}}, "drill.enabled needs nfs.enabled"),
        ({**drill_values(), "pools": [NFS_POOL, SECOND_NFS_POOL],
          "storageClasses": [{"name": "berth-nfs", "driver": "nfs", "pool": "shared"}]},
         "drill.pool must name the NFS pool to drill: the nfs driver has 2 pools"),
        (drill_values(pool="elsewhere"), "drill.pool \"elsewhere\" is not an nfs pool of `pools`"),
        ({**drill_values(pool="default"), "local": {"enabled": True},
          "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"}, NFS_POOL],
          "storageClasses": []},
         "drill.pool \"default\" is not an nfs pool of `pools`"),
    ],
)
def test_inconsistent_drill_values_fail_with_a_reason(values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render_values(values)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "drill, where",
    [
        ({"schedual": "@daily"}, "schedual"),
        ({"metricsDirectory": "/x"}, "metricsDirectory"),
        ({"resources": {"request": {"cpu": "1"}}}, "request"),
    ],
)
def test_misspelt_drill_keys_are_rejected(drill, where):
    with pytest.raises(helm.HelmValuesError) as err:
        chart().validate_schema({"drill": drill})
    assert where in str(err.value)


@pytest.mark.parametrize(
    "drill",
    [
        {"enabled": "yes"},
        {"schedule": "daily"},
        {"schedule": "17 3 * *"},
        {"schedule": ""},
        {"latest": 0},
        {"latest": "3"},
        {"pool": "Shared"},
        {"metricsDir": "var/lib/textfile"},
        {"scratchSizeLimit": "20 GB"},
        {"activeDeadlineSeconds": 0},
    ],
)
def test_wrong_drill_values_are_rejected(drill):
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema({"drill": drill})


def test_berth_drill_knows_the_flags_the_cron_job_uses():
    binary = berth_binary()
    if binary is None:
        skip_notice("test_berth_drill_knows_the_flags_the_cron_job_uses", "no berth binary built")
        pytest.skip("no berth binary built")
    help_text = subprocess.run([binary, "drill", "--help"], capture_output=True, text=True, check=True).stdout
    cron = one(rendered("nfs-drill"), "CronJob", "backup-berth-drill")
    for arg in container(cron)["args"][1:]:
        assert arg.startswith("--") and arg.split("=", 1)[0] in help_text, arg


def test_docs_name_every_drill_metric_and_value():
    source = (REPO / "src" / "drill.rs").read_text()
    families = set(re.findall(r'"(berth_drill_[a-z_]+)"', source))
    assert len(families) == 5, families
    docs = DOCS.read_text()
    section = docs[docs.index("## Restore drill"):]
    for family in families:
        assert family in section, f"docs/deployment.md, Restore drill, lacks {family}"
    for key in ("drill.enabled", "drill.schedule", "drill.pool", "drill.latest", "drill.metricsDir"):
        assert key in section, f"docs/deployment.md, Restore drill, lacks {key}"


def test_the_alert_example_watches_what_the_drill_writes_and_the_docs_show_it():
    import yaml

    text = (REPO / "examples" / "drill-alerts.yaml").read_text()
    header = text.split("apiVersion:")[0]
    for need in ("drill.enabled", "drill.metricsDir", "PrometheusRule"):
        assert need in header, f"drill-alerts.yaml does not say it needs {need}"
    (rule,) = [d for d in yaml.safe_load_all(text) if d]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    written = set(re.findall(r'"(berth_drill_[a-z_]+)"', (REPO / "src" / "drill.rs").read_text()))
    for expr in exprs:
        used = set(re.findall(r"berth_drill_[a-z_]+", expr))
        assert used and used <= written, expr
    # docs/deployment.md shows the same rules.
    docs = DOCS.read_text()
    section = docs[docs.index("## Restore drill"):docs.index("## Image")]
    shown = section[section.index("```yaml\napiVersion: monitoring.coreos.com/v1"):]
    shown = shown[len("```yaml\n"):shown.index("```", 8)]
    assert yaml.safe_load(shown) == rule
