"""The API surface: our CRDs, the examples and the invalid-spec cases, on a real API server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from e2e.conftest import E2ECluster
from e2e.kube import REPO, create_custom_object, get_custom_object, load_crds, merge_patch_custom_object
from e2e.typed_client import present
from kubemaas.controllers.apply import Conflict, Kube
from tests.api.cases import InvalidCase, load_cases

CRDS = load_crds()
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = load_cases()
INVALID_CREATES = [c for c in INVALID if c.update is None]
INVALID_UPDATES = [c for c in INVALID if c.update is not None]


@pytest.fixture(scope="session")
def installed_crds(cluster: E2ECluster) -> dict[str, list[str]]:
    """Every CRD in crds/ applied once per session; name -> Warning headers."""
    return cluster.install_crds()


def test_crds_directory_is_not_empty() -> None:
    assert CRDS, "crds/ holds no CustomResourceDefinition"


@pytest.mark.parametrize("crd", CRDS, ids=[c["metadata"]["name"] for c in CRDS])
def test_crd_is_established_structural_and_unwarned(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], crd: dict[str, Any]
) -> None:
    name = crd["metadata"]["name"]
    assert installed_crds[name] == [], f"API server warned when applying {name}: {installed_crds[name]}"
    status = present(client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(name).status, "status")
    conditions = {c.type: c for c in present(status.conditions, "the CRD's conditions")}
    assert conditions["Established"].status == "True"
    assert conditions["NamesAccepted"].status == "True"
    assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"].message
    assert present(status.accepted_names, "acceptedNames").kind == crd["spec"]["names"]["kind"]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pruned(sent: Any, stored: Any, path: str) -> list[str]:
    """Paths of values in `sent` that `stored` lacks or changed."""
    if isinstance(sent, dict) and isinstance(stored, dict):
        return [p for k, v in sent.items() for p in _pruned(v, stored.get(k), f"{path}.{k}")]
    if isinstance(sent, list) and isinstance(stored, list) and len(sent) == len(stored):
        return [p for i, (a, b) in enumerate(zip(sent, stored, strict=True)) for p in _pruned(a, b, f"{path}[{i}]")]
    return [] if sent == stored else [path]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str, example: Path
) -> None:
    for doc in _documents(example):
        if doc["apiVersion"].startswith("kubemaas.io/"):
            created = create_custom_object(cluster.api, namespace, doc, CRDS)
            assert created["metadata"]["name"] == doc["metadata"]["name"]
            # Everything sent was stored (defaults may be added): no field silently pruned.
            assert _pruned(doc["spec"], created["spec"], "spec") == []
        else:
            utils.create_from_dict(cluster.api, doc, namespace=namespace)  # type: ignore[no-untyped-call]


def _assert_refused(error: client.ApiException, case: InvalidCase) -> None:
    assert error.status in (400, 422), f"{case.description}: unexpected status {error.status}: {error.body}"
    message = json.loads(present(error.body, "the refusal's body"))["message"]
    assert case.field in message, f"{case.description}: {case.field!r} not named in: {message}"
    assert case.message in message, f"{case.description}: {case.message!r} not in: {message}"


@pytest.mark.parametrize("case", INVALID_CREATES, ids=[c.name for c in INVALID_CREATES])
def test_invalid_spec_is_rejected_by_the_api_server(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str, case: InvalidCase
) -> None:
    with pytest.raises(client.ApiException) as rejected:
        create_custom_object(cluster.api, namespace, case.object, CRDS)
    _assert_refused(rejected.value, case)


@pytest.mark.parametrize("case", INVALID_UPDATES, ids=[c.name for c in INVALID_UPDATES])
def test_invalid_update_is_rejected_by_the_api_server(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str, case: InvalidCase
) -> None:
    created = create_custom_object(cluster.api, namespace, case.object, CRDS)
    with pytest.raises(client.ApiException) as rejected:
        merge_patch_custom_object(cluster.api, namespace, case.object, case.update or {}, CRDS)
    _assert_refused(rejected.value, case)
    stored = get_custom_object(cluster.api, namespace, case.object, CRDS)
    assert stored["spec"] == created["spec"], f"{case.name}: the refused update changed the stored spec"


def _example(name: str) -> dict[str, Any]:
    (doc,) = _documents(REPO / "examples" / name)
    return doc


def test_a_running_job_can_be_suspended_and_requeued(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str
) -> None:
    # Immutability covers what defines the run; runPolicy and scheduling stay mutable.
    job = _example("trainingjob-digits.yaml")
    create_custom_object(cluster.api, namespace, job, CRDS)
    patch = {"spec": {"runPolicy": {"suspend": True}, "scheduling": {"queueName": "team-b", "priorityClassName": None}}}
    updated = merge_patch_custom_object(cluster.api, namespace, job, patch, CRDS)
    assert updated["spec"]["runPolicy"]["suspend"] is True
    assert updated["spec"]["scheduling"]["queueName"] == "team-b"


def test_triton_image_is_not_persisted_as_a_default(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str
) -> None:
    # A schema default would be written into the object and pin Triton across operator upgrades.
    service = _example("modelservice-digits.yaml")
    service["spec"]["runtime"].pop("image", None)
    created = create_custom_object(cluster.api, namespace, service, CRDS)
    assert "image" not in created["spec"]["runtime"]
    assert "replicas" not in created["spec"], "replicas must have no default: autoscaling owns the count"


def test_a_status_computed_from_an_old_copy_is_refused_not_written(
    cluster: E2ECluster, installed_crds: dict[str, list[str]], namespace: str
) -> None:
    """The operator's status writes are conditional on the resourceVersion they were computed from: a
    write racing another writer's is a `Conflict` (and the operator computes again), never a lost update."""
    job = _example("trainingjob-digits.yaml")
    read = create_custom_object(cluster.api, namespace, job, CRDS)
    kube = Kube(cluster.api)

    async def write(body: dict[str, Any], status: dict[str, Any]) -> str | None:
        return await kube.patch_status(body, status, resource_version=body["metadata"]["resourceVersion"])

    first = asyncio.run(write(read, {"backend": "Job"}))
    assert first and first != read["metadata"]["resourceVersion"]
    # Another writer's status lands; a write computed from the first copy must not erase it.
    other = get_custom_object(cluster.api, namespace, read, CRDS)
    theirs = {"backend": "Job", "completionTime": "2026-01-01T00:00:00Z"}
    custom = client.CustomObjectsApi(cluster.api)
    custom.patch_namespaced_custom_object_status(
        "kubemaas.io", "v1alpha1", namespace, "trainingjobs", read["metadata"]["name"], {"status": theirs}
    )
    with pytest.raises(Conflict):
        asyncio.run(write(other, {"backend": "PyTorchJob"}))
    assert get_custom_object(cluster.api, namespace, read, CRDS)["status"] == theirs
    assert asyncio.run(write(get_custom_object(cluster.api, namespace, read, CRDS), {"backend": "PyTorchJob"}))
