"""Each invalid spec is refused by the API models, and (where the schema alone can tell) by the CRD schema."""

from __future__ import annotations

import re

import jsonschema
import pytest
from pydantic import ValidationError

from kubemaas.api import ModelService, TrainingJob
from kubemaas.api.crd import KINDS, openapi_schema
from kubemaas.api.errors import describe
from tests.api.cases import InvalidCase, load_cases

CASES = load_cases()
MODELS = {"TrainingJob": TrainingJob, "ModelService": ModelService}
SCHEMAS = {k.kind: openapi_schema(k) for k in KINDS}


def test_there_are_enough_cases_covering_every_mechanism() -> None:
    assert len(CASES) >= 25
    assert {c.rejected_by for c in CASES} == {"schema", "cel", "strict"}
    assert {c.object["kind"] for c in CASES} == set(MODELS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_model_rejects_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ValidationError) as info:
        MODELS[case.object["kind"]].model_validate(case.object)
    lines = describe(info.value)
    assert any(case.field in line and case.model_message in line for line in lines), (
        f"{case.name}: expected a message naming {case.field!r} containing {case.model_message!r}, got {lines}"
    )


def _schema_error_paths(schema: dict, obj: dict) -> list[str]:
    paths = []
    for err in jsonschema.Draft7Validator(schema).iter_errors(obj):
        path = ""
        for part in err.absolute_path:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if err.validator == "required":
            missing = re.match(r"'([^']+)'", err.message)
            assert missing
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        paths.append(path)
    return paths


@pytest.mark.parametrize("case", [c for c in CASES if c.rejected_by == "schema"], ids=lambda c: c.name)
def test_crd_schema_rejects_at_the_field(case: InvalidCase) -> None:
    paths = _schema_error_paths(SCHEMAS[case.object["kind"]], case.object)
    assert case.field in paths, f"{case.name}: schema errors at {paths}, expected {case.field}"


@pytest.mark.parametrize("case", [c for c in CASES if c.rejected_by != "schema"], ids=lambda c: c.name)
def test_non_schema_cases_pass_the_plain_schema(case: InvalidCase) -> None:
    # These need CEL or strict field validation: if the plain schema caught them, rejectedBy would be wrong.
    assert _schema_error_paths(SCHEMAS[case.object["kind"]], case.object) == []
