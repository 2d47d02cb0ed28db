"""The level-triggered loop both controllers share (DESIGN.md §4).

Each kind has one `reconcile` coroutine that reads the parent and its children from kopf's in-memory
indexes, computes the desired children and status with pure functions, and writes only differences. The
thin kopf handlers (create, update, resume, a safety timer, and events of owned children) all call it
through `ReconcileLoop.run`, which serialises reconciles of one object (a child event and the parent's own
handler may arrive together), counts them, and turns failures into kopf's retry semantics:

- a transient API failure -> `kopf.TemporaryError(delay=...)`, growing with each consecutive failure;
- anything else escaping a reconcile is a bug in Kubemaas: logged with the object, counted as `error`,
  and retried after the longest backoff, never in a hot loop.

Invalid specs are not failures: the reconcile turns them into a condition and an Event and returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from kubemaas.api.base import Condition, ConditionStatus
from kubemaas.controllers.apply import TransientApiError
from kubemaas.controllers.conditions import transitions
from kubemaas.controllers.metrics import PENDING, RECONCILE_SECONDS, RECONCILES

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]  # (namespace, name)

BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ReconcileLoop:
    """Per-object serialisation, metrics and retry policy for one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._locks: dict[ObjectKey, asyncio.Lock] = {}
        self._failures: dict[ObjectKey, int] = {}

    def forget(self, key: ObjectKey) -> None:
        """Drop the bookkeeping of a deleted object."""
        self._locks.pop(key, None)
        self._failures.pop(key, None)

    def backoff(self, key: ObjectKey) -> float:
        count = self._failures.get(key, 0)
        return BACKOFF_SECONDS[min(count, len(BACKOFF_SECONDS)) - 1] if count else BACKOFF_SECONDS[0]

    async def run(self, key: ObjectKey, reconcile: Callable[[], Awaitable[None]], *, retry: bool = True) -> None:
        """Run `reconcile` for `key` under its lock.

        With `retry` (kopf change handlers and timers), failures raise `kopf.TemporaryError` so kopf
        retries with backoff. Without it (events of children, which kopf never retries) failures are
        logged and counted; the parent's safety timer picks the object up again.
        """
        lock = self._locks.setdefault(key, asyncio.Lock())
        gauge = PENDING.labels(self.kind)
        gauge.inc()
        try:
            async with lock:
                started = time.monotonic()
                outcome = "success"
                try:
                    await reconcile()
                    self._failures.pop(key, None)
                except TransientApiError as error:
                    outcome = "retry"
                    self._failures[key] = self._failures.get(key, 0) + 1
                    delay = self.backoff(key)
                    log.warning("%s %s/%s: %s; retrying in %.0fs", self.kind, *key, error, delay)
                    if retry:
                        raise kopf.TemporaryError(str(error), delay=delay) from error
                except kopf.TemporaryError:
                    outcome = "retry"
                    raise
                except Exception as error:
                    outcome = "error"
                    self._failures[key] = len(BACKOFF_SECONDS)
                    log.exception("%s %s/%s: reconcile failed", self.kind, *key)
                    if retry:
                        raise kopf.TemporaryError(
                            f"{type(error).__name__}: {error}", delay=BACKOFF_SECONDS[-1]
                        ) from error
                finally:
                    RECONCILES.labels(self.kind, outcome).inc()
                    RECONCILE_SECONDS.labels(self.kind).observe(time.monotonic() - started)
        finally:
            gauge.dec()


def post_transition_events(
    body: Mapping[str, Any],
    old: Sequence[Condition] | None,
    new: Sequence[Condition],
    *,
    warning_when_true: frozenset[str],
    warning_when_false: frozenset[str] = frozenset(),
) -> None:
    """One Event per condition that changed status or reason: what a user watching `kubectl describe` needs.

    A condition named in `warning_when_true` (Failed, Degraded, ...) is a Warning when it turns True; one in
    `warning_when_false` (Ready) is a Warning when it turns False. Everything else is Normal.
    """
    for condition in transitions(old, new):
        warning = (condition.type in warning_when_true and condition.status == ConditionStatus.TRUE) or (
            condition.type in warning_when_false and condition.status == ConditionStatus.FALSE
        )
        message = condition.message or f"{condition.type} is {condition.status.value}"
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(body))),
            type="Warning" if warning else "Normal",
            reason=condition.reason,
            message=message[:1024],
        )
