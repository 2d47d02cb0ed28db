"""The alerting rules' file without promtool (e2e/test_alerts.py runs promtool): every alert documented in
the runbook, labelled with a severity, and described by the object it is about."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.chart.builders import exported_operator_series

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "kubemaas" / "alerts" / "kubemaas.rules.yaml"
RUNBOOK = REPO / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}


def alerts() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    sections = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), re.MULTILINE))
    names = [str(a["alert"]) for a in alerts()]
    assert len(names) == len(set(names)) == 16
    assert set(names) <= sections, f"no runbook section for {set(names) - sections}"
    for alert in alerts():
        labels, annotations = alert["labels"], alert["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels["severity"] in SEVERITIES, alert["alert"]
        assert annotations["runbook_url"] == f"__RUNBOOK_URL__#{str(alert['alert']).lower()}"
        assert annotations["summary"] and annotations["description"], alert["alert"]


def test_alerts_about_an_object_name_it_in_the_summary() -> None:
    for alert in alerts():
        expr, summary = str(alert["expr"]), str(alert["annotations"]["summary"])  # type: ignore[index]
        if "kubemaas_modelservice" in expr or "kubemaas_trainingjob" in expr:
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in summary, alert["alert"]
        if "nv_inference" in expr:
            assert "{{ $labels.namespace }}/{{ $labels.modelservice }}" in summary, alert["alert"]
        if "condition_reason" in expr:
            assert "{{ $labels.reason }}" in summary, alert["alert"]


def test_the_operator_exports_every_series_the_rules_read() -> None:
    read = {m for a in alerts() for m in re.findall(r"\b(kubemaas_[a-z_]+)\b", str(a["expr"]))}
    assert read and read <= exported_operator_series(), read - exported_operator_series()
