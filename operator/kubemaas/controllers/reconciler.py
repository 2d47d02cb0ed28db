"""The level-triggered loop both controllers share (DESIGN.md §4).

Each kind has one `reconcile` coroutine that reads the parent and its children from kopf's in-memory
indexes, computes the desired children and status with pure functions, and writes only differences. The
thin kopf handlers (`kopf.on.event` of the parent, which also sees every object once when kopf lists them
at start, and of what it owns) all call it through `ReconcileLoop.run`, which serialises reconciles of one
object (a child event and the parent's own may arrive together), counts them, and re-runs failures:

- a transient API failure -> a re-run after a delay that grows with each consecutive failure;
- anything else escaping a reconcile is a bug in Kubemaas: logged with the object, counted as `error`,
  and re-run after the longest backoff, never in a hot loop.

Why `on.event` and not kopf's create/update/resume handlers: those make kopf store its progress and the
last-handled spec in annotations of every object (two PATCHes per new object, and kopf's own retries). A
level-triggered reconcile needs neither: it recomputes everything from what the watches show. The re-runs
are in memory (`Requeue`); after a restart the initial listing reconciles every object again.

Invalid specs are not failures: the reconcile turns them into a condition and an Event and returns.

Indexers and handlers are `async def`: kopf runs a plain `def` handler on its executor thread, one
thread hop per event and index, which at 1,000 objects is a measurable share of the operator's time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from kubemaas.api.base import Condition
from kubemaas.controllers.apply import TransientApiError
from kubemaas.controllers.conditions import WarningPolicy, transitions
from kubemaas.controllers.metrics import PENDING, RECONCILE_SECONDS, RECONCILES

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]  # (namespace, name)

BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Requeue:
    """At most one pending re-run per object (controller-runtime's RequeueAfter), held in memory."""

    def __init__(self) -> None:
        self._pending: dict[ObjectKey, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()

    def schedule(self, key: ObjectKey, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        self.cancel(key)

        def fire() -> None:
            self._pending.pop(key, None)
            task = asyncio.ensure_future(run())
            self._running.add(task)  # a reference, or the task may be garbage-collected mid-run
            task.add_done_callback(self._running.discard)

        self._pending[key] = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)

    def cancel(self, key: ObjectKey) -> None:
        handle = self._pending.pop(key, None)
        if handle is not None:
            handle.cancel()

    def pending(self, key: ObjectKey) -> bool:
        return key in self._pending


class ReconcileLoop:
    """Per-object serialisation, metrics, re-runs and retry policy for one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requeue = Requeue()
        self._locks: dict[ObjectKey, asyncio.Lock] = {}
        self._failures: dict[ObjectKey, int] = {}

    def forget(self, key: ObjectKey) -> None:
        """Drop the bookkeeping of a deleted object."""
        self.requeue.cancel(key)
        self._locks.pop(key, None)
        self._failures.pop(key, None)

    def backoff(self, key: ObjectKey) -> float:
        count = self._failures.get(key, 0)
        return BACKOFF_SECONDS[min(count, len(BACKOFF_SECONDS)) - 1] if count else BACKOFF_SECONDS[0]

    def run_later(self, key: ObjectKey, delay: float, reconcile: Callable[[], Awaitable[None]]) -> None:
        """Run `reconcile` for `key` after `delay` seconds, unless another run of it comes first."""
        self.requeue.schedule(key, delay, lambda: self.run(key, reconcile))

    async def run(self, key: ObjectKey, reconcile: Callable[[], Awaitable[None]]) -> None:
        """Run `reconcile` for `key` under its lock; a failure schedules a re-run with backoff."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        gauge = PENDING.labels(self.kind)
        gauge.inc()
        try:
            async with lock:
                # This run sees the newest state: a re-run pending from before is superseded. The
                # reconcile (or a failure below) schedules the next one it needs.
                self.requeue.cancel(key)
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
                    self.run_later(key, delay, reconcile)
                except Exception:
                    outcome = "error"
                    self._failures[key] = len(BACKOFF_SECONDS)
                    log.exception("%s %s/%s: reconcile failed", self.kind, *key)
                    self.run_later(key, BACKOFF_SECONDS[-1], reconcile)
                finally:
                    RECONCILES.labels(self.kind, outcome).inc()
                    RECONCILE_SECONDS.labels(self.kind).observe(time.monotonic() - started)
        finally:
            gauge.dec()


def post_transition_events(
    body: Mapping[str, Any], old: Sequence[Condition] | None, new: Sequence[Condition], bad: WarningPolicy
) -> None:
    """The Events a user watching `kubectl describe` needs (`conditions.transitions`): Warnings for bad
    conditions, Normal Events for flips of a known status."""
    for condition, warning in transitions(old, new, bad):
        message = condition.message or f"{condition.type} is {condition.status.value}"
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(body))),
            type="Warning" if warning else "Normal",
            reason=condition.reason,
            message=message[:1024],
        )
