"""The PyTorchJob backend: Kubeflow's training operator (kubeflow.org/v1) runs a Master and Workers and
sets the rendezvous variables itself; its conditions (Running, Restarting, Succeeded) are mirrored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers.conditions import true_condition
from kubemaas.controllers.workloads.owners import owned_by
from kubemaas.manifests import trainingjob as manifests


class PyTorchJobBackend:
    name: Literal["PyTorchJob"] = "PyTorchJob"
    unavailable: str | None = (
        "backend PyTorchJob: the cluster does not serve kubeflow.org/v1 PyTorchJob (install the Kubeflow "
        "training operator, or use backend Job)"
    )

    prerequisites: frozenset[str] = frozenset()

    def children(self, job: TrainingJob, version: str) -> list[dict[str, Any]]:
        return [manifests.pytorchjob(job, version)]

    def owns_pod(self, job: TrainingJob, workload: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
        return owned_by(pod, (workload.get("metadata") or {}).get("uid"))

    def succeeded(self, workload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return true_condition(workload, "Succeeded")

    def restarts(self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
        replica_statuses = (workload.get("status") or {}).get("replicaStatuses") or {}
        return sum(int((r or {}).get("failed") or 0) for r in replica_statuses.values())

    def restarting(self, job: TrainingJob, workload: Mapping[str, Any], restarts: int) -> tuple[str, str] | None:
        mirrored = true_condition(workload, "Restarting")
        return (str(mirrored.get("reason") or "Restarting"), str(mirrored.get("message") or "")) if mirrored else None

    def running(self, job: TrainingJob, workload: Mapping[str, Any]) -> tuple[str, str] | None:
        running = true_condition(workload, "Running")
        return (str(running.get("reason") or "Running"), str(running.get("message") or "")) if running else None
