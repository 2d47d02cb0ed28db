"""How the local cluster registers upstream's webhooks for JobSet, Trainer v2 and Kueue (e2e/cluster/batch.py):
pointed at the local process by URL, under a name unique to the controller, and for Kueue only the kinds its
configured integrations cover (a webhook on Pods or Deployments would make every workload in the cluster depend
on Kueue)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from e2e.cluster import batch
from e2e.cluster.pki import KeyPair

UPSTREAM = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- name: mjob.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  rules: [{apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}]
  failurePolicy: Fail
- name: mpod.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- name: vtrainjob.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate-trainer-kubeflow-org-v1alpha1-trainjob}
  rules: [{apiGroups: [trainer.kubeflow.org], apiVersions: [v1alpha1], operations: [CREATE], resources: [trainjobs]}]
- name: vdeployment.kb.io
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate-apps-v1-deployment}
  rules: [{apiGroups: [apps], apiVersions: [v1], operations: [CREATE], resources: [deployments]}]
"""

KUEUE = next(c for c in batch.CONTROLLERS if c.name == "kueue")
JOBSET = next(c for c in batch.CONTROLLERS if c.name == "jobset")


def test_webhooks_point_at_the_local_process_with_the_cluster_ca() -> None:
    configurations = list(batch.webhook_configurations(UPSTREAM, JOBSET, 9443, b"CA PEM"))
    assert [c["metadata"]["name"] for c in configurations] == ["jobset-mutating", "jobset-validating"]
    webhooks = [w for c in configurations for w in c["webhooks"]]
    assert [w["clientConfig"]["url"] for w in webhooks] == [
        "https://127.0.0.1:9443/mutate-batch-v1-job",
        "https://127.0.0.1:9443/mutate--v1-pod",
        "https://127.0.0.1:9443/validate-trainer-kubeflow-org-v1alpha1-trainjob",
        "https://127.0.0.1:9443/validate-apps-v1-deployment",
    ]
    assert {base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks} == {b"CA PEM"}
    assert webhooks[0]["failurePolicy"] == "Fail"  # upstream's rules and policies are kept


def test_kueue_registers_only_the_webhooks_of_its_integrations() -> None:
    configurations = list(batch.webhook_configurations(UPSTREAM, KUEUE, 9443, b"CA"))
    names = [w["name"] for c in configurations for w in c["webhooks"]]
    assert names == ["mjob.kb.io", "vtrainjob.kb.io"]


def test_kueue_configuration_manages_only_labelled_workloads_of_the_integrations(tmp_path: Path) -> None:
    config = KUEUE.configuration(1, 2, 3, tmp_path)
    assert config["manageJobsWithoutQueueName"] is False
    assert config["integrations"]["frameworks"] == list(batch.KUEUE_FRAMEWORKS)
    assert "kubeflow.org/pytorchjob" not in config["integrations"]["frameworks"]
    assert config["webhook"] == {"port": 1, "host": "127.0.0.1", "certDir": str(tmp_path)}


def test_kueue_configuration_turns_fair_sharing_on_with_strategies_v1beta2_accepts(tmp_path: Path) -> None:
    """v1beta2 has no `enable`: the section turns fair sharing on, and Kueue refuses it without one of the
    strategy lists of pkg/config/validation.go (v0.19.2)."""
    config = KUEUE.configuration(1, 2, 3, tmp_path)
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    valid = (
        ["LessThanOrEqualToFinalShare"],
        ["LessThanInitialShare"],
        ["LessThanOrEqualToFinalShare", "LessThanInitialShare"],
    )
    assert config["fairSharing"]["preemptionStrategies"] in valid
    assert set(config["fairSharing"]) == {"preemptionStrategies"}


def test_a_fixed_directory_is_removed_only_when_the_cluster_created_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = tmp_path / "etc"
    found.mkdir()
    fixed = found / "kueue" / "metrics" / "certs"
    controllers = tuple(
        batch.BatchController(**{**c.__dict__, "fixed_metrics_cert_dir": fixed}) if c.name == "kueue" else c
        for c in batch.CONTROLLERS
    )
    monkeypatch.setattr(batch, "CONTROLLERS", controllers)
    pair = KeyPair(tmp_path / "c.crt", tmp_path / "c.key")
    pair.cert.write_text("cert")
    pair.key.write_text("key")
    batch._write_fixed(fixed, pair)
    assert (fixed / "tls.crt").read_text() == "cert"
    batch.remove_fixed_directories()
    assert found.exists() and not (found / "kueue").exists()
