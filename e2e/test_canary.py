"""A stepped Canary judged on live Triton metrics, on the real node under live traffic from a client pod
(docs/modelservice.md, "Canary in steps"): a good version passes every step and is promoted, its operator
SIGKILLed mid-step resuming that step; an erroring one is rolled back at its first step with every error on the
canary; a slow one fails the relative latency bound.

ModelService `digits` serves v1 on 2 pods; v2 goes through 20 % (1 canary pod) then 50 % (2 canary pods).
The client pod opens a new connection per request, so kube-proxy spreads requests over the ready endpoints.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from e2e.canary import (
    NAME,
    canary_store,  # noqa: F401 (a fixture)
    create,
    pod_counters,
    publish_versions,
    requests_seen,
    roll_to_v2,
    serving_pods,
    start_client,
    step_judgements,
    stepped_model_service,
    store_root,
    track_of,
)
from e2e.conftest import SERIAL_NODE_SERVING, E2ECluster, OperatorLauncher, OperatorProcess, RealNode
from e2e.typed_client import name_of

pytestmark = [SERIAL_NODE_SERVING, pytest.mark.real_node]

MS_API = "kubemaas.io/v1alpha1"
TWO_STEPS = [{"weight": 20, "durationSeconds": 30}, {"weight": 50, "durationSeconds": 30}]
ROLLOUT_TIMEOUT = 420


@pytest.fixture
def crds(cluster: E2ECluster) -> None:
    cluster.install_crds()


def condition(ms: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (ms.get("status") or {}).get("conditions") or () if c["type"] == type_), {})


def wait_ms(cluster: E2ECluster, namespace: str, check: Any, what: str, timeout: float = ROLLOUT_TIMEOUT) -> Any:
    return cluster.wait_object(
        MS_API, "ModelService", namespace, NAME, lambda o: o if check(o) else None, what=what, timeout=timeout
    )


def serving(version: str) -> Any:
    return lambda o: (
        (o.get("status") or {}).get("servedVersion") == version and condition(o, "Ready").get("status") == "True"
    )


def decided(o: dict[str, Any]) -> bool:
    """Rolled back (Degraded) or promoted: the wait for a bad canary ends either way, and the test says which."""
    return condition(o, "Degraded").get("status") == "True" or serving("v2")(o)


def setup(
    cluster: E2ECluster, namespace: str, real_node: RealNode, tmp_path: Path, canary: str, **analysis: Any
) -> dict[str, Any]:
    placement = real_node.placement()
    publish_versions(cluster, namespace, store_root(namespace), tmp_path, canary)
    create(cluster, namespace, stepped_model_service(placement, TWO_STEPS, minRequests=10, **analysis))
    wait_ms(cluster, namespace, serving("v1"), "digits Ready serving v1", timeout=300)
    return placement


def last_check(ms: dict[str, Any]) -> dict[str, Any]:
    check: dict[str, Any] = ((ms.get("status") or {}).get("canary") or {}).get("lastCheck") or {}
    return check


@pytest.mark.usefixtures("crds", "node_images", "canary_store")
def test_an_erroring_canary_is_rolled_back_at_its_first_step_with_every_error_on_the_canary(
    cluster: E2ECluster, namespace: str, real_node: RealNode, operator: OperatorProcess,
    tmp_path: Path,
) -> None:  # fmt: skip
    placement = setup(cluster, namespace, real_node, tmp_path, "erroring")
    start_client(cluster, namespace, placement, poison_every=4)
    roll_to_v2(cluster, namespace)
    rolled_back = wait_ms(cluster, namespace, decided, "the erroring canary judged")
    degraded = condition(rolled_back, "Degraded")
    assert (degraded.get("status"), degraded.get("reason")) == ("True", "CanaryFailed"), rolled_back["status"]
    assert "step 1 of 2 (20%): canary error ratio" in degraded["message"], degraded
    check = last_check(rolled_back)
    assert (check["step"], check["verdict"], check["reason"]) == (1, "Fail", "ErrorRatio"), check
    assert check["stable"]["failed"] == 0 and check["canary"]["failed"] > 0, check
    cluster.wait_for(
        "the canary scaled away, the stable version on every replica",
        lambda: [track_of(p) for p in serving_pods(cluster, namespace)] == [("stable", "v1")] * 2,
        timeout=120,
    )
    for pod in serving_pods(cluster, namespace):
        assert pod_counters(pod).failure == 0, f"stable pod {name_of(pod)} failed requests"
    after = datetime.now().timestamp() + 10  # the canary's endpoint is gone (preStop 5 s)
    cluster.wait_for("answers after the rollback", lambda: requests_seen(cluster, namespace)[-1]["t"] > after, 60)
    seen = requests_seen(cluster, namespace)
    errors = [r for r in seen if "error" in r]
    assert errors and all(r["poisoned"] for r in errors), f"a clean request failed: {errors[:5]}"
    assert not [r for r in errors if r["t"] > after], "errors after the rollback"
    assert (rolled_back["status"].get("servedVersion"), rolled_back["status"]["lastFailure"]["version"]) == ("v1", "v2")


@pytest.mark.usefixtures("crds", "node_images", "canary_store")
def test_a_slow_canary_fails_the_relative_latency_bound(
    cluster: E2ECluster, namespace: str, real_node: RealNode, operator: OperatorProcess,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Mean latency: exact over the window (the p99 summary also covers Triton's recent past).
    placement = setup(cluster, namespace, real_node, tmp_path, "slow", latency="Mean", maxLatencyRatio="2")
    start_client(cluster, namespace, placement)
    roll_to_v2(cluster, namespace)
    judged = wait_ms(cluster, namespace, decided, "the slow canary judged")
    degraded = condition(judged, "Degraded")
    assert (degraded.get("status"), degraded.get("reason")) == ("True", "CanaryFailed"), judged["status"]
    check = last_check(judged)
    assert (check["step"], check["verdict"], check["reason"]) == (1, "Fail", "RelativeLatency"), check
    assert "x the stable version's" in degraded["message"] and "maxLatencyRatio 2" in degraded["message"]
    cluster.wait_for(
        "the canary scaled away",
        lambda: [track_of(p) for p in serving_pods(cluster, namespace)] == [("stable", "v1")] * 2,
        timeout=120,
    )


@pytest.mark.usefixtures("crds", "node_images", "canary_store")
def test_a_good_canary_passes_every_step_and_is_promoted_resuming_a_step_its_operator_was_killed_in(
    cluster: E2ECluster, namespace: str, real_node: RealNode,
    operator_launcher: OperatorLauncher, tmp_path: Path,
) -> None:  # fmt: skip
    """One good rollout shows both: every step passes and v2 is promoted with no failed request, and the operator
    SIGKILLed 15 s into step 1 resumes that step's window from status instead of starting it over. (One rollout
    instead of two: the real node's serving scenarios are the e2e suite's longest path.)"""
    operator_launcher.start()
    placement = real_node.placement()
    publish_versions(cluster, namespace, store_root(namespace), tmp_path, "good")
    # Step 1 long enough to tell a resumed window (judged 40 s after its start) from one started over after the
    # restart (at least 40 s after the restart, itself at least 25 s after the window's start).
    steps = [{"weight": 20, "durationSeconds": 40}, {"weight": 50, "durationSeconds": 20}]
    create(cluster, namespace, stepped_model_service(placement, steps, minRequests=10, maxLatencyRatio="3"))
    wait_ms(cluster, namespace, serving("v1"), "digits Ready serving v1", timeout=300)
    start_client(cluster, namespace, placement)
    roll_to_v2(cluster, namespace)

    def in_window(o: dict[str, Any]) -> bool:
        trial = (o.get("status") or {}).get("canary") or {}
        return trial.get("version") == "v2" and trial.get("step") == 1 and bool(trial.get("windowStart"))

    started = wait_ms(cluster, namespace, in_window, "step 1's window started")["status"]["canary"]["windowStart"]
    window_start = datetime.fromisoformat(started.replace("Z", "+00:00"))
    cluster.wait_for(
        "15 s into the window", lambda: requests_seen(cluster, namespace)[-1]["t"] > window_start.timestamp() + 15, 60
    )
    assert operator_launcher.current is not None
    operator_launcher.current.kill9()
    cluster.wait_for(
        "10 s without an operator",
        lambda: requests_seen(cluster, namespace)[-1]["t"] > window_start.timestamp() + 25,
        60,
    )
    restarted = datetime.now(UTC)  # no window the new operator starts can start before this
    operator_launcher.start()

    def step_two(o: dict[str, Any]) -> bool:
        return ((o.get("status") or {}).get("canary") or {}).get("step") == 2

    moved = wait_ms(cluster, namespace, step_two, "step 1 judged after the restart", timeout=240)
    check = last_check(moved)
    assert (check["step"], check["verdict"]) == (1, "Pass"), check
    # The window resumed from status: its first verdict came when it ended (40 s after its start, or as soon as the
    # new operator ran if that was later), before a window the new operator started over could end (40 s after the
    # restart). The first verdict, from the step's Events: under load a resumed window's end can be judged
    # Inconclusive (as any window's; another window follows, which passed two loaded runs 80 s after the first
    # window's start), which says nothing of the resume.
    # kopf posts Events in the background, after the status patch that moved the step on: wait for them.
    judgements = cluster.wait_for(
        "step 1's verdict Events", lambda: step_judgements(cluster, namespace, step=1) or None, timeout=30
    )
    window = timedelta(seconds=40)
    first = judgements[0][0]
    assert window_start + window <= first < restarted + window, (started, restarted.isoformat(), judgements, check)

    done = wait_ms(cluster, namespace, serving("v2"), "v2 promoted after both steps")
    check = last_check(done)
    assert (check["step"], check["verdict"]) == (2, "Pass"), done["status"]["canary"]
    assert check["canary"]["requests"] >= 10 and float(check["servedPercent"]) > 0, check
    passed = {
        step: [m for _, reason, m in step_judgements(cluster, namespace, step) if reason == "CanaryStepPassed"]
        for step in (1, 2)
    }
    assert all(any(f"step {step} of 2" in m for m in passed[step]) for step in (1, 2)), passed
    failed = [r for r in requests_seen(cluster, namespace) if "error" in r]
    assert not failed, f"{len(failed)} requests failed while a good canary was rolled out: {failed[:5]}"
