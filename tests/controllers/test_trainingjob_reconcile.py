"""The TrainingJob controller driven through its kopf handlers, with fake indexes and a fake API."""

from __future__ import annotations

from typing import Any

from kubemaas.controllers import trainingjob as handlers
from tests.controllers.fakes import FakeKube, index, run_handler

NS = "team-a"


def training_job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "digits",
            "namespace": NS,
            "uid": "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b",
            "generation": 1,
            "resourceVersion": "5",
            "creationTimestamp": "2026-11-29T21:30:05Z",
        },
        "spec": {
            "image": "kubemaas/trainer:0.1.0",
            "replicas": 2,
            "output": {"uri": "pvc://models/store"},
            "encryption": {"keySecretRef": {"name": "digits-key"}},
            **spec,
        },
    }


def event(kube: FakeKube, job: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {name: index() for name in handlers.INDEXERS}
    kwargs["trainingjobs"] = index(((NS, "digits"), job))
    run_handler(handlers.trainingjob_event, type=None, namespace=NS, name="digits", memo={"kube": kube}, **kwargs)


def test_a_new_job_without_kubeflow_gets_a_service_an_indexed_job_and_its_key(no_events: list[dict[str, Any]]) -> None:
    kube = FakeKube(missing=frozenset({("Secret", "digits-key")}))
    job = training_job()
    event(kube, job)
    # First the intent to generate the key, on record; nothing created yet.
    assert kube.applied == [] and kube.created == []
    (_, status, version), *_ = kube.statuses
    assert version == "5" and status["generatedKeySecret"] == "digits-key"
    # The next pass (the status write's echo) creates the key and the workload.
    event(kube, {**job, "status": status})
    assert sorted(kube.applied_kinds()) == ["Job", "NetworkPolicy", "Service"]
    assert [s["metadata"]["name"] for s in kube.created] == ["digits-key"]
    assert kube.statuses[-1][1]["backend"] == "Job"


def test_a_missing_claim_blocks_the_job_and_asks_to_look_again(no_events: list[dict[str, Any]]) -> None:
    kube = FakeKube(missing=frozenset({("PersistentVolumeClaim", "models")}))
    event(kube, training_job())
    assert kube.applied == [] and kube.created == []
    (_, status, _), *_ = kube.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ClaimNotFound")
    # Neither claims nor a user's Secret carry a Kubemaas label, so no watch reports the claim's arrival.
    assert handlers.LOOP.requeue.pending((NS, "digits"))
