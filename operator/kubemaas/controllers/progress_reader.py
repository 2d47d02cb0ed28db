"""Reading rank 0's progress (GET /progress on the pod, docs/runtime-contract.md §10) at most every
PROGRESS_INTERVAL seconds per job; between reads the last answer comes from memory.

A reconcile never waits for a pod: :meth:`ProgressReader.read` answers from memory at once and, when a read is
due, starts it in the background. The read wakes the job when it ends: at once with a report (the status
follows the pod within a read's time), else when the next read is due. So a job is reconciled for its progress
only when there is something to write or to read, and a pod that hangs costs a timeout in a task.

The pod is found through its owner chain (TrainingJob -> workload -> pod, checked by uid in the handlers), never
by a label alone, and reached at its IP: no credentials on either side. The answer is untrusted (rank 0 runs
the user's code): read with a size cap and a timeout, parsed by controllers/trainingjob_progress.py. After an
operator restart the memory is empty and the first reconcile reads at once, so status.progress is never left
stale by a restart. Nor by a rank restart: a new rank 0 pod (another address) is read at once, whatever the
backoff its predecessor earned while it was being replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubemaas.controllers.reconciler import ObjectKey
from kubemaas.controllers.trainingjob_progress import PROGRESS_INTERVAL

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
TIMEOUT_SECONDS = 2.0
# A pod that does not answer (a program that reports no progress, a pod the operator cannot reach) is asked
# again after 20 s, 40 s, ... up to 320 s: such jobs cost next to nothing, and an answer resets the pace.
MAX_BACKOFF_DOUBLINGS = 5


@dataclass(frozen=True)
class _Read:
    at: float
    url: str
    report: Mapping[str, Any] | None
    failures: int = 0


@dataclass(frozen=True)
class Reading:
    """The newest report (None: none yet) and the seconds until the pod is asked again (None: a read is under
    way, and wakes the job when it ends)."""

    report: Mapping[str, Any] | None
    next_read_in: float | None


# Called with the delay after which the job should be reconciled again.
Wake = Callable[[float], None]


class ProgressReader:
    def __init__(self, interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._reads: dict[ObjectKey, _Read] = {}
        self._in_flight: dict[ObjectKey, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def read(self, key: ObjectKey, address: str, port: int, wake: Wake) -> Reading:
        """The job's newest report, from memory; a read of the pod starts in the background when one is due
        (PROGRESS_INTERVAL after the last one ended, longer while the pod does not answer)."""
        last = self._reads.get(key)
        report = last.report if last is not None else None
        if key in self._in_flight:
            return Reading(report, None)
        url = f"http://{_host(address)}:{port}/progress"
        left = self._due(last) - self._clock() if last is not None and last.url == url else 0.0
        if left > 0:
            return Reading(report, left)
        self._in_flight[key] = asyncio.create_task(self._refresh(key, url, wake))
        return Reading(report, None)

    async def _refresh(self, key: ObjectKey, url: str, wake: Wake) -> None:
        try:
            report = await self.fetch(url)
        finally:
            self._in_flight.pop(key, None)
        last = self._reads.get(key)
        if report is not None:
            self._reads[key] = _Read(self._clock(), url, report)
            wake(0.0)  # a report to write
        else:  # a failed read keeps the previous report: the Stalled condition ages it
            failures = last.failures if last is not None and last.url == url else 0
            done = _Read(self._clock(), url, last.report if last else None, failures + 1)
            self._reads[key] = done
            wake(self._due(done) - done.at)  # the next read

    async def settled(self) -> None:
        """Wait for the reads in flight (tests, shutdown)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    def _due(self, read: _Read) -> float:
        return read.at + self.interval * float(2 ** min(read.failures, MAX_BACKOFF_DOUBLINGS))

    async def close(self) -> None:
        """Cancel the reads in flight and close the HTTP session (the operator is stopping)."""
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        self._in_flight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, key: ObjectKey) -> None:
        self._reads.pop(key, None)
        task = self._in_flight.pop(key, None)
        if task is not None:
            task.cancel()

    async def fetch(self, url: str) -> Mapping[str, Any] | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        try:
            async with self._session.get(url, allow_redirects=False) as answer:
                if answer.status != 200:
                    return None
                body = await answer.content.read(MAX_BYTES + 1)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            log.debug("progress from %s: %s", url, error)
            return None
        if len(body) > MAX_BYTES:
            return None
        try:
            report = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return report if isinstance(report, dict) else None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


PROGRESS = ProgressReader()
