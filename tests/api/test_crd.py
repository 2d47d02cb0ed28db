"""The generated CRDs: structural, documented, fresh, and what `kubectl` users see."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas.api.crd import KINDS, Kind, crd, openapi_schema, render_all
from tests.api.cases import CRDS_DIR, REPO
from tests.api.schema import walk

# The JSONSchemaProps fields apiextensions.k8s.io/v1 accepts, less those a structural schema forbids
# ($ref, definitions, nullable unions ...).
ALLOWED_KEYWORDS = {
    "type", "format", "description", "default", "enum", "properties", "additionalProperties", "items",
    "required", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "multipleOf",
    "nullable", "anyOf", "x-kubernetes-int-or-string", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
}  # fmt: skip
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Kind) -> None:
    for path, node in walk(openapi_schema(kind)):
        unknown = set(node) - ALLOWED_KEYWORDS
        assert not unknown, f"{kind.kind}{path}: unknown keywords {unknown}"
        assert "$ref" not in node, f"{kind.kind}{path}: $ref"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == INT_OR_STRING and "type" not in node, f"{kind.kind}{path}"
            continue
        assert "anyOf" not in node, f"{kind.kind}{path}: anyOf (a nullable union?)"
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, f"{kind.kind}{path}: type"
        if node["type"] == "array":
            assert "items" in node, f"{kind.kind}{path}: array without items"
        assert node.get("default", 0) is not None, f"{kind.kind}{path}: null default"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind: Kind) -> None:
    for path, node in walk(openapi_schema(kind)):
        if path in {"", ".metadata"} or path.endswith("[]") or path.endswith("{}"):
            continue
        assert node.get("description"), f"{kind.kind}{path} has no description (kubectl explain shows it)"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_conditions_are_a_map_keyed_by_type(kind: Kind) -> None:
    conditions = openapi_schema(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_cross_field_rules_are_in_the_crd() -> None:
    ms = openapi_schema(KINDS[1])
    autoscaling = ms["properties"]["spec"]["properties"]["autoscaling"]
    assert {
        "rule": "self.maxReplicas >= self.minReplicas",
        "message": "maxReplicas must be greater than or equal to minReplicas",
        "fieldPath": ".maxReplicas",
    } in autoscaling["x-kubernetes-validations"]
    tj = openapi_schema(KINDS[0])
    image = tj["properties"]["spec"]["properties"]["image"]
    assert {"rule": "self == oldSelf", "message": "image is immutable"} in image["x-kubernetes-validations"]


def test_names_columns_and_subresources() -> None:
    by_kind = {k.kind: crd(k) for k in KINDS}
    for kind, short in (("TrainingJob", "tj"), ("ModelService", "ms")):
        spec = by_kind[kind]["spec"]
        assert spec["group"] == "kubemaas.io"
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == ["kubemaas"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    printed = by_kind["ModelService"]["spec"]["versions"][0]["additionalPrinterColumns"]
    columns = {c["name"]: c["jsonPath"] for c in printed}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Version"] == ".status.servedVersion"


def test_committed_crds_are_fresh() -> None:
    for name, text in render_all().items():
        assert (CRDS_DIR / name).read_text() == text, f"crds/{name} is stale: run `make crds`"
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def _run_check(package_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run(
        [sys.executable, "-m", "kubemaas.cli", "crds", "--check", "--out", str(CRDS_DIR)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_check_fails_naming_the_file_when_a_description_changes(tmp_path: Path) -> None:
    copy = tmp_path / "operator"
    shutil.copytree(REPO / "operator" / "kubemaas", copy / "kubemaas", ignore=shutil.ignore_patterns("__pycache__"))
    assert _run_check(copy).returncode == 0, "the unmodified copy must be fresh"

    source = copy / "kubemaas" / "api" / "modelservice" / "spec.py"
    text = source.read_text()
    assert 'description="Triton batching."' in text
    source.write_text(text.replace('description="Triton batching."', 'description="Batching."'))

    result = _run_check(copy)
    assert result.returncode == 1
    assert "kubemaas.io_modelservices.yaml: stale" in result.stderr
    assert "trainingjobs" not in result.stderr


def _spec(kind: str) -> dict[str, Any]:
    schema = openapi_schema(next(k for k in KINDS if k.kind == kind))
    spec: dict[str, Any] = schema["properties"]["spec"]
    return spec


def test_every_immutable_field_is_guarded_when_added_or_removed() -> None:
    # A rule on the field runs only when the field exists on both sides; its parent must check presence.
    spec = _spec("TrainingJob")
    parent_rules = spec["x-kubernetes-validations"]
    immutable = [
        name
        for name, node in spec["properties"].items()
        if {"rule": "self == oldSelf", "message": f"{name} is immutable"} in node.get("x-kubernetes-validations", ())
    ]
    assert {"image", "command", "args", "env", "data", "output", "encryption", "volumes"} <= set(immutable)
    for name in immutable:
        node = spec["properties"][name]
        presence = {
            "fieldPath": f".{name}",
            "message": f"{name} is immutable",
            "rule": f"has(self.{name}) == has(oldSelf.{name})",
        }
        if name in spec["required"] or "default" in node:
            assert presence not in parent_rules, f"{name} cannot vanish: no presence rule needed"
        else:
            assert presence in parent_rules, f"spec.{name} can be added or removed unchecked"
    assert "runPolicy" not in immutable and "scheduling" not in immutable


def test_an_immutable_field_under_an_optional_parent_is_refused() -> None:
    from pydantic import Field

    from kubemaas.api.base import ApiModel, immutable
    from kubemaas.api.crd import structural

    class Inner(ApiModel):
        pinned: str = Field(json_schema_extra=immutable(), description="x")

    class Outer(ApiModel):
        inner: Inner | None = Field(default=None, description="may come and go, taking pinned with it")

    class Items(ApiModel):
        inners: list[Inner] | None = Field(default=None, description="list items are not correlated")

    for model in (Outer, Items):
        raw = model.model_json_schema(by_alias=True)
        with pytest.raises(ValueError, match=r"immutable field .*pinned sits under"):
            structural(raw, raw.get("$defs", {}))


@pytest.mark.parametrize(
    ("kind", "path", "key"),
    [
        ("TrainingJob", ("env",), "name"),
        ("TrainingJob", ("volumes",), "name"),
        ("TrainingJob", ("volumeMounts",), "mountPath"),
        ("TrainingJob", ("imagePullSecrets",), "name"),
        ("ModelService", ("runtime", "env"), "name"),
        ("ModelService", ("promotion", "requireMetrics"), "name"),
    ],
)
def test_keyed_lists_are_map_lists(kind: str, path: tuple[str, ...], key: str) -> None:
    node = _spec(kind)
    for part in path:
        node = node["properties"][part]
    assert node["x-kubernetes-list-type"] == "map" and node["x-kubernetes-list-map-keys"] == [key]
    assert key in node["items"]["required"], "map-list keys must be required"


def test_map_keys_are_checked_by_cel_not_by_unstructural_keywords() -> None:
    selector = _spec("TrainingJob")["properties"]["scheduling"]["properties"]["nodeSelector"]
    assert "propertyNames" not in selector and "patternProperties" not in selector
    (rule,) = selector["x-kubernetes-validations"]
    assert rule["rule"].startswith("self.all(k, k.matches('^([a-z0-9]")
    assert "\\\\." in rule["rule"], "backslashes must be escaped inside the CEL string literal"


def test_desired_column_shows_the_desired_count() -> None:
    (version,) = crd(KINDS[1])["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Desired"] == ".status.desiredReplicas"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["desiredReplicas"]["type"] == "integer"


def test_operator_release_defaults_are_not_schema_defaults() -> None:
    spec = _spec("ModelService")
    assert "default" not in spec["properties"]["runtime"]["properties"]["image"]
    assert "image" not in spec["properties"]["runtime"].get("default", {})
    assert "default" not in spec["properties"]["replicas"]


def test_queue_column_shows_the_kueue_local_queue() -> None:
    (version,) = crd(KINDS[0])["spec"]["versions"]
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns[:2] == [("Backend", ".status.backend"), ("Queue", ".spec.scheduling.queueName")]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["scheduling"]["properties"]["queueName"]["type"] == "string"
    assert spec["backend"]["enum"] == ["Auto", "TrainJob", "PyTorchJob", "Job"]
