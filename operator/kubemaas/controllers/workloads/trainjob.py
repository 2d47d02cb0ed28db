"""The TrainJob backend: Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1`) runs the ranks as a JobSet from a
TrainingRuntime the operator makes for the job (manifests/trainjob.py says why one per job). Trainer's
conditions are Suspended, Complete and Failed; running and restarts are read from the TrainJob's jobsStatus and
the ranks' pods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers.conditions import true_condition
from kubemaas.manifests import trainjob as manifests


class TrainJobBackend:
    name: Literal["TrainJob"] = "TrainJob"
    unavailable: str | None = (
        "backend TrainJob: the cluster does not serve trainer.kubeflow.org/v1alpha1 TrainJob (install Kubeflow "
        "Trainer v2, or use backend Job)"
    )

    # Trainer's webhook refuses a TrainJob whose runtime it cannot find (403 "runtime ... not found").
    prerequisites: frozenset[str] = frozenset({"TrainingRuntime"})

    def children(self, job: TrainingJob, version: str) -> list[dict[str, Any]]:
        return [manifests.training_runtime(job, version), manifests.train_job(job)]

    def owns_pod(self, job: TrainingJob, workload: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
        # A pod's owner is a Job of the TrainJob's JobSet; the runtime labels the pods with the TrainingJob's uid.
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        return bool(job.metadata.uid) and pod_labels.get(manifests.OWNER_UID_LABEL) == job.metadata.uid

    def succeeded(self, workload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return true_condition(workload, "Complete")

    def restarts(self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
        # The ranks' Job keeps its failed pods (restartPolicy Never) and replaces each with a new one: what
        # backoffLimit counts. Trainer's status counts failed Jobs only.
        return sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")

    def restarting(self, job: TrainingJob, workload: Mapping[str, Any], restarts: int) -> tuple[str, str] | None:
        if restarts and _node(workload, "ready") < 1:
            return "PodsRestarting", f"{restarts} pod failure(s) so far; the ranks are being recreated"
        return None

    def running(self, job: TrainingJob, workload: Mapping[str, Any]) -> tuple[str, str] | None:
        # jobsStatus counts the JobSet's Jobs: the one `node` Job is active while any rank is pending or running.
        if _node(workload, "active") < 1:
            return None
        ready = "all ranks ready" if _node(workload, "ready") >= 1 else "not all ranks ready yet"
        return "TrainJobRunning", f"{job.spec.replicas} rank(s) active, {ready}"


def _node(workload: Mapping[str, Any], field: str) -> int:
    """A count of the `node` replicated job in the TrainJob's status.jobsStatus."""
    for status in (workload.get("status") or {}).get("jobsStatus") or ():
        if status.get("name") == manifests.NODE:
            return int(status.get(field) or 0)
    return 0
