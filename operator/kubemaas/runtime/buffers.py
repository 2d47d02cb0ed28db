"""Large buffers kept for reuse within a process, up to a limit.

Touching fresh anonymous memory is slow where these workloads are tested: on the 2-core VMs (README.md, the
object store benchmark) every new page faults in, zeroed, at 0.4-0.75 ms a MiB, more than AES-GCM costs to
seal it. Encrypting a 64 MiB model touched about 90 MiB of new buffers (the chunk pipeline's and the
multipart upload's parts), 35-65 ms of CPU on cores the store's server shares. A trainer seals a checkpoint
every few steps and the model at the end, so the buffers of one are there for the next; boto3's own
transfers get the same from the C heap, which keeps the blocks a transfer freed for the next one.

A buffer taken from the pool still holds what its last user wrote: every user overwrites what it reads
back (the pipeline reads a chunk into it before using it, a multipart part is uploaded only once all its
bytes were written). What it held never leaves the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

B = TypeVar("B")


class BufferPool(Generic[B]):
    """Free buffers by size: :meth:`take` one (a kept one, or ``make(size)``), :meth:`give` it back when done.

    At most ``limit`` bytes are kept; what would go over is dropped to the garbage collector, as without a pool.
    """

    def __init__(self, make: Callable[[int], B], *, limit: int) -> None:
        self._make, self.limit = make, limit
        self._free: dict[int, list[B]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> B:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._kept -= size
                return free.pop()
        return self._make(size)

    def give(self, size: int, buffer: B) -> None:
        """Keep ``buffer`` (``size`` bytes were asked of :meth:`take` for it) for a later :meth:`take`."""
        with self._lock:
            if self._kept + size <= self.limit:
                self._free.setdefault(size, []).append(buffer)
                self._kept += size

    @property
    def kept(self) -> int:
        """Bytes held for reuse now."""
        return self._kept
