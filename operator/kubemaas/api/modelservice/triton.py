"""The Triton Inference Server of a ModelService: image, backend, model instances, flags, environment,
batching.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    IMAGE_PATTERN,
    ApiModel,
    CelRule,
    Int,
)
from kubemaas.api.core import (
    KUBEMAAS_ENV_PREFIX,
    EnvFromList,
    EnvList,
    reserved_env_rules,
)

# The Triton image the operator uses when spec.runtime.image is unset. It is applied by the operator, not
# as a CRD default, so upgrading the operator moves every ModelService without one to the release's Triton;
# the Helm chart makes it overridable. Triton 2.51, the release the nvidia-pytriton wheel used in tests ships.
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"

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
