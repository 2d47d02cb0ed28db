"""The desired state of a ModelService: its parts, and the rules that span them."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kubemaas.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    CelRule,
    Int,
)
from kubemaas.api.core import (
    IMAGE_PULL_SECRETS_DESCRIPTION,
    SERVICE_ACCOUNT_DESCRIPTION,
    ImagePullSecrets,
    Resources,
    Scheduling,
)
from kubemaas.api.modelservice.network import ServingNetwork
from kubemaas.api.modelservice.scaling import Autoscaling, DisruptionBudget, Rollout
from kubemaas.api.modelservice.source import ModelSource, Promotion, ServedFormat
from kubemaas.api.modelservice.triton import Batching, InstanceKind, Runtime, TritonBackend

# Serving pods when neither replicas nor autoscaling is set.
DEFAULT_REPLICAS = 1


class ModelServiceSpec(ApiModel):
    """Desired state of a ModelService."""

    model: ModelSource = Field(description="The model to serve.")
    promotion: Promotion | None = Field(
        default=None, description="Gate on the metrics of each new version; absent: every new version is rolled out."
    )
    runtime: Runtime = Field(default=Runtime(), description="The Triton server.")
    batching: Batching = Field(default=Batching(), description="Triton batching.")
    replicas: Int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=f"Serving pods, owned by the operator; {DEFAULT_REPLICAS} when unset. Exclusive with autoscaling.",
    )
    resources: Resources = Field(default=Resources(), description="Resources of each serving pod.")
    scheduling: Scheduling | None = Field(default=None, description="Placement of the serving pods.")
    autoscaling: Autoscaling | None = Field(
        default=None, description="Autoscaling; the autoscaler then owns the replica count. Exclusive with replicas."
    )
    rollout: Rollout = Field(default=Rollout(), description="How new versions are rolled out.")
    disruption_budget: DisruptionBudget | None = Field(
        default=None,
        description=(
            "PodDisruptionBudget of the serving pods. Absent: maxUnavailable 1, and no budget while a single "
            "replica is desired (a one-replica budget would block node drains)."
        ),
    )
    service_account_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description=SERVICE_ACCOUNT_DESCRIPTION
    )
    image_pull_secrets: ImagePullSecrets | None = Field(default=None, description=IMAGE_PULL_SECRETS_DESCRIPTION)
    network: ServingNetwork = Field(
        default=ServingNetwork(), description="Who may reach the serving pods (a NetworkPolicy the operator writes)."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="(self.runtime.backend == 'onnxruntime') == (self.model.format == 'ONNX')",
            message="runtime.backend onnxruntime serves the ONNX format; pytorch_libtorch and python serve TorchScript",
            field_path=".runtime.backend",
            check=lambda s: (s.runtime.backend == TritonBackend.ONNXRUNTIME) == (s.model.format == ServedFormat.ONNX),
        ),
        CelRule(
            rule="self.runtime.instanceGroup.kind != 'GPU' || self.resources.gpus > 0",
            message="runtime.instanceGroup.kind GPU needs resources.gpus > 0",
            field_path=".runtime.instanceGroup.kind",
            check=lambda s: s.runtime.instance_group.kind != InstanceKind.GPU or s.resources.gpus > 0,
        ),
        CelRule(
            rule="!has(self.replicas) || !has(self.autoscaling)",
            message="replicas and autoscaling are exclusive: with autoscaling the autoscaler sets the replicas",
            field_path=".replicas",
            check=lambda s: s.replicas is None or s.autoscaling is None,
        ),
        CelRule(
            rule="!has(self.promotion) || !has(self.model.uri)",
            message="promotion needs a TrainingJob source (trainingJobRef or trainingJobSelector)",
            field_path=".promotion",
            check=lambda s: s.promotion is None or s.model.uri is None,
        ),
    )

    @property
    def fixed_replicas(self) -> int | None:
        """The replica count the operator writes: None under autoscaling (the autoscaler owns it)."""
        if self.autoscaling is not None:
            return None
        return DEFAULT_REPLICAS if self.replicas is None else self.replicas
