"""Status conditions (Kubernetes API conventions), pure and with an injectable clock.

Placeholder on the `tj` branch with the interface the lead's skeleton defines; main's module replaces it on merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubemaas.api.base import Condition, ConditionStatus


def find_condition(conditions: Sequence[Condition] | None, type: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type), None)


def is_true(conditions: Sequence[Condition] | None, type: str) -> bool:
    found = find_condition(conditions, type)
    return found is not None and found.status == ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition] | None,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Set one condition; lastTransitionTime moves only when the status flips."""
    old = find_condition(conditions, type)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    out = [c for c in conditions or () if c.type != type]
    index = next((i for i, c in enumerate(conditions or ()) if c.type == type), len(out))
    out.insert(index, new)
    return out


def transitions(old: Sequence[Condition] | None, new: Sequence[Condition]) -> list[Condition]:
    """Conditions whose status changed (or that are new): what deserves an Event."""
    return [c for c in new if (before := find_condition(old, c.type)) is None or before.status != c.status]
