"""Behaviour of the API models beyond the invalid cases: defaults, quantities, wire format, messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubemaas.api import ModelServiceSpec, TrainingJobSpec
from kubemaas.api.core import Resources
from kubemaas.api.errors import describe, field_path, summary
from kubemaas.api.modelservice import (
    DEFAULT_REPLICAS,
    DEFAULT_TRITON_IMAGE,
    InstanceKind,
    RolloutStrategy,
    Toggle,
    TritonBackend,
)
from kubemaas.api.trainingjob import Backend, KeyGeneration

MINIMAL_TJ = {
    "image": "trainer:1",
    "output": {"uri": "pvc://models/store"},
    "encryption": {"keySecretRef": {"name": "key"}},
}


def test_training_defaults() -> None:
    spec = TrainingJobSpec.model_validate(MINIMAL_TJ)
    assert (spec.replicas, spec.nproc_per_node, spec.resources.gpus) == (1, 1, 0)
    assert spec.backend is Backend.Auto
    assert spec.encryption.generate_key is KeyGeneration.IfMissing
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False


def test_serving_defaults() -> None:
    spec = ModelServiceSpec.model_validate({"model": {"trainingJobRef": {"name": "digits"}}})
    # Not a schema default: persisted into every object, it would pin Triton across operator upgrades.
    assert spec.runtime.image is None and "image" not in spec.to_wire()["runtime"]
    assert DEFAULT_TRITON_IMAGE.startswith("nvcr.io/nvidia/tritonserver:")
    assert spec.runtime.backend is TritonBackend.PYTORCH_LIBTORCH
    assert spec.runtime.instance_group.kind is InstanceKind.AUTO
    assert spec.batching.dynamic_batching is Toggle.ENABLED
    assert spec.rollout.strategy is RolloutStrategy.RollingUpdate
    assert spec.autoscaling is None and spec.replicas is None and spec.fixed_replicas == DEFAULT_REPLICAS == 1


def test_defaults_are_not_shared_between_objects() -> None:
    a = ModelServiceSpec.model_validate({"model": {"trainingJobRef": {"name": "a"}}})
    b = ModelServiceSpec.model_validate({"model": {"trainingJobRef": {"name": "b"}}})
    a.batching.max_batch_size = 99
    assert b.batching.max_batch_size == 8


def test_wire_format_is_camel_case_without_nulls() -> None:
    wire = TrainingJobSpec.model_validate(MINIMAL_TJ).to_wire()
    assert wire["nprocPerNode"] == 1
    assert wire["encryption"] == {"keySecretRef": {"name": "key"}, "generateKey": "IfMissing"}
    assert "scheduling" not in wire and "data" not in wire
    assert TrainingJobSpec.model_validate(wire) == TrainingJobSpec.model_validate(MINIMAL_TJ)


@pytest.mark.parametrize("value", [0, 2, "2", "500m", "1.5", "4Gi", "512Mi", "1e3", "100k"])
def test_quantity_accepts(value: int | str) -> None:
    assert Resources(cpu=value).cpu == value


@pytest.mark.parametrize("value", [-1, "-1", "1.5.2", "4GB", "", "two", True, 1.5])
def test_quantity_rejects(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Resources.model_validate({"cpu": value})
    assert describe(info.value) == ["cpu: must be a Kubernetes quantity such as 500m, 2 or 4Gi"]


def test_field_path_rendering() -> None:
    assert field_path(("spec", "env", 0, "name")) == "spec.env[0].name"
    assert field_path(("spec", "autoscaling"), ".maxReplicas") == "spec.autoscaling.maxReplicas"
    assert field_path((), ".metadata.name") == "metadata.name"
    assert field_path(()) == "<object>"


def test_summary_joins_every_problem_on_one_line() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate({**MINIMAL_TJ, "replicas": 0, "backend": "Nope"})
    line = summary(info.value)
    assert "\n" not in line
    assert line.startswith("replicas: Input should be greater than or equal to 1; backend: Input should be")


def test_messages_never_echo_env_values() -> None:
    # env values may be sensitive even though the docs say not to put secrets there.
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate({**MINIMAL_TJ, "env": [{"name": "RANK", "value": "s3cr3t-value"}]})
    assert "s3cr3t-value" not in summary(info.value)
