"""Stage 3, observation: what the Deployments, their ReplicaSets and pods say about a rollout (complete,
progressing, failed past its deadline or crash-looping, with the loader's reason when it reported one), the
version a ``Latest`` loader resolved, and the template that served an older version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubemaas.api.modelservice import (
    LastFailure,
)
from kubemaas.contract.termination import (
    FailureMessage,
    InvalidTerminationMessage,
    SuccessMessage,
    TerminationMessage,
    parse_termination,
)
from kubemaas.controllers.conditions import condition_of, true_condition
from kubemaas.controllers.modelservice_core.model import FAILURE_MESSAGE_LIMIT, Observed, Reason, field_at
from kubemaas.manifests import modelservice as m
from kubemaas.manifests.modelservice import ModelRef, Track

# A serving container restarted this often (or in CrashLoopBackOff) marks its version as failed.
CRASH_RESTARTS = 3


class RolloutState(StrEnum):
    COMPLETE = "Complete"
    PROGRESSING = "Progressing"
    FAILED = "Failed"


def template_ref(deployment: Mapping[str, Any] | None) -> ModelRef | None:
    if deployment is None:
        return None
    return m.model_ref_from_template(field_at(deployment, "spec", "template") or {})


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    status = deployment.get("status") or {}
    generation = field_at(deployment, "metadata", "generation") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return RolloutState.PROGRESSING
    progressing = condition_of(deployment, "Progressing") or {}
    if progressing.get("status") == "False" and progressing.get("reason") == Reason.PROGRESS_DEADLINE:
        return RolloutState.FAILED
    desired = field_at(deployment, "spec", "replicas")
    desired = 1 if desired is None else desired
    if (
        (status.get("updatedReplicas") or 0) == desired
        and (status.get("replicas") or 0) == desired
        and (status.get("availableReplicas") or 0) == desired
    ):
        return RolloutState.COMPLETE
    return RolloutState.PROGRESSING


def pods_of(pods: Sequence[Mapping[str, Any]], track: Track, version: str) -> list[Mapping[str, Any]]:
    return [
        p
        for p in pods
        if field_at(p, "metadata", "labels", m.TRACK_LABEL) == track.value
        and field_at(p, "metadata", "labels", m.VERSION_LABEL) == version
        and not field_at(p, "metadata", "deletionTimestamp")
    ]


def _termination(status: Mapping[str, Any]) -> TerminationMessage | None:
    """The termination message of a container (current or previous run), if it is one the runtime writes."""
    for state in ("state", "lastState"):
        text = field_at(status, state, "terminated", "message")
        if text:
            try:
                return parse_termination(str(text))
            except InvalidTerminationMessage:
                continue
    return None


def loader_report(pod: Mapping[str, Any]) -> TerminationMessage | None:
    """The model-loader's termination message (docs/runtime-contract.md §5)."""
    for status in field_at(pod, "status", "initContainerStatuses") or ():
        if status.get("name") == m.LOADER_CONTAINER:
            return _termination(status)
    return None


def crash_failure(pods: Sequence[Mapping[str, Any]], version: str) -> LastFailure | None:
    """A crash-looping loader or server among these pods, with the loader's reason when it gave one."""
    for pod in pods:
        statuses = [
            *(field_at(pod, "status", "initContainerStatuses") or ()),
            *(field_at(pod, "status", "containerStatuses") or ()),
        ]
        for status in statuses:
            waiting = field_at(status, "state", "waiting", "reason")
            if waiting != Reason.CRASH_LOOP and (status.get("restartCount") or 0) < CRASH_RESTARTS:
                continue
            report = _termination(status) if status.get("name") == m.LOADER_CONTAINER else None
            if isinstance(report, FailureMessage):
                return LastFailure(
                    version=version,
                    reason=report.reason,
                    message=report.message[:1024],
                    exit_code=int(report.exit_code),
                )
            terminated = field_at(status, "lastState", "terminated") or {}
            return LastFailure(
                version=version,
                reason=Reason.CRASH_LOOP,
                message=f"container {status.get('name')} of pod {field_at(pod, 'metadata', 'name')} keeps restarting"
                + (f" (exit code {terminated['exitCode']})" if "exitCode" in terminated else ""),
                exit_code=terminated.get("exitCode"),
            )
    return None


def available_since(deployment: Mapping[str, Any]) -> datetime | None:
    """When the Deployment last became Available (its condition's lastTransitionTime)."""
    available = true_condition(deployment, "Available")
    if available is None or not available.get("lastTransitionTime"):
        return None
    try:
        return datetime.fromisoformat(str(available["lastTransitionTime"]).replace("Z", "+00:00"))
    except ValueError:
        return None


def restarted(pods: Sequence[Mapping[str, Any]], version: str) -> LastFailure | None:
    for pod in pods:
        for status in field_at(pod, "status", "containerStatuses") or ():
            if (status.get("restartCount") or 0) > 0:
                return LastFailure(
                    version=version,
                    reason="CanaryRestarted",
                    message=f"container {status.get('name')} of canary pod {field_at(pod, 'metadata', 'name')} "
                    "restarted during the analysis window",
                )
    return None


def resolved_version(pods: Sequence[Mapping[str, Any]], source: str) -> str | None:
    """The version a ``Latest`` loader resolved, from pods built for this source."""
    for pod in pods:
        if field_at(pod, "metadata", "annotations", m.SOURCE_ANNOTATION) != source:
            continue
        report = loader_report(pod)
        if isinstance(report, SuccessMessage):
            return report.version
    return None


def failure_of(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], track: Track) -> LastFailure | None:
    ref = template_ref(deployment)
    if ref is None:
        return None
    crashed = crash_failure(pods_of(pods, track, ref.version), ref.version)
    if crashed is not None:
        return crashed
    if rollout_state(deployment) is RolloutState.FAILED:
        message = str((condition_of(deployment, "Progressing") or {}).get("message", ""))
        deadline = field_at(deployment, "spec", "progressDeadlineSeconds")
        return LastFailure(
            version=ref.version,
            reason=Reason.PROGRESS_DEADLINE,
            message=f"version {ref.version} not ready within {deadline}s: {message}"[:FAILURE_MESSAGE_LIMIT],
        )
    return None


def ref_for_version(observed: Observed, version: str | None) -> ModelRef | None:
    """The template that served ``version``, from the stable Deployment's ReplicaSets (newest first)."""
    if version is None:
        return None
    ordered = sorted(
        observed.replica_sets,
        key=lambda rs: int(field_at(rs, "metadata", "annotations", "deployment.kubernetes.io/revision") or 0),
        reverse=True,
    )
    for rs in ordered:
        ref = m.model_ref_from_template(field_at(rs, "spec", "template") or {})
        if ref is not None and ref.version == version:
            return ref
    return None
