"""A Canary rollout in steps (rollout.canary): which step runs, how many canary pods it has, when its analysis
window starts and ends, and what its verdict decides. Pure: the window's Triton counters come in as
``Observed.metrics`` (the handler scrapes them when the last reconcile asked, ``Plan.scrape``), and the state
lives in ``status.canary``, so an operator restart resumes the step and its window from there.

A step is: the canary Deployment scaled to the step's share of the serving pods (the stable one keeps its
count), ready; a baseline scrape of every ready serving pod starts the window; the scrape at its end is judged
(``verdict.judge``). Pass: the next step, or after the last one the promotion. Fail: the window repeats until
``failureLimit`` failed windows, then the canary is scaled away and the version is recorded as failed (not
retried until the source changes). Inconclusive: the window repeats, ``inconclusiveLimit`` in a row fail it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from kubemaas.api.modelservice import (
    CanaryCheck,
    CanaryPolicy,
    CanaryStatus,
    CanaryVerdict,
    LastFailure,
    ModelService,
)
from kubemaas.controllers.conditions import true_condition
from kubemaas.controllers.modelservice_core.model import (
    FAILURE_MESSAGE_LIMIT,
    Event,
    Observed,
    Plan,
    Previous,
    Reason,
    ScrapeTarget,
    field_at,
)
from kubemaas.controllers.modelservice_core.observation import RolloutState, pods_of, rollout_state, template_ref
from kubemaas.controllers.modelservice_core.verdict import CANARY, STABLE, PodSample, baseline_of, judge
from kubemaas.manifests.modelservice import ModelRef, Track

# A window could not start (a pod's metrics did not answer): try again this soon, not on the next event.
BASELINE_RETRY_SECONDS = 5.0
MAX_CANARY_REPLICAS = 1000
EVENT_REASONS = {
    CanaryVerdict.Pass: "CanaryStepPassed",
    CanaryVerdict.Fail: "CanaryStepFailed",
    CanaryVerdict.Inconclusive: "CanaryStepInconclusive",
}


def canary_replicas(weight: int, stable: int) -> int:
    """Canary pods that make up about `weight` % of the serving pods beside `stable` stable ones (nearest, at
    least one): the stable pods keep their count, so a failed step takes nothing from the stable version."""
    share = (stable * weight * 2 + (100 - weight)) // (2 * (100 - weight))
    return min(max(1, share), MAX_CANARY_REPLICAS)


def plan_steps(plan: Plan, ms: ModelService, observed: Observed, previous: Previous, now: datetime) -> bool:
    """Decide the stepped Canary of `plan.target` (a new version); True when every step passed (promote)."""
    policy = ms.spec.rollout.canary
    target, current = plan.target, plan.current
    assert policy is not None and target is not None and current is not None
    stable_replicas = ms.spec.fixed_replicas or int(field_at(observed.stable, "spec", "replicas") or 1)
    state = _resume(policy, previous.canary, target.version, stable_replicas)
    plan.canary_target, plan.canary_replicas = target, state.canary_replicas
    if state.verdict is CanaryVerdict.Pass:
        # Promoted by an earlier reconcile: the stable Deployment moves even while the watch still shows it
        # on the old version (else a lagging index would start the last step over and move it back).
        plan.canary_status = state
        return True
    if not _step_ready(observed, target, state.canary_replicas):
        plan.canary_status = state.model_copy(update={"window_start": None, "baseline": None})
        return False
    if state.window_start is None or state.baseline is None:
        _start_window(plan, policy, state, observed, current, target, now)
        return False
    ends = state.window_start + timedelta(seconds=state.window_seconds)
    if now < ends:
        plan.canary_status = state
        plan.requeue_after = (ends - now).total_seconds()
        return False
    if observed.metrics is None:
        plan.canary_status = state
        plan.scrape = _targets(observed, current, target)
        return False
    check = judge(policy.analysis, state.step, state.baseline, observed.metrics, now)
    plan.events.append(_event(state, check))
    promote = _decide(plan, policy, state, check, observed.metrics, now)
    if plan.canary_target is not None and plan.canary_status is not None:
        # The next step's weight, window and pods.
        plan.canary_status = _resume(policy, plan.canary_status, target.version, stable_replicas)
        plan.canary_replicas = plan.canary_status.canary_replicas
    return promote


def end_trial(plan: Plan, previous: Previous) -> None:
    """A stepped trial whose canary failed otherwise (crash loop, restart, deadline) ends as failed too."""
    trial, failure = previous.canary, plan.failure
    if trial is not None and failure is not None and trial.version == failure.version and trial.verdict is None:
        plan.canary_status = trial.model_copy(
            update={"window_start": None, "baseline": None, "verdict": CanaryVerdict.Fail}
        )


def _resume(policy: CanaryPolicy, previous: CanaryStatus | None, version: str, stable_replicas: int) -> CanaryStatus:
    """The trial of `version` as status left it (its step, window and counts), or a new one at step 1; the
    step's weight, window and pods follow the spec as it is now."""
    if previous is None or previous.version != version or previous.step > len(policy.steps):
        previous = None
    elif previous.verdict is CanaryVerdict.Fail:
        previous = None  # tried again only when the source offers it anew (bad_version): from the start
    index = previous.step - 1 if previous is not None else 0
    step = policy.steps[index]
    wanted = {
        "version": version,
        "step": index + 1,
        "steps": len(policy.steps),
        "weight": step.weight,
        "canary_replicas": canary_replicas(step.weight, stable_replicas),
        "window_seconds": step.duration_seconds,
    }
    if previous is None:
        return CanaryStatus.model_validate(wanted)
    return previous.model_copy(update=wanted)


def _step_ready(observed: Observed, target: ModelRef, replicas: int) -> bool:
    """The canary runs the version with the step's pods, all available, and the stable rollout is complete."""
    canary, stable = observed.canary, observed.stable
    if canary is None or stable is None:
        return False
    ref = template_ref(canary)
    return (
        ref is not None
        and ref.version == target.version
        and field_at(canary, "spec", "replicas") == replicas
        and rollout_state(canary) is RolloutState.COMPLETE
        and rollout_state(stable) is RolloutState.COMPLETE
    )


def _start_window(
    plan: Plan,
    policy: CanaryPolicy,
    state: CanaryStatus,
    observed: Observed,
    current: ModelRef,
    target: ModelRef,
    now: datetime,
) -> None:
    """A window starts with the baseline of every ready serving pod; without metrics, ask for them."""
    plan.canary_status = state
    if observed.metrics is None:
        plan.scrape = _targets(observed, current, target)
        return
    baseline = baseline_of(observed.metrics)
    if baseline is not None:
        plan.requeue_after = float(state.window_seconds)
        plan.canary_status = state.model_copy(update={"window_start": now, "baseline": baseline})
        return
    check = CanaryCheck(
        step=state.step,
        verdict=CanaryVerdict.Inconclusive,
        reason="MetricsUnavailable",
        message=f"the window cannot start: {_unanswered(observed.metrics)}",
        time=now,
    )
    plan.events.append(_event(state, check))
    _inconclusive(plan, policy, state, check)


def _decide(
    plan: Plan,
    policy: CanaryPolicy,
    state: CanaryStatus,
    check: CanaryCheck,
    samples: Sequence[PodSample],
    now: datetime,
) -> bool:
    if check.verdict is CanaryVerdict.Pass:
        if state.step == state.steps:
            plan.canary_status = state.model_copy(
                update={"last_check": check, "baseline": None, "verdict": CanaryVerdict.Pass}
            )
            return True
        plan.canary_status = state.model_copy(
            update={
                "step": state.step + 1,
                "window_start": None,
                "baseline": None,
                "failed_checks": 0,
                "inconclusive_checks": 0,
                "last_check": check,
            }
        )
        return False
    if check.verdict is CanaryVerdict.Fail:
        failed = state.failed_checks + 1
        state = state.model_copy(update={"failed_checks": failed, "inconclusive_checks": 0, "last_check": check})
        if failed >= policy.analysis.failure_limit:
            _fail(plan, state, Reason.CANARY_FAILED, check)
            return False
        plan.canary_status = _next_window(plan, state, samples, now)
        return False
    repeated = _inconclusive(plan, policy, state, check)
    if repeated is not None:
        plan.canary_status = _next_window(plan, repeated, samples, now)
    return False


def _inconclusive(plan: Plan, policy: CanaryPolicy, state: CanaryStatus, check: CanaryCheck) -> CanaryStatus | None:
    """Count an Inconclusive window; None when that was one too many (the canary failed)."""
    count = state.inconclusive_checks + 1
    state = state.model_copy(update={"inconclusive_checks": count, "last_check": check})
    if count >= policy.analysis.inconclusive_limit:
        _fail(plan, state, Reason.CANARY_INCONCLUSIVE, check)
        return None
    plan.canary_status = state.model_copy(update={"window_start": None, "baseline": None})
    plan.requeue_after = BASELINE_RETRY_SECONDS
    return state


def _next_window(plan: Plan, state: CanaryStatus, samples: Sequence[PodSample], now: datetime) -> CanaryStatus:
    """The step's window again; the scrape that ended the last one is the new one's baseline when complete."""
    baseline = baseline_of(samples)
    if baseline is None:
        plan.requeue_after = BASELINE_RETRY_SECONDS
        return state.model_copy(update={"window_start": None, "baseline": None})
    plan.requeue_after = float(state.window_seconds)
    return state.model_copy(update={"window_start": now, "baseline": baseline})


def _fail(plan: Plan, state: CanaryStatus, reason: Reason, check: CanaryCheck) -> None:
    """The canary failed: scaled away, the stable Deployment unchanged, the version recorded as failed."""
    plan.canary_status = state.model_copy(
        update={"window_start": None, "baseline": None, "verdict": CanaryVerdict.Fail}
    )
    plan.failure = LastFailure(
        version=state.version,
        reason=reason,
        message=f"step {state.step} of {state.steps} ({state.weight}%): {check.message}"[:FAILURE_MESSAGE_LIMIT],
    )
    plan.bad_version = state.version
    plan.canary_target = None
    plan.canary_replicas = None
    plan.target = plan.current


def _targets(observed: Observed, current: ModelRef, target: ModelRef) -> list[ScrapeTarget]:
    """Every ready serving pod of both tracks (those behind the Service now)."""
    out = []
    for track, version, name in ((Track.STABLE, current.version, STABLE), (Track.CANARY, target.version, CANARY)):
        for pod in pods_of(observed.pods, track, version):
            ip = field_at(pod, "status", "podIP")
            if ip and true_condition(pod, "Ready") is not None:
                out.append(ScrapeTarget(pod=str(field_at(pod, "metadata", "name")), track=name, ip=str(ip)))
    return sorted(out, key=lambda t: (t.track, t.pod))


def _unanswered(samples: Sequence[PodSample]) -> str:
    missing = [f"{s.track} pod {s.pod}: {s.error}" for s in samples if s.counters is None]
    return "; ".join(missing) or "no pod to measure"


def _event(state: CanaryStatus, check: CanaryCheck) -> Event:
    kind = "Normal" if check.verdict is CanaryVerdict.Pass else "Warning"
    what = f"version {state.version} step {state.step} of {state.steps} ({state.weight}%)"
    return Event(kind, EVENT_REASONS[check.verdict], f"{what}: {check.verdict.value}: {check.message}")
