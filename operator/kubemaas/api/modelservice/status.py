"""The observed state of a ModelService, as the operator writes it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from kubemaas.api.base import (
    CONDITIONS_LIST_MARKERS,
    ApiModel,
    Condition,
    Int,
)


class Endpoints(ApiModel):
    """In-cluster addresses of the served model."""

    http: str | None = Field(default=None, description="KServe v2 HTTP endpoint, host:port.")
    grpc: str | None = Field(default=None, description="KServe v2 gRPC endpoint, host:port.")


class LastFailure(ApiModel):
    """Why the last rollout of a version failed, from the model loader's termination message or the Deployment."""

    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024, description="CamelCase reason."
    )
    exit_code: Int | None = Field(default=None, description="Exit code of the model loader, when it failed.")
    message: str = Field(default="", max_length=4096, description="Human-readable details.")
    version: str | None = Field(
        default=None, description="The version that failed; not retried until the source changes."
    )


class CanaryVerdict(StrEnum):
    Pass = "Pass"
    Fail = "Fail"
    Inconclusive = "Inconclusive"


class TrackFigures(ApiModel):
    """What one track's pods served over an analysis window (decimal strings: no floats in the API)."""

    pods: Int = Field(ge=0, description="Pods measured.")
    requests: Int = Field(ge=0, description="Requests answered in the window, successful or not.")
    failed: Int = Field(ge=0, description="Requests that failed in the window.")
    error_percent: str | None = Field(default=None, description="failed / requests, in percent.")
    latency_milliseconds: str | None = Field(
        default=None, description="The latency the analysis judges (analysis.latency: P99 or Mean), in ms."
    )
    queue_milliseconds: str | None = Field(default=None, description="Mean time in Triton's queue per request, ms.")


class PodCounters(ApiModel):
    """One pod's Triton counters at the start of the window: the window's figures are the differences."""

    pod: str = Field(max_length=253, description="Pod name.")
    track: str = Field(max_length=16, description="stable or canary.")
    success: Int = Field(ge=0, description="nv_inference_request_success.")
    failure: Int = Field(ge=0, description="nv_inference_request_failure.")
    request_us: Int = Field(ge=0, description="nv_inference_request_duration_us.")
    queue_us: Int = Field(ge=0, description="nv_inference_queue_duration_us.")


class CanaryCheck(ApiModel):
    """The verdict on one analysis window."""

    step: Int = Field(ge=1, description="The step (1-based) whose window was judged.")
    verdict: CanaryVerdict = Field(description="Pass, Fail or Inconclusive (never a pass).")
    reason: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=64, description="CamelCase reason.")
    message: str = Field(default="", max_length=2048, description="The metric, its value and the bound.")
    canary: TrackFigures | None = Field(default=None, description="The canary's figures over the window.")
    stable: TrackFigures | None = Field(default=None, description="The stable version's figures over the window.")
    served_percent: str | None = Field(
        default=None, description="Share of the window's requests the canary actually served, in percent."
    )
    time: datetime = Field(description="When the window was judged.")


class CanaryStatus(ApiModel):
    """Where a stepped Canary rollout stands; an operator restart resumes the step from here."""

    version: str = Field(max_length=128, description="The version on trial.")
    step: Int = Field(ge=1, description="The current step, 1-based.")
    steps: Int = Field(ge=1, description="Steps in all.")
    weight: Int = Field(ge=1, le=99, description="The step's weight: percent of the ready serving pods.")
    canary_replicas: Int = Field(ge=1, description="Canary pods for this step.")
    window_start: datetime | None = Field(
        default=None, description="Start of the current window (unset until the step's canary pods are ready)."
    )
    window_seconds: Int = Field(ge=1, description="Length of the window.")
    failed_checks: Int = Field(default=0, ge=0, description="Failed windows in this step.")
    inconclusive_checks: Int = Field(default=0, ge=0, description="Inconclusive windows in a row in this step.")
    baseline: list[PodCounters] | None = Field(
        default=None, max_length=2000, description="Each measured pod's counters at the window's start."
    )
    last_check: CanaryCheck | None = Field(default=None, description="The last window's verdict.")
    verdict: CanaryVerdict | None = Field(
        default=None,
        description=(
            "The trial's: Pass once every step passed (the version is promoted), Fail once it was rolled back "
            "(Inconclusive windows past the limit included); unset while it runs."
        ),
    )


class ModelServiceStatus(ApiModel):
    """Observed state of a ModelService."""

    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "Ready, Progressing, Degraded, PromotionBlocked (a candidate version failed promotion.requireMetrics; "
            "the message names the metric, its value and the threshold)."
        ),
        json_schema_extra=CONDITIONS_LIST_MARKERS,
    )
    desired_replicas: Int | None = Field(
        default=None, ge=0, description="Serving pods wanted now: spec.replicas, or the autoscaler's current target."
    )
    replicas: Int | None = Field(default=None, ge=0, description="Serving pods that exist.")
    ready_replicas: Int | None = Field(default=None, ge=0, description="Serving pods that are ready.")
    served_version: str | None = Field(default=None, description="Model version answering at the Service.")
    canary_version: str | None = Field(default=None, description="Version served by the canary, during a rollout.")
    canary: CanaryStatus | None = Field(
        default=None, description="A stepped Canary rollout (rollout.canary): step, window, figures, verdict."
    )
    last_good_version: str | None = Field(
        default=None, description="The last version that was fully ready; what a failed rollout reverts to."
    )
    last_failure: LastFailure | None = Field(default=None, description="The last failed rollout.")
    endpoints: Endpoints | None = Field(default=None, description="Where clients reach the model.")
    url: str | None = Field(
        default=None, description="Base URL of the KServe v2 HTTP endpoint, e.g. http://digits.team-a.svc:8000."
    )
    observed_generation: Int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )
