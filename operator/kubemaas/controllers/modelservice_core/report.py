"""Stage 5, the report: the conditions (PromotionBlocked, Degraded, Progressing, Ready), the Events and the
typed status of what the plan decided."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kubemaas.api.base import LATEST, Condition, ConditionStatus
from kubemaas.api.modelservice import (
    Endpoints,
    LastFailure,
    ModelService,
    ModelServiceStatus,
)
from kubemaas.controllers.conditions import find_condition, set_condition
from kubemaas.controllers.modelservice_core.model import (
    ChildKey,
    Cond,
    ConditionDecision,
    Event,
    Observed,
    Outcome,
    Plan,
    Previous,
    Reason,
    field_at,
)
from kubemaas.controllers.modelservice_core.observation import RolloutState, resolved_version, rollout_state
from kubemaas.manifests import modelservice as m
from kubemaas.manifests.modelservice import Parent


def report(
    plan: Plan,
    ms: ModelService,
    previous: Previous,
    observed: Observed,
    parent: Parent,
    apply: list[dict[str, Any]],
    delete: list[ChildKey],
    now: datetime,
) -> Outcome:
    """Conditions, events and status of what was decided."""
    stable_state = rollout_state(observed.stable) if observed.stable is not None else None
    up_to_date = _up_to_date(plan, ms, observed, stable_state)
    events: list[Event] = list(plan.events)
    served, last_good = _served(plan, previous, observed, up_to_date, events)
    last_failure = _last_failure(plan, previous, events)
    degraded = _degraded(plan, previous)
    decisions = [
        _promotion(plan),
        ConditionDecision(Cond.DEGRADED, ConditionStatus.TRUE, *degraded)
        if degraded is not None
        else ConditionDecision(Cond.DEGRADED, ConditionStatus.FALSE, Reason.AS_EXPECTED, ""),
        _progressing(plan, stable_state),
        _ready(plan, up_to_date, served, degraded),
    ]
    replicas = ms.spec.fixed_replicas
    deployments = [d for d in (observed.stable, observed.canary) if d]
    serving = plan.target is not None or plan.current is not None
    status = ModelServiceStatus(
        conditions=_set_all(ms, decisions, now),
        desired_replicas=replicas if replicas is not None else field_at(observed.stable, "spec", "replicas"),
        replicas=sum(int(field_at(d, "status", "replicas") or 0) for d in deployments),
        ready_replicas=sum(int(field_at(d, "status", "readyReplicas") or 0) for d in deployments),
        served_version=served,
        canary_version=plan.canary_target.version if plan.canary_target is not None else None,
        # The last stepped trial stays on record (its verdict) until the next one replaces it.
        canary=plan.canary_status if plan.canary_status is not None else previous.canary,
        last_good_version=last_good,
        last_failure=last_failure,
        endpoints=Endpoints.model_validate(m.endpoints(parent)) if serving else None,
        url=m.url(parent) if serving else None,
        observed_generation=ms.metadata.generation,
    )
    return Outcome(
        apply=apply,
        delete=delete,
        status=status,
        events=events,
        requeue_after=plan.requeue_after,
        scrape=tuple(plan.scrape),
        rolled_back=_rolled_back(plan, previous),
        promotion_refused=_refused_now(ms, status),
    )


def _rolled_back(plan: Plan, previous: Previous) -> bool:
    """A rollout failed now and the target is another version (the last good one): what the RolloutFailed
    Event calls "rolling back"."""
    failure, target = plan.failure, plan.target
    new = failure is not None and previous.last_failure != failure
    return new and target is not None and failure is not None and target.version != failure.version


def _refused_now(ms: ModelService, status: ModelServiceStatus) -> bool:
    """The gate refuses a candidate it did not refuse in the last status (another candidate, or none before)."""
    now = find_condition(status.conditions, Cond.PROMOTION_BLOCKED)
    if now is None or now.status is not ConditionStatus.TRUE:
        return False
    before = find_condition(ms.status.conditions if ms.status is not None else None, Cond.PROMOTION_BLOCKED)
    return before is None or before.status is not ConditionStatus.TRUE or before.message != now.message


def _promotion(plan: Plan) -> ConditionDecision:
    candidate = plan.candidate
    if plan.blocked and candidate is not None:
        what = (
            f"TrainingJob {candidate.job!r} version {candidate.model.version}"
            if candidate.job
            else candidate.model.version
        )
        message = f"{what}: {'; '.join(plan.blocked)}"
        return ConditionDecision(Cond.PROMOTION_BLOCKED, ConditionStatus.TRUE, Reason.PROMOTION_BLOCKED, message)
    return ConditionDecision(
        Cond.PROMOTION_BLOCKED,
        ConditionStatus.FALSE,
        Reason.GATE_PASSED if plan.thresholds else Reason.NO_GATE,
        "the candidate passed the promotion gate" if plan.thresholds else "no promotion gate",
    )


def _up_to_date(plan: Plan, ms: ModelService, observed: Observed, stable_state: RolloutState | None) -> bool:
    """Whether the stable Deployment serves the target version, fully rolled out."""
    current, target, autoscaling = plan.current, plan.target, ms.spec.autoscaling
    return (
        observed.stable is not None
        and current is not None
        and target is not None
        and current.version == target.version
        and stable_state is RolloutState.COMPLETE
        and (current.version != LATEST)
        # A new Deployment starts at one replica until the HPA scaled it to its minimum.
        and (autoscaling is None or (field_at(observed.stable, "spec", "replicas") or 1) >= autoscaling.min_replicas)
    )


def _served(
    plan: Plan, previous: Previous, observed: Observed, up_to_date: bool, events: list[Event]
) -> tuple[str | None, str | None]:
    """(servedVersion, lastGoodVersion), with a VersionServed Event when the served version changed."""
    current = plan.current
    served, last_good = previous.served_version, previous.last_good_version
    if up_to_date and current is not None:
        if served != current.version:
            was = f" (was {served})" if served else ""
            events.append(Event("Normal", "VersionServed", f"serving version {current.version}{was}"))
        return current.version, current.version
    if current is not None and current.version == LATEST:
        # Unresolved Latest: what the loaders reported is what serves.
        served = resolved_version(observed.pods, current.source) or served
    return served, last_good


def _last_failure(plan: Plan, previous: Previous, events: list[Event]) -> LastFailure | None:
    """status.lastFailure, with a RolloutFailed Warning when a rollout failed now."""
    failure, target = plan.failure, plan.target
    if failure is not None and previous.last_failure != failure:
        back = f"; rolling back to {target.version}" if _rolled_back(plan, previous) and target is not None else ""
        events.append(
            Event("Warning", "RolloutFailed", f"version {failure.version}: {failure.reason}: {failure.message}{back}")
        )
    return failure if failure is not None else previous.last_failure


def _degraded(plan: Plan, previous: Previous) -> tuple[str, str] | None:
    """(reason, message) when the version the source asks for is not what serves, for a reason the user
    must see; else None."""
    candidate, current, target, failure = plan.candidate, plan.current, plan.target, plan.failure
    problem, bad = plan.resolution.problem, plan.bad_version
    if failure is not None or (bad is not None and candidate is not None and candidate.model.version == bad):
        f = failure or previous.last_failure
        assert f is not None
        tail = f"; serving {target.version}" if target is not None and target.version != f.version else ""
        return f.reason, f"version {f.version} failed: {f.message}{tail}"
    if problem is not None and current is not None:
        return problem.reason, f"{problem.message}; still serving {current.version}"
    if plan.missing_secret is not None:
        return plan.missing_secret
    if plan.stuck is not None:
        stuck = plan.stuck
        return stuck.reason, f"the rollout of version {stuck.version} does not progress: {stuck.message}"
    return None


def _progressing(plan: Plan, stable_state: RolloutState | None) -> ConditionDecision:
    current, target = plan.current, plan.target
    if plan.canary_target is not None:
        message = f"canary serves {plan.canary_target.version}"
        trial = plan.canary_status
        if trial is not None and trial.version == plan.canary_target.version:
            window = f", window from {trial.window_start.isoformat()}" if trial.window_start is not None else ""
            message += f": step {trial.step} of {trial.steps} ({trial.weight}%, {trial.canary_replicas} pods{window})"
        return ConditionDecision(Cond.PROGRESSING, ConditionStatus.TRUE, Reason.CANARY, message)
    rolling = target is not None and (
        current is None or current.version != target.version or stable_state is not RolloutState.COMPLETE
    )
    if rolling and target is not None:
        reason = Reason.RESOLVING_VERSION if target.version == LATEST else Reason.ROLLING_OUT
        return ConditionDecision(Cond.PROGRESSING, ConditionStatus.TRUE, reason, f"rolling out {target.version}")
    return ConditionDecision(Cond.PROGRESSING, ConditionStatus.FALSE, Reason.ROLLOUT_COMPLETE, "")


def _set_all(ms: ModelService, decisions: Sequence[ConditionDecision], now: datetime) -> list[Condition]:
    """The last status's conditions with every decision set (lastTransitionTime kept unless the status flips)."""
    conditions = list(ms.status.conditions or ()) if ms.status is not None else []
    for d in decisions:
        conditions = set_condition(conditions, d.type, d.status, d.reason, d.message, ms.metadata.generation, now)
    return conditions


def _ready(
    plan: Plan, up_to_date: bool, served: str | None, degraded_reason: tuple[str, str] | None
) -> ConditionDecision:
    current, target = plan.current, plan.target
    if up_to_date:
        return ConditionDecision(Cond.READY, ConditionStatus.TRUE, Reason.SERVING, f"serving {served}")
    if plan.resolution.problem is not None and current is None:
        return plan.resolution.problem
    if plan.missing_secret is not None and current is None:
        return ConditionDecision(Cond.READY, ConditionStatus.FALSE, *plan.missing_secret)
    if target is None and current is None:
        reason = Reason.PROMOTION_BLOCKED if plan.blocked else Reason.NO_MODEL
        return ConditionDecision(Cond.READY, ConditionStatus.FALSE, reason, "no version may be served")
    if degraded_reason is not None and target is None:
        return ConditionDecision(Cond.READY, ConditionStatus.FALSE, degraded_reason[0], degraded_reason[1])
    rolling = target.version if target is not None else current.version if current is not None else ""
    return ConditionDecision(Cond.READY, ConditionStatus.FALSE, Reason.ROLLING_OUT, f"rolling out {rolling}")
