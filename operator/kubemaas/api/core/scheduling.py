"""What each pod gets and where it runs: compute resources (GPUs included), tolerations, scheduling."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from kubemaas.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    LABEL_VALUE_PATTERN,
    ApiModel,
    CelRule,
    Int,
    Quantity,
)
from kubemaas.api.core.labels import LabelKey, LabelMap, LabelValue

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
EXTENDED_RESOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"


class Resources(ApiModel):
    """Compute resources of each pod.

    cpu and memory become requests equal to limits, and GPUs become limits of gpuResource (for which
    Kubernetes sets the request equal). The pod's QoS class is therefore Guaranteed only when both cpu
    and memory are set: a pod with GPUs alone is BestEffort (Kubernetes ignores extended resources for
    QoS), one with only cpu or only memory is Burstable.
    """

    gpus: Int = Field(default=0, ge=0, le=64, description="GPUs per pod, requested as limits of gpuResource.")
    gpu_resource: str | None = Field(
        default=None,
        pattern=EXTENDED_RESOURCE_PATTERN,
        max_length=253,
        description=(
            f"Extended resource the GPUs are requested as; {DEFAULT_GPU_RESOURCE} when unset. A MIG profile such "
            "as nvidia.com/mig-1g.10gb asks for MIG slices (the NVIDIA device plugin's mixed strategy)."
        ),
    )
    cpu: Quantity | None = Field(default=None, description="CPU per pod as a Kubernetes quantity, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory per pod as a Kubernetes quantity, e.g. 16Gi.")
    shm_size: Quantity | None = Field(
        default=None,
        description=(
            "Size of /dev/shm, a memory-backed emptyDir (NCCL and DataLoader workers need more than the "
            "container runtime's 64Mi); its pages count against the memory limit."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.gpuResource) || self.gpus > 0",
            message="gpuResource needs gpus > 0",
            field_path=".gpuResource",
            check=lambda r: r.gpu_resource is None or r.gpus > 0,
        ),
    )


class TolerationOperator(StrEnum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(StrEnum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


class Toleration(ApiModel):
    """A pod toleration, as in core/v1, with the API server's rules for pods."""

    key: LabelKey | None = Field(default=None, description="Taint key the toleration applies to; empty matches all.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.Equal, description="How key and value are compared: Exists or Equal."
    )
    value: LabelValue | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; empty matches all.")
    toleration_seconds: Int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists",
            field_path=".value",
            check=lambda t: t.operator != TolerationOperator.Exists or not t.value,
        ),
        CelRule(
            rule="(has(self.key) && self.key != '') || self.operator == 'Exists'",
            message="operator must be Exists when key is empty",
            field_path=".operator",
            check=lambda t: bool(t.key) or t.operator == TolerationOperator.Exists,
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds is only valid with effect NoExecute",
            field_path=".tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == TaintEffect.NoExecute,
        ),
    )


class Scheduling(ApiModel):
    """Where and how pods are scheduled."""

    node_selector: LabelMap | None = Field(
        default=None, description="Node labels a pod's node must carry (core/v1 nodeSelector)."
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description="Pod tolerations.")
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="PriorityClass of the pods."
    )
    queue_name: str | None = Field(
        default=None,
        pattern=LABEL_VALUE_PATTERN,
        max_length=63,
        description=(
            "Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label on the workload. A TrainingJob shows "
            "Kueue's decision as its Queued and Admitted conditions; with no queue, suspend is the user's alone."
        ),
    )
    scheduler_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Scheduler for the pods, e.g. a gang scheduler such as volcano; default-scheduler if unset.",
    )
