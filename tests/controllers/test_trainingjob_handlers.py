"""The TrainingJob handlers' own small logic: requeue, CRD discovery, stale-index protection, pod slimming."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from kubemaas.controllers import children
from kubemaas.controllers import trainingjob as handlers
from kubemaas.controllers.apply import Kube
from kubemaas.controllers.reconciler import Requeue, StatusMemory, Written
from tests.controllers.fakes import FakeKube


def test_requeue_keeps_one_pending_run_per_object() -> None:
    runs: list[str] = []

    async def main() -> None:
        requeue = Requeue()

        def runner(label: str) -> Any:
            async def run() -> None:
                runs.append(label)

            return run

        requeue.schedule(("ns", "a"), 0.05, runner("first"))
        requeue.schedule(("ns", "a"), 0.01, runner("second"))  # replaces the first
        requeue.schedule(("ns", "b"), 0.01, runner("other"))
        requeue.schedule(("ns", "c"), 0.01, runner("cancelled"))
        requeue.cancel(("ns", "c"))
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert sorted(runs) == ["other", "second"]


def crd(established: str, served: bool) -> dict[str, Any]:
    return {
        "spec": {"versions": [{"name": "v1", "served": served}]},
        "status": {"conditions": [{"type": "Established", "status": established}]},
    }


def test_a_crd_is_served_when_established_and_serving_the_version() -> None:
    assert handlers._serves(crd("True", True), "v1")
    assert not handlers._serves(crd("False", True), "v1")
    assert not handlers._serves(crd("True", False), "v1")
    assert not handlers._serves(crd("True", True), "v1alpha1")


def test_a_stale_index_body_gets_the_status_last_written_and_the_version_it_made() -> None:
    key = ("ns", "j")
    memory = StatusMemory()
    memory.remember(key, Written(frozenset({"41"}), {"backend": "Job"}, "42"))
    stale = {"metadata": {"name": "j", "resourceVersion": "41"}, "status": {}}
    fresh = {"metadata": {"name": "j", "resourceVersion": "43"}, "status": {"backend": "PyTorchJob"}}
    # The next write is conditional on the version the operator's own write produced: if anyone
    # wrote after it (43), the write is refused rather than computed from the stale copy.
    assert memory.current(key, stale) == ({**stale, "status": {"backend": "Job"}}, "42")
    assert memory.current(key, fresh) == (fresh, "43")


def test_an_index_two_writes_behind_still_gets_the_last_status() -> None:
    """A burst: the operator wrote twice (from 41 it made 42, then on top of 42 it made 43) before the watch
    delivered either. The index showing 41 or 42 is stale: reconciling from its status would compute the
    transitions again, post their Events twice and send a write the API server refuses."""
    key = ("ns", "j")
    memory = StatusMemory()
    fake = FakeKube()
    fake._version = 41
    kube = cast(Kube, fake)  # the one method write() calls, patch_status, has Kube's signature
    body = {"metadata": {"name": "j", "resourceVersion": "41"}, "status": {}}

    async def main() -> None:
        first, version = memory.current(key, body)
        assert await memory.write(kube, key, first, version, {"phase": "one"})  # produces 42
        second, version = memory.current(key, body)  # the index still shows 41
        assert version == "42"
        assert await memory.write(kube, key, second, version, {"phase": "two"})  # produces 43

    asyncio.run(main())
    assert [v for _, _, v in fake.statuses] == ["41", "42"]
    for stale in ("41", "42"):
        lagging = {**body, "metadata": {"name": "j", "resourceVersion": stale}}
        assert memory.current(key, lagging) == ({**lagging, "status": {"phase": "two"}}, "43")
    latest = {"metadata": {"name": "j", "resourceVersion": "43"}, "status": {"phase": "two"}}
    assert memory.current(key, latest) == (latest, "43")
    newer = {"metadata": {"name": "j", "resourceVersion": "44"}, "status": {"phase": "theirs"}}
    assert memory.current(key, newer) == (newer, "44")


def test_pods_are_kept_slim() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [{"x": 1}], "uid": "u"},
        "spec": {"containers": [{"name": "pytorch"}]},
        "status": {"phase": "Running", "containerStatuses": [], "podIP": "198.18.0.1"},
    }
    assert children.slim_pod(pod) == {
        "metadata": {"name": "p", "uid": "u", "labels": {"a": "b"}},
        "status": {"phase": "Running", "containerStatuses": []},
    }
