"""config.pbtxt rendering, asserted as whole text for each backend."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from kubemaas.runtime.triton_config import (
    Backend,
    InstanceKind,
    ServingSettings,
    Toggle,
    add_serving_arguments,
    render_config,
    settings_from_args,
    settings_to_args,
)


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]


INPUTS = [Tensor("INPUT__0", "FP32", (16,))]
OUTPUTS = [Tensor("OUTPUT__0", "FP32", (4,))]


def test_pytorch_libtorch_gpu_with_dynamic_batching() -> None:
    settings = ServingSettings(
        backend=Backend.PYTORCH_LIBTORCH,
        max_batch_size=32,
        preferred_batch_sizes=(8, 16),
        max_queue_delay_us=500,
        instance_count=2,
        instance_kind=InstanceKind.GPU,
    )
    text = render_config(model_name="digits", model_version="v3", settings=settings, inputs=INPUTS, outputs=OUTPUTS)
    assert text == (
        'name: "digits"\n'
        'platform: "pytorch_libtorch"\n'
        'default_model_filename: "model.pt"\n'
        "max_batch_size: 32\n"
        "input [\n"
        "  {\n"
        '    name: "INPUT__0"\n'
        "    data_type: TYPE_FP32\n"
        "    dims: [ 16 ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        '    name: "OUTPUT__0"\n'
        "    data_type: TYPE_FP32\n"
        "    dims: [ 4 ]\n"
        "  }\n"
        "]\n"
        "instance_group [\n"
        "  {\n"
        "    count: 2\n"
        "    kind: KIND_GPU\n"
        "  }\n"
        "]\n"
        "dynamic_batching {\n"
        "  preferred_batch_size: [ 8, 16 ]\n"
        "  max_queue_delay_microseconds: 500\n"
        "}\n"
        "parameters {\n"
        '  key: "kubemaas_model_version"\n'
        '  value: { string_value: "v3" }\n'
        "}\n"
    )


def test_python_cpu_without_batching_two_inputs() -> None:
    settings = ServingSettings(
        backend=Backend.PYTHON,
        max_batch_size=16,
        dynamic_batching=Toggle.DISABLED,
        preferred_batch_sizes=(4,),
        instance_kind=InstanceKind.CPU,
    )
    inputs = [Tensor("features", "FP32", (8,)), Tensor("mask", "BOOL", (8,))]
    outputs = [Tensor("logits", "FP16", (3, 2))]
    text = render_config(model_name="m", model_version="20240101", settings=settings, inputs=inputs, outputs=outputs)
    assert text == (
        'name: "m"\n'
        'backend: "python"\n'
        "max_batch_size: 16\n"
        "input [\n"
        "  {\n"
        '    name: "features"\n'
        "    data_type: TYPE_FP32\n"
        "    dims: [ 8 ]\n"
        "  },\n"
        "  {\n"
        '    name: "mask"\n'
        "    data_type: TYPE_BOOL\n"
        "    dims: [ 8 ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        '    name: "logits"\n'
        "    data_type: TYPE_FP16\n"
        "    dims: [ 3, 2 ]\n"
        "  }\n"
        "]\n"
        "instance_group [\n"
        "  {\n"
        "    count: 1\n"
        "    kind: KIND_CPU\n"
        "  }\n"
        "]\n"
        "parameters {\n"
        '  key: "kubemaas_model_version"\n'
        '  value: { string_value: "20240101" }\n'
        "}\n"
    )


def test_onnxruntime_without_batch_dimension_gets_a_variable_leading_dim() -> None:
    # Dynamic batching stays Enabled (the default), but without a batch dimension it is not rendered.
    settings = ServingSettings(backend=Backend.ONNXRUNTIME, max_batch_size=0, instance_count=3)
    text = render_config(
        model_name="onnx-model",
        model_version='we"ird',
        settings=settings,
        inputs=[Tensor("x", "INT64", (5,))],
        outputs=[Tensor("y", "BYTES", (1,))],
    )
    assert text == (
        'name: "onnx-model"\n'
        'platform: "onnxruntime_onnx"\n'
        'default_model_filename: "model.onnx"\n'
        "max_batch_size: 0\n"
        "input [\n"
        "  {\n"
        '    name: "x"\n'
        "    data_type: TYPE_INT64\n"
        "    dims: [ -1, 5 ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        '    name: "y"\n'
        "    data_type: TYPE_STRING\n"
        "    dims: [ -1, 1 ]\n"
        "  }\n"
        "]\n"
        "instance_group [\n"
        "  {\n"
        "    count: 3\n"
        "    kind: KIND_AUTO\n"
        "  }\n"
        "]\n"
        "parameters {\n"
        '  key: "kubemaas_model_version"\n'
        '  value: { string_value: "we\\"ird" }\n'
        "}\n"
    )


def test_dynamic_batching_without_preferred_sizes_renders_only_the_delay() -> None:
    settings = ServingSettings(max_batch_size=4, max_queue_delay_us=0)
    text = render_config(model_name="m", model_version="1", settings=settings, inputs=INPUTS, outputs=OUTPUTS)
    assert "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n" in text
    assert "preferred_batch_size" not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 4, "preferred_batch_sizes": (8,)}, "preferred batch size 8"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (0,)}, "preferred batch size 0"),
        ({"max_batch_size": -1}, "greater than or equal to 0"),
        ({"instance_count": 0}, "greater than or equal to 1"),
        ({"max_queue_delay_us": -5}, "greater than or equal to 0"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServingSettings.model_validate(kwargs)


def test_unknown_datatype_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported tensor datatype 'COMPLEX64'"):
        render_config(
            model_name="m",
            model_version="1",
            settings=ServingSettings(),
            inputs=[Tensor("x", "COMPLEX64", (1,))],
            outputs=OUTPUTS,
        )


def test_a_model_without_outputs_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one output"):
        render_config(model_name="m", model_version="1", settings=ServingSettings(), inputs=INPUTS, outputs=[])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_serving_arguments(parser)
    return parser


def test_flags_round_trip_through_the_init_container_args() -> None:
    settings = ServingSettings(
        backend=Backend.PYTORCH_LIBTORCH,
        max_batch_size=64,
        dynamic_batching=Toggle.DISABLED,
        preferred_batch_sizes=(16, 32),
        max_queue_delay_us=2000,
        instance_count=2,
        instance_kind=InstanceKind.GPU,
    )
    parsed = settings_from_args(_parser().parse_args(settings_to_args(settings)))
    assert parsed == settings


def test_flag_defaults_are_the_model_defaults() -> None:
    assert settings_from_args(_parser().parse_args([])) == ServingSettings()


def test_bad_flag_values_are_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--backend", "tensorflow"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--instance-kind", "TPU"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--dynamic-batching", "on"])
