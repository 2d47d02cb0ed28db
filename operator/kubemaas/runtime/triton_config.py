"""Render a Triton ``config.pbtxt`` from typed serving settings and a model's tensor signature.

The serving settings come from the ModelService spec; the operator passes them to the model-loader
init container as command-line flags, defined beside the settings in kubemaas.contract.serving (the
contract between the operator and the loader image) and re-exported here for the loader.

Batching rules (Triton semantics, made explicit):

* ``max_batch_size == 0``: the model has no batch dimension in Triton's sense; the manifest's dims
  exclude the batch, so a leading ``-1`` is added to let clients send any number of rows, and no
  dynamic batcher is rendered (Triton refuses one without a batch dimension).
* ``max_batch_size > 0``: Triton adds the batch dimension; with ``dynamic_batching: Enabled`` the
  dynamic batcher combines concurrent requests up to that size, with the preferred sizes and the
  queue delay. ``Disabled`` runs every request as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# One set of enums for the API and the loader: the operator passes ModelService values straight through.
from kubemaas.api.modelservice import InstanceKind, ServedFormat, Toggle
from kubemaas.api.modelservice import TritonBackend as Backend
from kubemaas.contract.serving import ServingSettings, add_serving_arguments, settings_from_args, settings_to_args

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
