"""The invalid-spec cases in tests/cases/invalid, shared with the e2e suite that replays them on a real API server.

A case file holds the expected rejection (`field`, the API server's `message`, the models' `modelMessage`,
`rejectedBy`) and the object, either in full (`object`) or as an example from examples/ (`base`) with a
JSON merge patch (`patch`, RFC 7386: null removes a field). A case with `update` is an UPDATE: the object
is valid and is created first, then the merge patch `update` is applied to it and must be refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "cases" / "invalid"
EXAMPLES_DIR = REPO / "examples"
CRDS_DIR = REPO / "crds"

# Which API-server mechanism refuses the object: the OpenAPI schema, a CEL rule, strict field validation
# (unknown fields), the list type (x-kubernetes-list-type: map refuses duplicate keys), or a transition
# rule comparing the object with its previous version (UPDATE cases only).
RejectedBy = Literal["schema", "cel", "strict", "listType", "transition"]


@dataclass(frozen=True)
class InvalidCase:
    name: str
    description: str
    field: str  # the field the rejection must name, e.g. spec.autoscaling.maxReplicas
    message: str  # substring of the API server's message
    model_message: str  # substring of the operator's (pydantic) message
    rejected_by: RejectedBy
    object: dict[str, Any]  # what is created (for an UPDATE case: the valid object before the update)
    update: dict[str, Any] | None = None  # merge patch of an UPDATE case

    @property
    def kind(self) -> str:
        return str(self.object["kind"])

    @property
    def updated(self) -> dict[str, Any]:
        """The object after the update, as the API server would see it (UPDATE cases only)."""
        assert self.update is not None, f"{self.name} is not an UPDATE case"
        updated = merge_patch(self.object, self.update)
        assert isinstance(updated, dict)
        return updated


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _object(data: dict[str, Any]) -> dict[str, Any]:
    if "object" in data:
        return dict(data["object"])
    base = yaml.safe_load((EXAMPLES_DIR / data["base"]).read_text())
    return dict(merge_patch(base, data.get("patch", {})))


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
                object=_object(data),
                update=data.get("update"),
            )
        )
    return cases
