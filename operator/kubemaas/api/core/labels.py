"""Labels and label selectors, with metav1.LabelSelector's semantics (``LabelSelector.matches``)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    ApiModel,
    CelRule,
)

LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME_PATTERN, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
# The CRD generator turns the key constraint (JSON schema `propertyNames`, which structural schemas do
# not allow) into a CEL rule on the map.
LabelMap = Annotated[dict[LabelKey, LabelValue], Field(max_length=64)]


class SelectorOperator(StrEnum):
    In = "In"
    NotIn = "NotIn"
    Exists = "Exists"
    DoesNotExist = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(
        default=None, max_length=64, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
            field_path=".values",
            check=lambda r: (r.operator in (SelectorOperator.In, SelectorOperator.NotIn)) == bool(r.values),
        ),
    )


class LabelSelector(ApiModel):
    """A label selector, as in metav1.LabelSelector; all requirements must hold."""

    match_labels: LabelMap | None = Field(default=None, description="Labels an object must carry, key: value.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Set-based requirements on labels."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=(
                "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                "(has(self.matchExpressions) && size(self.matchExpressions) > 0)"
            ),
            message="the selector must name at least one label: an empty selector selects everything",
            check=lambda s: bool(s.match_labels) or bool(s.match_expressions),
        ),
    )

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """metav1.LabelSelector semantics: every matchLabels pair and every expression must hold."""
        labels = labels or {}
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        return all(_holds(e, labels) for e in self.match_expressions or ())

    def describe(self) -> str:
        """The selector as `kubectl get -l` writes it: `team=a,stage In (eval,prod),gpu`."""
        parts = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        for e in self.match_expressions or ():
            values = ",".join(sorted(set(e.values or ())))
            parts.append(f"{e.key} {e.operator.value} ({values})" if values else f"{e.key} {e.operator.value}")
        return ",".join(parts)


def _holds(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    values = requirement.values or ()
    match requirement.operator:
        case SelectorOperator.In:
            return present and labels[requirement.key] in values
        case SelectorOperator.NotIn:
            return not present or labels[requirement.key] not in values
        case SelectorOperator.Exists:
            return present
        case SelectorOperator.DoesNotExist:
            return not present
