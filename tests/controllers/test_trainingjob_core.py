"""The pure TrainingJob reconcile: (job, observed, now) -> (children, status), no cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers import trainingjob_core as core
from kubemaas.controllers import trainingjob_reports as reports
from kubemaas.controllers.conditions import find_condition, transitions
from kubemaas.manifests import trainingjob as manifests
from tests.controllers.builders import advance

UID = "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b"
CREATED_AT = "2026-11-29T21:30:05Z"
VERSION = "v20261129-213005-0f4c2a6e"
T0 = datetime(2026, 11, 29, 21, 30, 10, tzinfo=UTC)
SHA = "ab" * 32
ALL_CLAIMS = frozenset({"models", "datasets"})


def make_job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "digits",
            "namespace": "team-a",
            "uid": UID,
            "generation": 1,
            "creationTimestamp": CREATED_AT,
        },
        "spec": {
            "image": "kubemaas/trainer:0.1.0",
            "replicas": 4,
            "resources": {"gpus": 1},
            "data": {"uri": "pvc://datasets/digits"},
            "output": {"uri": "pvc://models/store"},
            "encryption": {"keySecretRef": {"name": "digits-key"}},
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return TrainingJob.parse(body)


def cond(desired: core.Desired, type: str) -> tuple[str, str, str]:
    found = find_condition(desired.status.conditions, type)
    assert found is not None, type
    return found.status.value, found.reason, found.message


def pytorchjob(conditions: dict[str, str], **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "digits", "namespace": "team-a"},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{t} message", "lastTransitionTime": CREATED_AT}
                for t, r in conditions.items()
            ],
            **status,
        },
    }


def batch_job(conditions: dict[str, str], **status: Any) -> dict[str, Any]:
    out = pytorchjob(conditions, **status)
    out.update(apiVersion="batch/v1", kind="Job", metadata={"name": "digits-workers", "namespace": "team-a"})
    return out


def kubeflow_pod(rank: int, phase: str = "Running", exit_code: int | None = None, message: str = "") -> dict[str, Any]:
    replica_type, index = ("master", 0) if rank == 0 else ("worker", rank - 1)
    return _pod(
        f"digits-{replica_type}-{index}",
        {reports.KUBEFLOW_REPLICA_TYPE: replica_type, reports.KUBEFLOW_REPLICA_INDEX: str(index)},
        {},
        "pytorch",
        phase,
        exit_code,
        message,
    )


def indexed_pod(rank: int, phase: str = "Running", exit_code: int | None = None, message: str = "") -> dict[str, Any]:
    annotations = {manifests.COMPLETION_INDEX_ANNOTATION: str(rank)}
    return _pod(f"digits-workers-{rank}-x", {}, annotations, "trainer", phase, exit_code, message)


def _pod(
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    container: str,
    phase: str,
    exit_code: int | None,
    message: str,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": CREATED_AT}}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "message": message,
                "finishedAt": "2026-11-29T21:40:00Z",
            }
        }
    return {
        "metadata": {
            "name": name,
            "labels": {"kubemaas.io/trainingjob": "digits", **labels},
            "annotations": annotations,
        },
        "status": {"phase": phase, "containerStatuses": [{"name": container, "state": state}]},
    }


def success_message(version: str = VERSION, **overrides: Any) -> str:
    report = {
        "keyId": "k2026a",
        "metrics": {"heldOutAccuracy": 0.96},
        "model": "digits",
        "sha256": SHA,
        "uri": f"pvc://models/store/digits/{version}",
        "version": version,
        **overrides,
    }
    return json.dumps(report)


def served(**kwargs: Any) -> core.Observed:
    return core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS, key_secret_exists=True, **kwargs)


def test_version_is_derived_from_creation_time_and_uid() -> None:
    job = make_job()
    assert reports.model_version(job) == VERSION
    assert reports.model_version(make_job(status={"backend": "Job"})) == VERSION


def fresh(job: TrainingJob, observed: core.Observed) -> core.Desired:
    """The first two passes over a new IfMissing job: the first records the intent to generate its key
    (nothing created yet), the second, from that status, creates the key and the workload."""
    intent = core.reconcile(job, observed, T0)
    assert intent.apply == [] and not intent.create_key_secret
    assert intent.status.generated_key_secret == job.spec.encryption.key_secret_ref.name
    return core.reconcile(advance(job, intent), observed, T0)


def test_first_reconcile_creates_pytorchjob_and_asks_for_the_key_secret() -> None:
    job = make_job()
    desired = fresh(job, core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS))
    # The workload, and beside it the NetworkPolicy that opens the ranks' ports to each other only.
    assert desired.apply == [manifests.pytorchjob(job, VERSION), manifests.network_policy(job)]
    assert desired.create_key_secret and not desired.delete
    assert desired.status.backend == "PyTorchJob"
    assert desired.status.observed_generation == 1
    assert [c.type for c in desired.status.conditions or ()] == list(core.CONDITION_TYPES)
    assert cond(desired, "Created") == ("Unknown", "Creating", "creating the PyTorchJob")
    assert cond(desired, "Succeeded")[0] == "Unknown"
    env = desired.apply[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBEMAAS_MODEL_VERSION", "value": VERSION} in env


def test_auto_without_the_pytorchjob_crd_picks_the_indexed_job_and_keeps_it() -> None:
    job = make_job()
    desired = fresh(job, core.Observed(pytorchjob_served=False, claims=ALL_CLAIMS))
    assert desired.apply == [
        manifests.headless_service(job),
        manifests.indexed_job(job, VERSION),
        manifests.network_policy(job),
    ]
    assert desired.status.backend == "Job"
    # Recorded: a later discovery of the CRD does not move a running job to another backend.
    again = core.reconcile(advance(job, desired), served(), T0)
    assert [c["kind"] for c in again.apply] == ["Service", "Job", "NetworkPolicy"]


def test_explicit_pytorchjob_without_the_crd_is_a_condition_not_a_workload() -> None:
    desired = core.reconcile(make_job(backend="PyTorchJob"), core.Observed(pytorchjob_served=False), T0)
    assert desired.apply == [] and not desired.create_key_secret
    assert cond(desired, "Ready")[:2] == ("False", "BackendUnavailable")
    assert cond(desired, "Created")[:2] == ("False", "BackendUnavailable")


@pytest.mark.parametrize("present", [{"models"}, {"datasets"}, set()])
def test_missing_claim_blocks_creation_and_names_the_claim(present: set[str]) -> None:
    observed = core.Observed(pytorchjob_served=True, claims=frozenset(present), key_secret_exists=True)
    desired = core.reconcile(make_job(), observed, T0)
    assert desired.apply == [] and not desired.create_key_secret
    assert desired.requeue_after == core.RECHECK_SECONDS
    status, reason, message = cond(desired, "Ready")
    assert (status, reason) == ("False", "ClaimNotFound")
    for claim in {"models", "datasets"} - present:
        assert claim in message
    assert desired.status.backend is None


def test_missing_store_credentials_secret_blocks_creation_and_names_it() -> None:
    """A bucket's credentials Secret is checked like a key Secret, with a reason of its own; a bucket is no claim."""
    job = make_job(
        output={"uri": "s3://models/store", "storage": {"s3": {"credentialsSecretRef": {"name": "models-s3"}}}},
        data={"uri": "s3://datasets/digits"},
        encryption={"keySecretRef": {"name": "digits-key"}, "generateKey": "Never"},
    )
    desired = core.reconcile(job, core.Observed(pytorchjob_served=True, key_secret_exists=True), T0)
    assert desired.apply == []
    status, reason, message = cond(desired, "Ready")
    assert (status, reason) == ("False", "CredentialsSecretNotFound") and "models-s3" in message
    present = core.Observed(pytorchjob_served=True, key_secret_exists=True, secrets=frozenset({"models-s3"}))
    later = core.reconcile(advance(job, desired), present, T0 + timedelta(seconds=10))
    assert [c["kind"] for c in later.apply] == ["PyTorchJob", "NetworkPolicy"]


def test_missing_key_secret_with_never_blocks_and_with_if_missing_is_created() -> None:
    never = make_job(encryption={"keySecretRef": {"name": "digits-key"}, "generateKey": "Never"})
    desired = core.reconcile(never, core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS), T0)
    assert desired.apply == [] and not desired.create_key_secret
    status, reason, message = cond(desired, "Ready")
    assert (status, reason) == ("False", "KeySecretNotFound") and "digits-key" in message
    # The Secret appears: the next look creates the workload, and the condition flips.
    later = core.reconcile(advance(never, desired), served(), T0 + timedelta(seconds=10))
    assert [c["kind"] for c in later.apply] == ["PyTorchJob", "NetworkPolicy"] and not later.create_key_secret
    assert cond(later, "Ready")[:2] == ("True", "Creating")


def test_if_missing_records_the_key_it_generates_and_uses_no_other() -> None:
    job = make_job()  # generateKey: IfMissing
    missing = core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS)
    # The intent first: an operator killed right after the Secret's create still finds it on record.
    intent = core.reconcile(job, missing, T0)
    assert intent.apply == [] and not intent.create_key_secret
    assert intent.status.generated_key_secret == job.spec.encryption.key_secret_ref.name
    create = core.reconcile(advance(job, intent), missing, T0)
    assert create.create_key_secret and [c["kind"] for c in create.apply] == ["PyTorchJob", "NetworkPolicy"]
    # Killed after the create, before the workload: the Secret exists and is on record, so it is this job's.
    again = core.reconcile(advance(job, intent), served(), T0)
    assert [c["kind"] for c in again.apply] == ["PyTorchJob", "NetworkPolicy"] and not again.create_key_secret
    assert again.status.generated_key_secret == intent.status.generated_key_secret
    # A Secret of that name that the operator did not generate for this job (someone else's key, or one made
    # to be adopted) is never mounted: no workload, no new key, a condition that says what to do.
    taken = core.reconcile(job, served(), T0)
    assert taken.apply == [] and not taken.create_key_secret and taken.requeue_after == core.RECHECK_SECONDS
    status, reason, message = cond(taken, "Ready")
    assert (status, reason) == ("False", "KeySecretNotOwned")
    assert "digits-key" in message and "generateKey: Never" in message
    assert taken.status.generated_key_secret is None
    # Made between the probe and the create (the create answered 409): the intent goes, the job is blocked.
    raced = core.key_secret_taken(advance(job, intent), T0)
    assert raced.status.generated_key_secret is None and cond(raced, "Ready")[1] == "KeySecretNotOwned"


def test_running_pytorchjob_mirrors_reason_and_counts_replicas() -> None:
    job = make_job()
    pods = [kubeflow_pod(0), kubeflow_pod(1), kubeflow_pod(2), kubeflow_pod(3, phase="Pending")]
    workload = pytorchjob(
        {"Created": "PyTorchJobCreated", "Running": "PyTorchJobRunning"}, startTime="2026-11-29T21:31:00Z"
    )
    desired = core.reconcile(job, served(workload=workload, pods=pods), T0)
    assert cond(desired, "Created")[:2] == ("True", "PyTorchJobCreated")
    assert cond(desired, "Running") == ("True", "PyTorchJobRunning", "Running message")
    assert cond(desired, "Succeeded")[:2] == ("False", "NotFinished")
    assert cond(desired, "Suspended")[:2] == ("False", "NotSuspended")
    assert desired.status.start_time == datetime(2026, 11, 29, 21, 31, tzinfo=UTC)
    assert desired.status.replica_statuses is not None
    assert {k: v.to_wire() for k, v in desired.status.replica_statuses.items()} == {
        "Master": {"active": 1, "succeeded": 0, "failed": 0},
        "Worker": {"active": 3, "succeeded": 0, "failed": 0},
    }
    assert desired.apply == [manifests.pytorchjob(job, VERSION), manifests.network_policy(job)]


def finished_pytorchjob(kind: str, reason: str) -> dict[str, Any]:
    return pytorchjob({"Created": "PyTorchJobCreated", kind: reason}, completionTime="2026-11-29T21:40:01Z")


def test_success_fills_status_model_from_rank_zero_and_is_then_stable() -> None:
    job = make_job()
    pods = [kubeflow_pod(0, "Succeeded", 0, success_message())] + [kubeflow_pod(r, "Succeeded", 0) for r in (1, 2, 3)]
    observed = served(workload=finished_pytorchjob("Succeeded", "PyTorchJobSucceeded"), pods=pods)
    desired = core.reconcile(job, observed, T0)
    assert desired.status.model is not None
    assert desired.status.model.to_wire() == {
        "uri": f"pvc://models/store/digits/{VERSION}",
        "version": VERSION,
        "sha256": SHA,
        "keyId": "k2026a",
        "metrics": {"heldOutAccuracy": "0.96"},
    }
    assert cond(desired, "Succeeded") == (
        "True",
        "PyTorchJobSucceeded",
        f"published pvc://models/store/digits/{VERSION} (key id k2026a)",
    )
    assert cond(desired, "Failed")[0] == "False" and cond(desired, "Running")[:2] == ("False", "Finished")
    assert desired.status.completion_time == datetime(2026, 11, 29, 21, 40, 1, tzinfo=UTC)
    assert desired.apply == [] and desired.delete == []
    # Level-triggered: the same world an hour later gives the same status, timestamps included.
    again = core.reconcile(advance(job, desired), observed, T0 + timedelta(hours=1))
    assert again.status.to_wire() == desired.status.to_wire()
    # Terminal is sticky: the workload gone (deleted by hand) is not re-created.
    gone = core.reconcile(advance(job, desired), served(), T0 + timedelta(hours=2))
    assert gone.apply == [] and gone.status.to_wire() == desired.status.to_wire()


@pytest.mark.parametrize(
    ("message", "fragment"),  # fragment None: the message is valid
    [
        ("not json {", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ("", "without a termination message"),
        (success_message(sha256="xyz"), "sha256"),
        (success_message(version="v1"), "expected"),
        (success_message(metrics={"loss": float("nan"), "acc": 0.5}), None),
        (json.dumps({"uri": "pvc://m/x", "version": VERSION, "sha256": SHA}), "keyId"),
        (success_message(model="x" * 5000), "more than 4096"),
        (json.dumps({"exitCode": 1, "message": "no", "reason": "TrainingError"}), "reported a failure"),
        (success_message(extra=1), "extra"),
        # Where the version lives is derived from the spec, never taken from the pod (docs/security.md): a URI
        # that is not even one (every ModelService matching the job would fail on it), another claim, another
        # model, each refused and named.
        (success_message(uri="x"), "reported the URI 'x', expected 'pvc://models/store/digits/"),
        (success_message(uri=f"pvc://team-b-models/store/digits/{VERSION}"), "expected 'pvc://models/store/"),
        (success_message(model="other", uri=f"pvc://models/store/other/{VERSION}"), "published model 'other'"),
    ],
)
def test_malformed_success_message_is_failed_bad_termination_message(message: str, fragment: str | None) -> None:
    pods = [kubeflow_pod(0, "Succeeded", 0, message)]
    observed = served(workload=finished_pytorchjob("Succeeded", "PyTorchJobSucceeded"), pods=pods)
    desired = core.reconcile(make_job(), observed, T0)
    if fragment is None:  # a valid message with a metric that has no decimal form: the metric is left out
        assert desired.status.model is not None and desired.status.model.metrics == {"acc": "0.5"}
        return
    status, reason, text = cond(desired, "Failed")
    assert (status, reason) == ("True", "BadTerminationMessage") and fragment in text
    assert cond(desired, "Succeeded")[:2] == ("False", "Failed")
    assert desired.status.model is None
    assert len(text) <= reports.MESSAGE_LIMIT


def test_metric_names_with_a_slash_are_published_as_reported() -> None:
    # TensorBoard and W&B name metrics `eval/loss`; a finished job must not turn Failed over the name.
    message = success_message(metrics={"eval/loss": 0.25, "train/epoch": 3.0, "heldOutAccuracy": 0.96})
    observed = served(
        workload=finished_pytorchjob("Succeeded", "PyTorchJobSucceeded"),
        pods=[kubeflow_pod(0, "Succeeded", 0, message)],
    )
    desired = core.reconcile(make_job(), observed, T0)
    assert cond(desired, "Succeeded")[:2] == ("True", "PyTorchJobSucceeded")
    assert desired.status.model is not None
    assert desired.status.model.metrics == {"eval/loss": "0.25", "heldOutAccuracy": "0.96", "train/epoch": "3.0"}


def test_what_the_status_cannot_hold_of_the_metrics_is_left_out_not_failed() -> None:
    many = {f"m{i:03d}": float(i) for i in range(70)}
    message = success_message(metrics={**many, "bad name": 1.0})
    observed = served(
        workload=finished_pytorchjob("Succeeded", "PyTorchJobSucceeded"),
        pods=[kubeflow_pod(0, "Succeeded", 0, message)],
    )
    desired = core.reconcile(make_job(), observed, T0)
    assert cond(desired, "Succeeded")[0] == "True"
    assert desired.status.model is not None and desired.status.model.metrics is not None
    assert sorted(desired.status.model.metrics) == sorted(many)[:64]


def test_success_waits_for_rank_zero_pod_then_gives_up_after_the_grace() -> None:
    workload = finished_pytorchjob("Succeeded", "PyTorchJobSucceeded")
    finished = datetime(2026, 11, 29, 21, 40, 1, tzinfo=UTC)
    waiting = core.reconcile(make_job(), served(workload=workload, pods=[kubeflow_pod(0)]), finished)
    assert waiting.requeue_after == core.POD_LAG_GRACE.total_seconds()
    assert cond(waiting, "Succeeded")[0] == "Unknown" and cond(waiting, "Failed")[0] == "Unknown"
    late = finished + core.POD_LAG_GRACE
    gone = core.reconcile(make_job(), served(workload=workload), late)
    assert cond(gone, "Failed")[:2] == ("True", "BadTerminationMessage")


def test_failure_exit_78_is_failed_config_error_with_the_message() -> None:
    report = json.dumps(
        {"exitCode": 78, "message": "KUBEMAAS_OUTPUT_URI is required", "rank": 0, "reason": "ConfigError"}
    )
    pods = [kubeflow_pod(0, "Failed", 78, report), kubeflow_pod(1, "Failed", 138, '{"reason":"Retryable"}')]
    observed = served(workload=finished_pytorchjob("Failed", "PyTorchJobFailed"), pods=pods)
    desired = core.reconcile(make_job(), observed, T0)
    assert cond(desired, "Failed") == (
        "True",
        "ConfigError",
        "rank 0 exited 78 (ConfigError): KUBEMAAS_OUTPUT_URI is required; Failed message",
    )
    assert cond(desired, "Succeeded")[:2] == ("False", "Failed")
    assert desired.status.model is None


def test_failure_without_a_report_uses_the_kubelet_reason_and_the_workload_reason() -> None:
    pods = [kubeflow_pod(2, "Failed", 137, "")]
    pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    observed = served(workload=finished_pytorchjob("Failed", "PyTorchJobFailed"), pods=pods)
    assert cond(core.reconcile(make_job(), observed, T0), "Failed")[:2] == ("True", "OOMKilled")
    no_pods = served(workload=finished_pytorchjob("Failed", "PyTorchJobFailed"))
    assert cond(core.reconcile(make_job(), no_pods, T0), "Failed") == ("True", "PyTorchJobFailed", "Failed message")


def test_job_backend_success_and_failure() -> None:
    job = make_job(backend="Job")
    pods = [indexed_pod(0, "Succeeded", 0, success_message()), indexed_pod(1, "Succeeded", 0)]
    complete = batch_job({"Complete": "CompletionsReached"}, completionTime="2026-11-29T21:40:01Z")
    desired = core.reconcile(job, served(workload=complete, pods=pods), T0)
    assert cond(desired, "Succeeded")[:2] == ("True", "CompletionsReached")
    assert desired.status.model is not None and desired.status.model.version == VERSION
    assert desired.status.backend == "Job"

    report = json.dumps({"exitCode": 79, "message": "version exists", "rank": 1, "reason": "ArtifactError"})
    failed = batch_job({"FailureTarget": "PodFailurePolicy", "Failed": "PodFailurePolicy"})
    pods = [indexed_pod(0), indexed_pod(1, "Failed", 79, report)]
    desired = core.reconcile(job, served(workload=failed, pods=pods), T0)
    assert cond(desired, "Failed")[:2] == ("True", "ArtifactError")
    assert cond(desired, "Failed")[2].startswith("rank 1 exited 79 (ArtifactError): version exists")
    assert desired.status.completion_time == datetime.fromisoformat(CREATED_AT)


def test_job_backend_running_counts_active_pods() -> None:
    job = make_job(backend="Job")
    workload = batch_job({}, active=4, startTime="2026-11-29T21:31:00Z")
    desired = core.reconcile(job, served(workload=workload, pods=[indexed_pod(r) for r in range(4)]), T0)
    assert cond(desired, "Running") == ("True", "JobRunning", "4 of 4 pods active")
    assert [c["kind"] for c in desired.apply] == ["Service", "Job", "NetworkPolicy"]


def test_ttl_after_finished_deletes_children_and_keeps_status() -> None:
    job = make_job(runPolicy={"ttlSecondsAfterFinished": 60}, backend="Job")
    pods = [indexed_pod(0, "Succeeded", 0, success_message())]
    complete = batch_job({"Complete": "CompletionsReached"}, completionTime="2026-11-29T21:40:00Z")
    service, policy = manifests.headless_service(job), manifests.network_policy(job)
    finished = datetime(2026, 11, 29, 21, 40, tzinfo=UTC)
    children = served(workload=complete, service=service, network_policy=policy, pods=pods)
    first = core.reconcile(job, children, finished)
    assert first.delete == [] and first.requeue_after == 60
    done = advance(job, first)
    later = core.reconcile(done, children, finished + timedelta(seconds=61))
    assert later.delete == [complete, service, policy] and later.apply == []
    assert later.status.to_wire() == first.status.to_wire()
    # Children gone: nothing left to do, nothing re-created.
    after = core.reconcile(done, served(), finished + timedelta(hours=1))
    assert after.apply == [] and after.delete == [] and after.requeue_after is None


def test_suspend_and_resume() -> None:
    job = make_job(runPolicy={"suspend": True})
    workload = pytorchjob({"Created": "PyTorchJobCreated", "Suspended": "PyTorchJobSuspended"})
    desired = core.reconcile(job, served(workload=workload), T0)
    assert desired.apply[0]["spec"]["runPolicy"]["suspend"] is True
    assert cond(desired, "Suspended")[:2] == ("True", "Suspended")
    assert cond(desired, "Running")[:2] == ("False", "Suspended")
    resumed_body = advance(job, desired).to_wire()
    resumed_body["spec"]["runPolicy"]["suspend"] = False
    resumed_body["metadata"] = {**job.metadata.model_dump(mode="json", exclude_none=True), "generation": 2}
    resumed = TrainingJob.parse(resumed_body)
    after = core.reconcile(resumed, served(workload=pytorchjob({"Created": "PyTorchJobCreated"})), T0)
    assert after.apply[0]["spec"]["runPolicy"]["suspend"] is False
    assert cond(after, "Suspended")[:2] == ("False", "Resumed")
    suspended = find_condition(after.status.conditions, "Suspended")
    assert suspended is not None and suspended.observed_generation == 2


def test_kueue_suspension_is_mirrored_without_taking_the_field() -> None:
    job = make_job(scheduling={"queueName": "team-a"})
    workload = pytorchjob({"Created": "PyTorchJobCreated", "Suspended": "JobSuspended"})
    desired = core.reconcile(job, served(workload=workload), T0)
    assert "suspend" not in desired.apply[0]["spec"]["runPolicy"]
    assert cond(desired, "Suspended")[:2] == ("True", "JobSuspended")


def test_unchanged_world_gives_an_unchanged_status() -> None:
    job = make_job()
    workload = pytorchjob({"Created": "PyTorchJobCreated", "Running": "PyTorchJobRunning"})
    observed = served(workload=workload, pods=[kubeflow_pod(r) for r in range(4)])
    first = core.reconcile(job, observed, T0)
    second = core.reconcile(advance(job, first), observed, T0 + timedelta(minutes=5))
    assert second.status.to_wire() == first.status.to_wire()
    assert second.apply == first.apply


def test_blocking_is_one_transition_then_nothing() -> None:
    job = make_job(encryption={"keySecretRef": {"name": "digits-key"}, "generateKey": "Never"})
    blocked = core.reconcile(job, core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS), T0)
    events = transitions(None, blocked.status.conditions or [], core.WARNINGS)
    assert [(c.type, c.status.value, c.reason, warning) for c, warning in events] == [
        ("Ready", "False", "KeySecretNotFound", True),
        ("Created", "False", "KeySecretNotFound", True),
    ]
    later = T0 + timedelta(minutes=1)
    again = core.reconcile(advance(job, blocked), core.Observed(pytorchjob_served=True, claims=ALL_CLAIMS), later)
    assert transitions(blocked.status.conditions, again.status.conditions or [], core.WARNINGS) == []
    assert again.status.to_wire() == blocked.status.to_wire()


def test_restarts_are_counted_and_shown_while_pods_are_recreated() -> None:
    job = make_job(backend="Job")
    restarting = batch_job({}, active=3, failed=1)
    desired = core.reconcile(job, served(workload=restarting), T0)
    assert desired.status.restart_count == 1
    assert cond(desired, "Restarting") == ("True", "PodsRestarting", "1 pod failure(s) so far; 3 of 4 pods active")
    assert cond(desired, "Running")[:2] == ("False", "Restarting")
    recovered = core.reconcile(advance(job, desired), served(workload=batch_job({}, active=4, failed=1)), T0)
    assert cond(recovered, "Restarting")[:2] == ("False", "NotRestarting")
    assert cond(recovered, "Running")[:2] == ("True", "JobRunning") and recovered.status.restart_count == 1

    kubeflow = pytorchjob(
        {"Created": "PyTorchJobCreated", "Restarting": "PyTorchJobRestarting"},
        replicaStatuses={"Master": {"active": 1}, "Worker": {"active": 2, "failed": 2}},
    )
    desired = core.reconcile(make_job(), served(workload=kubeflow), T0)
    assert cond(desired, "Restarting")[:2] == ("True", "PyTorchJobRestarting")
    assert desired.status.restart_count == 2


def test_a_spec_the_models_refuse_is_ready_false_invalid_spec() -> None:
    status = core.invalid_spec({"backend": "Job"}, 3, "spec.replicas: must be >= 1", T0)
    assert status.backend == "Job" and status.observed_generation == 3
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.status.value, ready.reason) == ("False", "InvalidSpec")
    assert ready.message == "spec.replicas: must be >= 1"
    # A status that does not parse either is replaced, not a crash.
    assert core.invalid_spec({"bogus": 1}, 1, "x", T0).conditions is not None
