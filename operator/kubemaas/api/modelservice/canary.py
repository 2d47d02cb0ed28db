"""A Canary rollout in steps, each judged on the serving pods' live Triton metrics (rollout.canary).

The canary's share of a step is its share of the ready serving pods behind the one Service (no mesh); each
step is held for its window, and at the window's end the canary's error ratio and latency are compared with
the bounds below and with the stable version's figures over the same window.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from kubemaas.api.base import ApiModel, CelRule, Int

# Non-negative decimals without an exponent: what a bound is written as, and what CEL's double() reads alike.
BOUND_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
Bound = Annotated[str, StringConstraints(pattern=BOUND_PATTERN, max_length=16)]

MAX_STEPS = 10
DEFAULT_STEP_SECONDS = 60


class LatencyStatistic(StrEnum):
    P99 = "P99"
    Mean = "Mean"


class CanaryStep(ApiModel):
    """One step: the canary's share of the serving pods, held for one analysis window."""

    weight: Int = Field(
        ge=1,
        le=99,
        description=(
            "Percent of the ready serving pods that run the new version during this step (the stable pods keep "
            "their count; canary pods are added until they make up about this share). Without a service mesh "
            "this is also about the share of requests: see docs/modelservice.md for how exact that is."
        ),
    )
    duration_seconds: Int = Field(
        default=DEFAULT_STEP_SECONDS,
        ge=10,
        le=86400,
        description="How long the step is held once its canary pods are ready: the window its metrics cover.",
    )


class CanaryAnalysis(ApiModel):
    """The bounds each step's window is judged against. A bound left unset is not checked."""

    max_error_percent: Bound = Field(
        default="1",
        description="Highest share of the canary's requests that may fail, in percent (a decimal string).",
    )
    latency: LatencyStatistic = Field(
        default=LatencyStatistic.P99,
        description=(
            "Which latency the latency bounds apply to: P99 (Triton's request latency summary, the highest of the "
            "track's pods) or Mean (request duration over the window, from Triton's counters)."
        ),
    )
    max_latency_milliseconds: Int | None = Field(
        default=None, ge=1, le=3_600_000, description="Absolute bound on the canary's latency, in milliseconds."
    )
    max_latency_ratio: Bound | None = Field(
        default="1.5",
        description=(
            "Bound on the canary's latency divided by the stable version's over the same window (a decimal "
            "string, at least 1)."
        ),
    )
    max_queue_milliseconds: Int | None = Field(
        default=None,
        ge=1,
        le=3_600_000,
        description="Bound on the canary's mean time in Triton's queue per request, in milliseconds.",
    )
    min_requests: Int = Field(
        default=50,
        ge=1,
        le=10_000_000,
        description=(
            "Requests the canary (and, for the relative bound, the stable version) must serve in a window "
            "before a verdict is given; fewer make the window Inconclusive."
        ),
    )
    failure_limit: Int = Field(
        default=1,
        ge=1,
        le=10,
        description="Failed windows in a step that roll the canary back; fewer repeat the step's window.",
    )
    inconclusive_limit: Int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Inconclusive windows in a row (too few requests, an unreachable or reset metrics endpoint) that "
            "roll the canary back; an Inconclusive window is never a pass."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="double(self.maxErrorPercent) < 100.0",
            message="maxErrorPercent must be below 100: a bound of 100% lets a canary that fails everything pass",
            field_path=".maxErrorPercent",
            check=lambda a: Decimal(a.max_error_percent) < 100,
        ),
        CelRule(
            rule="!has(self.maxLatencyRatio) || double(self.maxLatencyRatio) >= 1.0",
            message="maxLatencyRatio must be at least 1: below it a canary as fast as the stable version fails",
            field_path=".maxLatencyRatio",
            check=lambda a: a.max_latency_ratio is None or Decimal(a.max_latency_ratio) >= 1,
        ),
    )


class CanaryPolicy(ApiModel):
    """A Canary rollout in steps judged on live metrics; promotion when every step passed."""

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description=(
            "The steps, by strictly increasing weight. After the last one passes the stable Deployment moves to "
            "the new version (a zero-unavailable rolling update) and the canary is removed."
        ),
    )
    analysis: CanaryAnalysis = Field(default=CanaryAnalysis(), description="What each step's window is judged on.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.steps.map(s, s.weight).isSorted() && "
            "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))",
            message="steps must have strictly increasing weights",
            field_path=".steps",
            check=lambda c: all(a.weight < b.weight for a, b in zip(c.steps, c.steps[1:], strict=False)),
        ),
    )
