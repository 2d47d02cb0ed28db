"""The observed state of a ModelService, as the operator writes it."""

from __future__ import annotations

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
