"""The ModelService reconcile core: observed state in, desired children and status out. Pure.

``reconcile(ms, observed)`` decides, from the ModelService, the TrainingJobs it may serve and the
children that exist (Deployments, their ReplicaSets and pods), which model version each Deployment
serves, which children to apply or delete, and the status. No API calls and no clock: the kopf
handlers in ``controllers/modelservice.py`` gather ``Observed`` from kopf indexes, apply the result
and patch the status.

Decisions, in order:

1. Source: ``model.uri`` + ``version`` (a pin, or ``Latest``), ``trainingJobRef``, or
   ``trainingJobSelector`` (the newest Succeeded TrainingJob with those labels, by completionTime).
   The newest source version is the *candidate*.
2. Version pinning: every pod of a Deployment serves one version. A TrainingJob gives an exact
   version. ``uri`` + ``Latest`` cannot be resolved by the operator (the store is a volume only pods
   mount): the first pods load ``Latest``; each loader reports the version it resolved in its
   termination message, and the next reconcile pins the template to that version (one extra rolling
   update, zero unavailable). A pin stays until the source in the spec changes.
3. Promotion gate: ``promotion.requireMetrics`` against the candidate's ``status.model.metrics``. A
   failing candidate is not rolled out; ``PromotionBlocked`` names metric, value and threshold; the
   current version keeps serving.
4. Safe rollout: a version whose pods do not become ready within the Deployment's progress deadline,
   or crash-loop, is recorded in ``status.lastFailure`` and ``Degraded``; the stable Deployment goes
   back to ``status.lastGoodVersion`` (the template of the ReplicaSet that served it, so no new
   ReplicaSet is made). That version is not retried until the source offers another one.
5. Canary: with ``rollout.strategy: Canary`` a new version first runs in ``<name>-canary`` (same
   Service selector, ``canaryReplicas`` pods); once that Deployment is available the stable
   Deployment is moved to the version, and the canary is removed when the stable rollout completed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from kubemaas.api.base import LATEST, Condition, ConditionStatus
from kubemaas.api.modelservice import (
    Endpoints,
    LastFailure,
    MetricThreshold,
    ModelService,
    ModelServiceStatus,
    RolloutStrategy,
)
from kubemaas.contract.termination import (
    FailureMessage,
    InvalidTerminationMessage,
    SuccessMessage,
    TerminationMessage,
    parse_termination,
)
from kubemaas.controllers.conditions import WarningPolicy, condition_of, set_condition, true_condition
from kubemaas.manifests import modelservice as m
from kubemaas.manifests.modelservice import ModelRef, Parent, ServingOptions, Track

# status.lastFailure.message's bound in the CRD.
FAILURE_MESSAGE_LIMIT = 4096
# A serving container restarted this often (or in CrashLoopBackOff) marks its version as failed.
CRASH_RESTARTS = 3


class Cond(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    PROMOTION_BLOCKED = "PromotionBlocked"


class Reason(StrEnum):
    SERVING = "Serving"
    SOURCE_NOT_FOUND = "SourceNotFound"
    WAITING_FOR_MODEL = "WaitingForModel"
    KEY_SECRET_NOT_FOUND = "KeySecretNotFound"
    PROMOTION_BLOCKED = "PromotionBlocked"
    GATE_PASSED = "GatePassed"
    NO_GATE = "NoGate"
    ROLLING_OUT = "RollingOut"
    CANARY = "CanaryInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    RESOLVING_VERSION = "ResolvingVersion"
    PROGRESS_DEADLINE = "ProgressDeadlineExceeded"
    CRASH_LOOP = "CrashLoopBackOff"
    AS_EXPECTED = "AsExpected"
    UNAVAILABLE = "Unavailable"
    NO_MODEL = "NoModel"


# Which conditions are Warnings: Degraded, a blocked promotion, and not Ready for any reason but a rollout
# under way (every new ModelService starts there). Everything else posts an Event only when its status flips.
WARNINGS = WarningPolicy(
    when_true=frozenset({Cond.DEGRADED, Cond.PROMOTION_BLOCKED}),
    when_false=frozenset({Cond.READY}),
    progress_reasons=frozenset({Reason.ROLLING_OUT}),
)


@dataclass(frozen=True)
class ConditionDecision:
    """A condition the core wants; the handler applies it with conditions.set_condition."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ChildKey:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Candidate:
    model: ModelRef
    job: str | None = None
    metrics: Mapping[str, Decimal] | None = None


@dataclass(frozen=True)
class Observed:
    """Everything the core reads besides the ModelService itself."""

    # TrainingJobs of the namespace (raw bodies): the referenced one or the selector's matches.
    training_jobs: Sequence[Mapping[str, Any]] = ()
    # Key Secrets the handler looked up (name -> exists); see required_secrets().
    secrets: Mapping[str, bool] = field(default_factory=dict)
    stable: Mapping[str, Any] | None = None
    canary: Mapping[str, Any] | None = None
    replica_sets: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()
    hpa: Mapping[str, Any] | None = None
    pdb: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    apply: list[dict[str, Any]]
    delete: list[ChildKey]
    status: ModelServiceStatus  # conditions included
    events: list[Event]
    # Reconcile again after this many seconds even if nothing changes (a canary analysis window ends).
    requeue_after: float | None = None


# --------------------------------------------------------------------------- the spec, as the core reads it


def spec_thresholds(ms: ModelService) -> list[MetricThreshold]:
    promotion = ms.spec.promotion
    return list(promotion.require_metrics) if promotion is not None else []


def parse_metric(value: object) -> Decimal | None:
    """A metric value or threshold: a decimal string (the API's form) or a plain number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


# --------------------------------------------------------------------------- source resolution


@dataclass(frozen=True)
class Resolution:
    candidates: list[Candidate]  # newest first
    problem: ConditionDecision | None = None


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _succeeded(job: Mapping[str, Any]) -> bool:
    ok = true_condition(job, "Succeeded") is not None
    return ok and bool(_get(job, "status", "model", "uri")) and bool(_get(job, "status", "model", "version"))


def _candidate_from_job(job: Mapping[str, Any]) -> Candidate:
    name = str(_get(job, "metadata", "name"))
    uri = str(_get(job, "status", "model", "uri")).rstrip("/")
    # status.model.uri is the version directory: <store>/<model>/<version>.
    store, model, _ = uri.rsplit("/", 2)
    metrics = {
        k: v
        for k, raw in (_get(job, "status", "model", "metrics") or {}).items()
        if (v := parse_metric(raw)) is not None
    }
    return Candidate(
        model=ModelRef(
            store_uri=store,
            model=model,
            version=str(_get(job, "status", "model", "version")),
            key_secret=str(_get(job, "spec", "encryption", "keySecretRef", "name")),
            source=f"trainingjob/{name}",
        ),
        job=name,
        metrics=metrics,
    )


def _completion_key(job: Mapping[str, Any]) -> tuple[str, str]:
    # RFC 3339 timestamps in UTC sort as strings; the name breaks ties deterministically.
    return (str(_get(job, "status", "completionTime") or ""), str(_get(job, "metadata", "name")))


def resolve_source(ms: ModelService, jobs: Sequence[Mapping[str, Any]]) -> Resolution:
    source = ms.spec.model
    if source.uri is not None:
        uri = source.uri.rstrip("/")
        store, model = uri.rsplit("/", 1)
        key = source.encryption.key_secret_ref.name if source.encryption else ""
        ref = ModelRef(
            store_uri=store, model=model, version=source.version, key_secret=key, source=f"{uri}@{source.version}"
        )
        return Resolution([Candidate(model=ref)])
    if source.training_job_ref is not None:
        name = source.training_job_ref.name
        job = next((j for j in jobs if _get(j, "metadata", "name") == name), None)
        if job is None:
            return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, f"TrainingJob {name!r} not found"))
        if not _succeeded(job):
            return Resolution([], _problem(Reason.WAITING_FOR_MODEL, f"TrainingJob {name!r} has not succeeded yet"))
        return Resolution([_candidate_from_job(job)])
    selector = source.training_job_selector
    if selector is not None:
        matching = [j for j in jobs if selector.matches(_get(j, "metadata", "labels"))]
        text = selector.describe()
        if not matching:
            return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, f"no TrainingJob matches the selector {text}"))
        done = sorted((j for j in matching if _succeeded(j)), key=_completion_key, reverse=True)
        if not done:
            return Resolution(
                [], _problem(Reason.WAITING_FOR_MODEL, f"no TrainingJob matching {text} has succeeded yet")
            )
        return Resolution([_candidate_from_job(j) for j in done])
    return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, "spec.model names no source"))


def _problem(reason: Reason, message: str) -> ConditionDecision:
    return ConditionDecision(Cond.READY, ConditionStatus.FALSE, reason, message)


def required_secrets(ms: ModelService, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Key Secrets the handler must look up before calling reconcile (their existence only)."""
    names = {c.model.key_secret for c in resolve_source(ms, jobs).candidates if c.model.key_secret}
    return sorted(names)


# --------------------------------------------------------------------------- promotion gate


def gate_failures(candidate: Candidate, thresholds: Sequence[MetricThreshold]) -> list[str]:
    """Human-readable failures of the gate ("heldOutAccuracy 0.91 < min 0.95"); empty when it passes.
    Whether a value passes is the API's `MetricThreshold.admits`; this only says why it did not."""
    if not thresholds or candidate.metrics is None:
        return []
    failures = []
    for t in thresholds:
        value = candidate.metrics.get(t.name)
        low, high = parse_metric(t.min), parse_metric(t.max)
        if value is None:
            failures.append(f"{t.name} missing (required {_describe(low, high)})")
        elif t.admits(str(value)):
            continue
        elif low is not None and value < low:
            failures.append(f"{t.name} {value} < min {low}")
        else:
            failures.append(f"{t.name} {value} > max {high}")
    return failures


def _describe(low: Decimal | None, high: Decimal | None) -> str:
    parts = ([f"min {low}"] if low is not None else []) + ([f"max {high}"] if high is not None else [])
    return " and ".join(parts) or "present"


# --------------------------------------------------------------------------- observing Deployments and pods


class RolloutState(StrEnum):
    COMPLETE = "Complete"
    PROGRESSING = "Progressing"
    FAILED = "Failed"


def template_ref(deployment: Mapping[str, Any] | None) -> ModelRef | None:
    if deployment is None:
        return None
    return m.model_ref_from_template(_get(deployment, "spec", "template") or {})


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    status = deployment.get("status") or {}
    generation = _get(deployment, "metadata", "generation") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return RolloutState.PROGRESSING
    progressing = condition_of(deployment, "Progressing") or {}
    if progressing.get("status") == "False" and progressing.get("reason") == Reason.PROGRESS_DEADLINE:
        return RolloutState.FAILED
    desired = _get(deployment, "spec", "replicas")
    desired = 1 if desired is None else desired
    if (
        (status.get("updatedReplicas") or 0) == desired
        and (status.get("replicas") or 0) == desired
        and (status.get("availableReplicas") or 0) == desired
    ):
        return RolloutState.COMPLETE
    return RolloutState.PROGRESSING


def _pods_of(pods: Sequence[Mapping[str, Any]], track: Track, version: str) -> list[Mapping[str, Any]]:
    return [
        p
        for p in pods
        if _get(p, "metadata", "labels", m.TRACK_LABEL) == track.value
        and _get(p, "metadata", "labels", m.VERSION_LABEL) == version
        and not _get(p, "metadata", "deletionTimestamp")
    ]


def _termination(status: Mapping[str, Any]) -> TerminationMessage | None:
    """The termination message of a container (current or previous run), if it is one the runtime writes."""
    for state in ("state", "lastState"):
        text = _get(status, state, "terminated", "message")
        if text:
            try:
                return parse_termination(str(text))
            except InvalidTerminationMessage:
                continue
    return None


def loader_report(pod: Mapping[str, Any]) -> TerminationMessage | None:
    """The model-loader's termination message (docs/runtime-contract.md §5)."""
    for status in _get(pod, "status", "initContainerStatuses") or ():
        if status.get("name") == m.LOADER_CONTAINER:
            return _termination(status)
    return None


def crash_failure(pods: Sequence[Mapping[str, Any]], version: str) -> LastFailure | None:
    """A crash-looping loader or server among these pods, with the loader's reason when it gave one."""
    for pod in pods:
        statuses = [
            *(_get(pod, "status", "initContainerStatuses") or ()),
            *(_get(pod, "status", "containerStatuses") or ()),
        ]
        for status in statuses:
            waiting = _get(status, "state", "waiting", "reason")
            if waiting != Reason.CRASH_LOOP and (status.get("restartCount") or 0) < CRASH_RESTARTS:
                continue
            report = _termination(status) if status.get("name") == m.LOADER_CONTAINER else None
            if isinstance(report, FailureMessage):
                return LastFailure(
                    version=version,
                    reason=report.reason,
                    message=report.message[:1024],
                    exit_code=int(report.exit_code),
                )
            terminated = _get(status, "lastState", "terminated") or {}
            return LastFailure(
                version=version,
                reason=Reason.CRASH_LOOP,
                message=f"container {status.get('name')} of pod {_get(pod, 'metadata', 'name')} keeps restarting"
                + (f" (exit code {terminated['exitCode']})" if "exitCode" in terminated else ""),
                exit_code=terminated.get("exitCode"),
            )
    return None


def available_since(deployment: Mapping[str, Any]) -> datetime | None:
    """When the Deployment last became Available (its condition's lastTransitionTime)."""
    available = true_condition(deployment, "Available")
    if available is None or not available.get("lastTransitionTime"):
        return None
    try:
        return datetime.fromisoformat(str(available["lastTransitionTime"]).replace("Z", "+00:00"))
    except ValueError:
        return None


def _restarted(pods: Sequence[Mapping[str, Any]], version: str) -> LastFailure | None:
    for pod in pods:
        for status in _get(pod, "status", "containerStatuses") or ():
            if (status.get("restartCount") or 0) > 0:
                return LastFailure(
                    version=version,
                    reason="CanaryRestarted",
                    message=f"container {status.get('name')} of canary pod {_get(pod, 'metadata', 'name')} restarted "
                    "during the analysis window",
                )
    return None


def resolved_version(pods: Sequence[Mapping[str, Any]], source: str) -> str | None:
    """The version a ``Latest`` loader resolved, from pods built for this source."""
    for pod in pods:
        if _get(pod, "metadata", "annotations", m.SOURCE_ANNOTATION) != source:
            continue
        report = loader_report(pod)
        if isinstance(report, SuccessMessage):
            return report.version
    return None


def _failure_of(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], track: Track) -> LastFailure | None:
    ref = template_ref(deployment)
    if ref is None:
        return None
    crashed = crash_failure(_pods_of(pods, track, ref.version), ref.version)
    if crashed is not None:
        return crashed
    if rollout_state(deployment) is RolloutState.FAILED:
        message = str((condition_of(deployment, "Progressing") or {}).get("message", ""))
        return LastFailure(
            version=ref.version,
            reason=Reason.PROGRESS_DEADLINE,
            message=f"version {ref.version} not ready within {_get(deployment, 'spec', 'progressDeadlineSeconds')}s: "
            f"{message}"[:FAILURE_MESSAGE_LIMIT],
        )
    return None


def _ref_for_version(observed: Observed, version: str | None) -> ModelRef | None:
    """The template that served ``version``, from the stable Deployment's ReplicaSets (newest first)."""
    if version is None:
        return None
    ordered = sorted(
        observed.replica_sets,
        key=lambda rs: int(_get(rs, "metadata", "annotations", "deployment.kubernetes.io/revision") or 0),
        reverse=True,
    )
    for rs in ordered:
        ref = m.model_ref_from_template(_get(rs, "spec", "template") or {})
        if ref is not None and ref.version == version:
            return ref
    return None


# --------------------------------------------------------------------------- reconcile


@dataclass(frozen=True)
class Previous:
    """What the last status recorded and the core builds on (read from the raw status, camelCase)."""

    served_version: str | None = None
    last_good_version: str | None = None
    last_failure: LastFailure | None = None
    degraded: bool = False

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Previous:
        """From the status as the API server (or this operator's memory of its last write) holds it."""
        status = status or {}
        failure = None
        raw = status.get("lastFailure") or {}
        if raw.get("version"):
            try:
                failure = LastFailure.model_validate(raw)
            except ValidationError:
                failure = None  # written by someone else, badly: forgotten, not fatal
        return cls(
            served_version=status.get("servedVersion"),
            last_good_version=status.get("lastGoodVersion"),
            last_failure=failure,
            degraded=true_condition({"status": status}, Cond.DEGRADED) is not None,
        )


@dataclass
class _Plan:
    """What one reconcile decided, step by step (see the module docstring)."""

    resolution: Resolution
    current: ModelRef | None  # what the stable Deployment's template serves now
    canary_current: ModelRef | None
    candidate: Candidate | None = None
    thresholds: list[MetricThreshold] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # gate failures of the candidate
    missing_key: bool = False
    failure: LastFailure | None = None  # a rollout that failed now
    stuck: LastFailure | None = None  # a rollout of the served version itself that does not progress
    bad_version: str | None = None
    target: ModelRef | None = None  # what the stable Deployment should serve
    canary_target: ModelRef | None = None
    requeue_after: float | None = None


def reconcile(
    ms: ModelService,
    previous: Previous,
    observed: Observed,
    parent: Parent,
    options: ServingOptions,
    now: datetime,
) -> Outcome:
    plan = _Plan(
        resolution=resolve_source(ms, observed.training_jobs),
        current=template_ref(observed.stable),
        canary_current=template_ref(observed.canary),
        thresholds=spec_thresholds(ms),
    )
    plan.bad_version = (
        previous.last_failure.version if previous.last_failure is not None and previous.degraded else None
    )
    _choose_candidate(plan, observed)
    _detect_failures(plan, ms, observed, previous)
    _choose_target(plan, observed, previous)
    _plan_canary(plan, ms, observed, now)
    apply, delete = _children(plan, ms, observed, parent, options)
    return _report(plan, ms, previous, observed, parent, apply, delete, now)


def _choose_candidate(plan: _Plan, observed: Observed) -> None:
    """The newest source version, pinned where the source says Latest, checked against gate and key."""
    candidate = plan.resolution.candidates[0] if plan.resolution.candidates else None
    current = plan.current
    if candidate is not None and candidate.model.version == LATEST:
        if current is not None and current.source == candidate.model.source and current.version != LATEST:
            pin: str | None = current.version
        else:
            pin = resolved_version(observed.pods, candidate.model.source)
        if pin is not None:
            candidate = replace(candidate, model=replace(candidate.model, version=pin))
    plan.candidate = candidate
    if candidate is not None:
        plan.blocked = gate_failures(candidate, plan.thresholds)
        # The key Secret of a version not yet rolled out.
        plan.missing_key = (
            candidate.model.key_secret != "" and observed.secrets.get(candidate.model.key_secret) is False
        )


def _detect_failures(plan: _Plan, ms: ModelService, observed: Observed, previous: Previous) -> None:
    """A failed rollout of the stable or canary Deployment. A rollout of the last good version itself (a
    spec change other than the model) has nothing to go back to: it is only reported (``stuck``)."""
    current, canary_current = plan.current, plan.canary_current
    if observed.stable is not None and current is not None:
        found = _failure_of(observed.stable, observed.pods, Track.STABLE)
        if current.version != previous.last_good_version:
            plan.failure = found
        else:
            plan.stuck = found
    if plan.failure is None and observed.canary is not None and canary_current is not None:
        plan.failure = _failure_of(observed.canary, observed.pods, Track.CANARY)
        if plan.failure is None and ms.spec.rollout.canary_analysis_seconds is not None:
            plan.failure = _restarted(
                _pods_of(observed.pods, Track.CANARY, canary_current.version), canary_current.version
            )
    if plan.failure is not None:
        plan.bad_version = plan.failure.version


def _choose_target(plan: _Plan, observed: Observed, previous: Previous) -> None:
    """What the stable Deployment serves: the candidate when it may be, else what serves now, else the last
    good version (a rollback), else, with nothing served yet, the newest candidate that passes the gate."""
    candidate, current, bad = plan.candidate, plan.current, plan.bad_version
    last_good = previous.last_good_version
    if candidate is not None and not plan.blocked and not plan.missing_key and candidate.model.version != bad:
        plan.target = candidate.model
    elif current is not None and current.version != bad:
        plan.target = current
    else:
        if last_good is not None and last_good != bad:
            # The old ReplicaSet's exact template; else the source still lists that version.
            plan.target = _ref_for_version(observed, last_good) or next(
                (c.model for c in plan.resolution.candidates if c.model.version == last_good), None
            )
        if plan.target is None and current is None and candidate is not None and plan.blocked:
            older = next((c for c in plan.resolution.candidates[1:] if not gate_failures(c, plan.thresholds)), None)
            plan.target = older.model if older is not None else None


def _plan_canary(plan: _Plan, ms: ModelService, observed: Observed, now: datetime) -> None:
    """With strategy Canary a new version first runs in the canary Deployment; the stable one moves to it
    once the canary is available (and served its analysis window), and the canary stays until then."""
    if ms.spec.rollout.strategy is not RolloutStrategy.Canary:
        return
    target, current, canary_current = plan.target, plan.current, plan.canary_current
    if target is None or current is None:
        return  # nothing serves yet: the first version goes straight to the stable Deployment
    analysis_seconds = ms.spec.rollout.canary_analysis_seconds
    new_version = (
        target.version != current.version
        and current.version != plan.bad_version
        and plan.candidate is not None
        and target == plan.candidate.model
    )
    if new_version:
        canary_ready = (
            observed.canary is not None
            and canary_current is not None
            and canary_current.version == target.version
            and rollout_state(observed.canary) is RolloutState.COMPLETE
        )
        if canary_ready and analysis_seconds is not None and observed.canary is not None:
            # Promote only after the canary served the whole window (restarts fail it, see above).
            since = available_since(observed.canary)
            waited = (now - since).total_seconds() if since is not None else 0.0
            if waited < analysis_seconds:
                canary_ready = False
                plan.requeue_after = analysis_seconds - waited
        plan.canary_target = target
        if not canary_ready:
            plan.target = current
    elif (
        observed.stable is not None
        and canary_current is not None
        and canary_current.version == target.version
        and current.version == target.version
        and rollout_state(observed.stable) is not RolloutState.COMPLETE
    ):
        plan.canary_target = target  # promoted: the canary serves until the stable rollout completed


def _children(
    plan: _Plan, ms: ModelService, observed: Observed, parent: Parent, options: ServingOptions
) -> tuple[list[dict[str, Any]], list[ChildKey]]:
    spec = ms.spec
    apply: list[dict[str, Any]] = []
    delete: list[ChildKey] = []
    autoscaling = spec.autoscaling
    replicas = spec.fixed_replicas
    if plan.target is not None:
        apply.append(m.deployment(spec, parent, plan.target, options, track=Track.STABLE, replicas=replicas))
    if plan.target is not None or plan.current is not None:
        apply.append(m.service(parent))
        if autoscaling is not None:
            apply.append(m.horizontal_pod_autoscaler(parent, autoscaling))
        most = autoscaling.max_replicas if autoscaling is not None else replicas or 0
        if most > 1:
            apply.append(m.pod_disruption_budget(parent, options))
    if plan.canary_target is not None:
        canary_replicas = spec.rollout.canary_replicas or 1
        apply.append(
            m.deployment(spec, parent, plan.canary_target, options, track=Track.CANARY, replicas=canary_replicas)
        )
    elif observed.canary is not None:
        delete.append(ChildKey("apps/v1", "Deployment", m.deployment_name(parent.name, Track.CANARY)))
    if autoscaling is None and observed.hpa is not None:
        delete.append(ChildKey("autoscaling/v2", "HorizontalPodAutoscaler", parent.name))
    if observed.pdb is not None and not any(o["kind"] == "PodDisruptionBudget" for o in apply):
        delete.append(ChildKey("policy/v1", "PodDisruptionBudget", parent.name))
    return apply, delete


def _report(
    plan: _Plan,
    ms: ModelService,
    previous: Previous,
    observed: Observed,
    parent: Parent,
    apply: list[dict[str, Any]],
    delete: list[ChildKey],
    now: datetime,
) -> Outcome:
    """Conditions, events and status of what was decided."""
    spec = ms.spec
    candidate, current, target, failure = plan.candidate, plan.current, plan.target, plan.failure
    resolution, blocked = plan.resolution, plan.blocked
    served, last_good = previous.served_version, previous.last_good_version
    conditions: list[ConditionDecision] = []
    events: list[Event] = []

    if blocked and candidate is not None:
        what = (
            f"TrainingJob {candidate.job!r} version {candidate.model.version}"
            if candidate.job
            else candidate.model.version
        )
        conditions.append(
            ConditionDecision(
                Cond.PROMOTION_BLOCKED, ConditionStatus.TRUE, Reason.PROMOTION_BLOCKED, f"{what}: {'; '.join(blocked)}"
            )
        )
    else:
        conditions.append(
            ConditionDecision(
                Cond.PROMOTION_BLOCKED,
                ConditionStatus.FALSE,
                Reason.GATE_PASSED if plan.thresholds else Reason.NO_GATE,
                "the candidate passed the promotion gate" if plan.thresholds else "no promotion gate",
            )
        )

    autoscaling = spec.autoscaling
    stable_state = rollout_state(observed.stable) if observed.stable is not None else None
    up_to_date = (
        observed.stable is not None
        and current is not None
        and target is not None
        and current.version == target.version
        and stable_state is RolloutState.COMPLETE
        and (current.version != LATEST)
        # A new Deployment starts at one replica until the HPA scaled it to its minimum.
        and (autoscaling is None or (_get(observed.stable, "spec", "replicas") or 1) >= autoscaling.min_replicas)
    )
    if up_to_date and current is not None:
        if served != current.version:
            events.append(
                Event(
                    "Normal",
                    "VersionServed",
                    f"serving version {current.version}" + (f" (was {served})" if served else ""),
                )
            )
        served = current.version
        last_good = current.version
    elif current is not None and current.version == LATEST:
        # Unresolved Latest: what the loaders reported is what serves.
        served = resolved_version(observed.pods, current.source) or served

    previous_failure = previous.last_failure
    new_failure = failure if failure is not None else previous_failure
    if failure is not None and previous_failure != failure:
        back = f"; rolling back to {target.version}" if target is not None and target.version != failure.version else ""
        events.append(
            Event("Warning", "RolloutFailed", f"version {failure.version}: {failure.reason}: {failure.message}{back}")
        )

    # Degraded: the version the source asks for is not what serves, for a reason the user must see.
    degraded_reason: tuple[str, str] | None = None
    bad = plan.bad_version
    if failure is not None or (bad is not None and candidate is not None and candidate.model.version == bad):
        f = failure or previous_failure
        assert f is not None
        tail = f"; serving {target.version}" if target is not None and target.version != f.version else ""
        degraded_reason = (f.reason, f"version {f.version} failed: {f.message}{tail}")
    elif resolution.problem is not None and current is not None:
        degraded_reason = (resolution.problem.reason, f"{resolution.problem.message}; still serving {current.version}")
    elif plan.missing_key and candidate is not None:
        degraded_reason = (Reason.KEY_SECRET_NOT_FOUND, f"key Secret {candidate.model.key_secret!r} not found")
    elif plan.stuck is not None:
        stuck = plan.stuck
        degraded_reason = (stuck.reason, f"the rollout of version {stuck.version} does not progress: {stuck.message}")
    if degraded_reason is not None:
        conditions.append(ConditionDecision(Cond.DEGRADED, ConditionStatus.TRUE, *degraded_reason))
    else:
        conditions.append(ConditionDecision(Cond.DEGRADED, ConditionStatus.FALSE, Reason.AS_EXPECTED, ""))

    rolling = target is not None and (
        current is None or current.version != target.version or stable_state is not RolloutState.COMPLETE
    )
    if plan.canary_target is not None:
        conditions.append(
            ConditionDecision(
                Cond.PROGRESSING, ConditionStatus.TRUE, Reason.CANARY, f"canary serves {plan.canary_target.version}"
            )
        )
    elif rolling and target is not None:
        reason = Reason.RESOLVING_VERSION if target.version == LATEST else Reason.ROLLING_OUT
        conditions.append(
            ConditionDecision(Cond.PROGRESSING, ConditionStatus.TRUE, reason, f"rolling out {target.version}")
        )
    else:
        conditions.append(ConditionDecision(Cond.PROGRESSING, ConditionStatus.FALSE, Reason.ROLLOUT_COMPLETE, ""))

    conditions.append(_ready(plan, up_to_date, served, degraded_reason))

    replicas = spec.fixed_replicas
    deployments = [d for d in (observed.stable, observed.canary) if d]
    serving = target is not None or current is not None
    status = ModelServiceStatus(
        conditions=_set_all(ms, conditions, now),
        desired_replicas=replicas if replicas is not None else _get(observed.stable, "spec", "replicas"),
        replicas=sum(int(_get(d, "status", "replicas") or 0) for d in deployments),
        ready_replicas=sum(int(_get(d, "status", "readyReplicas") or 0) for d in deployments),
        served_version=served,
        canary_version=plan.canary_target.version if plan.canary_target is not None else None,
        last_good_version=last_good,
        last_failure=new_failure,
        endpoints=Endpoints.model_validate(m.endpoints(parent)) if serving else None,
        url=m.url(parent) if serving else None,
        observed_generation=ms.metadata.generation,
    )
    return Outcome(apply=apply, delete=delete, status=status, events=events, requeue_after=plan.requeue_after)


def _set_all(ms: ModelService, decisions: Sequence[ConditionDecision], now: datetime) -> list[Condition]:
    """The last status's conditions with every decision set (lastTransitionTime kept unless the status flips)."""
    conditions = list(ms.status.conditions or ()) if ms.status is not None else []
    for d in decisions:
        conditions = set_condition(conditions, d.type, d.status, d.reason, d.message, ms.metadata.generation, now)
    return conditions


def _ready(
    plan: _Plan, up_to_date: bool, served: str | None, degraded_reason: tuple[str, str] | None
) -> ConditionDecision:
    candidate, current, target = plan.candidate, plan.current, plan.target
    if up_to_date:
        return ConditionDecision(Cond.READY, ConditionStatus.TRUE, Reason.SERVING, f"serving {served}")
    if plan.resolution.problem is not None and current is None:
        return plan.resolution.problem
    if plan.missing_key and current is None and candidate is not None:
        return ConditionDecision(
            Cond.READY,
            ConditionStatus.FALSE,
            Reason.KEY_SECRET_NOT_FOUND,
            f"key Secret {candidate.model.key_secret!r} not found",
        )
    if target is None and current is None:
        reason = Reason.PROMOTION_BLOCKED if plan.blocked else Reason.NO_MODEL
        return ConditionDecision(Cond.READY, ConditionStatus.FALSE, reason, "no version may be served")
    if degraded_reason is not None and target is None:
        return ConditionDecision(Cond.READY, ConditionStatus.FALSE, degraded_reason[0], degraded_reason[1])
    rolling = target.version if target is not None else current.version if current is not None else ""
    return ConditionDecision(Cond.READY, ConditionStatus.FALSE, Reason.ROLLING_OUT, f"rolling out {rolling}")
