"""The workload-backend interface: what the TrainingJob core asks of the object that runs a job's pods.

Each backend is one module (a Kubeflow Trainer v2 TrainJob, a Kubeflow PyTorchJob, an Indexed Job with a
headless Service) implementing
`WorkloadBackend`; the core never branches on which one it has. A new backend is a new module and one line
in `BACKENDS` (plus its name in the API's `spec.backend` enum). `Auto` takes the first backend of
`AUTO_ORDER` the cluster serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kubemaas.api.trainingjob import Backend, BackendName, TrainingJob
from kubemaas.controllers.workloads.indexed_job import IndexedJobBackend
from kubemaas.controllers.workloads.pytorchjob import PyTorchJobBackend
from kubemaas.controllers.workloads.trainjob import TrainJobBackend


class WorkloadBackend(Protocol):
    """One way of running a TrainingJob's pods. `workload` is the object `children` made, as the watch shows it."""

    @property
    def name(self) -> BackendName:
        """As status.backend records it; also the kind of the workload object."""

    @property
    def unavailable(self) -> str | None:
        """Why the cluster cannot run this backend when the API it needs is not served; None: always served."""

    @property
    def prerequisites(self) -> frozenset[str]:
        """Kinds among `children` that must exist (as the operator's watch shows them) before the workload is
        created, because the workload's admission webhook looks them up."""

    def children(self, job: TrainingJob, version: str) -> list[dict[str, Any]]:
        """The objects to apply, in the order they are needed."""

    def owns_pod(self, job: TrainingJob, workload: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
        """Whether a pod labelled with the job's name is one of this workload's ranks (not an earlier job's)."""

    def succeeded(self, workload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The workload's condition that says all pods finished successfully, when it is True."""

    def restarts(self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
        """Failed pods the workload replaced so far (`pods`: its ranks' pods): what runPolicy.backoffLimit counts."""

    def restarting(self, job: TrainingJob, workload: Mapping[str, Any], restarts: int) -> tuple[str, str] | None:
        """(reason, message) while pods are being recreated after a retriable failure, else None."""

    def running(self, job: TrainingJob, workload: Mapping[str, Any]) -> tuple[str, str] | None:
        """(reason, message) while the training runs, else None."""


BACKENDS: dict[BackendName, WorkloadBackend] = {
    b.name: b for b in (TrainJobBackend(), PyTorchJobBackend(), IndexedJobBackend())
}
# Auto: the first of these the cluster serves (the Indexed Job is always served). Trainer v2 first: PyTorchJob is
# Kubeflow's legacy API, and Kueue no longer enables its integration by default (kubernetes-sigs/kueue #12601).
AUTO_ORDER: tuple[BackendName, ...] = ("TrainJob", "PyTorchJob", "Job")


def resolve(job: TrainingJob, served: frozenset[str]) -> WorkloadBackend:
    """The job's backend: the one status.backend recorded (kept for the job's lifetime), else the spec's,
    else (Auto) the first of AUTO_ORDER whose API the cluster serves."""
    if job.status is not None and job.status.backend is not None:
        return BACKENDS[job.status.backend]
    if job.spec.backend != Backend.Auto:
        return next(b for b in BACKENDS.values() if b.name == job.spec.backend.value)
    return next(b for name in AUTO_ORDER if (b := BACKENDS[name]).unavailable is None or name in served)
