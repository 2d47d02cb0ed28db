"""Labels, settings and the shared reconcile loop, as pure logic."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from kubemaas.controllers.apply import ApiError, TransientApiError
from kubemaas.controllers.metrics import RECONCILES
from kubemaas.controllers.reconciler import BACKOFF_SECONDS, ReconcileLoop
from kubemaas.controllers.settings import CHILD_RESOURCES, OperatorOptions, apply_settings
from kubemaas.manifests.labels import MANAGED_BY_SELECTOR, child_labels, owner_reference, parent_of

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
    return float(RECONCILES.labels("Test", outcome)._value.get())


def test_transient_errors_are_rerun_in_memory_with_growing_delay() -> None:
    loop = ReconcileLoop("Test")
    key = ("ns", "a")
    calls = 0

    async def failing_twice() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise TransientApiError("get", "x", 503, "unavailable")

    async def main() -> list[tuple[bool, float]]:
        seen = []
        await loop.run(key, failing_twice)
        seen.append((loop.requeue.pending(key), loop.backoff(key)))
        await asyncio.sleep(BACKOFF_SECONDS[0] + 0.2)  # the re-run fails again, the delay grows
        seen.append((loop.requeue.pending(key), loop.backoff(key)))
        await asyncio.sleep(BACKOFF_SECONDS[1] + 0.2)  # the second re-run succeeds: nothing pending
        seen.append((loop.requeue.pending(key), loop.backoff(key)))
        return seen

    assert asyncio.run(main()) == [(True, BACKOFF_SECONDS[0]), (True, BACKOFF_SECONDS[1]), (False, BACKOFF_SECONDS[0])]
    assert calls == 3


def test_bugs_are_counted_and_rerun_after_the_longest_backoff() -> None:
    loop = ReconcileLoop("Test")
    key = ("ns", "b")
    before = count("error")

    async def broken() -> None:
        raise ApiError("apply", "x", 422, "invalid")

    async def main() -> float:
        await loop.run(key, broken)
        handle = loop.requeue._pending[key]
        delay = handle.when() - asyncio.get_running_loop().time()
        loop.forget(key)  # a deleted object's re-run is dropped
        assert not loop.requeue.pending(key)
        return delay

    delay = asyncio.run(main())
    assert BACKOFF_SECONDS[-1] - 1 < delay <= BACKOFF_SECONDS[-1]
    assert count("error") == before + 1


def test_a_run_supersedes_a_pending_rerun() -> None:
    loop = ReconcileLoop("Test")
    key = ("ns", "c")
    runs: list[str] = []

    def labelled(label: str) -> Any:
        async def run() -> None:
            runs.append(label)

        return run

    async def main() -> None:
        loop.run_later(key, 0.05, labelled("later"))
        await loop.run(key, labelled("now"))
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert runs == ["now"]


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


def test_triggers_of_a_busy_object_share_the_run_already_waiting() -> None:
    """One run at a time per object, and at most one waiting: five triggers while a run is under way cost one
    more run, which reads the newest state, and none of them waits for its own turn."""
    loop = ReconcileLoop("Test")
    runs = 0
    state = {"seen": 0, "latest": 0}

    async def reconcile() -> None:
        nonlocal runs
        runs += 1
        state["seen"] = state["latest"]  # a reconcile reads the indexes when it starts
        await asyncio.sleep(0.02)

    async def main() -> list[bool]:
        first = asyncio.ensure_future(loop.run(("ns", "c"), reconcile))
        await asyncio.sleep(0)  # the first run holds the lock
        waiting = []
        for i in range(1, 6):
            state["latest"] = i
            trigger = asyncio.ensure_future(loop.run(("ns", "c"), reconcile))
            await asyncio.sleep(0)
            waiting.append(trigger.done())
        await first
        await asyncio.sleep(0.05)
        return waiting

    waiting = asyncio.run(main())
    assert waiting == [False, True, True, True, True], "only the first trigger waits; the others return at once"
    assert runs == 2 and state["seen"] == 5
