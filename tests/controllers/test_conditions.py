"""The one condition setter: transition times, observedGeneration, order, transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubemaas.api.base import Condition, ConditionStatus
from kubemaas.controllers.conditions import find_condition, is_true, set_condition, transitions, utc_now

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def test_first_visit_sets_the_condition_at_now() -> None:
    out = set_condition(None, "Ready", UNKNOWN, "Reconciling", "first visit", 1, T0)
    assert [c.model_dump() for c in out] == [
        Condition(
            type="Ready",
            status=UNKNOWN,
            reason="Reconciling",
            message="first visit",
            last_transition_time=T0,
            observed_generation=1,
        ).model_dump()
    ]


def test_same_status_keeps_the_transition_time_but_takes_reason_message_and_generation() -> None:
    first = set_condition(None, "Ready", FALSE, "Waiting", "a", 1, T0)
    second = set_condition(first, "Ready", FALSE, "StillWaiting", "b", 2, T1)
    ready = find_condition(second, "Ready")
    assert ready is not None
    assert (ready.last_transition_time, ready.reason, ready.message, ready.observed_generation) == (
        T0,
        "StillWaiting",
        "b",
        2,
    )


def test_a_flip_moves_the_transition_time() -> None:
    first = set_condition(None, "Ready", FALSE, "Waiting", "", 1, T0)
    second = set_condition(first, "Ready", TRUE, "Available", "", 1, T1)
    assert second[0].last_transition_time == T1
    assert is_true(second, "Ready") and not is_true(first, "Ready")


def test_order_is_kept_and_other_conditions_untouched() -> None:
    conditions = set_condition(None, "Ready", FALSE, "A", "", 1, T0)
    conditions = set_condition(conditions, "Degraded", FALSE, "B", "", 1, T0)
    conditions = set_condition(conditions, "Ready", TRUE, "C", "", 1, T1)
    assert [c.type for c in conditions] == ["Ready", "Degraded"]
    assert conditions[1].reason == "B"


def test_transitions_report_flips_and_reason_changes_not_first_unknowns() -> None:
    old = set_condition(None, "Ready", FALSE, "Waiting", "", 1, T0)
    old = set_condition(old, "Degraded", FALSE, "Fine", "", 1, T0)
    new = set_condition(old, "Ready", TRUE, "Available", "", 1, T1)
    new = set_condition(new, "Degraded", FALSE, "Fine", "message only", 1, T1)
    new = set_condition(new, "Progressing", UNKNOWN, "Starting", "", 1, T1)
    assert [c.type for c in transitions(old, new)] == ["Ready"]
    reason_only = set_condition(new, "Degraded", FALSE, "OtherReason", "", 1, T1)
    assert [c.type for c in transitions(new, reason_only)] == ["Degraded"]


def test_now_has_whole_seconds_in_utc() -> None:
    now = utc_now()
    assert now.microsecond == 0 and now.tzinfo is UTC
