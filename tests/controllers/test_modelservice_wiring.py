"""The pure parts of the ModelService handlers: status assembly and the parent's identity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubemaas.api.base import ConditionStatus
from kubemaas.api.modelservice import ModelServiceStatus
from kubemaas.controllers import children
from kubemaas.controllers import modelservice as handlers
from kubemaas.controllers import modelservice_core as core
from kubemaas.controllers.conditions import set_condition
from kubemaas.manifests.labels import child_labels
from tests.controllers.fakes import run_handler

BODY = {
    "apiVersion": "kubemaas.io/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": "digits", "namespace": "serving", "uid": "u-1", "generation": 3},
    "status": {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "RollingOut",
                "message": "",
                "lastTransitionTime": "2026-11-29T10:00:00Z",
                "observedGeneration": 2,
            }
        ]
    },
}


def outcome(**status: object) -> core.Outcome:
    now = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    conditions = set_condition(None, "Ready", ConditionStatus.TRUE, "Serving", "serving v1", 3, now)
    typed = ModelServiceStatus.model_validate({**status, "conditions": [c.to_wire() for c in conditions]})
    return core.Outcome(apply=[], delete=[], status=typed, events=[])


def test_status_drops_unset_fields_and_fields_the_crd_does_not_know() -> None:
    status, old, new = handlers.new_status(
        BODY, outcome(servedVersion="v1", canaryVersion=None, observedGeneration=3), 3
    )
    assert "canaryVersion" not in status
    # A field the CRD does not know cannot reach the status at all: the core returns the API's own model.
    with pytest.raises(ValidationError):
        outcome(servedVersion="v1", notInTheCrd="x")
    assert status["servedVersion"] == "v1"
    assert [c["type"] for c in status["conditions"]] == ["Ready"]
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][0]["observedGeneration"] == 3
    assert [c.status for c in old] == [ConditionStatus.FALSE]
    assert [c.status for c in new] == [ConditionStatus.TRUE]


def test_parent_labels_select_every_serving_pod() -> None:
    parent = handlers.parent_for(BODY)
    assert parent.selector == {"kubemaas.io/modelservice": "digits"}
    assert parent.labels["app.kubernetes.io/managed-by"] == "kubemaas"
    assert parent.labels["kubemaas.io/modelservice"] == "digits"
    assert parent.owner_reference["uid"] == "u-1"


def test_the_operator_default_triton_image_applies_only_when_the_spec_names_none() -> None:
    from kubemaas.api.modelservice import ModelService

    spec = {
        "model": {"uri": "pvc://models/store/digits", "encryption": {"keySecretRef": {"name": "k"}}},
        "replicas": 1,
    }
    body = {"apiVersion": "kubemaas.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "d"}, "spec": spec}
    assert handlers.serving_options(ModelService.parse(body), "mirror.local/triton:1").triton_image == (
        "mirror.local/triton:1"
    )
    pinned = {**body, "spec": {**spec, "runtime": {"image": "own/triton:2"}}}
    assert handlers.serving_options(ModelService.parse(pinned), "mirror.local/triton:1").triton_image == "own/triton:2"


def test_a_slim_replica_set_still_names_its_model_and_owner() -> None:
    from pathlib import Path

    import yaml

    from kubemaas.manifests import modelservice as m

    case = Path(__file__).parents[1] / "manifests" / "cases"
    deployment = yaml.safe_load(next(case.glob("*deployment*.yaml")).read_text())["expected"]
    replica_set: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "digits-abc",
            "uid": "rs-1",
            "annotations": {"deployment.kubernetes.io/revision": "3"},
            "ownerReferences": [{"kind": "Deployment", "name": "digits", "uid": "d-1", "controller": True}],
            "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"replicas": 1, "selector": {}, "template": deployment["spec"]["template"]},
        "status": {"replicas": 1},
    }
    slim = children.slim_replica_set(replica_set)
    template = slim["spec"]["template"]
    assert m.model_ref_from_template(template) == m.model_ref_from_template(replica_set["spec"]["template"])
    assert m.model_ref_from_template(template) is not None
    # The owner chain survives the projection: its controller's uid (pods are trusted through it), and its own.
    assert handlers.controlled_by([slim], {"d-1"}) == [slim] and handlers.uids([slim]) == {"rs-1"}
    assert slim["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "3"}
    assert "managedFields" not in slim["metadata"] and "containers" not in template["spec"]
    labels = child_labels("ModelService", "digits", "server")
    indexed = run_handler(handlers.INDEXERS["ms_replica_sets"], "ns", labels, replica_set)
    assert indexed is not None and "managedFields" not in children.unpack(indexed[("ns", "digits")])["metadata"]
