"""How many serving pods a ModelService runs and how a new version replaces the served one:
autoscaling, rollout strategy, disruption budget.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from kubemaas.api.base import (
    ApiModel,
    CelRule,
    Int,
    IntOrPercent,
)
from kubemaas.api.modelservice.canary import CanaryPolicy


class ScalingMetric(StrEnum):
    CPU = "CPU"
    QueueTime = "QueueTime"


class RolloutStrategy(StrEnum):
    RollingUpdate = "RollingUpdate"
    Canary = "Canary"


class ScalingBehavior(ApiModel):
    """How fast the autoscaler reacts."""

    scale_up_stabilization_seconds: Int = Field(
        default=0, ge=0, le=3600, description="Window over which scale-up recommendations are smoothed."
    )
    scale_down_stabilization_seconds: Int = Field(
        default=300, ge=0, le=3600, description="Window over which scale-down recommendations are smoothed."
    )


# Percent of the CPU request; see Autoscaling's rule on target.
MAX_CPU_TARGET = 100


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) for the serving Deployment. Absent: fixed replicas."""

    min_replicas: Int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: Int = Field(ge=1, le=1000, description="Most replicas.")
    metric: ScalingMetric = Field(
        default=ScalingMetric.CPU,
        description=(
            "CPU: average CPU utilization in percent. QueueTime: Triton's average queue time per request "
            "in microseconds, a pods metric served by a metrics adapter (e.g. prometheus-adapter)."
        ),
    )
    target: Int = Field(
        default=80,
        ge=1,
        le=100_000_000,
        description="Target value of the metric: percent for CPU, microseconds for QueueTime.",
    )
    behavior: ScalingBehavior = Field(default=ScalingBehavior(), description="Scaling speed.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.maxReplicas >= self.minReplicas",
            message="maxReplicas must be greater than or equal to minReplicas",
            field_path=".maxReplicas",
            check=lambda a: a.max_replicas >= a.min_replicas,
        ),
        # The serving container's CPU request equals its limit, so utilization never passes 100 %: a
        # higher target would leave the HPA unable to ever scale up.
        CelRule(
            rule=f"self.metric != 'CPU' || self.target <= {MAX_CPU_TARGET}",
            message=(
                f"target is a CPU utilization percentage and must be at most {MAX_CPU_TARGET}: the CPU request "
                "equals the limit, so utilization never passes 100%"
            ),
            field_path=".target",
            check=lambda a: a.metric != ScalingMetric.CPU or a.target <= MAX_CPU_TARGET,
        ),
    )


class Rollout(ApiModel):
    """How a new model version replaces the served one."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.RollingUpdate,
        description=(
            "RollingUpdate replaces pods in place; Canary first serves the new version from canaryReplicas pods."
        ),
    )
    canary_replicas: Int | None = Field(
        default=None, ge=1, le=100, description="Pods serving the new version during a Canary rollout."
    )
    canary_analysis_seconds: Int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description=(
            "Canary only: how long the ready canary must serve without a restart before it is promoted; "
            "unset: promoted as soon as it is ready."
        ),
    )
    canary: CanaryPolicy | None = Field(
        default=None,
        description=(
            "Canary only: roll out in steps, each judged on the canary's and the stable version's live Triton "
            "metrics; a failed step scales the canary away and the version is not retried until the source "
            "changes. Exclusive with canaryReplicas and canaryAnalysisSeconds."
        ),
    )
    progress_deadline_seconds: Int = Field(
        default=600,
        ge=30,
        le=86400,
        description=(
            "How long a new version may take to become ready; past it the rollout is Degraded and the last "
            "good version is restored (the Deployment's progressDeadlineSeconds)."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.canaryReplicas) || self.strategy == 'Canary'",
            message="canaryReplicas is only valid with strategy Canary",
            field_path=".canaryReplicas",
            check=lambda r: r.canary_replicas is None or r.strategy == RolloutStrategy.Canary,
        ),
        CelRule(
            rule="!has(self.canaryAnalysisSeconds) || self.strategy == 'Canary'",
            message="canaryAnalysisSeconds is only valid with strategy Canary",
            field_path=".canaryAnalysisSeconds",
            check=lambda r: r.canary_analysis_seconds is None or r.strategy == RolloutStrategy.Canary,
        ),
        CelRule(
            rule="!has(self.canary) || self.strategy == 'Canary'",
            message="canary is only valid with strategy Canary",
            field_path=".canary",
            check=lambda r: r.canary is None or r.strategy == RolloutStrategy.Canary,
        ),
        # The steps size the canary and time its windows: the single-step fields would contradict them.
        CelRule(
            rule="!has(self.canary) || (!has(self.canaryReplicas) && !has(self.canaryAnalysisSeconds))",
            message="canary.steps replaces canaryReplicas and canaryAnalysisSeconds: set one or the other",
            field_path=".canary",
            check=lambda r: r.canary is None or (r.canary_replicas is None and r.canary_analysis_seconds is None),
        ),
    )


class DisruptionBudget(ApiModel):
    """The PodDisruptionBudget of the serving pods; exactly one of minAvailable and maxUnavailable."""

    min_available: IntOrPercent | None = Field(
        default=None, description="Pods that must stay available during voluntary disruptions: a count or a %."
    )
    max_unavailable: IntOrPercent | None = Field(
        default=None, description="Pods that may be unavailable during voluntary disruptions: a count or a %."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.minAvailable) != has(self.maxUnavailable)",
            message="exactly one of minAvailable and maxUnavailable must be set",
            check=lambda b: (b.min_available is None) != (b.max_unavailable is None),
        ),
    )
