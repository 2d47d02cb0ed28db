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

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


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


def immutable(name: str) -> dict[str, Any]:
    """Schema extra for a field that keeps the value it was created with (a CEL transition rule)."""
    return {"x-kubernetes-validations": [CelRule(rule="self == oldSelf", message=f"{name} is immutable").as_crd()]}


# --- Kubernetes quantities --------------------------------------------------------------------------

# The non-negative subset of resource.Quantity's grammar (k8s.io/apimachinery/pkg/api/resource).
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][+]?[0-9]+)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _parse_quantity(value: object) -> int | str:
    if isinstance(value, bool):
        raise PydanticCustomError("quantity", "must be a Kubernetes quantity such as 500m, 2 or 4Gi")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _QUANTITY_RE.match(value):
        return value
    raise PydanticCustomError("quantity", "must be a Kubernetes quantity such as 500m, 2 or 4Gi")


Quantity = Annotated[
    int | str,
    PlainValidator(_parse_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]

# --- Names ----------------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PVC_URI_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/]+)*/?$"
PVC_URI_MESSAGE = "must be a pvc://<claim>/<path> URI"

# Children get suffixes such as "-canary" and "-workers", and Services need DNS-1035 names.
MAX_NAME_LENGTH = 45
NAME_RULE = CelRule(
    rule=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    message=f"metadata.name must be at most {MAX_NAME_LENGTH} characters: child objects append suffixes",
    check=lambda obj: len(obj.metadata.name) <= MAX_NAME_LENGTH,
)


class SecretRef(ApiModel):
    """A Secret in the same namespace as the referring object."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_LABEL_PATTERN, max_length=253)


class LocalObjectRef(ApiModel):
    """A reference to another object in the same namespace."""

    name: str = Field(description="Name of the referenced object.", pattern=DNS_LABEL_PATTERN, max_length=253)


# --- Resources and scheduling ---------------------------------------------------------------------


class Resources(ApiModel):
    """Compute resources of each pod; requests equal limits so pods get a Guaranteed QoS class."""

    gpus: int = Field(default=0, ge=0, le=64, description="NVIDIA GPUs per pod, requested as nvidia.com/gpu limits.")
    cpu: Quantity | None = Field(default=None, description="CPU per pod as a Kubernetes quantity, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory per pod as a Kubernetes quantity, e.g. 16Gi.")


class TolerationOperator(StrEnum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(StrEnum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


class Toleration(ApiModel):
    """A pod toleration, as in core/v1."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to; empty matches all.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.Equal, description="How key and value are compared: Exists or Equal."
    )
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; empty matches all.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )


class Scheduling(ApiModel):
    """Where and how pods are scheduled."""

    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels a pod's node must carry (core/v1 nodeSelector)."
    )
    tolerations: list[Toleration] | None = Field(default=None, description="Pod tolerations.")
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_LABEL_PATTERN, max_length=253, description="PriorityClass of the pods."
    )
    queue_name: str | None = Field(
        default=None,
        pattern=LABEL_VALUE_PATTERN,
        max_length=63,
        description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label on the workload.",
    )
    scheduler_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=253,
        description="Scheduler for the pods, e.g. a gang scheduler such as volcano; default-scheduler if unset.",
    )


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
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


CONDITIONS_LIST_MARKERS: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
