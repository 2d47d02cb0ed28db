"""Labels, settings and the shared reconcile loop, as pure logic."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from kubemaas.controllers.apply import ApiError, TransientApiError
from kubemaas.controllers.labels import MANAGED_BY_SELECTOR, child_labels, owner_reference, parent_of
from kubemaas.controllers.metrics import RECONCILES
from kubemaas.controllers.reconciler import BACKOFF_SECONDS, ReconcileLoop
from kubemaas.controllers.settings import CHILD_RESOURCES, OperatorOptions, apply_settings

PARENT = {"apiVersion": "kubemaas.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j", "uid": "u-1"}}


def test_child_labels_and_owner_reference() -> None:
    labels = child_labels("TrainingJob", "j", "worker")
    assert labels == {
        "app.kubernetes.io/name": "trainingjob",
        "app.kubernetes.io/instance": "j",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "kubemaas",
        "app.kubernetes.io/managed-by": "kubemaas",
        "kubemaas.io/trainingjob": "j",
    }
    assert parent_of("TrainingJob", labels) == "j"
    assert parent_of("TrainingJob", {"kubemaas.io/trainingjob": "j"}) is None  # not managed by us
    assert owner_reference(PARENT) == {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "name": "j",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize("standalone", [True, False])
def test_settings_keep_the_command_line_and_filter_children_server_side(standalone: bool) -> None:
    settings = kopf.OperatorSettings()
    settings.peering.clusterwide = False  # as kopf sets it for `-n NAMESPACE`
    apply_settings(settings, OperatorOptions(standalone=standalone))
    assert settings.peering.clusterwide is False
    assert settings.peering.mandatory is (not standalone)
    for group, plural in CHILD_RESOURCES:
        assert MANAGED_BY_SELECTOR in settings.watching.label_selectors[group, plural]


def count(outcome: str) -> float:
    return RECONCILES.labels("Test", outcome)._value.get()


def test_transient_errors_become_temporary_errors_with_growing_delay() -> None:
    loop = ReconcileLoop("Test")

    async def failing() -> None:
        raise TransientApiError("get", "x", 503, "unavailable")

    delays = []
    for _ in range(3):
        with pytest.raises(kopf.TemporaryError) as raised:
            asyncio.run(loop.run(("ns", "a"), failing))
        delays.append(raised.value.delay)
    assert delays == list(BACKOFF_SECONDS[:3])


def test_without_retry_failures_are_counted_not_raised() -> None:
    loop = ReconcileLoop("Test")
    before = count("error")

    async def broken() -> None:
        raise ApiError("apply", "x", 422, "invalid")

    asyncio.run(loop.run(("ns", "b"), broken, retry=False))
    assert count("error") == before + 1
    assert loop.backoff(("ns", "b")) == BACKOFF_SECONDS[-1]


def test_reconciles_of_one_object_never_overlap() -> None:
    loop = ReconcileLoop("Test")
    running = 0
    peak = 0

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    async def main() -> tuple[int, int]:
        nonlocal peak
        await asyncio.gather(*(loop.run(("ns", "c"), slow) for _ in range(5)))
        same, peak = peak, 0
        await asyncio.gather(*(loop.run(("ns", f"d{i}"), slow) for i in range(5)))
        return same, peak

    same_object, different_objects = asyncio.run(main())
    assert (same_object, different_objects) == (1, 5)
