"""Building blocks shared by the TrainingJob and ModelService API models.

Every cross-field rule is declared once, as a `CelRule`: its CEL text goes into the CRD as an
`x-kubernetes-validations` entry (so the API server rejects the object at `kubectl apply`), and its
Python twin runs when the operator parses the object, so both reject the same specs with the same
message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from kubemaas.api.errors import field_path


@dataclass(frozen=True)
class CelRule:
    """A validation rule evaluated by the API server, and (when `check` is set) by the operator too."""

    rule: str
    message: str
    # Path of the offending field relative to the object the rule sits on (".maxReplicas"); the API
    # server then reports the error at that field instead of at the parent object.
    field_path: str | None = None
    # The same rule in Python. Transition rules (those using `oldSelf`) have no Python twin: parsing
    # one object cannot see the previous one.
    check: Callable[[Any], bool] | None = None

    def as_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _add_cel_rules(schema: dict[str, Any], model_class: type[Any]) -> None:
    rules: tuple[CelRule, ...] = getattr(model_class, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_crd() for r in rules]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused, CEL rules enforced."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_extra=_add_cel_rules,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for cel in type(self).cel_rules:
            if cel.check is not None and not cel.check(self):
                raise PydanticCustomError("cel_rule", cel.message, {"field_path": cel.field_path or ""})
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


IMMUTABLE = "x-kubemaas-immutable"
"""Schema marker of an immutable field; the CRD generator (`crd.structural`) turns it into CEL rules."""


def immutable() -> dict[str, Any]:
    """Schema extra for a field that keeps the value it was created with.

    A transition rule on the field itself (`self == oldSelf`) runs only when the field exists in both
    the old and the new object, so adding or removing an optional field would slip through. The CRD
    generator therefore emits two rules from this one marker: `self == oldSelf` on the field, and, for an
    optional field without a default, `has(self.f) == has(oldSelf.f)` on the object that holds it. A field
    with a default cannot vanish (the API server re-applies the default), so it needs only the first.
    `immutable_changes` is the Python twin of both.
    """
    return {IMMUTABLE: True}


def immutable_message(name: str) -> str:
    return f"{name} is immutable"


def is_immutable(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get(IMMUTABLE) is True


def immutable_changes(old: BaseModel, new: BaseModel, loc: tuple[str, ...] = ()) -> list[str]:
    """Every immutable field that differs between `old` and `new`, as `<field>: <name> is immutable`.

    The Python twin of the generated transition rules: same fields, same messages. Mutable nested
    objects are searched for immutable fields of their own.
    """
    problems = []
    for name, field in type(new).model_fields.items():
        alias = field.alias or name
        before, after = getattr(old, name), getattr(new, name)
        if is_immutable(field):
            if before != after:
                problems.append(f"{field_path((*loc, alias))}: {immutable_message(alias)}")
        elif isinstance(before, BaseModel) and isinstance(after, BaseModel):
            problems.extend(immutable_changes(before, after, (*loc, alias)))
    return problems


# --- Strict scalars -------------------------------------------------------------------------------

# The API server refuses `gpus: "2"` and `suspend: "yes"`; pydantic's lax mode would coerce them. Every
# integer and boolean of the API is one of these, so the operator and `kubectl apply` agree on what is
# valid (tests/api/test_models.py checks that no lax int or bool is left).
Int = StrictInt
Bool = StrictBool

# --- Integer-or-string values ------------------------------------------------------------------------


def _int_or_matching(pattern: str, message: str) -> PlainValidator:
    """Accepts a non-negative integer or a string matching `pattern` (intstr / resource.Quantity)."""
    compiled = re.compile(pattern)

    def parse(value: object) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and compiled.match(value):
            return value
        raise PydanticCustomError("int_or_string", message)

    return PlainValidator(parse)


def _int_or_string_schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            # Each keyword applies to one type only: minimum to integers, pattern to strings.
            "minimum": 0,
            "pattern": pattern,
        }
    )


# The non-negative subset of resource.Quantity's grammar (k8s.io/apimachinery/pkg/api/resource).
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][+]?[0-9]+)?$"
Quantity = Annotated[
    int | str,
    _int_or_matching(QUANTITY_PATTERN, "must be a Kubernetes quantity such as 500m, 2 or 4Gi"),
    _int_or_string_schema(QUANTITY_PATTERN),
]

# An absolute count or a percentage, as intstr in PodDisruptionBudget and Deployment strategies.
INT_OR_PERCENT_PATTERN = r"^([0-9]|[1-9][0-9]|100)%$"
IntOrPercent = Annotated[
    int | str,
    _int_or_matching(INT_OR_PERCENT_PATTERN, "must be a count such as 1 or a percentage such as 50%"),
    _int_or_string_schema(INT_OR_PERCENT_PATTERN),
]

# Decimal numbers as strings (metrics and thresholds): the API conventions allow no floats in spec.
DECIMAL_PATTERN = r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"
# "/" because TensorBoard and W&B group metrics as `eval/loss`: a trainer's metric names reach the
# status (and promotion.requireMetrics) as they were logged.
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$"
MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN, max_length=63)]
MetricValue = Annotated[str, StringConstraints(pattern=DECIMAL_PATTERN, max_length=64)]

# --- Names ----------------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Service names (RFC 1035 labels): a letter first. Every child Service is named after its parent.
DNS_1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# Label and annotation keys (a qualified name with an optional DNS-subdomain prefix).
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# No whitespace anywhere: the kubelet refuses leading or trailing blanks, the registry any inside.
IMAGE_PATTERN = r"^\S+$"

# pvc://<claim>/<path>. No "." or ".." segment: the runtime would refuse it only when the pod starts.
_URI_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
PVC_URI_PATTERN = rf"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/{_URI_SEGMENT})*/?$"
PVC_URI_MESSAGE = "must be a pvc://<claim>/<path> URI without . or .. segments"
# s3://<bucket>/<prefix>: S3's bucket naming rules (3-63 characters; lower-case letters, digits, dots and
# hyphens; a letter or digit at each end), the same segment rule as pvc://.
S3_BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_URI_PATTERN = rf"^s3://{S3_BUCKET_PATTERN}(/{_URI_SEGMENT})*/?$"
# Where a store URI may name either a claim or a bucket.
STORE_URI_PATTERN = rf"({PVC_URI_PATTERN})|({S3_URI_PATTERN})"

# Children get suffixes such as "-canary" and "-workers", and Services need DNS-1035 names.
MAX_NAME_LENGTH = 45
NAME_RULES = (
    CelRule(
        rule=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        message=f"metadata.name must be at most {MAX_NAME_LENGTH} characters: child objects append suffixes",
        check=lambda obj: len(obj.metadata.name) <= MAX_NAME_LENGTH,
    ),
    CelRule(
        rule=f"self.metadata.name.matches('{DNS_1035_PATTERN}')",
        message=(
            "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter): "
            "child Services are named after it"
        ),
        check=lambda obj: re.match(DNS_1035_PATTERN, obj.metadata.name) is not None,
    ),
)

# --- Model store names (shared with kubemaas.runtime.artifacts) ------------------------------------

# Model names become directory names in the store and label values on serving pods: lower-case,
# no separators, no leading dot (hidden names are the store's staging directories).
MODEL_NAME_MAX_LENGTH = 63
MODEL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
# Versions are directory names too, and the served version is a label value on the pods.
VERSION_MAX_LENGTH = 63
VERSION_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
# The version name that means "the newest published version"; never a published version itself.
LATEST = "Latest"

# --- Status conditions ----------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A condition, following the Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(description="Type of the condition, in CamelCase.", pattern=r"^[A-Z][A-Za-z0-9]*$")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="Machine-readable reason for the last transition, in CamelCase.",
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: Int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


def map_list(*keys: str) -> dict[str, Any]:
    """Schema extra of a list whose items are unique by `keys` (x-kubernetes-list-type: map).

    The API server then refuses duplicates and server-side apply merges the items by key; pair it with
    `unique_by` so the models refuse the same duplicates.
    """
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


CONDITIONS_LIST_MARKERS: dict[str, Any] = map_list("type")


def unique_by(*keys: str) -> AfterValidator:
    """The Python twin of `map_list`: a validator refusing two items with the same keys (wire names)."""

    def check(items: list[Any] | None) -> list[Any] | None:
        seen: set[tuple[Any, ...]] = set()
        for index, item in enumerate(items or ()):
            names = {field.alias or name: name for name, field in type(item).model_fields.items()}
            key = tuple(getattr(item, names[k]) for k in keys)
            if key in seen:
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
                raise PydanticCustomError("duplicate", "Duplicate value: [{index}] repeats {key}", {
                    "index": index, "key": shown,
                })  # fmt: skip
            seen.add(key)
        return items

    return AfterValidator(check)
