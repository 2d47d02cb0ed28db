"""The one condition setter: transition times, observedGeneration, order, transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubemaas.api.base import Condition, ConditionStatus
from kubemaas.controllers.conditions import (
    WarningPolicy,
    find_condition,
    is_true,
    set_condition,
    transitions,
    utc_now,
)

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


BAD = WarningPolicy(
    when_true=frozenset({"Degraded"}), when_false=frozenset({"Ready"}), progress_reasons=frozenset({"RollingOut"})
)


def _events(old: list[Condition] | None, new: list[Condition]) -> list[tuple[str, str, bool]]:
    return [(c.type, c.status.value, warning) for c, warning in transitions(old, new, BAD)]


def test_a_first_status_posts_only_what_is_bad() -> None:
    routine = set_condition(None, "Ready", FALSE, "RollingOut", "", 1, T0)
    routine = set_condition(routine, "Progressing", TRUE, "RollingOut", "", 1, T0)
    routine = set_condition(routine, "Degraded", FALSE, "AsExpected", "", 1, T0)
    assert _events(None, routine) == []
    assert _events([], routine) == []
    blocked = set_condition(None, "Ready", FALSE, "KeySecretNotFound", "", 1, T0)
    assert _events(None, blocked) == [("Ready", "False", True)]


def test_known_status_flips_are_normal_events_unknown_steps_and_reasons_are_not() -> None:
    old = set_condition(None, "Ready", FALSE, "RollingOut", "", 1, T0)
    old = set_condition(old, "Degraded", FALSE, "Fine", "", 1, T0)
    old = set_condition(old, "Created", UNKNOWN, "Creating", "", 1, T0)
    new = set_condition(old, "Ready", TRUE, "Serving", "", 1, T1)
    new = set_condition(new, "Degraded", FALSE, "OtherReason", "message too", 1, T1)
    new = set_condition(new, "Created", TRUE, "Created", "", 1, T1)
    new = set_condition(new, "Progressing", UNKNOWN, "Starting", "", 1, T1)
    assert _events(old, new) == [("Ready", "True", False)]
    assert _events(new, new) == []


def test_a_bad_condition_is_a_warning_once_per_reason() -> None:
    serving = set_condition(None, "Ready", TRUE, "Serving", "", 1, T0)
    failed = set_condition(serving, "Ready", FALSE, "Unavailable", "", 1, T1)
    assert _events(serving, failed) == [("Ready", "False", True)]
    assert _events(failed, failed) == []
    other = set_condition(failed, "Ready", FALSE, "CrashLoopBackOff", "", 1, T1)
    assert _events(failed, other) == [("Ready", "False", True)]
    # Back to routine progress after a failure: no Event until the status flips.
    rolling = set_condition(other, "Ready", FALSE, "RollingOut", "", 1, T1)
    assert _events(other, rolling) == []
    degraded = set_condition(rolling, "Degraded", TRUE, "CrashLoopBackOff", "", 1, T1)
    assert _events(rolling, degraded) == [("Degraded", "True", True)]


def test_now_has_whole_seconds_in_utc() -> None:
    now = utc_now()
    assert now.microsecond == 0 and now.tzinfo is UTC
