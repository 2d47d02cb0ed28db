"""The chart's files without rendering them: values schema, README table, CRD copies, shared names.

Rendering needs helm, which the local cluster's build provides: those checks are in e2e/test_chart.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from kubemaas import serving_metrics
from kubemaas.api import crd
from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE
from kubemaas.controllers import DEFAULT_METRICS_PORT
from kubemaas.controllers.settings import PEERING_NAME
from kubemaas.manifests.labels import MANAGED_BY, parent_label
from tests.chart.builders import CHART, REPO, TEMPLATES, TRITON_METRICS, exported_operator_series


def _load_readme_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("values_readme", REPO / "charts" / "values_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


values_readme = _load_readme_tool()


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        yield f"{path}{key}", child
        yield from schema_nodes(child, f"{path}{key}.")


def test_schema_is_valid_draft7_and_accepts_the_defaults(schema: dict[str, Any], values: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)


def test_every_value_is_typed_and_described(schema: dict[str, Any]) -> None:
    nodes = list(schema_nodes(schema))
    assert len(nodes) > 30
    for path, node in nodes:
        assert node.get("type"), f"{path} has no type"
        assert len(node.get("description", "")) > 10, f"{path} has no description"


def test_every_default_is_in_the_schema_and_every_leaf_has_a_default(
    schema: dict[str, Any], values: dict[str, Any]
) -> None:
    # The schema forbids unknown keys in every group of values, so a typo in values.yaml fails validation ...
    for path, node in schema_nodes(schema):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
    # ... and each leaf has a default the README can show.
    for path, _type, default, _description in values_readme.leaves(schema, values):
        assert default is not None, f"{path} has no default in values.yaml"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"replicas": 0}, "replicas"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"imagee": {}}, "imagee"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(
    schema: dict[str, Any], values: dict[str, Any], override: dict[str, Any], field: str
) -> None:
    merged = _merge(values, override)
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(merged, schema)
    error = caught.value
    assert field in "/".join(str(p) for p in error.absolute_path) or field in error.message


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_readme_values_table_is_fresh() -> None:
    readme = (CHART / "README.md").read_text()
    assert values_readme.render(readme, CHART) == readme, "run `make chart-readme`"
    assert values_readme.main([str(CHART), "--check"]) == 0


def test_readme_tool_notices_a_stale_table(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    for name in ("values.schema.json", "values.yaml", "README.md"):
        (chart / name).write_text((CHART / name).read_text())
    (chart / "values.yaml").write_text((CHART / "values.yaml").read_text().replace("replicas: 1", "replicas: 3"))
    assert values_readme.main([str(chart), "--check"]) == 1
    assert values_readme.main([str(chart)]) == 0
    assert "| `replicas` | integer | `3` |" in (chart / "README.md").read_text()
    assert values_readme.main([str(chart), "--check"]) == 0


def test_chart_crds_are_the_generated_ones() -> None:
    assert crd.stale(CHART / "crds", peering=True) == []
    for kind in crd.KINDS:
        assert (CHART / "crds" / kind.file_name).read_text() == (REPO / "crds" / kind.file_name).read_text()


def test_crds_check_names_a_stale_chart_copy(tmp_path: Path) -> None:
    crd.write(tmp_path, peering=True)
    assert crd.stale(tmp_path, peering=True) == []
    target = tmp_path / crd.peering_file_name("clusterkopfpeerings")
    target.write_text(target.read_text().replace("kopf.dev", "example.com"))
    assert crd.stale(tmp_path, peering=True) == [f"{target}: stale (the API models changed)"]
    # Without --peering the peering CRD is a file no model generates.
    assert f"{target}: not generated from any API model" in crd.stale(tmp_path)


def test_adapter_rule_serves_the_metric_the_hpa_names() -> None:
    template = (TEMPLATES / "prometheus-adapter-rule.yaml").read_text()
    assert f"as: {serving_metrics.QUEUE_TIME_METRIC}\n" in template
    assert f"matches: ^{serving_metrics.TRITON_QUEUE_DURATION_US}$" in template
    query = template.split("metricsQuery: >-", 1)[1]
    numerator, denominator = query.split("\n          / ", 1)
    assert f"rate({serving_metrics.TRITON_QUEUE_DURATION_US}{{" in numerator
    assert f"rate({serving_metrics.TRITON_REQUEST_SUCCESS}{{" in denominator
    # Every place that names the metric names the same one.
    for path in (CHART / "values.schema.json", CHART / "README.md", TEMPLATES / "NOTES.txt"):
        names = set(re.findall(r"kubemaas_triton_[a-z_]+", path.read_text()))
        assert names == {serving_metrics.QUEUE_TIME_METRIC}, path


def test_defaults_follow_the_operator(values: dict[str, Any]) -> None:
    assert values["operator"]["tritonImage"] == DEFAULT_TRITON_IMAGE
    assert values["operator"]["metricsPort"] == values["metrics"]["service"]["port"] == DEFAULT_METRICS_PORT
    assert values["operator"]["healthPort"] != values["operator"]["metricsPort"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"]
    peering = (TEMPLATES / "peering.yaml").read_text()
    # Both the cluster-wide and the per-namespace peering object carry the operator's peering name.
    assert re.findall(r"^  name: (\S+)$", peering, re.MULTILINE) == [PEERING_NAME, PEERING_NAME]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "kubemaas.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_covers_operator_and_triton() -> None:
    queries = dashboard_queries()
    metrics = {m for q in queries for m in re.findall(r"\b((?:nv|kubemaas)_[a-z_]+)\b", q)}
    triton = {m for m in metrics if m.startswith("nv_")}
    assert triton == TRITON_METRICS
    assert any('quantile="0.99"' in q for q in queries) and any('quantile="0.5"' in q for q in queries)
    operator = {m for m in metrics if m.startswith("kubemaas_")}
    assert operator == {
        "kubemaas_reconcile_total",
        "kubemaas_reconcile_duration_seconds_bucket",
        "kubemaas_api_errors_total",
        "kubemaas_children_applied_total",
        # The conditions the alerts read (docs/alerts.md), a panel per kind.
        "kubemaas_trainingjob_condition",
        "kubemaas_trainingjob_condition_reason",
        "kubemaas_modelservice_condition",
        "kubemaas_modelservice_condition_reason",
        "kubemaas_modelservice_rollbacks_total",
    }
    assert operator <= exported_operator_series()


def test_triton_pod_monitor_selects_the_labels_the_operator_sets() -> None:
    template = (TEMPLATES / "triton-podmonitor.yaml").read_text()
    parent = parent_label("ModelService")
    assert f"app.kubernetes.io/managed-by: {MANAGED_BY}\n" in template
    assert f"- key: {parent}\n" in template
    # Prometheus exposes a pod label as __meta_kubernetes_pod_label_<name with non-alphanumerics as _>.
    assert f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9]', '_', parent)}]" in template
