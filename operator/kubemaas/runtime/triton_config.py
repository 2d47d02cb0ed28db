"""Render a Triton ``config.pbtxt`` from typed serving settings and a model's tensor signature.

The serving settings come from the ModelService spec; the operator passes them to the model-loader
init container as command-line flags (:func:`add_serving_arguments` / :func:`settings_from_args`),
so the flag names here are part of the contract between the operator and the loader image.

Batching rules (Triton semantics, made explicit):

* ``max_batch_size == 0``: the model has no batch dimension in Triton's sense; the manifest's dims
  exclude the batch, so a leading ``-1`` is added to let clients send any number of rows, and no
  dynamic batcher is rendered (Triton refuses one without a batch dimension).
* ``max_batch_size > 0``: Triton adds the batch dimension; with ``dynamic_batching: Enabled`` the
  dynamic batcher combines concurrent requests up to that size, with the preferred sizes and the
  queue delay. ``Disabled`` runs every request as it came.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

# One set of enums for the API and the loader: the operator passes ModelService values straight through.
from kubemaas.api.modelservice import InstanceKind, ServedFormat, Toggle
from kubemaas.api.modelservice import TritonBackend as Backend

__all__ = [
    "BACKEND_FORMATS",
    "MODEL_FILE_NAMES",
    "VERSION_PARAMETER",
    "Backend",
    "InstanceKind",
    "ServingSettings",
    "TensorSignature",
    "Toggle",
    "add_serving_arguments",
    "render_config",
    "settings_from_args",
    "settings_to_args",
    "triton_data_type",
    "triton_kind",
]


def triton_kind(kind: InstanceKind) -> str:
    # KIND_AUTO: GPU when the pod has one, else CPU (Triton decides at load time).
    return f"KIND_{kind.value.upper()}"


class TensorSignature(Protocol):
    """One input or output as the artifact manifest records it (dims exclude the batch dimension)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def dims(self) -> Sequence[int]: ...


# KServe v2 datatypes (what the manifest records) -> Triton model-config data types.
_TRITON_DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}

# What each backend expects to find in the version directory.
MODEL_FILE_NAMES = {
    Backend.PYTORCH_LIBTORCH: "model.pt",
    Backend.PYTHON: "model.pt",
    Backend.ONNXRUNTIME: "model.onnx",
}

# Artifact format each backend can serve.
BACKEND_FORMATS = {
    Backend.PYTORCH_LIBTORCH: ServedFormat.TorchScript,
    Backend.PYTHON: ServedFormat.TorchScript,
    Backend.ONNXRUNTIME: ServedFormat.ONNX,
}

# Model-config parameter that records the artifact version a repository was built from.
VERSION_PARAMETER = "kubemaas_model_version"


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


def triton_data_type(datatype: str) -> str:
    try:
        return _TRITON_DATA_TYPES[datatype]
    except KeyError:
        raise ValueError(f"unsupported tensor datatype {datatype!r}") from None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(tensor: TensorSignature, *, implicit_batch: bool) -> str:
    dims = list(tensor.dims) if implicit_batch else [-1, *tensor.dims]
    return (
        "  {\n"
        f"    name: {_quote(tensor.name)}\n"
        f"    data_type: {triton_data_type(tensor.datatype)}\n"
        f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
        "  }"
    )


def _tensor_list(key: str, tensors: Sequence[TensorSignature], *, implicit_batch: bool) -> str:
    if not tensors:
        raise ValueError(f"a model needs at least one {key} tensor")
    blocks = ",\n".join(_tensor_block(t, implicit_batch=implicit_batch) for t in tensors)
    return f"{key} [\n{blocks}\n]\n"


def _backend_lines(backend: Backend) -> str:
    # platform pins the libtorch/ONNX loaders by file type; the python backend is named by backend.
    if backend is Backend.PYTORCH_LIBTORCH:
        return 'platform: "pytorch_libtorch"\ndefault_model_filename: "model.pt"\n'
    if backend is Backend.ONNXRUNTIME:
        return 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"\n'
    return 'backend: "python"\n'


def _dynamic_batching_block(settings: ServingSettings) -> str:
    if not settings.dynamic_batcher_on:
        return ""
    lines = ["dynamic_batching {"]
    if settings.preferred_batch_sizes:
        sizes = ", ".join(str(s) for s in settings.preferred_batch_sizes)
        lines.append(f"  preferred_batch_size: [ {sizes} ]")
    lines.append(f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_config(
    *,
    model_name: str,
    model_version: str,
    settings: ServingSettings,
    inputs: Sequence[TensorSignature],
    outputs: Sequence[TensorSignature],
) -> str:
    """Return the whole ``config.pbtxt`` text (protobuf text format) for one model."""
    implicit_batch = settings.max_batch_size > 0
    return (
        f"name: {_quote(model_name)}\n"
        + _backend_lines(settings.backend)
        + f"max_batch_size: {settings.max_batch_size}\n"
        + _tensor_list("input", inputs, implicit_batch=implicit_batch)
        + _tensor_list("output", outputs, implicit_batch=implicit_batch)
        + "instance_group [\n"
        + f"  {{\n    count: {settings.instance_count}\n    kind: {triton_kind(settings.instance_kind)}\n  }}\n"
        + "]\n"
        + _dynamic_batching_block(settings)
        + "parameters {\n"
        + f"  key: {_quote(VERSION_PARAMETER)}\n"
        + f"  value: {{ string_value: {_quote(model_version)} }}\n"
        + "}\n"
    )


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
