"""The ModelService controller driven through its kopf handlers, with fake indexes and a fake API."""

from __future__ import annotations

import asyncio
import json
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


def pinned_modelservice() -> dict[str, Any]:
    body = modelservice({})
    body["spec"] = {"model": {"uri": f"{STORE}/digits", "version": "v2", "encryption": {"keySecretRef": {"name": "k"}}}}
    return body


@pytest.mark.parametrize("owner", ["rs-1", "rs-forged", None])
def test_a_loader_report_counts_only_from_a_pod_the_modelservice_owns_through_its_deployment(
    owner: str | None, no_events: list[dict[str, Any]]
) -> None:
    """A pod anyone labelled as the ModelService's (and gave a failing loader report) is not its pod: only the
    owner chain ModelService -> Deployment -> ReplicaSet -> Pod makes it one."""
    ms = pinned_modelservice()
    first = FakeKube()
    kwargs = indexes(ms)
    asyncio.run(handlers.reconcile((NS, "digits"), {"kube": first, "triton_image": "triton:1"}, kwargs))
    deployment = {**next(o for o in first.applied if o["kind"] == "Deployment")}
    deployment["metadata"] = {**deployment["metadata"], "uid": "d-1", "generation": 1}
    template = deployment["spec"]["template"]
    labels = deployment["metadata"]["labels"]
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "digits-abc", "namespace": NS, "uid": "rs-1", "labels": labels,
            "ownerReferences": [{"kind": "Deployment", "name": "digits", "uid": "d-1", "controller": True}],
        },
        "spec": {"template": template},
    }  # fmt: skip
    report = {"exitCode": 79, "message": "kubemaas load-model: tampered", "reason": "TamperedArtifact"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "digits-abc-x", "namespace": NS, "labels": template["metadata"]["labels"],
            "annotations": template["metadata"].get("annotations") or {},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "digits-abc", "uid": owner, "controller": True}]
            if owner else [],
        },
        "status": {
            "initContainerStatuses": [{
                "name": "model-loader", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 79, "message": json.dumps(report)}},
            }]
        },
    }  # fmt: skip
    kwargs["ms_deployments"] = indexed(handlers.INDEXERS["ms_deployments"], deployment)
    kwargs["ms_replica_sets"] = indexed(handlers.INDEXERS["ms_replica_sets"], replica_set)
    kwargs["ms_pods"] = indexed(handlers.INDEXERS["ms_pods"], pod)
    kube = FakeKube()
    asyncio.run(handlers.reconcile((NS, "digits"), {"kube": kube, "triton_image": "triton:1"}, kwargs))
    (_, status, _), *_ = kube.statuses
    failure = status.get("lastFailure")

    if owner == "rs-1":
        assert failure is not None and failure["reason"] == "TamperedArtifact"
    else:
        assert failure is None, "a pod outside the owner chain was believed"
