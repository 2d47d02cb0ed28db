"""The Job backend, for clusters without Kubeflow: an Indexed Job (one pod per rank, the completion index as
the rank) behind a headless Service that gives rank 0 a stable name; the operator sets the rendezvous
variables (docs/runtime-contract.md) and reads progress from the Job's pod counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers.conditions import true_condition
from kubemaas.controllers.workloads.owners import owned_by
from kubemaas.manifests import trainingjob as manifests


class IndexedJobBackend:
    name: Literal["Job"] = "Job"
    unavailable: str | None = None  # batch/v1 is always served

    prerequisites: frozenset[str] = frozenset()

    def children(self, job: TrainingJob, version: str) -> list[dict[str, Any]]:
        # The Service first: rank 0's name must resolve when the other ranks start.
        return [manifests.headless_service(job), manifests.indexed_job(job, version)]

    def owns_pod(self, job: TrainingJob, workload: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
        return owned_by(pod, (workload.get("metadata") or {}).get("uid"))

    def succeeded(self, workload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return true_condition(workload, "Complete")

    def restarts(self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
        return int((workload.get("status") or {}).get("failed") or 0)

    def restarting(self, job: TrainingJob, workload: Mapping[str, Any], restarts: int) -> tuple[str, str] | None:
        active = _active(workload)
        if restarts and active < job.spec.replicas:
            return "PodsRestarting", f"{restarts} pod failure(s) so far; {active} of {job.spec.replicas} pods active"
        return None

    def running(self, job: TrainingJob, workload: Mapping[str, Any]) -> tuple[str, str] | None:
        active = _active(workload)
        return ("JobRunning", f"{active} of {job.spec.replicas} pods active") if active > 0 else None


def _active(workload: Mapping[str, Any]) -> int:
    return int((workload.get("status") or {}).get("active") or 0)
