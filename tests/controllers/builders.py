"""Builders for the ModelService core's tests: the ModelService, its TrainingJobs and Deployments as observed,
and one reconcile with fixed options and clock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubemaas.api import ModelService
from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers import modelservice_core as core
from kubemaas.controllers import trainingjob_core
from kubemaas.controllers.modelservice_core import Observed, Previous
from kubemaas.manifests import modelservice as m
from tests.manifests.builders import parent_of

NS = "serving"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
STORE = "pvc://models/store"


def make_ms(**spec: Any) -> ModelService:
    body = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits", "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": {"model": {"trainingJobRef": {"name": "digits"}}, **spec},
    }
    return ModelService.parse(body)


def job(
    name: str, version: str | None, completed: str = "2026-11-29T10:00:00Z", **metrics: str | float
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS, "labels": {"team": "digits"}},
        "spec": {
            "output": {"uri": STORE, "modelName": "digits"},
            "encryption": {"keySecretRef": {"name": f"{name}-key"}},
        },
        "status": {"conditions": [{"type": "Running", "status": "True"}]},
    }
    if version is not None:
        body["status"] = {
            "conditions": [{"type": "Succeeded", "status": "True"}],
            "completionTime": completed,
            "model": {"uri": f"{STORE}/digits/{version}", "version": version, "metrics": metrics},
        }
    return body


def ref(version: str, source: str = "trainingjob/digits", key: str = "digits-key") -> m.ModelRef:
    return m.ModelRef(store_uri=STORE, model="digits", version=version, key_secret=key, source=source)


def options() -> m.ServingOptions:
    return m.ServingOptions(triton_image="triton:1", progress_deadline_seconds=60, startup_timeout_seconds=600)


def deployment(
    ms: ModelService,
    model: m.ModelRef,
    *,
    track: m.Track = m.Track.STABLE,
    replicas: int = 1,
    complete: bool = True,
    deadline_exceeded: bool = False,
) -> dict[str, Any]:
    obj = m.deployment(ms.spec, parent_of(ms), model, options(), track=track, replicas=replicas)
    obj["metadata"]["generation"] = 2
    conditions = []
    if deadline_exceeded:
        conditions.append(
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
        )
    ready = replicas if complete else 0
    obj["status"] = {
        "observedGeneration": 2,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": conditions,
    }
    return obj


def run(ms: ModelService, observed: Observed, previous: Previous | None = None) -> core.Outcome:
    return core.reconcile(ms, previous or Previous(), observed, parent_of(ms), options(), NOW)


def conditions(outcome: core.Outcome) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status.value, c.reason, c.message) for c in outcome.status.conditions or ()}


def served_version(obj: Mapping[str, Any]) -> str:
    return str(obj["spec"]["template"]["metadata"]["labels"][m.VERSION_LABEL])


def advance(job: TrainingJob, desired: trainingjob_core.Desired) -> TrainingJob:
    """The TrainingJob as the API server holds it after the handler wrote `desired.status`."""
    body = job.to_wire()
    body["metadata"] = job.metadata.model_dump(mode="json", exclude_none=True)
    body["status"] = desired.status.to_wire()
    return TrainingJob.parse(body)
