"""Behaviour of the API models beyond the invalid cases: defaults, quantities, wire format, messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from kubemaas.api import (
    API_VERSION,
    MODEL_NAME_MAX_LENGTH,
    MODEL_NAME_PATTERN,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    VERSION_PATTERN,
    ModelService,
    ModelServiceSpec,
    RendezvousEnv,
    TrainingJob,
    TrainingJobSpec,
    immutable_changes,
)
from kubemaas.api.base import LABEL_VALUE_PATTERN
from kubemaas.api.core import Resources
from kubemaas.api.errors import describe, field_path, summary
from kubemaas.api.modelservice import (
    DEFAULT_REPLICAS,
    DEFAULT_TRITON_IMAGE,
    InstanceKind,
    MetricThreshold,
    RolloutStrategy,
    Toggle,
    TritonBackend,
)
from kubemaas.api.trainingjob import Backend, KeyGeneration, Output, PublishedModel

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


def _lax_scalars(schema: Any, path: str = "") -> Iterator[str]:
    """Paths of int and bool validators in a pydantic core schema that are not strict."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, str) and kind in {"int", "bool", "float"} and not schema.get("strict"):
            yield f"{path} ({schema['type']})"
        for key, value in schema.items():
            if key != "serialization":  # how values are written out, not what is accepted
                yield from _lax_scalars(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _lax_scalars(value, f"{path}[{i}]")


@pytest.mark.parametrize("model", [TrainingJob, ModelService], ids=lambda m: m.__name__)
def test_no_lax_integer_or_boolean_in_the_api(model: type[TrainingJob] | type[ModelService]) -> None:
    # Lax pydantic would accept gpus: "2" and suspend: "yes" that the API server refuses.
    assert list(_lax_scalars(model.__pydantic_core_schema__)) == []


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"replicas": "2"}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"resources": {"gpus": "2"}}, "resources.gpus"),
        ({"runPolicy": {"suspend": "yes"}}, "runPolicy.suspend"),
        ({"runPolicy": {"suspend": 1}}, "runPolicy.suspend"),
    ],
)
def test_strings_and_numbers_are_not_coerced(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate({**MINIMAL_TJ, **patch})
    assert any(line.startswith(f"{field}:") for line in describe(info.value)), describe(info.value)


def test_immutable_changes_name_what_defines_the_run_only() -> None:
    body = {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": "digits"}, "spec": MINIMAL_TJ}
    old = TrainingJob.parse(body)
    assert immutable_changes(old, old) == []
    requeued = {**MINIMAL_TJ, "runPolicy": {"suspend": True}, "scheduling": {"queueName": "b"}}
    assert immutable_changes(old, TrainingJob.parse({**body, "spec": requeued})) == []
    changed = {**MINIMAL_TJ, "image": "trainer:2", "data": {"uri": "pvc://data/x"}}
    assert immutable_changes(old, TrainingJob.parse({**body, "spec": changed})) == [
        "spec.image: image is immutable",
        "spec.data: data is immutable",
    ]


@pytest.mark.parametrize("name", ["MASTER_ADDR", "RANK", "JOB_COMPLETION_INDEX", "KUBEMAAS_ANYTHING", "PET_RDZV_ID"])
def test_reserved_environment_is_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        TrainingJobSpec.model_validate({**MINIMAL_TJ, "env": [{"name": name, "value": "x"}]})


@pytest.mark.parametrize("name", ["MY_KUBEMAAS_SETTING", "KUBEMAAS", "PETS", "NCCL_DEBUG", "HF_HOME"])
def test_user_environment_is_accepted(name: str) -> None:
    spec = TrainingJobSpec.model_validate({**MINIMAL_TJ, "env": [{"name": name, "value": "x"}]})
    assert spec.env is not None and spec.env[0].name == name


def test_rendezvous_names_are_defined_once() -> None:
    assert set(RESERVED_ENV) == {str(v) for v in RendezvousEnv}
    assert "JOB_COMPLETION_INDEX" in RESERVED_ENV
    assert "KUBEMAAS_" in RESERVED_ENV_PREFIXES


@pytest.mark.parametrize("version", ["v1", "20261129-1200", "digits-3f2a9c1b", "1.2.3", "A_b"])
def test_versions_are_label_values(version: str) -> None:
    # The served version is a label on the serving pods.
    assert re.match(VERSION_PATTERN, version) and re.match(LABEL_VALUE_PATTERN, version)


@pytest.mark.parametrize("version", ["v1.", "-v1", "_v1", "v 1", "v" * 64, ""])
def test_versions_that_are_not_label_values_are_refused(version: str) -> None:
    assert not re.match(VERSION_PATTERN, version)


def test_store_names_follow_the_exported_rule() -> None:
    output = Output.model_json_schema(by_alias=True)["properties"]["modelName"]["anyOf"][0]
    assert (output["pattern"], output["maxLength"]) == (MODEL_NAME_PATTERN, MODEL_NAME_MAX_LENGTH)
    assert re.match(MODEL_NAME_PATTERN, "digits") and not re.match(MODEL_NAME_PATTERN, "Digits")


def _service(**spec: Any) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate({"model": {"trainingJobRef": {"name": "digits"}}, **spec})


def test_fixed_replicas() -> None:
    assert _service().fixed_replicas == DEFAULT_REPLICAS
    assert _service(replicas=3).fixed_replicas == 3
    assert _service(replicas=0).fixed_replicas == 0
    assert _service(autoscaling={"maxReplicas": 4}).fixed_replicas is None


@pytest.mark.parametrize(
    ("threshold", "value", "admitted"),
    [
        ({"min": "0.9"}, "0.9", True),
        ({"min": "0.9"}, "0.8999", False),
        ({"max": "0.25"}, "2.5e-1", True),
        ({"max": "0.25"}, "0.2500001", False),
        ({"min": "-1", "max": "1"}, "0", True),
        ({"min": "0.9"}, "NaN", False),
    ],
)
def test_metric_threshold_bounds_are_inclusive_decimals(threshold: dict[str, str], value: str, admitted: bool) -> None:
    assert MetricThreshold.model_validate({"name": "heldOutAccuracy", **threshold}).admits(value) is admitted


def test_duplicate_env_names_are_refused_naming_the_index() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate(
            {**MINIMAL_TJ, "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}
        )
    assert describe(info.value) == ["env: Duplicate value: [1] repeats name='A'"]


def test_reported_metrics_become_decimal_strings_the_status_accepts() -> None:
    reported = {"heldOutAccuracy": 0.97, "loss": 1e-05, "steps": 300.0, "diverged": float("nan"), "bad name": 1.0}
    metrics = PublishedModel.metrics_from(reported)
    assert metrics == {"heldOutAccuracy": "0.97", "loss": "1e-05", "steps": "300.0"}
    sha = "0" * 64
    model = PublishedModel(uri="pvc://m/s/digits/v1", version="v1", sha256=sha, key_id="k1", metrics=metrics)
    assert model.metrics == metrics and MetricThreshold(name="heldOutAccuracy", min="0.95").admits(
        metrics["heldOutAccuracy"]
    )
    many = {f"m{i:03d}": float(i) for i in range(100)}
    assert len(PublishedModel.metrics_from(many)) == 64
