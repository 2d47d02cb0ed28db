"""ModelService (kubemaas.io/v1alpha1): a model served by NVIDIA Triton, autoscaled and rolled out."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    CONDITIONS_LIST_MARKERS,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    LATEST,
    NAME_RULES,
    PVC_URI_PATTERN,
    VERSION_PATTERN,
    ApiModel,
    CelRule,
    Condition,
    Int,
    IntOrPercent,
    MetricName,
    MetricValue,
    map_list,
    unique_by,
)
from kubemaas.api.core import (
    IMAGE_PULL_SECRETS_DESCRIPTION,
    KUBEMAAS_ENV_PREFIX,
    SERVICE_ACCOUNT_DESCRIPTION,
    EnvFromList,
    EnvList,
    ImagePullSecrets,
    LabelSelector,
    LocalObjectRef,
    Resources,
    Scheduling,
    SecretRef,
    reserved_env_rules,
)
from kubemaas.api.metadata import ObjectMeta

# The Triton image the operator uses when spec.runtime.image is unset. It is applied by the operator, not
# as a CRD default, so upgrading the operator moves every ModelService without one to the release's Triton;
# the Helm chart makes it overridable. Triton 2.51, the release the nvidia-pytriton wheel used in tests ships.
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# Serving pods when neither replicas nor autoscaling is set.
DEFAULT_REPLICAS = 1

# tritonserver flags the operator sets itself (model repository, ports, readiness): runtime.args may not.
RESERVED_TRITON_FLAGS = (
    "--model-repository",
    "--model-store",
    "--model-control-mode",
    "--strict-readiness",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
    "--allow-http",
    "--allow-grpc",
    "--allow-metrics",
)
TritonArg = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


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
    """Which model to serve: what a TrainingJob publishes, or a model directory in the artifact store."""

    training_job_ref: LocalObjectRef | None = Field(
        default=None,
        description="A TrainingJob in this namespace; each version it publishes is rolled out automatically.",
    )
    training_job_selector: LabelSelector | None = Field(
        default=None,
        description=(
            "TrainingJobs in this namespace with these labels; the newest Succeeded one (by completionTime) is "
            "served, so a team re-trains by creating a new TrainingJob with the same labels."
        ),
    )
    uri: str | None = Field(
        default=None,
        pattern=PVC_URI_PATTERN,
        description="The model's directory in the artifact store: pvc://<claim>/<path>/<model>.",
    )
    version: str = Field(
        default=LATEST,
        pattern=VERSION_PATTERN,
        description=(
            "Latest (follow the newest published version) or a version to pin. The operator resolves it and "
            "pins every pod to one version."
        ),
    )
    format: ServedFormat = Field(
        default=ServedFormat.TorchScript,
        description="Format of the model file; a TrainingJob publishes TorchScript, ONNX needs a uri.",
    )
    encryption: ModelEncryption | None = Field(
        default=None,
        description="Key Secret, with uri only: a TrainingJob source brings its own.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="[has(self.trainingJobRef), has(self.trainingJobSelector), has(self.uri)].filter(x, x).size() == 1",
            message="exactly one of trainingJobRef, trainingJobSelector and uri must be set",
            check=lambda m: [m.training_job_ref, m.training_job_selector, m.uri].count(None) == 2,
        ),
        CelRule(
            rule="!has(self.uri) || has(self.encryption)",
            message="encryption.keySecretRef is required when the model is given by uri",
            field_path=".encryption",
            check=lambda m: m.uri is None or m.encryption is not None,
        ),
        CelRule(
            rule="has(self.uri) || !has(self.encryption)",
            message="encryption is only valid with uri: a TrainingJob source brings its own key Secret",
            field_path=".encryption",
            check=lambda m: m.uri is not None or m.encryption is None,
        ),
        CelRule(
            rule="has(self.uri) || self.format == 'TorchScript'",
            message="a TrainingJob publishes TorchScript: format ONNX needs a uri",
            field_path=".format",
            check=lambda m: m.uri is not None or m.format == ServedFormat.TorchScript,
        ),
    )

    @property
    def from_training_job(self) -> bool:
        return self.uri is None


class MetricThreshold(ApiModel):
    """A bound a candidate version's metric must respect (inclusive)."""

    name: MetricName = Field(description="Metric name, as published in the TrainingJob's status.model.metrics.")
    min: MetricValue | None = Field(default=None, description="Lowest acceptable value, a decimal string.")
    max: MetricValue | None = Field(default=None, description="Highest acceptable value, a decimal string.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.min) || has(self.max)",
            message="at least one of min and max must be set",
            check=lambda t: t.min is not None or t.max is not None,
        ),
        CelRule(
            rule="!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
            message="min must not exceed max",
            field_path=".max",
            check=lambda t: t.min is None or t.max is None or Decimal(t.min) <= Decimal(t.max),
        ),
    )

    def admits(self, value: str) -> bool:
        """Whether a published metric value (a decimal string) lies within the bounds."""
        number = Decimal(value)
        if not number.is_finite():
            return False
        return (self.min is None or number >= Decimal(self.min)) and (self.max is None or number <= Decimal(self.max))


class Promotion(ApiModel):
    """What a new version must show before it is rolled out (TrainingJob sources only).

    A candidate that fails is not rolled out: the current version keeps serving and the PromotionBlocked
    condition names the metric, its value and the threshold.
    """

    require_metrics: Annotated[list[MetricThreshold], unique_by("name")] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra=map_list("name"),
        description="Thresholds on the candidate's metrics; a metric the candidate did not publish fails the gate.",
    )


class InstanceGroup(ApiModel):
    """Triton model instances per pod."""

    count: Int = Field(default=1, ge=1, le=16, description="Model instances per pod.")
    kind: InstanceKind = Field(
        default=InstanceKind.AUTO,
        description="Where instances run: GPU, CPU, or Auto (GPU when the pod has one).",
    )


class Runtime(ApiModel):
    """The Triton Inference Server that serves the model."""

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=IMAGE_PATTERN,
        description=(
            f"Triton server image. Unset: the operator release's default ({DEFAULT_TRITON_IMAGE} in this "
            "release, overridable in the Helm chart), so an operator upgrade moves it forward."
        ),
    )
    backend: TritonBackend = Field(
        default=TritonBackend.PYTORCH_LIBTORCH,
        description=(
            "Triton backend: pytorch_libtorch (TorchScript, GPU or CPU), python (TorchScript loaded by "
            "torch in a Python model, for CPU images without libtorch) or onnxruntime (ONNX)."
        ),
    )
    instance_group: InstanceGroup = Field(default=InstanceGroup(), description="Model instances per pod.")
    args: list[TritonArg] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Extra tritonserver flags, e.g. --log-verbose=1. The flags the operator sets (model repository, "
            "control mode, ports, readiness) are refused."
        ),
    )
    env: EnvList | None = Field(
        default=None, description="Extra environment of the Triton container; KUBEMAAS_* names are refused."
    )
    env_from: EnvFromList | None = Field(
        default=None, description="Secrets and ConfigMaps whose keys become variables of the Triton container."
    )
    startup_timeout_seconds: Int = Field(
        default=600,
        ge=30,
        le=86400,
        description="How long Triton may take to load the model before the pod is restarted (the startup probe).",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=(
                f"!has(self.args) || self.args.all(a, {list(RESERVED_TRITON_FLAGS)!r}"
                ".all(f, a != f && !a.startsWith(f + '=')))"
            ),
            message=f"args must not set {', '.join(RESERVED_TRITON_FLAGS)}: the operator sets them",
            field_path=".args",
            check=lambda r: (
                not any(a == f or a.startswith(f + "=") for a in r.args or () for f in RESERVED_TRITON_FLAGS)
            ),
        ),
        *reserved_env_rules((), (KUBEMAAS_ENV_PREFIX,)),
    )


class Batching(ApiModel):
    """Triton batching: requests are grouped into batches up to maxBatchSize."""

    max_batch_size: Int = Field(
        default=8,
        ge=0,
        le=4096,
        description="Largest batch Triton forms; 0 means the model takes no batch dimension.",
    )
    dynamic_batching: Toggle = Field(
        default=Toggle.ENABLED, description="Enabled: Triton's dynamic batcher groups concurrent requests."
    )
    preferred_batch_sizes: list[Int] | None = Field(
        default=None, max_length=16, description="Batch sizes the dynamic batcher aims for."
    )
    max_queue_delay_microseconds: Int = Field(
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
