"""The pure parts of the apply helper: when a write is skipped, and where each kind lives."""

from __future__ import annotations

import pytest

from kubemaas.controllers.apply import RESOURCES, is_subset, resource_of

DESIRED = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "b"}},
    "spec": {
        "template": {
            "spec": {
                "containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 2, "memory": "1Gi"}}}],
                "volumes": [{"name": "v", "emptyDir": {}}],
            }
        }
    },
}


def observed() -> dict[str, object]:
    """DESIRED as the API server returns it: defaults added, quantities as strings."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "b"}, "uid": "u", "resourceVersion": "7"},
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "i",
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                        }
                    ],
                    "volumes": [{"name": "v", "emptyDir": {}}],
                }
            },
        },
        "status": {"replicas": 1},
    }


def test_an_observed_object_with_server_defaults_needs_no_write() -> None:
    assert is_subset(DESIRED, observed())


@pytest.mark.parametrize(
    "path, value",
    [
        (("metadata", "labels", "a"), "c"),
        (("spec", "template", "spec", "containers", 0, "image"), "other"),
        (("spec", "template", "spec", "containers", 0, "resources", "limits", "cpu"), "3"),
    ],
)
def test_a_changed_field_needs_a_write(path: tuple[object, ...], value: str) -> None:
    current = observed()
    node: object = current
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    assert not is_subset(DESIRED, current)


def test_zero_values_the_server_omits_match_absent_fields() -> None:
    desired = {
        "volumeMounts": [{"name": "v", "mountPath": "/m", "readOnly": False}],
        "env": [{"name": "A", "value": ""}],
    }
    stored = {"volumeMounts": [{"name": "v", "mountPath": "/m"}], "env": [{"name": "A"}]}
    assert is_subset(desired, stored)
    assert not is_subset({"readOnly": True}, {})
    assert not is_subset({"replicas": 0}, {})  # a pointer field: absent means the default, not zero


def test_lists_compare_in_order_and_length() -> None:
    assert not is_subset({"l": [1, 2]}, {"l": [2, 1]})
    assert not is_subset({"l": [1]}, {"l": [1, 2]})
    assert not is_subset({"k": 1}, {})
    assert not is_subset({"b": True}, {"b": 1})


def test_resource_paths() -> None:
    assert resource_of(DESIRED).path("ns", "m") == "/apis/apps/v1/namespaces/ns/deployments/m"
    service = RESOURCES[("v1", "Service")]
    assert service.path("ns") == "/api/v1/namespaces/ns/services"
    tj = RESOURCES[("kubemaas.io/v1alpha1", "TrainingJob")]
    assert tj.path("ns", "x", "status") == "/apis/kubemaas.io/v1alpha1/namespaces/ns/trainingjobs/x/status"
    with pytest.raises(ValueError, match="no resource registered"):
        resource_of({"apiVersion": "v1", "kind": "Nope"})
