"""The invalid-spec cases in tests/cases/invalid, shared with the e2e suite that replays them on a real API server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "cases" / "invalid"
EXAMPLES_DIR = REPO / "examples"
CRDS_DIR = REPO / "crds"


@dataclass(frozen=True)
class InvalidCase:
    name: str
    description: str
    field: str  # the field the rejection must name, e.g. spec.autoscaling.maxReplicas
    message: str  # substring of the API server's message
    model_message: str  # substring of the operator's (pydantic) message
    rejected_by: Literal["schema", "cel", "strict"]  # which API-server mechanism refuses it
    object: dict[str, Any]


def load_cases(directory: Path = CASES_DIR) -> list[InvalidCase]:
    cases = []
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        cases.append(
            InvalidCase(
                name=path.stem,
                description=data["description"],
                field=data["field"],
                message=data["message"],
                model_message=data["modelMessage"],
                rejected_by=data["rejectedBy"],
                object=data["object"],
            )
        )
    return cases
