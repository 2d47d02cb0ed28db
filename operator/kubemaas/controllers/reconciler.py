"""The level-triggered loop both controllers share (README.md, TrainingJob and ModelService controller).

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

The skeleton every kind shares: `ReconcileLoop` (serialisation, re-runs, the status memory and the clean-up
when an object is deleted), `sync` (children), `post_transition_events` (conditions to Events).

Invalid specs are not failures: the reconcile turns them into a condition and an Event and returns.

Indexers and handlers are `async def`: kopf runs a plain `def` handler on its executor thread, one
thread hop per event and index, which at 1,000 objects is a measurable share of the operator's time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import kopf

from kubemaas.api.base import Condition
from kubemaas.controllers.apply import Conflict, Kube, TransientApiError
from kubemaas.controllers.conditions import WarningPolicy, transitions
from kubemaas.controllers.metrics import (
    CHILDREN_APPLIED,
    LAST_SUCCESS,
    PENDING,
    RECONCILE_SECONDS,
    RECONCILES,
    STATUS_WRITES,
)
from kubemaas.controllers.object_metrics import ObjectStates, Snapshot

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]  # (namespace, name)
# One reconcile of one object; returns the seconds until it wants to run again, or None.
Reconcile = Callable[[], Awaitable[float | None]]

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


@dataclass(frozen=True)
class Written:
    """A status this operator wrote: the resourceVersion it produced, and every version it superseded (the
    one it was computed from and, for a write made on top of an earlier one not yet seen, those before)."""

    superseded: frozenset[str]
    status: dict[str, Any]
    resource_version: str


class StatusMemory:
    """The status this operator last wrote, per object.

    A child's event can arrive before the watch delivers the parent with that status; the index then still
    holds an older body, possibly older by several writes when the watch lags behind a burst. Reconciling
    from it would compute the same transitions again (every Event posted twice, a write the API server
    refuses) or forget a failure just recorded (and roll the failed version out again). So while the index
    shows a version the last write superseded, `current` gives that write's status instead, and the next
    write is conditional on the version the write produced: if anyone else wrote after it, the API server
    refuses the write (`Conflict`) rather than let a status computed from a stale copy overwrite theirs. A
    version the memory does not know is newer than its write (or is that write): the index is used then.
    """

    def __init__(self) -> None:
        self._written: dict[ObjectKey, Written] = {}

    def remember(self, key: ObjectKey, written: Written) -> None:
        self._written[key] = written

    def forget(self, key: ObjectKey) -> None:
        self._written.pop(key, None)

    def current(self, key: ObjectKey, body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """`body`, with the status written last if the watch has not delivered it yet, and the resourceVersion
        that pair stands for: a status written from it must be conditional on that version."""
        current: dict[str, Any] = dict(body)
        version = (current.get("metadata") or {}).get("resourceVersion")
        written = self._written.get(key)
        if written is not None and version in written.superseded:
            current["status"] = written.status
            version = written.resource_version
        return current, version

    async def write(
        self, kube: Kube, key: ObjectKey, body: Mapping[str, Any], version: str | None, status: dict[str, Any]
    ) -> bool:
        """Write `status` when it differs, conditional on `version` (what `current` returned with `body`);
        whether it wrote. Raises `Conflict` when the object changed since `version`: the caller computes again
        from the newer copy."""
        produced = await kube.patch_status(body, status, resource_version=version)
        if produced is None:
            return False
        superseded = {v for v in (body["metadata"].get("resourceVersion"), version) if v}
        previous = self._written.get(key)
        if previous is not None and version == previous.resource_version:
            superseded |= previous.superseded  # written on top of the last write: older than both
        self.remember(key, Written(frozenset(superseded), status, produced))
        return True


class ReconcileLoop:
    """Per-object serialisation, metrics, re-runs, retry policy and status memory for one kind.

    A reconcile returns how many seconds until it wants to run again even if nothing changes (a blocked
    job's re-check, a canary's analysis window), or None.
    """

    def __init__(self, kind: str, states: ObjectStates | None = None) -> None:
        self.kind = kind
        self.requeue = Requeue()
        self.status = StatusMemory()
        # The objects' state as series (object_metrics); a private one when the kind exports none.
        self.states = states if states is not None else ObjectStates(kind)
        self._locks: dict[ObjectKey, asyncio.Lock] = {}
        self._failures: dict[ObjectKey, int] = {}
        self._queued: set[ObjectKey] = set()  # keys with a run waiting for the lock

    def forget(self, key: ObjectKey) -> None:
        """Drop the bookkeeping of a deleted object: its pending re-run, lock, failures, status memory and
        series."""
        self.requeue.cancel(key)
        self.status.forget(key)
        self.states.forget(key)
        self._locks.pop(key, None)
        self._failures.pop(key, None)

    async def report(
        self,
        kube: Kube,
        key: ObjectKey,
        body: Mapping[str, Any],
        version: str | None,
        status: dict[str, Any],
        *,
        old: Sequence[Condition] | None,
        new: Sequence[Condition],
        warnings: WarningPolicy,
        snapshot: Snapshot,
    ) -> bool | None:
        """What every reconcile ends with: write `status` when it changed (conditional on `version`, what
        `status.current` returned), keep the object's series (`snapshot`), and post the Events of the
        conditions' transitions from `old` to `new` once the write landed. Whether it wrote; None when the
        object changed since `version`: the caller reconciles again soon from the newer copy (nothing posted)."""
        try:
            written = await self.status.write(kube, key, body, version, status)
        except Conflict:
            return None
        self.states.observe(key, snapshot)
        if written:
            STATUS_WRITES.labels(self.kind).inc()
            post_transition_events(body, old, new, warnings)
        return written

    def backoff(self, key: ObjectKey) -> float:
        count = self._failures.get(key, 0)
        return BACKOFF_SECONDS[min(count, len(BACKOFF_SECONDS)) - 1] if count else BACKOFF_SECONDS[0]

    def run_later(self, key: ObjectKey, delay: float, reconcile: Reconcile) -> None:
        """Run `reconcile` for `key` after `delay` seconds, unless another run of it comes first."""
        self.requeue.schedule(key, delay, lambda: self.run(key, reconcile))

    async def run(self, key: ObjectKey, reconcile: Reconcile) -> None:
        """Run `reconcile` for `key` under its lock; a requeue it asks for, or a failure, schedules a re-run.

        A trigger that finds a run of `key` already waiting returns at once: that run reads the indexes when it
        starts, after this trigger's event is in them. Without this, every child event of a busy parent held
        kopf's worker for that child (with the event's whole body, and the events queued behind it) until its
        own turn came, and ran a reconcile that found nothing new."""
        if key in self._queued:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        gauge = PENDING.labels(self.kind)
        gauge.inc()
        self._queued.add(key)
        waiting = True
        try:
            async with lock:
                self._queued.discard(key)
                waiting = False
                # This run sees the newest state: a re-run pending from before is superseded. The
                # reconcile (or a failure below) schedules the next one it needs.
                self.requeue.cancel(key)
                started = time.monotonic()
                outcome = "success"
                try:
                    requeue_after = await reconcile()
                    self._failures.pop(key, None)
                    LAST_SUCCESS.labels(self.kind).set_to_current_time()
                    if requeue_after is not None:
                        self.run_later(key, requeue_after, reconcile)
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
            if waiting:  # cancelled before its turn
                self._queued.discard(key)
            gauge.dec()


async def sync(
    kube: Kube,
    kind: str,
    desired: Sequence[Mapping[str, Any]],
    observed: Sequence[Mapping[str, Any]],
    unwanted: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Make a parent's children what the core decided: apply each desired child unless the observed one of
    that kind and name already carries every field of it, and delete the unwanted ones. The writes are
    independent of each other, so they run together."""
    seen = {(o.get("kind"), (o.get("metadata") or {}).get("name")): o for o in observed}
    applied = await asyncio.gather(
        *(kube.apply(child, seen.get((child["kind"], child["metadata"]["name"]))) for child in desired)
    )
    for child, result in zip(desired, applied, strict=True):
        if result is not None:
            CHILDREN_APPLIED.labels(kind, child["kind"]).inc()
    for gone in unwanted:
        log.info("%s: deleting %s %s", kind, gone["kind"], gone["metadata"]["name"])
        await kube.delete(gone)


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
