"""What the ModelService core works with: its inputs (`Observed`, `Previous`), the plan the stages fill in,
its output (`Outcome`), and the names of its conditions and reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from kubemaas.api.base import ConditionStatus
from kubemaas.api.modelservice import (
    CanaryStatus,
    LastFailure,
    MetricThreshold,
    ModelServiceStatus,
)
from kubemaas.controllers.conditions import WarningPolicy, true_condition
from kubemaas.controllers.modelservice_core.verdict import PodSample
from kubemaas.manifests.modelservice import ModelRef

# status.lastFailure.message's bound in the CRD.
FAILURE_MESSAGE_LIMIT = 4096


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
    CREDENTIALS_SECRET_NOT_FOUND = "CredentialsSecretNotFound"
    INVALID_PUBLISHED_MODEL = "InvalidPublishedModel"
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
    CANARY_FAILED = "CanaryFailed"
    CANARY_INCONCLUSIVE = "CanaryInconclusive"
    CANARY_RESTARTED = "CanaryRestarted"


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
class Resolution:
    candidates: list[Candidate]  # newest first
    problem: ConditionDecision | None = None


@dataclass(frozen=True)
class ScrapeTarget:
    """A serving pod whose Triton metrics a Canary analysis needs now (the handler scrapes them)."""

    pod: str
    track: str
    ip: str


@dataclass(frozen=True)
class Observed:
    """Everything the core reads besides the ModelService itself."""

    # TrainingJobs of the namespace (raw bodies): the referenced one or the selector's matches.
    training_jobs: Sequence[Mapping[str, Any]] = ()
    # Key and store-credentials Secrets the handler looked up (name -> exists); see required_secrets().
    secrets: Mapping[str, bool] = field(default_factory=dict)
    stable: Mapping[str, Any] | None = None
    canary: Mapping[str, Any] | None = None
    replica_sets: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()
    hpa: Mapping[str, Any] | None = None
    pdb: Mapping[str, Any] | None = None
    # The serving pods' Triton metrics, scraped for this reconcile when the last one asked (Outcome.scrape).
    metrics: Sequence[PodSample] | None = None


@dataclass(frozen=True)
class Previous:
    """What the last status recorded and the core builds on (read from the raw status, camelCase)."""

    served_version: str | None = None
    last_good_version: str | None = None
    last_failure: LastFailure | None = None
    degraded: bool = False
    canary: CanaryStatus | None = None

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
        try:
            canary = CanaryStatus.model_validate(status["canary"]) if status.get("canary") else None
        except ValidationError:
            canary = None  # unreadable: the trial starts over at its first step
        return cls(
            canary=canary,
            served_version=status.get("servedVersion"),
            last_good_version=status.get("lastGoodVersion"),
            last_failure=failure,
            degraded=true_condition({"status": status}, Cond.DEGRADED) is not None,
        )


@dataclass
class Outcome:
    apply: list[dict[str, Any]]
    delete: list[ChildKey]
    status: ModelServiceStatus  # conditions included
    events: list[Event]
    # Reconcile again after this many seconds even if nothing changes (a canary analysis window ends).
    requeue_after: float | None = None
    # Decided by this reconcile, for the operator's counters (object_metrics): a failed version reverted to
    # the last good one; a candidate refused by the promotion gate (not the same refusal again).
    rolled_back: bool = False
    promotion_refused: bool = False
    # Pods to scrape before this reconcile can decide: the handler scrapes them and reconciles again with
    # Observed.metrics (a Canary analysis window starts or ends now).
    scrape: tuple[ScrapeTarget, ...] = ()


@dataclass
class Plan:
    """What one reconcile decided, step by step (see the module docstring)."""

    resolution: Resolution
    current: ModelRef | None  # what the stable Deployment's template serves now
    canary_current: ModelRef | None
    candidate: Candidate | None = None
    thresholds: list[MetricThreshold] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # gate failures of the candidate
    missing_secret: tuple[Reason, str] | None = None  # (reason, message): a Secret the candidate needs is missing
    failure: LastFailure | None = None  # a rollout that failed now
    stuck: LastFailure | None = None  # a rollout of the served version itself that does not progress
    bad_version: str | None = None
    target: ModelRef | None = None  # what the stable Deployment should serve
    canary_target: ModelRef | None = None
    canary_replicas: int | None = None  # a stepped Canary's pods for the current step
    canary_status: CanaryStatus | None = None  # status.canary when a stepped Canary decided it now
    scrape: list[ScrapeTarget] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # the stepped Canary's verdicts
    requeue_after: float | None = None


def field_at(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def parse_metric(value: object) -> Decimal | None:
    """A metric value or threshold: a decimal string (the API's form) or a plain number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None
