"""Kueue on a TrainingJob: the `Queued` and `Admitted` conditions of a job with `scheduling.queueName`, read from
Kueue's own Workload object (kueue.x-k8s.io/v1beta2), and the pre-flight check that its LocalQueue exists.

Why the Workload and not the workload's suspension or Kueue's Events: the Workload's conditions are Kueue's
decision as state (QuotaReserved False with the reason it cannot admit, e.g. "insufficient unused quota for
nvidia.com/gpu in flavor a100, 4 more needed"; Admitted; Evicted with Preempted), level-triggered like
everything else here; Events are lossy and deduplicated, and `suspend` says that a job waits, not why.
Kueue labels each Workload with its job's uid (`kueue.x-k8s.io/job-uid`), which is how the handlers find it
(one list in the namespace, no watch: a watch could not be restricted to Kubemaas' Workloads).

Pure: the handlers gather `QueueObserved`; `preflight` and `mirror` turn it into conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubemaas.api.base import ConditionStatus
from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers.conditions import condition_of, true_condition

QUEUED, ADMITTED = "Queued", "Admitted"
QUEUE_CONDITIONS = (QUEUED, ADMITTED)
LOCAL_QUEUE_NOT_FOUND = "LocalQueueNotFound"
# While Kueue holds a job: how often its Workload is read again, since Kueue's reason can change (quota freed
# elsewhere, a ClusterQueue edited) without any event of the operator's own objects. Admission itself wakes the
# job at once: Kueue unsuspends the workload, whose watch event runs the reconcile.
QUEUED_RECHECK_SECONDS = 10.0

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
SetCondition = Callable[[str, ConditionStatus, str, str], None]


@dataclass(frozen=True)
class QueueObserved:
    """What the cluster shows about a queued job's admission; None fields were not read this pass."""

    kueue_served: bool
    local_queue_exists: bool | None = None  # asked only before the workload exists
    workload: Mapping[str, Any] | None = None  # Kueue's Workload of the job's workload, once Kueue made it


def queue_name(job: TrainingJob) -> str | None:
    scheduling = job.spec.scheduling
    return scheduling.queue_name if scheduling is not None and scheduling.queue_name else None


def preflight(job: TrainingJob, observed: QueueObserved | None) -> tuple[str, str] | None:
    """(reason, message) when the named LocalQueue cannot admit anything: the workload is not created (a
    Warning Event, and a re-check), since Kueue would hold it forever."""
    name = queue_name(job)
    if name is None or observed is None:
        return None
    namespace = job.metadata.namespace
    if not observed.kueue_served:
        return LOCAL_QUEUE_NOT_FOUND, (
            f"scheduling.queueName is {name}, but the cluster does not serve Kueue (kueue.x-k8s.io/v1beta2 "
            "LocalQueue), so nothing would admit the workload; install Kueue or remove queueName"
        )
    if observed.local_queue_exists is False:
        return LOCAL_QUEUE_NOT_FOUND, (
            f"LocalQueue {name} not found in namespace {namespace}; the workload is created once it exists"
        )
    return None


def mirror(job: TrainingJob, observed: QueueObserved | None, suspended: bool, set_: SetCondition) -> float | None:
    """Set Queued and Admitted from Kueue's Workload; returns when to read it again (None: not needed).

    Nothing is set when the Workload was not read this pass (an admitted, running job): the conditions stay.
    """
    if queue_name(job) is None or observed is None:
        return None
    workload = observed.workload
    if workload is None:
        legacy = job.status is not None and job.status.backend == "PyTorchJob"
        if legacy and not suspended:
            # Kueue suspends every workload it manages as it is created; a running PyTorchJob without a Kueue
            # Workload is one whose integration (legacy, off by default) the platform has not enabled.
            set_(QUEUED, FALSE, "NotManagedByKueue", _unmanaged(job))
            set_(ADMITTED, UNKNOWN, "NotManagedByKueue", "")
            return None
        set_(QUEUED, UNKNOWN, "WaitingForKueue", "Kueue has not created a Workload for this job yet")
        set_(ADMITTED, FALSE, "WaitingForKueue", "")
        # Held: read again until Kueue's Workload appears. Not held (yet): the workload's own events come first
        # (Trainer marks a TrainJob Suspended a moment after Kueue's webhook suspended it).
        return QUEUED_RECHECK_SECONDS if suspended else None
    admitted = true_condition(workload, "Admitted")
    if admitted is not None:
        set_(ADMITTED, TRUE, _reason(admitted, "Admitted"), str(admitted.get("message") or ""))
        set_(QUEUED, FALSE, "Admitted", "")
        return None
    # Why Kueue holds it: an eviction (preemption) says more than the pending quota reservation that follows it.
    why = true_condition(workload, "Evicted") or condition_of(workload, "QuotaReserved") or {}
    message = str(why.get("message") or "Kueue has not tried to reserve quota for the Workload yet")
    set_(QUEUED, TRUE, _reason(why, "Pending"), message)
    set_(ADMITTED, FALSE, "Pending", "")
    return QUEUED_RECHECK_SECONDS


def evictions(observed: QueueObserved | None) -> int | None:
    """How many times Kueue evicted the job's workload (preemptions among them), from its Workload's
    `status.schedulingStats.evictions` (a count per reason and cause); None when the Workload was not read this
    pass. Kueue only adds to these counts, so the last one read stays true while the Workload is not read."""
    workload = observed.workload if observed is not None else None
    if workload is None:
        return None
    stats = (workload.get("status") or {}).get("schedulingStats") or {}
    return sum(int(entry.get("count") or 0) for entry in stats.get("evictions") or ())


def _reason(condition: Mapping[str, Any], default: str) -> str:
    return str(condition.get("reason") or default)


def _unmanaged(job: TrainingJob) -> str:
    return (
        "the PyTorchJob runs without Kueue's admission: Kueue made no Workload for it (Kueue's "
        "kubeflow.org/pytorchjob integration is legacy and off by default, kubernetes-sigs/kueue #12601; backend "
        f"TrainJob or Job is admitted through LocalQueue {queue_name(job)})"
    )
