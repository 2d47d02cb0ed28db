"""ModelService (kubemaas.io/v1alpha1): a model served by NVIDIA Triton, autoscaled and rolled out.

One idea a module: ``source`` (what is served, the promotion gate), ``triton`` (the server), ``scaling``
(replicas, autoscaling, rollout, disruption budget), ``network`` (who may reach the pods), ``spec`` (the
whole desired state), ``status``.
The kind itself is here; every name of the parts is importable from this package.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from kubemaas.api.base import NAME_RULES, ApiModel, CelRule
from kubemaas.api.metadata import ObjectMeta
from kubemaas.api.modelservice.canary import CanaryAnalysis, CanaryPolicy, CanaryStep, LatencyStatistic
from kubemaas.api.modelservice.network import InferencePeer, ServingNetwork
from kubemaas.api.modelservice.scaling import (
    MAX_CPU_TARGET,
    Autoscaling,
    DisruptionBudget,
    Rollout,
    RolloutStrategy,
    ScalingBehavior,
    ScalingMetric,
)
from kubemaas.api.modelservice.source import MetricThreshold, ModelEncryption, ModelSource, Promotion, ServedFormat
from kubemaas.api.modelservice.spec import DEFAULT_REPLICAS, ModelServiceSpec
from kubemaas.api.modelservice.status import (
    CanaryCheck,
    CanaryStatus,
    CanaryVerdict,
    Endpoints,
    LastFailure,
    ModelServiceStatus,
    PodCounters,
    TrackFigures,
)
from kubemaas.api.modelservice.triton import (
    DEFAULT_TRITON_IMAGE,
    RESERVED_TRITON_FLAGS,
    Batching,
    InstanceGroup,
    InstanceKind,
    Runtime,
    Toggle,
    TritonArg,
    TritonBackend,
)

__all__ = [
    "DEFAULT_REPLICAS",
    "DEFAULT_TRITON_IMAGE",
    "MAX_CPU_TARGET",
    "RESERVED_TRITON_FLAGS",
    "Autoscaling",
    "Batching",
    "CanaryAnalysis",
    "CanaryCheck",
    "CanaryPolicy",
    "CanaryStatus",
    "CanaryStep",
    "CanaryVerdict",
    "DisruptionBudget",
    "Endpoints",
    "InferencePeer",
    "InstanceGroup",
    "InstanceKind",
    "LastFailure",
    "LatencyStatistic",
    "MetricThreshold",
    "ModelEncryption",
    "ModelService",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "ModelSource",
    "PodCounters",
    "Promotion",
    "Rollout",
    "RolloutStrategy",
    "Runtime",
    "ScalingBehavior",
    "ScalingMetric",
    "ServedFormat",
    "ServingNetwork",
    "Toggle",
    "TrackFigures",
    "TritonArg",
    "TritonBackend",
]


class ModelService(ApiModel):
    """A ModelService resource as stored by the API server."""

    api_version: Literal["kubemaas.io/v1alpha1"] = Field(description="kubemaas.io/v1alpha1")
    kind: Literal["ModelService"] = Field(description="ModelService")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelServiceSpec = Field(description="Desired state.")
    status: ModelServiceStatus | None = Field(default=None, description="Observed state.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = NAME_RULES

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ModelService:
        return cls.model_validate(body)
