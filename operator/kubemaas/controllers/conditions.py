"""Status conditions: the one place that writes them (the Kubernetes API conventions, as cert-manager does
it) and the one place that reads them off raw objects.

Pure functions over the API's `Condition` model: the controllers compute a whole new condition list from
the old one, and `transitions` tells them which changes deserve an Event (and which are Warnings).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubemaas.api.base import Condition, ConditionStatus

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, truncated to whole seconds: metav1.Time has second precision, so a finer value would never
    compare equal to what the API server hands back, and every reconcile would rewrite status."""
    return datetime.now(UTC).replace(microsecond=0)


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.status == ConditionStatus.TRUE


def condition_of(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition `type_` in a raw object's `status.conditions` (a child, a CRD, a TrainingJob as the
    index holds it), or None. The one place the controllers read conditions off objects they do not parse."""
    for condition in ((obj or {}).get("status") or {}).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return None


def true_condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """`condition_of(obj, type_)` when its status is True, else None."""
    found = condition_of(obj, type_)
    return found if found is not None and found.get("status") == ConditionStatus.TRUE.value else None


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with `type_` set; lastTransitionTime moves only when the status flips.

    observedGeneration is always the generation the caller computed from, so a reader can tell a stale
    condition from a current one even when nothing else changed.
    """
    previous = find_condition(conditions, type_)
    changed = previous is None or previous.status != status
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )
    out = [c for c in conditions or () if c.type != type_]
    # Keep the order stable (the first visit's order): a reordered list is a status write for nothing.
    index = next((i for i, c in enumerate(conditions or ()) if c.type == type_), len(out))
    out.insert(index, updated)
    return out


@dataclass(frozen=True)
class WarningPolicy:
    """Which conditions are bad, i.e. Warnings: a type in `when_true` (Failed, Degraded) when True, one in
    `when_false` (Ready) when False, unless the reason is in `progress_reasons` (a rollout under way)."""

    when_true: frozenset[str]
    when_false: frozenset[str] = frozenset()
    progress_reasons: frozenset[str] = frozenset()

    def __call__(self, condition: Condition) -> bool:
        if condition.reason in self.progress_reasons:
            return False
        return (condition.type in self.when_true and condition.status == ConditionStatus.TRUE) or (
            condition.type in self.when_false and condition.status == ConditionStatus.FALSE
        )


def transitions(
    old: Sequence[Condition] | None, new: Sequence[Condition], bad: Callable[[Condition], bool]
) -> list[tuple[Condition, bool]]:
    """The conditions of `new` worth an Event, each with whether it is a Warning (`bad(condition)`).

    A bad condition is reported when it is new or its status or reason changed (each new failure is news).
    Any other condition only when its status flipped from a known one (True <-> False): the first status
    of an object and its Unknown -> known steps are routine progress, which the conditions already show.
    """
    out = []
    for condition in new:
        before = find_condition(old, condition.type)
        if bad(condition):
            if before is None or before.status != condition.status or before.reason != condition.reason:
                out.append((condition, True))
        elif before is not None and before.status != ConditionStatus.UNKNOWN and before.status != condition.status:
            out.append((condition, False))
    return out
