"""The chart's admission policy and aggregated roles without rendering: values, and the files the templates read.

Rendering (helm template: the objects equal the generated ones, renamed per release; disabled, they are gone)
is in e2e/test_admission.py, beside what the policy does on a real API server.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import jsonschema
import pytest

from kubemaas.api import access, access_manifests
from kubemaas.api.crd import KINDS
from tests.chart.builders import TEMPLATES


def test_on_by_default_and_denying(values: dict[str, Any]) -> None:
    assert values["admission"] == {"enabled": True, "validationActions": ["Deny"]}
    assert values["aggregatedRoles"] == {"enabled": True}
    # The chart's default is the generated binding's, so a chart install and `kubectl apply -f crds/admission/`
    # behave alike.
    for kind in KINDS:
        assert access.admission_binding(kind)["spec"]["validationActions"] == values["admission"]["validationActions"]


@pytest.mark.parametrize(
    "actions", [["Deny", "Warn"], [], ["Deny", "Deny"], ["Refuse"]], ids=["deny-and-warn", "none", "twice", "unknown"]
)
def test_schema_refuses_validation_actions_the_api_server_would(
    schema: dict[str, Any], values: dict[str, Any], actions: list[str]
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "admission": {"enabled": True, "validationActions": actions}}, schema)


def test_schema_accepts_a_dry_run(schema: dict[str, Any], values: dict[str, Any]) -> None:
    jsonschema.validate({**values, "admission": {"enabled": True, "validationActions": ["Warn", "Audit"]}}, schema)


def test_templates_read_every_generated_file() -> None:
    globs = re.findall(
        r'\.Files\.Glob "([^"]+)"',
        (TEMPLATES / "admission-policy.yaml").read_text() + (TEMPLATES / "aggregated-roles.yaml").read_text(),
    )
    generated = list(access_manifests.render_all())
    for name in generated:
        assert [g for g in globs if fnmatch.fnmatch(name, g)], f"no template reads {name}"
    # Helm's crds/ would install them unconditionally, outside the values: they must sit elsewhere.
    assert not [name for name in generated if name.startswith("crds/")]
    # Each object is renamed from the generated `kubemaas-` prefix to the release's full name.
    helpers = (TEMPLATES / "_generated.tpl").read_text()
    assert f'trimPrefix "{access.NAME_PREFIX}-"' in helpers
