"""A stepped Canary (rollout.canary) through the pure ModelService core: each reconcile's status is the next
one's `Previous`, the pods' Triton counters come in as `Observed.metrics` when the core asks for a scrape."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from kubemaas.api import ModelService
from kubemaas.api.modelservice import CanaryVerdict
from kubemaas.controllers import modelservice_core as core
from kubemaas.controllers.modelservice_core import ChildKey, Cond, Observed, Previous
from kubemaas.controllers.modelservice_core.steps import canary_replicas
from kubemaas.controllers.modelservice_core.verdict import PodSample
from kubemaas.manifests import modelservice as m
from kubemaas.serving_metrics import TritonCounters
from tests.controllers.builders import NOW, conditions, deployment, job, make_ms, options, ref, served_version
from tests.manifests.builders import parent_of

JOBS = [job("digits", "v2")]
START = Previous(served_version="v1", last_good_version="v1")


def stepped(*weights: int, **analysis: Any) -> ModelService:
    steps = [{"weight": w, "durationSeconds": 60} for w in weights]
    rollout = {"strategy": "Canary", "canary": {"steps": steps, "analysis": {"minRequests": 20, **analysis}}}
    return make_ms(rollout=rollout, replicas=2)


def pod(name: str, track: m.Track, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {m.TRACK_LABEL: track.value, m.VERSION_LABEL: version}},
        "status": {"podIP": "198.18.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def observed(ms: ModelService, canary_pods: int | None) -> Observed:
    """Stable v1 with 2 ready pods; a ready canary of v2 with `canary_pods` pods (None: no canary yet)."""
    pods = [pod("s-1", m.Track.STABLE, "v1"), pod("s-2", m.Track.STABLE, "v1")]
    canary = None
    if canary_pods is not None:
        canary = deployment(ms, ref("v2"), track=m.Track.CANARY, replicas=canary_pods)
        pods += [pod(f"c-{i + 1}", m.Track.CANARY, "v2") for i in range(canary_pods)]
    return Observed(training_jobs=JOBS, stable=deployment(ms, ref("v1"), replicas=2), canary=canary, pods=pods)


def counters(served: int, failed: int = 0, latency_ms: int = 10) -> TritonCounters:
    return TritonCounters(served, failed, served * latency_ms * 1000, served * 100, latency_ms * 1000.0)


def metrics(obs: Observed, served: int, canary: TritonCounters | None = None) -> list[PodSample]:
    """Every pod served `served` requests at 10 ms so far; the canary's pods `canary` where given."""
    out = []
    for p in obs.pods:
        name, track = p["metadata"]["name"], p["metadata"]["labels"][m.TRACK_LABEL]
        c = canary if canary is not None and track == "canary" else counters(served)
        out.append(PodSample(name, track, c))
    return out


class Driver:
    """Reconciles as the handler does: again with metrics when the outcome asks for a scrape."""

    def __init__(self, ms: ModelService, previous: Previous = START) -> None:
        self.ms, self.previous = ms, previous

    def run(self, obs: Observed, at: datetime, samples: list[PodSample] | None = None) -> core.Outcome:
        out = core.reconcile(self.ms, self.previous, obs, parent_of(self.ms), options(), at)
        if out.scrape:
            assert samples is not None, f"a scrape of {out.scrape} was asked for"
            assert {t.pod for t in out.scrape} == {s.pod for s in samples}
            out = core.reconcile(
                self.ms, self.previous, replace(obs, metrics=samples), parent_of(self.ms), options(), at
            )
        else:
            assert samples is None, "no scrape was asked for"
        self.previous = Previous.from_status(out.status.to_wire())
        return out


def deployments(out: core.Outcome) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in out.apply if o["kind"] == "Deployment"}


def test_canary_replicas_make_up_the_steps_share_beside_the_stable_pods() -> None:
    assert [canary_replicas(w, 2) for w in (10, 20, 50, 75, 99)] == [1, 1, 2, 6, 198]
    assert [canary_replicas(w, 9) for w in (10, 25, 50)] == [1, 3, 9]


def test_a_good_canary_passes_every_step_and_is_promoted() -> None:
    ms = stepped(20, 50)
    d = Driver(ms)
    first = d.run(observed(ms, None), NOW)
    assert deployments(first)["digits-canary"]["spec"]["replicas"] == 1
    assert served_version(deployments(first)["digits"]) == "v1"
    assert first.status.canary is not None and (first.status.canary.step, first.status.canary.weight) == (1, 20)
    assert first.status.canary.window_start is None  # the canary is not ready yet

    step1 = observed(ms, 1)
    begun = d.run(step1, NOW, metrics(step1, 100))
    assert begun.status.canary is not None and begun.status.canary.window_start == NOW
    assert begun.requeue_after == 60
    assert {(b.pod, b.success) for b in begun.status.canary.baseline or ()} == {
        ("s-1", 100),
        ("s-2", 100),
        ("c-1", 100),
    }

    waiting = d.run(step1, NOW + timedelta(seconds=45))  # no scrape before the window ends
    assert waiting.requeue_after == 15 and served_version(deployments(waiting)["digits"]) == "v1"

    passed = d.run(step1, NOW + timedelta(seconds=60), metrics(step1, 200))
    assert passed.status.canary is not None and passed.status.canary.step == 2
    check = passed.status.canary.last_check
    assert check is not None and (check.verdict, check.step) == (CanaryVerdict.Pass, 1)
    assert check.canary is not None and check.canary.requests == 100 and check.served_percent == "33.33"
    assert [(e.type, e.reason) for e in passed.events] == [("Normal", "CanaryStepPassed")]
    assert deployments(passed)["digits-canary"]["spec"]["replicas"] == 2  # 50 % beside 2 stable pods
    assert served_version(deployments(passed)["digits"]) == "v1"

    step2 = observed(ms, 2)
    later = NOW + timedelta(seconds=90)
    d.run(step2, later, metrics(step2, 200))
    promoted = d.run(step2, later + timedelta(seconds=60), metrics(step2, 300))
    assert served_version(deployments(promoted)["digits"]) == "v2"  # the stable Deployment moves
    assert "digits-canary" in deployments(promoted)  # until the stable rollout completed
    assert promoted.status.canary is not None and promoted.status.canary.last_check is not None
    assert promoted.status.canary.last_check.verdict is CanaryVerdict.Pass
    assert promoted.status.canary.verdict is CanaryVerdict.Pass
    assert conditions(promoted)[Cond.DEGRADED][0] == "False"
    # The watch still shows the stable Deployment on v1: the promotion stands, no step starts over.
    lagging = d.run(step2, later + timedelta(seconds=61))
    assert served_version(deployments(lagging)["digits"]) == "v2" and not lagging.scrape


def test_an_erroring_canary_is_rolled_back_at_its_first_step_and_not_retried() -> None:
    ms = stepped(20, 50)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    step1 = observed(ms, 1)
    d.run(step1, NOW, metrics(step1, 100))
    failed = d.run(step1, NOW + timedelta(seconds=60), metrics(step1, 200, canary=counters(150, failed=30)))

    assert served_version(deployments(failed)["digits"]) == "v1"
    assert deployments(failed)["digits"]["spec"]["replicas"] == 2  # the stable version keeps every replica
    assert "digits-canary" not in deployments(failed)
    assert failed.delete == [ChildKey("apps/v1", "Deployment", "digits-canary")]
    status, message = conditions(failed)[Cond.DEGRADED][:2], conditions(failed)[Cond.DEGRADED][2]
    assert status == ("True", "CanaryFailed")
    assert "step 1 of 2 (20%): canary error ratio 37.50% > max 1%" in message and "serving v1" in message
    assert failed.status.last_failure is not None and failed.status.last_failure.version == "v2"
    assert failed.rolled_back
    assert [e.reason for e in failed.events] == ["CanaryStepFailed", "RolloutFailed"]

    again = d.run(observed(ms, None), NOW + timedelta(seconds=70))
    assert "digits-canary" not in deployments(again) and served_version(deployments(again)["digits"]) == "v1"
    assert again.status.canary is not None and again.status.canary.last_check is not None
    assert again.status.canary.last_check.verdict is CanaryVerdict.Fail  # the record stays
    assert again.status.canary.verdict is CanaryVerdict.Fail


def test_a_slow_canary_fails_the_relative_latency_bound() -> None:
    ms = stepped(20)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    step1 = observed(ms, 1)
    d.run(step1, NOW, metrics(step1, 100, canary=counters(100, latency_ms=10)))
    slow = counters(200, latency_ms=40)  # a p99 of 40 ms against the stable pods' 10 ms
    failed = d.run(step1, NOW + timedelta(seconds=60), metrics(step1, 200, canary=slow))
    assert conditions(failed)[Cond.DEGRADED][:2] == ("True", "CanaryFailed")
    assert (
        "canary p99 latency 40.00 ms is 4.00x the stable version's 10.00 ms > maxLatencyRatio 1.5"
        in (conditions(failed)[Cond.DEGRADED][2])
    )


def test_a_restarted_operator_resumes_the_step_and_its_window_from_status() -> None:
    ms = stepped(20, 50)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    step1 = observed(ms, 1)
    d.run(step1, NOW, metrics(step1, 100))
    d.run(step1, NOW + timedelta(seconds=60), metrics(step1, 200))
    step2 = observed(ms, 2)
    begun = d.run(step2, NOW + timedelta(seconds=70), metrics(step2, 200))
    # A new process: nothing but the status the last one wrote.
    restarted = Driver(ms, Previous.from_status(begun.status.to_wire()))
    resumed = restarted.run(step2, NOW + timedelta(seconds=100))  # no new baseline: the window goes on
    assert resumed.status.canary == begun.status.canary
    assert resumed.requeue_after == 30
    assert deployments(resumed)["digits-canary"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("limit", [1, 2])
def test_inconclusive_windows_repeat_then_roll_back_at_the_limit(limit: int) -> None:
    ms = stepped(20, inconclusiveLimit=limit)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    step1 = observed(ms, 1)
    at = NOW
    for attempt in range(limit):
        unreachable = [PodSample(s.pod, s.track, None, "connection refused") for s in metrics(step1, 1)]
        out = d.run(step1, at, unreachable)
        check = out.status.canary.last_check if out.status.canary else None
        assert check is not None and (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "MetricsUnavailable")
        if attempt < limit - 1:
            assert "digits-canary" in deployments(out) and out.requeue_after == 5
            assert conditions(out)[Cond.DEGRADED][0] == "False"
        at += timedelta(seconds=5)
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", "CanaryInconclusive")
    assert "digits-canary" not in deployments(out)


def test_a_failed_window_below_the_failure_limit_repeats_the_step() -> None:
    ms = stepped(20, failureLimit=2)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    step1 = observed(ms, 1)
    d.run(step1, NOW, metrics(step1, 100))
    once = d.run(step1, NOW + timedelta(seconds=60), metrics(step1, 200, canary=counters(150, failed=30)))
    assert once.status.canary is not None and once.status.canary.failed_checks == 1
    assert once.status.canary.window_start == NOW + timedelta(seconds=60)  # the end scrape starts the next window
    assert "digits-canary" in deployments(once) and conditions(once)[Cond.DEGRADED][0] == "False"
    twice = d.run(step1, NOW + timedelta(seconds=120), metrics(step1, 300, canary=counters(200, failed=60)))
    assert conditions(twice)[Cond.DEGRADED][:2] == ("True", "CanaryFailed")


def test_a_restarted_canary_container_fails_the_trial() -> None:
    ms = stepped(20)
    d = Driver(ms)
    d.run(observed(ms, None), NOW)
    obs = observed(ms, 1)
    crashed = dict(
        obs.pods[2], status={**obs.pods[2]["status"], "containerStatuses": [{"name": "x", "restartCount": 1}]}
    )
    out = d.run(replace(obs, pods=[*obs.pods[:2], crashed]), NOW)
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", "CanaryRestarted")
    assert out.status.canary is not None and out.status.canary.verdict is CanaryVerdict.Fail
