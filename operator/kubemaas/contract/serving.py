"""The serving settings the operator hands the model loader, as command-line flags.

The operator renders a ModelService's Triton settings into the model-loader init container's args
(:func:`settings_to_args`); the loader parses them back (:func:`add_serving_arguments`,
:func:`settings_from_args`) and renders ``config.pbtxt`` (kubemaas.runtime.triton_config). The flag
names are the contract between the operator and the loader image.
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

# One set of enums for the API and the loader: the operator passes ModelService values straight through.
from kubemaas.api.modelservice import InstanceKind, Toggle
from kubemaas.api.modelservice import TritonBackend as Backend

__all__ = [
    "Backend",
    "InstanceKind",
    "ServingSettings",
    "Toggle",
    "add_serving_arguments",
    "settings_from_args",
    "settings_to_args",
]


class ServingSettings(BaseModel):
    """The Triton-facing part of a ModelService: backend, batching and instance placement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = Backend.PYTORCH_LIBTORCH
    max_batch_size: int = Field(default=8, ge=0)
    dynamic_batching: Toggle = Toggle.ENABLED
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = Field(default=100, ge=0)
    instance_count: int = Field(default=1, ge=1)
    instance_kind: InstanceKind = InstanceKind.AUTO

    @model_validator(mode="after")
    def _preferred_sizes_fit(self) -> ServingSettings:
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} must be between 1 and max batch size {self.max_batch_size}"
                )
        return self

    @property
    def dynamic_batcher_on(self) -> bool:
        # Triton refuses a dynamic batcher on a model without a batch dimension.
        return self.dynamic_batching is Toggle.ENABLED and self.max_batch_size > 0


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the serving-settings flags (the operator builds the init container's args from these)."""
    defaults = ServingSettings()
    group = parser.add_argument_group("serving settings (rendered into config.pbtxt)")
    group.add_argument(
        "--backend", choices=[b.value for b in Backend], default=defaults.backend.value, help="Triton backend"
    )
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.max_batch_size,
        help="largest batch Triton forms; 0: the model takes no batch dimension",
    )
    group.add_argument(
        "--dynamic-batching",
        choices=[t.value for t in Toggle],
        default=defaults.dynamic_batching.value,
        help="Enabled: Triton's dynamic batcher groups concurrent requests",
    )
    group.add_argument(
        "--preferred-batch-size",
        type=int,
        action="append",
        default=[],
        dest="preferred_batch_sizes",
        help="preferred dynamic batch size (repeatable)",
    )
    group.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=defaults.max_queue_delay_us,
        help="how long the dynamic batcher may hold a request to form a larger batch (microseconds)",
    )
    group.add_argument("--instance-count", type=int, default=defaults.instance_count)
    group.add_argument(
        "--instance-kind",
        choices=[k.value for k in InstanceKind],
        default=defaults.instance_kind.value,
        help="Auto: GPU when the pod has one",
    )


def settings_from_args(args: argparse.Namespace) -> ServingSettings:
    """Build validated settings from flags parsed by a parser that had :func:`add_serving_arguments`."""
    return ServingSettings(
        backend=Backend(args.backend),
        max_batch_size=args.max_batch_size,
        dynamic_batching=Toggle(args.dynamic_batching),
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instance_count,
        instance_kind=InstanceKind(args.instance_kind),
    )


def settings_to_args(settings: ServingSettings) -> list[str]:
    """The inverse of :func:`settings_from_args`: the flags the operator puts in the init container's args."""
    args = [
        f"--backend={settings.backend.value}",
        f"--max-batch-size={settings.max_batch_size}",
        f"--dynamic-batching={settings.dynamic_batching.value}",
        f"--max-queue-delay-us={settings.max_queue_delay_us}",
        f"--instance-count={settings.instance_count}",
        f"--instance-kind={settings.instance_kind.value}",
    ]
    args.extend(f"--preferred-batch-size={size}" for size in settings.preferred_batch_sizes)
    return args
