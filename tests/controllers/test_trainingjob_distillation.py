"""Distillation, compression and encrypted data on the operator's side: the teacher resolved once and
recorded, the key Secrets mounted only where needed, the pre-flight waiting for what the cluster lacks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubemaas import contract
from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers import trainingjob_core as core
from kubemaas.controllers.conditions import find_condition
from kubemaas.manifests import trainingjob as manifests
from kubemaas.manifests import trainingjob_mounts as mounts

T0 = datetime(2026, 11, 29, 21, 30, 10, tzinfo=UTC)
SHA = "ab" * 32
TEACHER_URI = "pvc://models/store/digits/v20261128-101010-11112222"


def job_body(name: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b",
            "generation": 1,
            "creationTimestamp": "2026-11-29T21:30:05Z",
        },
        "spec": {
            "image": "kubemaas/trainer:0.1.0",
            "replicas": 2,
            "output": {"uri": "pvc://models/store"},
            # An existing key: the first pass creates the workload (no key generation in between).
            "encryption": {"keySecretRef": {"name": f"{name}-key"}, "generateKey": "Never"},
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return body


def succeeded_teacher(key: str = "digits-key") -> dict[str, Any]:
    status = {
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Succeeded", "lastTransitionTime": "2026-11-28T10:20:00Z"}
        ],
        "model": {"uri": TEACHER_URI, "version": TEACHER_URI.rsplit("/", 1)[1], "sha256": SHA, "keyId": "k1"},
    }
    body = job_body("digits", status)
    body["spec"]["encryption"]["keySecretRef"]["name"] = key
    return body


def student(**spec: Any) -> TrainingJob:
    distillation = {
        "teacher": {"trainingJobRef": {"name": "digits"}, "keySecretRef": {"name": "digits-key"}},
        "temperature": 3,
        "softLossPercent": 60,
    }
    return TrainingJob.parse(job_body("student", distillation=distillation, **spec))


def observed(teacher: dict[str, Any] | None, **extra: Any) -> core.Observed:
    values: dict[str, Any] = {
        "pytorchjob_served": True,
        "claims": frozenset({"models", "datasets"}),
        "key_secret_exists": True,
        "secrets": frozenset({"digits-key", "data-key"}),
        "teacher_job": teacher,
    }
    return core.Observed(**{**values, **extra})


def ready(desired: core.Desired) -> tuple[str, str, str]:
    found = find_condition(desired.status.conditions, "Ready")
    assert found is not None
    return found.status.value, found.reason, found.message


def pod_specs(desired: core.Desired) -> dict[str, dict[str, Any]]:
    (workload,) = [c for c in desired.apply if c["kind"] == "PyTorchJob"]
    return {kind: r["template"]["spec"] for kind, r in workload["spec"]["pytorchReplicaSpecs"].items()}


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}


@pytest.mark.parametrize(
    ("teacher", "reason", "words"),
    [
        (None, "TeacherNotReady", "not found"),
        (job_body("digits"), "TeacherNotReady", "has not succeeded"),
        (succeeded_teacher(key="other-key"), "TeacherKeyMismatch", "encrypted with Secret other-key"),
    ],
)
def test_a_student_waits_for_a_succeeded_teacher_with_the_named_key(
    teacher: dict[str, Any] | None, reason: str, words: str
) -> None:
    desired = core.reconcile(student(), observed(teacher), T0)
    status, got, message = ready(desired)
    assert (status, got) == ("False", reason) and words in message
    assert desired.apply == [] and desired.requeue_after == core.RECHECK_SECONDS
    assert desired.status.teacher is None


def test_the_teacher_is_recorded_once_and_mounted_with_its_key_on_rank_0_only() -> None:
    desired = core.reconcile(student(), observed(succeeded_teacher()), T0)
    assert ready(desired)[0] == "True"
    assert desired.status.teacher is not None
    assert desired.status.teacher.to_wire() == {
        "uri": "pvc://models/store/digits",
        "version": "v20261128-101010-11112222",
    }
    pods = pod_specs(desired)
    master, worker = env_of(pods["Master"]), env_of(pods["Worker"])
    for env in (master, worker):
        assert env[contract.TEACHER_URI] == "pvc://models/store/digits"
        assert env[contract.TEACHER_VERSION] == "v20261128-101010-11112222"
        assert (env[contract.DISTILL_TEMPERATURE], env[contract.DISTILL_SOFT_PERCENT]) == ("3", "60")
    assert master[contract.TEACHER_KEY_DIR] == "/var/run/kubemaas/teacher-keys"
    assert contract.TEACHER_KEY_DIR not in worker
    teacher_key = {"name": "kubemaas-teacher-keys", "secret": {"secretName": "digits-key", "defaultMode": 0o400}}
    assert teacher_key in pods["Master"]["volumes"]
    assert all("secret" not in v for v in pods["Worker"]["volumes"])  # neither key on the workers
    # The teacher lies on the output claim here: mounted once, read-write for rank 0's output.
    claims = [v for v in pods["Master"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"name": "kubemaas-output", "persistentVolumeClaim": {"claimName": "models"}}]

    # Later passes build from the record, even once the teacher TrainingJob is gone.
    body = student().to_wire()
    body["metadata"] = student().metadata.model_dump(mode="json", exclude_none=True)
    body["status"] = desired.status.to_wire()
    later = core.reconcile(TrainingJob.parse(body), observed(None), T0)
    assert later.status.teacher == desired.status.teacher
    assert pod_specs(later) == pods


def test_a_uri_teacher_on_its_own_claim_is_mounted_read_only_on_rank_0() -> None:
    teacher = {"uri": "pvc://teachers/zoo/digits", "version": "v7", "keySecretRef": {"name": "zoo-key"}}
    job = TrainingJob.parse(job_body("student", distillation={"teacher": teacher}))
    assert mounts.required_claims(job) == ["models", "teachers"]
    assert mounts.secret_names(job) == ["zoo-key"]
    missing = core.reconcile(job, observed(None, claims=frozenset({"models"})), T0)
    assert ready(missing)[:2] == ("False", "ClaimNotFound")
    no_secret = core.reconcile(job, observed(None, claims=frozenset({"models", "teachers"})), T0)
    assert ready(no_secret)[:2] == ("False", "KeySecretNotFound") and "zoo-key" in ready(no_secret)[2]
    ok = core.reconcile(job, observed(None, claims=frozenset({"models", "teachers"}), secrets={"zoo-key"}), T0)
    master = pod_specs(ok)["Master"]
    assert {"name": "kubemaas-teacher", "mountPath": "/mnt/kubemaas/teachers", "readOnly": True} in master[
        "containers"
    ][0]["volumeMounts"]
    env = env_of(master)
    assert (env[contract.TEACHER_URI], env[contract.TEACHER_VERSION]) == ("pvc://teachers/zoo/digits", "v7")
    assert (env[contract.DISTILL_TEMPERATURE], env[contract.DISTILL_SOFT_PERCENT]) == ("4", "70")  # defaults


def test_pruning_is_rendered_and_the_data_key_is_mounted_on_every_rank() -> None:
    job = TrainingJob.parse(
        job_body(
            "digits",
            data={"uri": "pvc://datasets/digits", "encryption": {"keySecretRef": {"name": "data-key"}}},
            output={
                "uri": "pvc://models/store",
                "quantization": "DynamicInt8",
                "compression": {"pruning": {"method": "L1Structured", "amountPercent": 30}},
            },
        )
    )
    assert mounts.secret_names(job) == ["data-key"]
    for rank0 in (True, False):
        pod = manifests.pod_spec(job, "v1", container="pytorch", rank0=rank0, restart_policy=None, rendezvous=None)
        env = env_of(pod)
        assert (env[contract.PRUNING], env[contract.PRUNING_PERCENT]) == ("L1Structured", "30")
        assert env[contract.QUANTIZATION] == "DynamicInt8"
        assert env[contract.DATA_KEY_DIR] == "/var/run/kubemaas/data-keys"
        data_key = {"name": "kubemaas-data-keys", "secret": {"secretName": "data-key", "defaultMode": 0o400}}
        assert data_key in pod["volumes"]
        assert {"name": "kubemaas-data-keys", "mountPath": "/var/run/kubemaas/data-keys", "readOnly": True} in pod[
            "containers"
        ][0]["volumeMounts"]
        assert ("kubemaas-keys" in {v["name"] for v in pod["volumes"]}) is rank0
        # What the builders render, the runtime parses.
        parsed = contract.parse({**env, contract.RANK: "0", contract.WORLD_SIZE: "1"}).settings
        assert parsed.pruning_percent == 30 and parsed.data_key_dir == contract.DEFAULT_DATA_KEY_DIR


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({"keySecretRef": {"name": "k"}}, "exactly one of trainingJobRef and uri"),
        ({"trainingJobRef": {"name": "a"}, "uri": "pvc://m/s/a", "keySecretRef": {"name": "k"}}, "exactly one"),
        ({"trainingJobRef": {"name": "a"}, "version": "v1", "keySecretRef": {"name": "k"}}, "version is only valid"),
    ],
)
def test_the_api_refuses_an_ambiguous_teacher(teacher: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingJob.parse(job_body("student", distillation={"teacher": teacher}))
