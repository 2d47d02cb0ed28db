"""What the kopf indexes keep: projections (the fields a reconcile, the apply diff or an ownership check reads),
never whole bodies. An index's values live as long as their objects; a body kept whole costs about ten times its
JSON in Python objects, and a TrainingJob's spec may be about 1.5 MB by the schema (README, "Reconcile")."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kubemaas.controllers import apply, children
from kubemaas.controllers import modelservice as ms_handlers
from kubemaas.controllers import trainingjob as tj_handlers
from kubemaas.controllers.apply import is_subset
from kubemaas.manifests.labels import child_labels
from tests.controllers.fakes import indexed, run_handler

RECORDED = json.loads((Path(__file__).with_name("recorded_children.json")).read_text())
BIG = "x" * 1_000_000  # about a TrainingJob spec's bound: what must never be kept
KIND_MS = {"apiVersion": "kubemaas.io/v1alpha1", "kind": "ModelService"}
ENV = [{"name": f"V{i}", "value": "y" * 1000} for i in range(500)]  # 0.5 MB set by someone else


def size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value))


def test_the_projection_reads_the_managed_fields_of_the_manager_apply_writes_with() -> None:
    assert children.FIELD_MANAGER == apply.FIELD_MANAGER


@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_a_recorded_child_projects_to_what_the_operator_applied(kind: str) -> None:
    """The API server's answer (defaults, managedFields, status) projected: every field the operator applied
    is there with its value (so the diff writes nothing), the server's defaults and managedFields are not."""
    body, applied = RECORDED[kind], RECORDED["applied"][kind]
    projection = children.applied_projection(body)
    assert is_subset(applied, projection), "an unchanged child would be applied again"
    assert "managedFields" not in projection["metadata"] and projection["status"] == body["status"]
    assert projection["metadata"]["uid"] == body["metadata"]["uid"]  # the owner chain
    changed = copy.deepcopy(applied)
    changed["metadata"]["labels"]["kubemaas.io/extra"] = "1"
    assert not is_subset(changed, projection)
    if kind == "Deployment":
        container = projection["spec"]["template"]["spec"]["containers"][0]
        assert "terminationMessagePath" in body["spec"]["template"]["spec"]["containers"][0]
        assert "terminationMessagePath" not in container, "a server default is not the operator's"
        assert "dnsPolicy" not in projection["spec"]["template"]["spec"]
        changed = copy.deepcopy(applied)
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = "other:1"
        assert not is_subset(changed, projection)
    else:
        assert "clusterIP" in body["spec"] and "clusterIP" not in projection["spec"]


def test_a_deployment_keeps_the_replicas_an_hpa_owns() -> None:
    body = copy.deepcopy(RECORDED["Deployment"])
    for entry in body["metadata"]["managedFields"]:
        entry.get("fieldsV1", {}).get("f:spec", {}).pop("f:replicas", None)
    body["spec"]["replicas"] = 4
    assert children.slim_deployment(body)["spec"]["replicas"] == 4


def deployment_with_foreign_fields() -> dict[str, Any]:
    """The recorded Deployment after another manager (a sidecar injector) added a container with 0.5 MB of env,
    and someone stored a 1 MB annotation: neither is the operator's."""
    body: dict[str, Any] = copy.deepcopy(RECORDED["Deployment"])
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "s:1", "env": ENV})
    body["metadata"]["annotations"][children.LAST_APPLIED] = BIG
    body["metadata"]["managedFields"].append(
        {"manager": "injector", "operation": "Update", "fieldsV1": {"f:spec": {"f:template": {}}}}
    )
    return body


def test_child_indexes_keep_projections_not_bodies() -> None:
    """Every child index, given a Deployment-sized body with 1.5 MB that is not the operator's, keeps at most a
    few KB; if an index went back to whole bodies this fails."""
    deployment = deployment_with_foreign_fields()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "uid": "u", "annotations": {children.LAST_APPLIED: BIG}, "managedFields": [{}]},
        "spec": {"containers": [{"name": "server", "image": "i", "env": ENV}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "server", "restartCount": 0}]},
    }
    parents = (("ModelService", children.MODELSERVICE_CHILDREN), ("TrainingJob", children.TRAININGJOB_CHILDREN))
    for parent_kind, kids in parents:
        for child in kids:
            body = pod if child.resource is children.POD else deployment
            labels = child_labels(parent_kind, "digits", "server")
            found = run_handler(children.child_indexer(parent_kind, child), "ns", labels, body)
            (value,) = found.values()
            assert isinstance(value, str), f"{child.index} keeps its projection packed"
            assert size(value) < 8_000, f"{child.index} keeps {size(value)} bytes of a {size(body)}-byte body"
            kept = children.unpack(value)
            assert "managedFields" not in kept["metadata"]
            assert children.LAST_APPLIED not in (kept["metadata"].get("annotations") or {})


def test_a_child_the_operator_never_applied_keeps_no_spec() -> None:
    body = deployment_with_foreign_fields()
    body["metadata"]["managedFields"] = [e for e in body["metadata"]["managedFields"] if e["manager"] != "kubemaas"]
    projection = children.applied_projection(body)
    assert "spec" not in projection and projection["metadata"]["name"] == body["metadata"]["name"]


def big_training_job(name: str = "train-1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {"team": "digits"},
            "annotations": {children.LAST_APPLIED: BIG},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "image": "trainer:1", "env": ENV,
            "output": {"uri": "pvc://models/store", "modelName": "digits"},
            "encryption": {"keySecretRef": {"name": "k"}},
        },
        "status": {"conditions": [{"type": "Succeeded", "status": "True"}], "model": {"version": "v1"}},
    }  # fmt: skip


def test_a_modelservice_keeps_of_a_training_job_what_its_source_reads() -> None:
    (projection,) = {
        id(v[0]): v[0] for v in indexed(ms_handlers.ms_training_jobs, big_training_job()).values()
    }.values()
    assert size(projection) < 2_000
    assert set(projection) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert set(projection["spec"]) == {"output", "encryption"}
    assert projection["metadata"]["labels"] == {"team": "digits"} and "annotations" not in projection["metadata"]


def test_parent_indexes_keep_spec_and_status_but_no_managed_fields_or_kubectl_copy() -> None:
    job = big_training_job()
    (value,) = indexed(tj_handlers.trainingjobs, job)[("ns", "train-1")]
    kept = children.unpack(value)
    assert kept["spec"] == job["spec"] and kept["status"] == job["status"]
    assert "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]
    assert size(value) < size(job["spec"]) + 1_000
    ms = {"kind": "ModelService", "metadata": {**job["metadata"], "name": "ms"}, "spec": {"model": {}}}
    (value,) = indexed(ms_handlers.ms_bodies, ms)[("ns", "ms")]
    assert size(value) < 1_000


def test_a_selector_is_resolved_from_the_index_by_label() -> None:
    """Only the jobs under the narrowest positive requirement are handed to the core, not the namespace."""
    from kubemaas.api import ModelService

    jobs = [
        big_training_job(f"t-{i}", {"team": f"t{i % 100}", "stage": "eval" if i % 2 else "prod"}) for i in range(400)
    ]
    index = indexed(ms_handlers.ms_training_jobs, *jobs)

    def found(model: dict[str, Any]) -> set[str]:
        ms = ModelService.parse({**KIND_MS, "metadata": {"name": "m", "namespace": "ns"}, "spec": {"model": model}})
        return {j["metadata"]["name"] for j in ms_handlers.training_jobs_for(index, "ns", ms)}

    assert found({"trainingJobRef": {"name": "t-7"}}) == {"t-7"}
    pairs = {"team": "t7", "stage": "eval"}
    assert found({"trainingJobSelector": {"matchLabels": pairs}}) == {"t-7", "t-107", "t-207", "t-307"}
    expression = {"key": "team", "operator": "In", "values": ["t1", "t2"]}
    assert len(found({"trainingJobSelector": {"matchExpressions": [expression]}})) == 8
    exists = {"key": "stage", "operator": "Exists"}
    assert len(found({"trainingJobSelector": {"matchExpressions": [exists]}})) == 400
    # Only negative requirements: the namespace's jobs, which the core then matches.
    not_in = {"key": "team", "operator": "NotIn", "values": ["t1"]}
    assert len(found({"trainingJobSelector": {"matchExpressions": [not_in]}})) == 400
    uri = {"uri": "pvc://models/store/digits", "version": "v1", "encryption": {"keySecretRef": {"name": "k"}}}
    assert found(uri) == set()
