"""ModelService (kubemaas.io/v1alpha1): a model served by NVIDIA Triton, autoscaled and rolled out."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field

from kubemaas.api.base import (
    CONDITIONS_LIST_MARKERS,
    NAME_RULE,
    PVC_URI_PATTERN,
    ApiModel,
    CelRule,
    Condition,
    LocalObjectRef,
    Resources,
    Scheduling,
    SecretRef,
)
from kubemaas.api.metadata import ObjectMeta

# Triton 2.51, the release the nvidia-pytriton wheel used in tests ships.
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
LATEST = "Latest"


class ServedFormat(StrEnum):
    TorchScript = "TorchScript"
    ONNX = "ONNX"


class TritonBackend(StrEnum):
    """Triton backends a ModelService may ask for."""

    PYTORCH_LIBTORCH = "pytorch_libtorch"
    PYTHON = "python"
    ONNXRUNTIME = "onnxruntime"


class InstanceKind(StrEnum):
    """Where Triton places model instances."""

    AUTO = "Auto"
    GPU = "GPU"
    CPU = "CPU"


class Toggle(StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"


class ScalingMetric(StrEnum):
    CPU = "CPU"
    QueueTime = "QueueTime"


class RolloutStrategy(StrEnum):
    RollingUpdate = "RollingUpdate"
    Canary = "Canary"


class ModelEncryption(ApiModel):
    """The key that decrypts the model."""

    key_secret_ref: SecretRef = Field(description="Secret holding the key-<id> entry named by the artifact header.")


class ModelSource(ApiModel):
    """Which model to serve: the output of a TrainingJob, or a model directory in the artifact store."""

    training_job_ref: LocalObjectRef | None = Field(
        default=None,
        description="A TrainingJob in this namespace; each version it publishes is rolled out automatically.",
    )
    uri: str | None = Field(
        default=None,
        pattern=PVC_URI_PATTERN,
        description="The model's directory in the artifact store: pvc://<claim>/<path>/<model>.",
    )
    version: str = Field(
        default=LATEST,
        pattern=VERSION_PATTERN,
        description="Latest (follow the newest published version) or a version to pin.",
    )
    format: ServedFormat = Field(default=ServedFormat.TorchScript, description="Format of the model file.")
    encryption: ModelEncryption | None = Field(
        default=None,
        description="Key Secret; taken from the TrainingJob when trainingJobRef is set.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.trainingJobRef) != has(self.uri)",
            message="exactly one of trainingJobRef and uri must be set",
            check=lambda m: (m.training_job_ref is None) != (m.uri is None),
        ),
        CelRule(
            rule="has(self.trainingJobRef) || has(self.encryption)",
            message="encryption.keySecretRef is required when the model is given by uri",
            field_path=".encryption",
            check=lambda m: m.training_job_ref is not None or m.encryption is not None,
        ),
    )


class InstanceGroup(ApiModel):
    """Triton model instances per pod."""

    count: int = Field(default=1, ge=1, le=16, description="Model instances per pod.")
    kind: InstanceKind = Field(
        default=InstanceKind.AUTO,
        description="Where instances run: GPU, CPU, or Auto (GPU when the pod has one).",
    )


class Runtime(ApiModel):
    """The Triton Inference Server that serves the model."""

    image: str = Field(default=DEFAULT_TRITON_IMAGE, min_length=1, description="Triton server image.")
    backend: TritonBackend = Field(
        default=TritonBackend.PYTORCH_LIBTORCH,
        description=(
            "Triton backend: pytorch_libtorch (TorchScript, GPU or CPU), python (TorchScript loaded by "
            "torch in a Python model, for CPU images without libtorch) or onnxruntime (ONNX)."
        ),
    )
    instance_group: InstanceGroup = Field(default=InstanceGroup(), description="Model instances per pod.")


class Batching(ApiModel):
    """Triton batching: requests are grouped into batches up to maxBatchSize."""

    max_batch_size: int = Field(
        default=8,
        ge=0,
        le=4096,
        description="Largest batch Triton forms; 0 means the model takes no batch dimension.",
    )
    dynamic_batching: Toggle = Field(
        default=Toggle.ENABLED, description="Enabled: Triton's dynamic batcher groups concurrent requests."
    )
    preferred_batch_sizes: list[int] | None = Field(
        default=None, max_length=16, description="Batch sizes the dynamic batcher aims for."
    )
    max_queue_delay_microseconds: int = Field(
        default=100,
        ge=0,
        le=10_000_000,
        description="How long a request may wait in the queue for a batch to fill, in microseconds.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.preferredBatchSizes) || self.preferredBatchSizes.all(s, s >= 1 && s <= self.maxBatchSize)",
            message="preferredBatchSizes must lie between 1 and maxBatchSize",
            field_path=".preferredBatchSizes",
            check=lambda b: all(1 <= s <= b.max_batch_size for s in b.preferred_batch_sizes or ()),
        ),
    )


class ScalingBehavior(ApiModel):
    """How fast the autoscaler reacts."""

    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Window over which scale-up recommendations are smoothed."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600, description="Window over which scale-down recommendations are smoothed."
    )


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) for the serving Deployment. Absent: fixed replicas."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    metric: ScalingMetric = Field(
        default=ScalingMetric.CPU,
        description=(
            "CPU: average CPU utilization in percent. QueueTime: Triton's average queue time per request "
            "in microseconds, a pods metric served by a metrics adapter (e.g. prometheus-adapter)."
        ),
    )
    target: int = Field(
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
        CelRule(
            rule="self.metric != 'CPU' || self.target <= 1000",
            message="target is a CPU utilization percentage and must be at most 1000",
            field_path=".target",
            check=lambda a: a.metric != ScalingMetric.CPU or a.target <= 1000,
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
    canary_replicas: int | None = Field(
        default=None, ge=1, le=100, description="Pods serving the new version during a Canary rollout."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.canaryReplicas) || self.strategy == 'Canary'",
            message="canaryReplicas is only valid with strategy Canary",
            field_path=".canaryReplicas",
            check=lambda r: r.canary_replicas is None or r.strategy == RolloutStrategy.Canary,
        ),
    )


class ModelServiceSpec(ApiModel):
    """Desired state of a ModelService."""

    model: ModelSource = Field(description="The model to serve.")
    runtime: Runtime = Field(default=Runtime(), description="The Triton server.")
    batching: Batching = Field(default=Batching(), description="Triton batching.")
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Serving pods when autoscaling is absent; ignored otherwise."
    )
    resources: Resources = Field(default=Resources(), description="Resources of each serving pod.")
    scheduling: Scheduling | None = Field(default=None, description="Placement of the serving pods.")
    autoscaling: Autoscaling | None = Field(default=None, description="Autoscaling; absent means fixed replicas.")
    rollout: Rollout = Field(default=Rollout(), description="How new versions are rolled out.")

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
    )


class Endpoints(ApiModel):
    """In-cluster addresses of the served model."""

    http: str | None = Field(default=None, description="KServe v2 HTTP endpoint, host:port.")
    grpc: str | None = Field(default=None, description="KServe v2 gRPC endpoint, host:port.")


class ModelServiceStatus(ApiModel):
    """Observed state of a ModelService."""

    conditions: list[Condition] | None = Field(
        default=None, description="Ready, Progressing, Degraded.", json_schema_extra=CONDITIONS_LIST_MARKERS
    )
    replicas: int | None = Field(default=None, ge=0, description="Serving pods that exist.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Serving pods that are ready.")
    served_version: str | None = Field(default=None, description="Model version answering at the Service.")
    canary_version: str | None = Field(default=None, description="Version served by the canary, during a rollout.")
    endpoints: Endpoints | None = Field(default=None, description="Where clients reach the model.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )


class ModelService(ApiModel):
    """A ModelService resource as stored by the API server."""

    api_version: Literal["kubemaas.io/v1alpha1"] = Field(description="kubemaas.io/v1alpha1")
    kind: Literal["ModelService"] = Field(description="ModelService")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelServiceSpec = Field(description="Desired state.")
    status: ModelServiceStatus | None = Field(default=None, description="Observed state.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (NAME_RULE,)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ModelService:
        return cls.model_validate(body)
