"""Encrypted StorageClasses (docs/encryption.md): the parameters berth reads, the Secret
references the kubelet and the sidecars pass, and RBAC that lets the node plugin read
exactly those Secrets."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import of_kind, one, parse_manifests, render_values

ENCRYPTED = {"name": "berth-secure", "driver": "local", "pool": "default",
             "encryption": {"scheme": "fscrypt", "secretName": "ledger-key", "secretNamespace": "keys"}}


def objects_of(values):
    return parse_manifests(render_values(values))


def test_an_encrypted_class_names_its_scheme_and_its_secret_for_stage_and_provisioning():
    objects = objects_of({"storageClasses": [ENCRYPTED]})
    params = one(objects, "StorageClass", "berth-secure")["parameters"]
    assert params == {
        "pool": "default",
        "encryption": "fscrypt",
        "csi.storage.k8s.io/node-stage-secret-name": "ledger-key",
        "csi.storage.k8s.io/node-stage-secret-namespace": "keys",
        "csi.storage.k8s.io/provisioner-secret-name": "ledger-key",
        "csi.storage.k8s.io/provisioner-secret-namespace": "keys",
    }


def test_block_classes_may_ask_for_luks2_or_for_fscrypt_on_ext4():
    luks = dict(ENCRYPTED, name="berth-luks", pool="block", encryption=dict(ENCRYPTED["encryption"], scheme="luks2"))
    fscrypt = dict(ENCRYPTED, name="berth-block-fscrypt", pool="block", fsType="ext4")
    objects = objects_of({"storageClasses": [luks, fscrypt]})
    assert one(objects, "StorageClass", "berth-luks")["parameters"]["encryption"] == "luks2"
    params = one(objects, "StorageClass", "berth-block-fscrypt")["parameters"]
    assert (params["encryption"], params["csi.storage.k8s.io/fstype"]) == ("fscrypt", "ext4")


def test_the_node_plugin_may_read_exactly_the_named_secrets_in_their_namespaces():
    other = dict(ENCRYPTED, name="berth-secure-2", encryption={"secretName": "other-key", "secretNamespace": "keys"})
    snapshots = [{"name": "berth-local", "driver": "local",
                  "encryptionSecret": {"name": "snap-key", "namespace": "vault"}}]
    objects = objects_of({"storageClasses": [ENCRYPTED, other], "volumeSnapshotClasses": snapshots})
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")
             if r["metadata"]["name"] == "berth-encryption-keys"}
    assert set(roles) == {"keys", "vault"}
    assert roles["keys"]["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                       "resourceNames": ["ledger-key", "other-key"], "verbs": ["get"]}]
    assert roles["vault"]["rules"][0]["resourceNames"] == ["snap-key"]
    for ns in ("keys", "vault"):
        binding = [b for b in of_kind(objects, "RoleBinding")
                   if b["metadata"]["name"] == "berth-encryption-keys" and b["metadata"]["namespace"] == ns]
        assert len(binding) == 1
        assert binding[0]["subjects"] == [{"kind": "ServiceAccount", "name": "berth-node", "namespace": "kube-system"}]
        assert binding[0]["roleRef"]["name"] == "berth-encryption-keys"
    vsc = one(objects, "VolumeSnapshotClass", "berth-local")
    assert vsc["parameters"] == {"csi.storage.k8s.io/snapshotter-secret-name": "snap-key",
                                 "csi.storage.k8s.io/snapshotter-secret-namespace": "vault"}


def test_no_class_asks_for_a_key_so_the_chart_grants_no_secret():
    objects = objects_of({})
    assert not [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("encryption-keys")]
    for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"):
        for rule in role.get("rules", []):
            assert "secrets" not in rule.get("resources", []), role["metadata"]["name"]
    assert "parameters" not in one(objects, "VolumeSnapshotClass", "berth-local")


def test_encryption_is_refused_for_the_nfs_driver_and_without_a_secret():
    nfs = {"nfs": {"enabled": True},
           "pools": [{"name": "default", "type": "hostpath", "path": "/var/lib/berth/pools/default"},
                     {"name": "shared", "type": "nfs", "server": "nfs.example.com", "export": "/exports/k8s"}],
           "storageClasses": [dict(ENCRYPTED, driver="nfs", pool="shared")]}
    with pytest.raises(helm.HelmRenderError, match="only the node-local driver"):
        objects_of(nfs)
    with pytest.raises(helm.HelmValuesError):
        objects_of({"storageClasses": [dict(ENCRYPTED, encryption={"scheme": "fscrypt"})]})
    with pytest.raises(helm.HelmValuesError):
        objects_of({"storageClasses": [dict(ENCRYPTED, encryption={"scheme": "rot13", "secretName": "k",
                                                                     "secretNamespace": "n"})]})
