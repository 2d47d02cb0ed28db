"""Each invalid spec is refused by the API models, and (where the schema alone can tell) by the CRD schema.

UPDATE cases are refused by transition rules on the API server; their Python twin is
`kubemaas.api.immutable_changes`, generated from the same `immutable()` markers as the CEL rules.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from kubemaas.api import ModelService, TrainingJob, immutable_changes
from kubemaas.api.crd import KINDS, openapi_schema
from kubemaas.api.errors import describe
from tests.api.cases import InvalidCase, load_cases

CASES = load_cases()
CREATES = [c for c in CASES if c.update is None]
UPDATES = [c for c in CASES if c.update is not None]
MODELS: dict[str, type[TrainingJob] | type[ModelService]] = {"TrainingJob": TrainingJob, "ModelService": ModelService}
SCHEMAS = {k.kind: openapi_schema(k) for k in KINDS}


def test_there_are_enough_cases_covering_every_mechanism() -> None:
    assert len(CREATES) >= 25 and len(UPDATES) >= 8
    assert {c.rejected_by for c in CASES} == {"schema", "cel", "strict", "listType", "transition"}
    assert {c.kind for c in CREATES} == set(MODELS)
    # Only an update can be refused by a rule that compares with the old object, and it always is.
    assert all((c.rejected_by == "transition") == (c.update is not None) for c in CASES)


def test_case_names_are_unique_across_files() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CREATES, ids=lambda c: c.name)
def test_model_rejects_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ValidationError) as info:
        MODELS[case.kind].model_validate(case.object)
    lines = describe(info.value)
    assert any(case.field in line and case.model_message in line for line in lines), (
        f"{case.name}: expected a message naming {case.field!r} containing {case.model_message!r}, got {lines}"
    )


@pytest.mark.parametrize("case", UPDATES, ids=lambda c: c.name)
def test_update_is_refused_only_as_a_change(case: InvalidCase) -> None:
    # Both objects are valid on their own: what is refused is going from one to the other.
    old = MODELS[case.kind].model_validate(case.object)
    new = MODELS[case.kind].model_validate(case.updated)
    lines = immutable_changes(old, new)
    assert any(case.field in line and case.model_message in line for line in lines), (
        f"{case.name}: expected a change naming {case.field!r} containing {case.model_message!r}, got {lines}"
    )


def _schema_error_paths(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
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
    paths = _schema_error_paths(SCHEMAS[case.kind], case.object)
    assert case.field in paths, f"{case.name}: schema errors at {paths}, expected {case.field}"


@pytest.mark.parametrize("case", [c for c in CASES if c.rejected_by != "schema"], ids=lambda c: c.name)
def test_non_schema_cases_pass_the_plain_schema(case: InvalidCase) -> None:
    # These need CEL, strict field validation or list types: if the plain schema caught them, rejectedBy
    # would be wrong.
    assert _schema_error_paths(SCHEMAS[case.kind], case.object) == []
    if case.update is not None:
        assert _schema_error_paths(SCHEMAS[case.kind], case.updated) == []
