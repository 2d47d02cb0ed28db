"""The chart's alerting rules as Prometheus runs them: `promtool check rules` and `promtool test rules` (a
firing and a quiet case per alert, e2e/alerts/rules.test.yaml) over the PrometheusRule the chart renders,
and that object against the Prometheus Operator's schema. promtool and helm come from the local cluster's
build (versions.toml); against an external cluster, from PATH.

The operator's side (the series these rules read, moving as a ModelService rolls back and a TrainingJob
fails, and gone with the objects) is asserted in those scenarios: e2e/test_modelservice.py and
e2e/test_trainingjob.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from e2e.chart import CHART, Tools, values_file
from e2e.conftest import E2ECluster

ALERTS = Path(__file__).resolve().parent / "alerts"
RULES_FILE = CHART / "alerts" / "kubemaas.rules.yaml"
RELEASE = "kubemaas"  # the release rules.test.yaml expects: the scrape job is kubemaas-metrics


@pytest.fixture(scope="module")
def promtool(cluster: E2ECluster) -> Path:
    if cluster.local is not None:
        return cluster.local.bin / "promtool"
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool must be on PATH to test the alerting rules against an external cluster")
    return Path(found)


def render_rule(tools: Tools, tmp_path: Path, values: dict[str, Any]) -> dict[str, Any]:
    out = tools.helm(
        "template", RELEASE, str(CHART), "--namespace", "kubemaas-system",
        "--values", str(values_file(tmp_path, {"prometheusRule": {"enabled": True, **values}})),
        "--show-only", "templates/prometheusrule.yaml",
    ).stdout  # fmt: skip
    (rule,) = [d for d in yaml.safe_load_all(out) if d]
    return dict(rule)


def run_promtool(promtool: Path, *args: str, cwd: Path) -> str:
    result = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} exited {result.returncode}:\n{output}"
    return result.stdout


def alerts_of(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_rendered_rules_and_every_alert_fires_and_stays_quiet(
    tools: Tools, promtool: Path, tmp_path: Path
) -> None:
    rule = render_rule(tools, tmp_path, {})
    groups = rule["spec"]["groups"]
    (tmp_path / "full.yaml").write_text(yaml.safe_dump({"groups": groups}))
    assert "SUCCESS: 16 rules found" in run_promtool(promtool, "check", "rules", "full.yaml", cwd=tmp_path)

    # promtool compares annotations exactly: the unit tests compare the summary (it names the object and
    # the reason); the other annotations' templates were checked above.
    for alert in alerts_of(groups):
        alert["annotations"] = {"summary": alert["annotations"]["summary"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(ALERTS / "rules.test.yaml", tmp_path / "rules.test.yaml")
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", "rules.test.yaml", cwd=tmp_path)

    # Every alert has a case where it fires, and one where it must not: an evaluation expecting nothing, or
    # one whose input holds an object (or kind, verb) that must stay out of the alerts expected.
    tests = yaml.safe_load((ALERTS / "rules.test.yaml").read_text())["tests"]
    names = {alert["alert"] for alert in alerts_of(groups)}
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        objects = {_object_of(s["series"]) for s in test["input_series"]}
        for case in test["alert_rule_test"]:
            expected = case.get("exp_alerts") or []
            (firing if expected else quiet).add(case["alertname"])
            if expected and len(objects) > len(expected):
                quiet.add(case["alertname"])
    assert firing == names, f"alerts without a firing case: {names - firing}"
    assert quiet >= names, f"alerts without a quiet case: {names - quiet}"


def _object_of(series: str) -> tuple[str, ...]:
    """What an alert is about, from a series' labels: namespace and name, or kind, verb, job."""
    labels = dict(re.findall(r'(\w+)="([^"]*)"', series))
    return tuple(labels.get(k, "") for k in ("namespace", "name", "modelservice", "kind", "verb", "job"))


def test_a_promtool_test_fails_when_an_alert_misses_its_object(tools: Tools, promtool: Path, tmp_path: Path) -> None:
    """The unit tests can fail: a rule that loses the reason join is caught."""
    groups = render_rule(tools, tmp_path, {})["spec"]["groups"]
    for alert in alerts_of(groups):
        alert["annotations"] = {"summary": alert["annotations"]["summary"]}
        if alert["alert"] == "KubemaasModelServiceDegraded":
            alert["expr"] = 'kubemaas_modelservice_condition{type="Degraded", status="true"} == 1'
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(ALERTS / "rules.test.yaml", tmp_path / "rules.test.yaml")
    result = subprocess.run([str(promtool), "test", "rules", "rules.test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "KubemaasModelServiceDegraded" in result.stdout + result.stderr


def test_the_rendered_prometheusrule_fits_the_prometheus_operator_schema_and_the_overrides_apply(
    tools: Tools, tmp_path: Path
) -> None:
    schema = json.loads((ALERTS / "prometheusrule.schema.json").read_text())
    overrides = {
        "labels": {"release": "prometheus"},
        "ruleLabels": {"team": "ml-platform"},
        "runbookUrl": "https://runbooks.example/kubemaas",
        "alerts": {"KubemaasModelServiceNotReady": {"for": "30m", "severity": "warning"},
                   "KubemaasModelServicePromotionBlocked": {"enabled": False}},
    }  # fmt: skip
    for values in ({}, overrides):
        jsonschema.validate(render_rule(tools, tmp_path, values), schema)
    rule = render_rule(tools, tmp_path, overrides)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {a["alert"]: a for a in alerts_of(rule["spec"]["groups"])}
    assert "KubemaasModelServicePromotionBlocked" not in alerts and len(alerts) == 15
    assert alerts["KubemaasModelServiceNotReady"]["for"] == "30m"
    assert alerts["KubemaasModelServiceNotReady"]["labels"] == {"severity": "warning", "team": "ml-platform"}
    assert alerts["KubemaasOperatorDown"]["expr"].strip() == 'absent(up{job="kubemaas-metrics"} == 1)'
    runbooks = {a["annotations"]["runbook_url"] for a in alerts.values()}
    assert all(url.startswith("https://runbooks.example/kubemaas#") for url in runbooks)
    # A misspelt alert name is an error, not a silently ignored override.
    bad = values_file(tmp_path, {"prometheusRule": {"enabled": True, "alerts": {"KubemaasNoSuchAlert": {"for": "1m"}}}})
    result = tools.helm("template", RELEASE, str(CHART), "--values", str(bad), check=False)
    assert result.returncode != 0 and "prometheusRule.alerts.KubemaasNoSuchAlert: no such alert" in result.stderr
