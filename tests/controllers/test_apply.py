"""The pure parts of the apply helper: when a write is skipped, and where each kind lives."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from kubemaas.controllers import apply
from kubemaas.controllers.apply import RESOURCES, Kube, TransientApiError, is_subset, resource_of

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


class CountingKube(Kube):
    """Kube whose metadata GET is a counter: what exists is `self.present`, each GET takes 10 ms."""

    def __init__(self) -> None:
        super().__init__(client.ApiClient(client.Configuration()))
        self.present: set[str] = set()
        self.gets = 0
        self.fail = False

    async def _exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self.gets += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise TransientApiError("get", name, 503, "unavailable")
        return name in self.present


def test_existence_is_one_get_for_a_burst_and_a_yes_is_trusted_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = CountingKube()
    kube.present.add("key")

    async def burst(name: str) -> list[bool]:
        return list(await asyncio.gather(*(kube.exists("v1", "Secret", "ns", name) for _ in range(50))))

    async def main() -> None:
        assert await burst("key") == [True] * 50
        assert kube.gets == 1
        assert await burst("key") == [True] * 50
        assert kube.gets == 1  # trusted
        # A missing Secret is asked again every time (one GET per burst), so its creation is seen at once.
        assert await burst("other") == [False] * 50
        assert await burst("other") == [False] * 50
        assert kube.gets == 3
        kube.present.add("other")
        assert await kube.exists("v1", "Secret", "ns", "other")
        # A failed read is not remembered; a "yes" older than the limit is asked again.
        kube.fail = True
        with pytest.raises(TransientApiError):
            await kube.exists("v1", "Secret", "ns", "failing")
        kube.fail = False
        assert not await kube.exists("v1", "Secret", "ns", "failing")
        monkeypatch.setattr(apply, "EXISTS_MAX_AGE_SECONDS", 0.0)
        kube.present.discard("key")
        assert not await kube.exists("v1", "Secret", "ns", "key")

    try:
        asyncio.run(main())
    finally:
        kube.close()
    assert kube.gets == 7


Query = list[tuple[str, str]] | None


class RecordingKube(Kube):
    """Kube whose one request is recorded and answered with `self.answer` (status, body)."""

    def __init__(self, answer: tuple[int, bytes]) -> None:
        super().__init__(client.ApiClient(client.Configuration()))
        self.answer = answer
        self.requests: list[tuple[str, str, Query, object]] = []

    def _call(
        self, verb: str, what: str, method: str, path: str, query: Query, body: object, content_type: str | None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:  # fmt: skip
        self.requests.append((method, path, query, body))
        return self.answer


@pytest.mark.parametrize("status, exists", [(409, True), (201, False)])
def test_a_secret_is_probed_with_a_dry_run_create_never_read(status: int, exists: bool) -> None:
    kube = RecordingKube((status, b"{}"))
    try:
        assert asyncio.run(kube.exists("v1", "Secret", "ns", "key")) is exists
    finally:
        kube.close()
    # One POST that persists nothing, with no field of a Secret but its name: the operator has no `get` on
    # Secrets (docs/security.md), and what it learns is one bit.
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key", "namespace": "ns"}}
    assert kube.requests == [("POST", "/api/v1/namespaces/ns/secrets", [("dryRun", "All")], body)]


def test_a_refused_probe_is_an_error_not_an_answer() -> None:
    kube = RecordingKube((403, b'{"message": "secrets is forbidden"}'))
    try:
        with pytest.raises(apply.ApiError, match="forbidden"):
            asyncio.run(kube.exists("v1", "Secret", "ns", "key"))
    finally:
        kube.close()
    # A claim the operator may read is still one metadata GET.
    kube = RecordingKube((404, b""))
    try:
        assert not asyncio.run(kube.exists("v1", "PersistentVolumeClaim", "ns", "models"))
    finally:
        kube.close()
    assert kube.requests == [("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/models", None, None)]
