"""The TrainJob backend (Kubeflow Trainer v2) and Kueue's Queued/Admitted conditions in the pure TrainingJob
reconcile: Auto's choice with and without each CRD, the children, the status mirrored from the TrainJob and its
ranks' pods, and what Kueue's Workload says about a queued job."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers import children, workloads
from kubemaas.controllers import trainingjob_core as core
from kubemaas.controllers.apply import is_subset
from kubemaas.controllers.conditions import find_condition, transitions
from kubemaas.controllers.trainingjob_queue import QUEUED_RECHECK_SECONDS, QueueObserved
from kubemaas.manifests import trainingjob as manifests
from kubemaas.manifests import trainjob
from tests.controllers.builders import advance

UID = "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b"
CREATED_AT = "2026-11-29T21:30:05Z"
VERSION = "v20261129-213005-0f4c2a6e"
T0 = datetime(2026, 11, 29, 21, 30, 10, tzinfo=UTC)
CLAIMS = frozenset({"models", "datasets"})
PENDING = (
    "couldn't assign flavors to pod set node: insufficient unused quota for nvidia.com/gpu in flavor a100, "
    "4 more needed"
)


def make_job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "digits", "namespace": "team-a", "uid": UID, "generation": 1},
        "spec": {
            "image": "kubemaas/trainer:0.1.0",
            "replicas": 2,
            "resources": {"gpus": 1},
            "data": {"uri": "pvc://datasets/digits"},
            "output": {"uri": "pvc://models/store"},
            "encryption": {"keySecretRef": {"name": "digits-key"}, "generateKey": "Never"},
            **spec,
        },
    }
    body["metadata"]["creationTimestamp"] = CREATED_AT
    if status is not None:
        body["status"] = status
    return TrainingJob.parse(body)


def observed(**kwargs: Any) -> core.Observed:
    defaults: dict[str, Any] = {"pytorchjob_served": True, "trainjob_served": True, "claims": CLAIMS}
    return core.Observed(key_secret_exists=True, **{**defaults, **kwargs})


def train_job(conditions: dict[str, tuple[str, str]] | None = None, **node: int) -> dict[str, Any]:
    """A TrainJob as Trainer v2.3 reports it: its conditions, and the `node` Job's counts in jobsStatus."""
    status: dict[str, Any] = {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} message", "lastTransitionTime": CREATED_AT}
            for t, (s, r) in (conditions or {}).items()
        ]
    }
    if node:
        counts = {"ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0, **node}
        status["jobsStatus"] = [{"name": "node", **counts}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "digits-workers", "namespace": "team-a", "uid": "trainjob-uid"},
        "status": status,
    }


def rank_pod(rank: int, phase: str = "Running", exit_code: int | None = None, message: str = "") -> dict[str, Any]:
    """A pod of the TrainJob's JobSet: owned by its Job, labelled by the runtime with the TrainingJob's uid."""
    state: dict[str, Any] = {"running": {"startedAt": CREATED_AT}}
    if exit_code is not None:
        reason = "Completed" if exit_code == 0 else "Error"
        state = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
    return {
        "metadata": {
            "name": f"digits-workers-node-0-{rank}-x",
            "labels": {"kubemaas.io/trainingjob": "digits", trainjob.OWNER_UID_LABEL: UID},
            "annotations": {manifests.COMPLETION_INDEX_ANNOTATION: str(rank)},
            "ownerReferences": [{"kind": "Job", "name": "digits-workers-node-0", "uid": "job-uid", "controller": True}],
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "node", "state": state}]},
    }


def cond(desired: core.Desired, type: str) -> tuple[str, str, str]:
    found = find_condition(desired.status.conditions, type)
    assert found is not None, f"no condition {type}"
    return found.status.value, found.reason, found.message


def has(desired: core.Desired, type: str) -> bool:
    return find_condition(desired.status.conditions, type) is not None


def on_trainjob(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"backend": "TrainJob", **(status or {})}


# --- Auto's choice ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "chosen"),
    [
        (frozenset({"TrainJob", "PyTorchJob"}), "TrainJob"),
        (frozenset({"TrainJob"}), "TrainJob"),
        (frozenset({"PyTorchJob"}), "PyTorchJob"),
        (frozenset(), "Job"),
    ],
)
def test_auto_takes_trainjob_then_pytorchjob_then_job(served: frozenset[str], chosen: str) -> None:
    assert workloads.resolve(make_job(), served).name == chosen


def test_the_recorded_choice_is_kept_when_the_served_crds_change() -> None:
    assert workloads.resolve(make_job(status={"backend": "PyTorchJob"}), frozenset({"TrainJob"})).name == "PyTorchJob"
    assert workloads.resolve(make_job(status={"backend": "TrainJob"}), frozenset()).name == "TrainJob"


def test_auto_records_trainjob_and_creates_the_runtime_then_the_trainjob() -> None:
    job = make_job()
    desired = core.reconcile(job, observed(), T0)
    assert desired.status.backend == "TrainJob"
    # The TrainJob waits for its runtime: Trainer's webhook refuses one whose runtime it cannot find.
    runtime = trainjob.training_runtime(job, VERSION)
    assert desired.apply == [runtime, manifests.network_policy(job)]
    assert cond(desired, "Created") == ("Unknown", "Creating", "creating the TrainJob")
    ran = core.reconcile(advance(job, desired), observed(runtime=runtime), T0)
    assert ran.apply == [runtime, trainjob.train_job(job), manifests.network_policy(job)]
    # Without Trainer served, Auto falls back as before, and the PyTorchJob is the legacy choice.
    assert core.reconcile(job, observed(trainjob_served=False), T0).status.backend == "PyTorchJob"
    fallback = core.reconcile(job, observed(trainjob_served=False, pytorchjob_served=False), T0)
    assert fallback.status.backend == "Job"


def test_backend_trainjob_without_trainer_is_refused_with_the_reason() -> None:
    desired = core.reconcile(make_job(backend="TrainJob"), observed(trainjob_served=False), T0)
    assert cond(desired, "Ready") == ("False", "BackendUnavailable", workloads.BACKENDS["TrainJob"].unavailable)
    assert desired.apply == [] and desired.requeue_after == core.RECHECK_SECONDS


# --- the status, mirrored -----------------------------------------------------------------------------


def test_running_and_restarting_come_from_jobs_status_and_the_failed_pods() -> None:
    job = make_job(status=on_trainjob())
    running = core.reconcile(job, observed(workload=train_job(active=1, ready=1), pods=[rank_pod(0), rank_pod(1)]), T0)
    assert cond(running, "Created") == ("True", "TrainJobCreated", "TrainJob digits-workers created")
    assert cond(running, "Running") == ("True", "TrainJobRunning", "2 rank(s) active, all ranks ready")
    # Rank 1 failed with a retriable code; its Job made a new pod, not ready yet.
    pods = [rank_pod(0), rank_pod(1, "Failed", 138), rank_pod(1, "Pending")]
    restarting = core.reconcile(job, observed(workload=train_job(active=1, ready=0), pods=pods), T0)
    assert cond(restarting, "Restarting") == (
        "True",
        "PodsRestarting",
        "1 pod failure(s) so far; the ranks are being recreated",
    )
    assert restarting.status.restart_count == 1 and cond(restarting, "Running")[:2] == ("False", "Restarting")


def test_succeeded_fills_status_model_from_rank_zero_of_the_node_job() -> None:
    message = json.dumps(
        {
            "keyId": "k2026a",
            "model": "digits",
            "sha256": "ab" * 32,
            "uri": f"pvc://models/store/digits/{VERSION}",
            "version": VERSION,
        }
    )
    pods = [rank_pod(0, "Succeeded", 0, message), rank_pod(1, "Succeeded", 0)]
    workload = train_job({"Complete": ("True", "JobSetCompleted")}, succeeded=1)
    desired = core.reconcile(make_job(status=on_trainjob()), observed(workload=workload, pods=pods), T0)
    assert cond(desired, "Succeeded") == (
        "True",
        "JobSetCompleted",
        f"published pvc://models/store/digits/{VERSION} (key id k2026a)",
    )
    assert desired.status.model is not None and desired.status.model.version == VERSION


def test_exit_78_fails_with_the_reason_from_the_termination_message() -> None:
    report = json.dumps(
        {"exitCode": 78, "message": "KUBEMAAS_OUTPUT_URI is required", "rank": 0, "reason": "ConfigError"}
    )
    workload = train_job({"Failed": ("True", "FailedJobs")}, failed=1)
    desired = core.reconcile(
        make_job(status=on_trainjob()), observed(workload=workload, pods=[rank_pod(0, "Failed", 78, report)]), T0
    )
    assert cond(desired, "Failed") == (
        "True",
        "ConfigError",
        "rank 0 exited 78 (ConfigError): KUBEMAAS_OUTPUT_URI is required; Failed message",
    )


def test_suspended_by_the_user_is_mirrored_and_resumed() -> None:
    workload = train_job({"Suspended": ("True", "Suspended")}, suspended=1)
    suspended = core.reconcile(
        make_job(status=on_trainjob(), runPolicy={"suspend": True}), observed(workload=workload), T0
    )
    assert cond(suspended, "Suspended")[:2] == ("True", "Suspended")
    assert cond(suspended, "Running")[:2] == ("False", "Suspended")
    assert not has(suspended, "Queued"), "no queue named: no Kueue conditions"


def test_pods_are_the_ranks_of_this_trainingjob_by_its_uid() -> None:
    backend = workloads.BACKENDS["TrainJob"]
    job, workload = make_job(), train_job()
    assert backend.owns_pod(job, workload, rank_pod(0))
    earlier = rank_pod(0)
    earlier["metadata"]["labels"][trainjob.OWNER_UID_LABEL] = "an-earlier-trainingjob"
    assert not backend.owns_pod(job, workload, earlier)
    # The other backends own pods through the workload's uid.
    job_pod = {"metadata": {"ownerReferences": [{"uid": "w", "controller": True}]}}
    assert workloads.BACKENDS["Job"].owns_pod(job, {"metadata": {"uid": "w"}}, job_pod)
    assert not workloads.BACKENDS["Job"].owns_pod(job, {"metadata": {"uid": "other"}}, job_pod)


# --- Kueue ----------------------------------------------------------------------------------------------

QUEUED = {"scheduling": {"queueName": "team"}}


def kueue_workload(**conditions: tuple[str, str, str]) -> dict[str, Any]:
    """Kueue's Workload with conditions type -> (status, reason, message)."""
    return {
        "metadata": {"name": "trainjob-digits-1a2b3", "labels": {"kueue.x-k8s.io/job-uid": "trainjob-uid"}},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, (s, r, m) in conditions.items()]
        },
    }


HELD = train_job({"Suspended": ("True", "Suspended")}, suspended=1)


def test_a_missing_local_queue_blocks_the_job_with_a_warning_and_a_recheck() -> None:
    job = make_job(**QUEUED)
    queue = QueueObserved(kueue_served=True, local_queue_exists=False)
    desired = core.reconcile(job, observed(queue=queue), T0)
    message = "LocalQueue team not found in namespace team-a; the workload is created once it exists"
    assert cond(desired, "Ready") == ("False", "LocalQueueNotFound", message)
    assert desired.apply == [] and desired.requeue_after == core.RECHECK_SECONDS
    events = transitions(None, desired.status.conditions or [], core.WARNINGS)
    assert [(c.type, c.reason, warning) for c, warning in events if warning] == [
        ("Ready", "LocalQueueNotFound", True),
        ("Created", "LocalQueueNotFound", True),
    ]
    # The LocalQueue made: the workload is created, with the queue label.
    there = QueueObserved(kueue_served=True, local_queue_exists=True)
    found = core.reconcile(job, observed(queue=there, runtime=trainjob.training_runtime(job, VERSION)), T0)
    assert found.apply[1] == trainjob.train_job(job)
    assert found.apply[1]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"


def test_a_queue_on_a_cluster_without_kueue_is_a_condition_not_silence() -> None:
    desired = core.reconcile(make_job(**QUEUED), observed(queue=QueueObserved(kueue_served=False)), T0)
    status, reason, message = cond(desired, "Ready")
    assert (status, reason) == ("False", "LocalQueueNotFound")
    assert "does not serve Kueue" in message and desired.apply == []


def test_queued_shows_kueues_own_reason_then_admitted() -> None:
    job = make_job(status=on_trainjob(), **QUEUED)
    pending = kueue_workload(QuotaReserved=("False", "Pending", PENDING))
    waiting = core.reconcile(job, observed(workload=HELD, queue=QueueObserved(True, workload=pending)), T0)
    assert cond(waiting, "Queued") == ("True", "Pending", PENDING)
    assert cond(waiting, "Admitted")[:2] == ("False", "Pending")
    assert cond(waiting, "Suspended")[:2] == ("True", "Suspended")
    assert waiting.requeue_after == QUEUED_RECHECK_SECONDS
    # No Warning: waiting for quota is what a queue is for.
    assert not [c for c, warning in transitions(None, waiting.status.conditions or [], core.WARNINGS) if warning]

    admitted_wl = kueue_workload(
        QuotaReserved=("True", "QuotaReserved", "Quota reserved in ClusterQueue gpus"),
        Admitted=("True", "Admitted", "The workload is admitted"),
    )
    running = train_job(active=1, ready=1)
    admitted = core.reconcile(job, observed(workload=running, queue=QueueObserved(True, workload=admitted_wl)), T0)
    assert cond(admitted, "Admitted") == ("True", "Admitted", "The workload is admitted")
    assert cond(admitted, "Queued")[:2] == ("False", "Admitted")
    # Once admitted and running the handlers read nothing of Kueue (queue None): the conditions stay.
    later = make_job(status={**admitted.status.to_wire()}, **QUEUED)
    again = core.reconcile(later, observed(workload=running, pods=[rank_pod(0), rank_pod(1)]), T0)
    assert cond(again, "Admitted") == cond(admitted, "Admitted")


def test_a_preempted_job_is_queued_with_the_eviction_reason_and_counts_a_restart() -> None:
    evicted = kueue_workload(
        QuotaReserved=("False", "Pending", PENDING),
        Evicted=("True", "Preempted", "Preempted to accommodate a workload (UID: x) in the ClusterQueue"),
    )
    evicted["status"]["schedulingStats"] = {"evictions": [{"reason": "Preempted", "underlyingCause": "", "count": 1}]}
    desired = core.reconcile(
        make_job(status=on_trainjob(), **QUEUED),
        observed(workload=HELD, queue=QueueObserved(True, workload=evicted)),
        T0,
    )
    assert cond(desired, "Queued") == (
        "True",
        "Preempted",
        "Preempted to accommodate a workload (UID: x) in the ClusterQueue",
    )
    assert (desired.status.evictions, desired.status.restart_count) == (1, 1)
    # Admitted again and running, the Workload is no longer read: the count stays, and a pod failure adds to it.
    later = make_job(status=desired.status.to_wire(), **QUEUED)
    running = core.reconcile(later, observed(workload=train_job(active=1, ready=1)), T0)
    assert (running.status.evictions, running.status.restart_count) == (1, 1)
    failed_once = [rank_pod(0), rank_pod(1, "Failed", exit_code=138), rank_pod(1)]
    restarted = core.reconcile(later, observed(workload=train_job(active=1, ready=1), pods=failed_once), T0)
    assert restarted.status.restart_count == 2, "one pod failure and one eviction"


def test_before_kueue_made_its_workload_and_when_kueue_never_manages_it() -> None:
    job = make_job(status=on_trainjob(), **QUEUED)
    early = core.reconcile(job, observed(workload=HELD, queue=QueueObserved(True)), T0)
    assert cond(early, "Queued") == ("Unknown", "WaitingForKueue", "Kueue has not created a Workload for this job yet")
    assert early.requeue_after == QUEUED_RECHECK_SECONDS
    # Not marked Suspended by Trainer yet (a moment after Kueue's webhook): waiting, and no timed re-read, since
    # Trainer's Suspended condition is an event of the TrainJob.
    not_yet = core.reconcile(job, observed(workload=train_job(), queue=QueueObserved(True)), T0)
    assert cond(not_yet, "Queued")[:2] == ("Unknown", "WaitingForKueue") and not_yet.requeue_after is None
    legacy = make_job(status={"backend": "PyTorchJob"}, **QUEUED)
    unmanaged = core.reconcile(legacy, observed(workload=train_job(), queue=QueueObserved(True)), T0)
    status, reason, message = cond(unmanaged, "Queued")
    assert (status, reason) == ("False", "NotManagedByKueue") and "kubernetes-sigs/kueue #12601" in message


def test_removing_the_queue_removes_its_conditions() -> None:
    queued = core.reconcile(
        make_job(status=on_trainjob(), **QUEUED), observed(workload=HELD, queue=QueueObserved(True)), T0
    )
    assert has(queued, "Queued")
    unqueued = make_job(status=queued.status.to_wire())
    desired = core.reconcile(unqueued, observed(workload=train_job(active=1)), T0)
    assert not has(desired, "Queued") and not has(desired, "Admitted")


def _fields(value: Any) -> dict[str, Any]:
    """managedFields' fieldsV1 naming every field of `value` (maps member by member, lists whole)."""
    return {f"f:{k}": _fields(v) if isinstance(v, dict) else {} for k, v in value.items()}


def test_a_job_admitted_by_kueue_needs_no_apply() -> None:
    """Kueue admits a queued Job by updating its template's node selector (an atomic map: the update takes it
    from the operator's apply). The Job's index entry keeps it whole, so the operator sees its own values there
    and applies nothing: an apply to the running Job's template would be refused."""
    job = make_job(backend="Job", scheduling={"nodeSelector": {"nvidia.com/gpu.present": "true"}, "queueName": "q"})
    desired = manifests.indexed_job(job, VERSION)
    ours = copy.deepcopy(desired)
    del ours["spec"]["template"]["spec"]["nodeSelector"]
    admitted = copy.deepcopy(desired)
    admitted["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-H100-80GB-HBM3"
    admitted["metadata"]["managedFields"] = [
        {"manager": "kubemaas", "operation": "Apply", "fieldsV1": _fields(ours)},
        {
            "manager": "kueue",
            "operation": "Update",
            "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:nodeSelector": {}}}}},
        },
    ]
    assert not is_subset(desired, children.applied_projection(admitted)), "without the node selector: an apply"
    assert is_subset(desired, children.slim_job(admitted))
