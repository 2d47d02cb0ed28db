"""The ModelService controller driven through its kopf handlers, with fake indexes and a fake API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubemaas.controllers import modelservice as handlers
from tests.controllers.fakes import FakeKube, index, indexed, run_handler

NS = "serving"
STORE = "pvc://models/store"


def modelservice(selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits", "namespace": NS, "uid": "uid-ms", "generation": 1, "resourceVersion": "7"},
        "spec": {"model": {"trainingJobSelector": selector}},
    }


def succeeded_job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "output": {"uri": STORE, "modelName": "digits"},
            "encryption": {"keySecretRef": {"name": f"{name}-key"}},
        },
        "status": {
            "conditions": [{"type": "Succeeded", "status": "True"}],
            "completionTime": "2026-11-29T10:00:00Z",
            "model": {"uri": f"{STORE}/digits/v1", "version": "v1"},
        },
    }


def indexes(ms: dict[str, Any], *jobs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {name: index() for name in handlers.INDEXERS}
    out["ms_bodies"] = indexed(handlers.ms_bodies, ms)
    out["ms_by_source"] = indexed(handlers.ms_by_source, ms)
    out["ms_training_jobs"] = indexed(handlers.ms_training_jobs, *jobs)
    return out


def training_job_event(kube: FakeKube, kwargs: dict[str, Any], job_name: str) -> None:
    memo = {"kube": kube, "triton_image": "triton:1"}
    run_handler(handlers.ms_training_job_changed, namespace=NS, name=job_name, memo=memo, **kwargs)


@pytest.mark.parametrize(
    "selector",
    [
        {"matchLabels": {"team": "digits"}},
        {"matchExpressions": [{"key": "team", "operator": "In", "values": ["digits", "vision"]}]},
        {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
    ],
)
def test_a_matching_training_job_event_rolls_the_modelservice_out(
    selector: dict[str, Any], no_events: list[dict[str, Any]]
) -> None:
    job = succeeded_job("train-1", {"team": "digits"})
    kube = FakeKube()
    training_job_event(kube, indexes(modelservice(selector), job), "train-1")
    assert "Deployment" in kube.applied_kinds()
    deployment = next(o for o in kube.applied if o["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == "digits"
    assert kube.statuses, "the status names the served version"


def test_a_training_job_the_selector_does_not_match_triggers_nothing(no_events: list[dict[str, Any]]) -> None:
    selector = {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["digits"]}]}
    job = succeeded_job("train-1", {"team": "digits"})
    kube = FakeKube()
    training_job_event(kube, indexes(modelservice(selector), job), "train-1")
    assert kube.applied == [] and kube.statuses == []


def test_the_status_write_is_conditional_and_a_stale_index_reuses_what_was_written(
    no_events: list[dict[str, Any]],
) -> None:
    ms = modelservice({"matchLabels": {"team": "digits"}})
    kwargs = indexes(ms, succeeded_job("train-1", {"team": "digits"}))
    kube = FakeKube()
    key = (NS, "digits")
    memo = {"kube": kube, "triton_image": "triton:1"}
    asyncio.run(handlers.reconcile(key, memo, kwargs))
    (_, first, version), *_ = kube.statuses
    assert version == "7"  # conditional on the resourceVersion the status was computed from
    # The index still holds resourceVersion 7: the next pass starts from the status just written, and its
    # write (if any) is conditional on the version that write produced.
    body, current = handlers.LOOP.status.current(key, ms)
    assert body["status"] == first and current == "101"
    handlers.LOOP.forget(key)
    assert handlers.LOOP.status.current(key, ms) == (ms, "7")


def test_a_conflicting_status_write_is_computed_again_soon(no_events: list[dict[str, Any]]) -> None:
    from kubemaas.controllers.apply import Conflict

    class Conflicting(FakeKube):
        async def patch_status(self, *args: Any, **kwargs: Any) -> str | None:
            raise Conflict("patch-status", "ModelService serving/digits", 409, "changed")

    ms = modelservice({"matchLabels": {"team": "digits"}})
    memo = {"kube": Conflicting(), "triton_image": "triton:1"}
    requeue = asyncio.run(handlers.reconcile((NS, "digits"), memo, indexes(ms)))
    assert requeue == handlers.CONFLICT_REQUEUE_SECONDS
    assert no_events == []  # Events are posted by the pass whose write lands
