"""What a TrainingJob's workload and pods report, read for the core (controllers/trainingjob_core.py): the
ranks and their counts, rank 0's published model (docs/runtime-contract.md §5), and the failure that explains
a failed job. Pure, like the core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubemaas.api.trainingjob import PublishedModel, ReplicaStatus, TrainingJob
from kubemaas.contract import termination
from kubemaas.contract.published import version_uri
from kubemaas.manifests import trainingjob as manifests
from kubemaas.manifests import trainjob

# A condition message stays readable in `kubectl describe` and small in etcd.
MESSAGE_LIMIT = 1024

KUBEFLOW_REPLICA_TYPE = "training.kubeflow.org/replica-type"
KUBEFLOW_REPLICA_INDEX = "training.kubeflow.org/replica-index"


class BadTerminationMessage(ValueError):
    """Rank 0's termination message is not what the contract promises."""


def model_version(job: TrainingJob) -> str:
    """`v<created:%Y%m%d-%H%M%S>-<uid[:8]>`: fixed for the job's lifetime, unique, sortable by creation."""
    extra = job.metadata.model_extra or {}
    created = datetime.fromisoformat(str(extra["creationTimestamp"]))
    return f"v{created:%Y%m%d-%H%M%S}-{(job.metadata.uid or '')[:8]}"


def timestamp(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    replica_type = pod_labels.get(KUBEFLOW_REPLICA_TYPE)
    if replica_type is not None:
        # Kubeflow: the Master is rank 0, Worker i is rank i + 1.
        index = int(pod_labels.get(KUBEFLOW_REPLICA_INDEX, "0"))
        return 0 if replica_type.lower() == "master" else index + 1
    index_value = (meta.get("annotations") or {}).get(manifests.COMPLETION_INDEX_ANNOTATION)
    return int(index_value) if index_value is not None and str(index_value).isdigit() else None


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The training container's terminated state (the pod has exactly one container)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") in (manifests.PYTORCH_CONTAINER, manifests.JOB_CONTAINER, trainjob.NODE):
            terminated: Mapping[str, Any] | None = (status.get("state") or {}).get("terminated")
            return terminated
    return None


def replica_statuses(pods: Sequence[Mapping[str, Any]]) -> dict[str, ReplicaStatus]:
    counts: dict[str, dict[str, int]] = {}
    for pod in pods:
        rank = pod_rank(pod)
        if rank is None:
            continue
        kind = "Master" if rank == 0 else "Worker"
        bucket = counts.setdefault(kind, {"active": 0, "succeeded": 0, "failed": 0})
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded":
            bucket["succeeded"] += 1
        elif phase == "Failed":
            bucket["failed"] += 1
        elif not (pod.get("metadata") or {}).get("deletionTimestamp"):
            bucket["active"] += 1
    return {kind: ReplicaStatus(**c) for kind, c in sorted(counts.items())}


def parse_published_model(message: str, job: TrainingJob) -> PublishedModel:
    """Rank 0's success message -> status.model; anything else is BadTerminationMessage.

    Rank 0 is trusted only for what it alone knows (the digest, the key id, the metrics). Where the version
    lives follows from the spec: a message that names another model, version or URI is refused, so no pod
    can point a ModelService at another store or model (docs/security.md)."""
    if not message.strip():
        raise BadTerminationMessage("rank 0 exited 0 without a termination message")
    try:
        parsed = termination.parse_termination(message)
    except termination.InvalidTerminationMessage as error:
        raise BadTerminationMessage(f"rank 0's termination message: {error}") from None
    if not isinstance(parsed, termination.SuccessMessage):
        raise BadTerminationMessage(f"rank 0 exited 0 but reported a failure ({parsed.reason})")
    version, model = model_version(job), manifests.model_name(job)
    uri = version_uri(job.spec.output.uri, model, version)
    for field_name, reported, expected in (("version", parsed.version, version), ("model", parsed.model, model)):
        if reported != expected:
            raise BadTerminationMessage(
                f"rank 0 published {field_name} {shorten(reported, 80)!r}, expected {expected!r}"
            )
    if parsed.uri != uri:
        raise BadTerminationMessage(f"rank 0 reported the URI {shorten(parsed.uri, 200)!r}, expected {uri!r}")
    metrics = PublishedModel.metrics_from(parsed.metrics)
    try:
        return PublishedModel(
            uri=uri, version=version, sha256=parsed.sha256, key_id=parsed.key_id, metrics=metrics or None
        )
    except ValidationError as error:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in error.errors())
        raise BadTerminationMessage(f"rank 0's termination message has invalid {fields}") from None


@dataclass(frozen=True)
class PodFailure:
    rank: int | None
    exit_code: int
    reason: str
    message: str

    def describe(self) -> str:
        who = f"rank {self.rank}" if self.rank is not None else "a pod"
        text = f"{who} exited {self.exit_code} ({self.reason})"
        return f"{text}: {self.message}" if self.message else text


def pod_failure(pods: Sequence[Mapping[str, Any]]) -> PodFailure | None:
    """The failure that explains a failed job: the first permanent exit, else the first failure.

    The reason and message come from the pod's termination message when it is a valid failure
    report (docs/runtime-contract.md §5), else from the kubelet (OOMKilled, Error -> PodFailed).
    """
    failures: list[tuple[str, PodFailure]] = []
    for pod in pods:
        terminated = terminated_state(pod)
        if terminated is None or not terminated.get("exitCode"):
            continue
        code = int(terminated["exitCode"])
        kubelet_reason = str(terminated.get("reason") or "Error")
        reason, text, rank = ("PodFailed" if kubelet_reason == "Error" else kubelet_reason), "", pod_rank(pod)
        raw = str(terminated.get("message") or "")
        try:
            report = termination.parse_termination(raw) if raw else None
        except termination.InvalidTerminationMessage:
            report, text = None, raw
        if isinstance(report, termination.FailureMessage):
            reason, text = report.reason, report.message
            rank = report.rank if report.rank is not None else rank
        failure = PodFailure(rank, code, reason, shorten(text, MESSAGE_LIMIT // 2))
        failures.append((str(terminated.get("finishedAt") or ""), failure))
    if not failures:
        return None
    failures.sort(key=lambda item: (item[1].exit_code >= 128, item[0]))
    return failures[0][1]
