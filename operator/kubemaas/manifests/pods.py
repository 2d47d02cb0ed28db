"""What every pod Kubemaas builds shares: Pod Security `restricted`, the images' user, claims from URIs."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from kubemaas.api.base import ApiModel
from kubemaas.api.core import Resources, Scheduling

# The UID:GID every Kubemaas image runs as (images/*/Dockerfile). Triton's own image runs as root by
# default; it runs fine as this user when everything it writes is a mounted volume.
WORKLOAD_UID = 65532


def restricted_pod_security_context() -> dict[str, Any]:
    """Pod-level part of Pod Security `restricted`; fsGroup gives the non-root user the mounted Secret's
    files (they keep their 0400 mode)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security_context() -> dict[str, Any]:
    """Container-level part of `restricted`, plus a read-only root filesystem (writes go to mounted volumes).

    A fresh dict per call: callers (and apply) may mutate what they get."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


# The label Kueue admits a workload by (its LocalQueue).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def as_served(model: ApiModel) -> dict[str, Any]:
    """A core/v1 sub-object as the API server stores it: without false and empty values.

    The server drops `readOnly: false`, `value: ""` and the like (omitempty), so a child that carried
    them would never equal what the watch shows, and every reconcile would apply it again. Leaving them
    out means the same: false and "" are those fields' defaults.
    """
    pruned = _prune(model.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert isinstance(pruned, dict)
    return pruned


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not False and v != ""}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


@dataclass(frozen=True)
class ResourceDefaults:
    """What a workload container gets for what its spec leaves unset, so that no container Kubemaas builds is
    unbounded (issue 24: one namespace must not take a node's memory). Small requests (they decide scheduling
    and must fit a small cluster); a memory limit, since memory cannot be taken back without a kill; cpu only
    requested, since it is throttled, not exhausted, and a limit would slow serving and training for nothing."""

    cpu_request: str
    memory_request: str
    memory_limit: str


# The trainer's and Triton's defaults (docs/runtime-contract.md §2, docs/modelservice.md): set `resources.cpu`
# and `resources.memory` for real work; these only bound a spec that names neither.
WORKLOAD_DEFAULTS = ResourceDefaults(cpu_request="100m", memory_request="256Mi", memory_limit="8Gi")


def container_resources(resources: Resources, gpu_resource: str, defaults: ResourceDefaults) -> dict[str, Any]:
    """The container's `resources`: cpu and memory as requests equal to limits (Guaranteed QoS when both are
    set: the last pods evicted under pressure), GPUs as limits of `gpu_resource` (Kubernetes sets the request).
    What the spec leaves unset comes from `defaults`. Quantities as strings, as the API server returns them:
    an unchanged spec then compares equal."""
    cpu = None if resources.cpu is None else str(resources.cpu)
    memory = None if resources.memory is None else str(resources.memory)
    limits = {**({"cpu": cpu} if cpu else {}), "memory": memory or defaults.memory_limit}
    if resources.gpus:
        limits[gpu_resource] = str(resources.gpus)
    return {
        "limits": limits,
        "requests": {"cpu": cpu or defaults.cpu_request, "memory": memory or defaults.memory_request},
    }


# The OpenMP variable PyTorch (and NumPy's BLAS) size their intra-op thread pools from.
OMP_NUM_THREADS = "OMP_NUM_THREADS"


def threads_per_process(resources: Resources, processes: int) -> int | None:
    """Intra-op threads for each of a container's `processes` under its CPU limit: the limit's whole CPUs
    shared among them, at least one; None without a limit (nothing throttles the process, torch's default
    holds).

    PyTorch starts one thread per core of the node, not of the container's limit. Under a CFS quota those
    threads spend the quota in the first part of each period and then all wait for the next one; a
    synchronous step (gloo's allreduce) waits for the slowest rank's stall every step. Two ranks of 600m on
    a 2-core node trained the digits MLP 7x faster with one thread each (docs/runtime-contract.md §1)."""
    if resources.cpu is None:
        return None
    cpus = Decimal(parse_quantity(resources.cpu))  # type: ignore[no-untyped-call]  # kubernetes.utils: unannotated
    return max(1, int(cpus) // processes)


def place(pod_spec: dict[str, Any], scheduling: Scheduling | None) -> None:
    """Set the spec's scheduling fields (nodeSelector, tolerations, priority class, scheduler) on a pod spec.
    The Kueue label goes on the workload, not the pod: see QUEUE_LABEL's callers."""
    if scheduling is None:
        return
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod_spec["tolerations"] = [as_served(t) for t in scheduling.tolerations]
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    if scheduling.scheduler_name:
        pod_spec["schedulerName"] = scheduling.scheduler_name
