"""The one place that writes status conditions (the Kubernetes API conventions, as cert-manager does it).

Pure functions over the API's `Condition` model: the controllers compute a whole new condition list from
the old one, and `transitions` tells them which changes deserve an Event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

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


def transitions(old: Sequence[Condition] | None, new: Sequence[Condition]) -> list[Condition]:
    """Conditions of `new` whose status differs from `old` (or that are new, unless Unknown)."""
    out = []
    for condition in new:
        before = find_condition(old, condition.type)
        if before is None:
            if condition.status != ConditionStatus.UNKNOWN:
                out.append(condition)
        elif before.status != condition.status or before.reason != condition.reason:
            out.append(condition)
    return out
