"""The ModelService handler around a stepped Canary: it scrapes the pods the core asks for (and only those,
and only then), reconciles again with their metrics, writes the window into status and wakes up at its end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from kubemaas.api import ModelService
from kubemaas.controllers import modelservice as handlers
from kubemaas.controllers.modelservice_core import ScrapeTarget
from kubemaas.controllers.modelservice_core.verdict import PodSample
from kubemaas.manifests import modelservice as m
from kubemaas.serving_metrics import TritonCounters
from tests.controllers.fakes import FakeKube, index, indexed

NS, STORE = "serving", "pvc://models/store"


def body() -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits", "namespace": NS, "uid": "uid-ms", "generation": 1, "resourceVersion": "7"},
        "spec": {
            "model": {"uri": f"{STORE}/digits", "version": "v2", "encryption": {"keySecretRef": {"name": "k"}}},
            "replicas": 2,
            "rollout": {"strategy": "Canary", "canary": {"steps": [{"weight": 20, "durationSeconds": 30}]}},
        },
        "status": {"servedVersion": "v1", "lastGoodVersion": "v1"},
    }


def owned(obj: dict[str, Any], uid: str, owner_kind: str, owner: str) -> dict[str, Any]:
    obj["metadata"] = {
        **obj["metadata"],
        "uid": uid,
        "ownerReferences": [{"kind": owner_kind, "name": "x", "uid": owner, "controller": True}],
    }
    return obj


def track(ms: dict[str, Any], version: str, which: m.Track, replicas: int) -> list[dict[str, Any]]:
    """A complete Deployment of `version` on `which`, its ReplicaSet and its ready pods, owned in a chain."""
    parsed = ModelService.parse(ms)
    ref = m.ModelRef(
        store_uri=STORE, model="digits", version=version, key_secret="k", source=f"{STORE}/digits@{version}"
    )
    options = handlers.serving_options(parsed, "triton:1")
    deployment = m.deployment(parsed.spec, handlers.parent_for(ms), ref, options, track=which, replicas=replicas)
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {
        "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
        "readyReplicas": replicas,
    }  # fmt: skip
    owned(deployment, f"d-{which.value}", "ModelService", "uid-ms")
    template = deployment["spec"]["template"]
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": f"rs-{which.value}", "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": {"template": template},
    }
    owned(rs, f"rs-{which.value}", "Deployment", f"d-{which.value}")
    pods = []
    for i in range(replicas):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{which.value}-{i}", "namespace": NS, "labels": template["metadata"]["labels"]},
            "status": {"podIP": f"198.18.0.{10 * (which is m.Track.CANARY) + i}", "conditions": [
                {"type": "Ready", "status": "True"}
            ]},
        }  # fmt: skip
        pods.append(owned(pod, f"p-{which.value}-{i}", "ReplicaSet", f"rs-{which.value}"))
    return [deployment, rs, *pods]


def kwargs(ms: dict[str, Any], canary_pods: int) -> dict[str, Any]:
    stable = track(ms, "v1", m.Track.STABLE, 2)
    canary = track(ms, "v2", m.Track.CANARY, canary_pods)
    out: dict[str, Any] = {name: index() for name in handlers.INDEXERS}
    out["ms_bodies"] = indexed(handlers.ms_bodies, ms)
    out["ms_by_source"] = indexed(handlers.ms_by_source, ms)
    out["ms_training_jobs"] = indexed(handlers.ms_training_jobs)
    out["ms_deployments"] = indexed(handlers.INDEXERS["ms_deployments"], stable[0], canary[0])
    out["ms_replica_sets"] = indexed(handlers.INDEXERS["ms_replica_sets"], stable[1], canary[1])
    out["ms_pods"] = indexed(handlers.INDEXERS["ms_pods"], *stable[2:], *canary[2:])
    return out


def test_the_handler_scrapes_every_ready_pod_when_a_window_starts(
    monkeypatch: pytest.MonkeyPatch, no_events: list[dict[str, Any]]
) -> None:
    asked: list[list[ScrapeTarget]] = []

    async def scrape(targets: Sequence[ScrapeTarget]) -> list[PodSample]:
        asked.append(list(targets))
        return [PodSample(t.pod, t.track, TritonCounters(5, 0, 5000, 50, 1000.0)) for t in targets]

    monkeypatch.setattr(handlers, "scrape", scrape)
    ms, kube = body(), FakeKube()
    requeue = asyncio.run(handlers.reconcile((NS, "digits"), {"kube": kube, "triton_image": "triton:1"}, kwargs(ms, 1)))

    assert [[(t.pod, t.track, t.ip) for t in targets] for targets in asked] == [
        [
            ("canary-0", "canary", "198.18.0.10"),
            ("stable-0", "stable", "198.18.0.0"),
            ("stable-1", "stable", "198.18.0.1"),
        ]
    ]
    (_, status, _), *_ = kube.statuses
    trial = status["canary"]
    assert (trial["version"], trial["step"], trial["weight"], trial["canaryReplicas"]) == ("v2", 1, 20, 1)
    assert trial["windowStart"] and len(trial["baseline"]) == 3
    assert requeue == 30
    # The watch delivers the status written; the same reconcile again, mid-window: no scrape, the same status
    # (which the real client then does not write).
    watched = {**ms, "metadata": {**ms["metadata"], "resourceVersion": "101"}, "status": status}
    again = FakeKube()
    asyncio.run(handlers.reconcile((NS, "digits"), {"kube": again, "triton_image": "triton:1"}, kwargs(watched, 1)))
    assert len(asked) == 1
    assert [written for _, written, _ in again.statuses] in ([], [status])


def test_no_scrape_while_the_steps_canary_is_not_ready(
    monkeypatch: pytest.MonkeyPatch, no_events: list[dict[str, Any]]
) -> None:
    async def scrape(targets: Sequence[ScrapeTarget]) -> list[PodSample]:
        raise AssertionError("scraped before the canary was ready")

    monkeypatch.setattr(handlers, "scrape", scrape)
    ms, kube = body(), FakeKube()
    ms["spec"]["rollout"]["canary"]["steps"] = [{"weight": 50, "durationSeconds": 30}]  # 2 canary pods wanted
    asyncio.run(handlers.reconcile((NS, "digits"), {"kube": kube, "triton_image": "triton:1"}, kwargs(ms, 1)))
    canary = next(o for o in kube.applied if o["metadata"]["name"] == "digits-canary")
    assert canary["spec"]["replicas"] == 2
