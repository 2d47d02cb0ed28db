"""Parallel chunk I/O: a bounded window of chunks on worker threads, and page-aligned pread/pwrite.

What a chunk's job does (seal or open) is the stream's (:mod:`kubemaas.runtime.crypto.stream`); this
module only schedules jobs and owns their buffers, so memory stays a few chunks whatever the file size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from kubemaas.runtime.buffers import BufferPool


class Slot:
    """One ring position: the buffer its chunk keeps until the caller is done, and when it is filled."""

    def __init__(self, held: memoryview) -> None:
        self.held = held
        self.loaded: Future[memoryview] = Future()


_MAX_WORKERS = 4


class ChunkPipeline:
    """Runs ``job(index, slot, scratch)`` for every chunk on worker threads, a bounded window at a time.

    Chunks are independent (nonce, associated data and both file offsets follow from the index), so
    workers take them in any order with pread/pwrite, and AES-GCM, file I/O and hashlib all release
    the GIL on large buffers: chunks are sealed or opened on every core at once. Two kinds of memory:
    ``scratch`` (``scratch_size`` bytes) belongs to a running job and goes back to a free list when it
    ends, so there are only as many as workers; ``slot.held`` (``held_size`` bytes) stays with chunk
    ``i`` in slot ``i % depth`` until the caller calls ``done(i)``, for data the caller reads after the
    job (the plaintext it hashes). Either way memory is a few chunks, whatever the file size. Leaving
    the block, also on error, cancels what has not started and waits for what has: no worker
    outlives the call.
    """

    def __init__(
        self, job: Callable[[int, Slot, memoryview], None], count: int, *, held_size: int, scratch_size: int
    ) -> None:
        workers = min(_MAX_WORKERS, max(2, os.cpu_count() or 2), count)
        # One queued chunk per worker beyond the running ones, so no worker waits on this thread.
        self.depth = min(count, 2 * workers)
        self._job, self._count = job, count
        self._held_size, self._scratch_size, self._workers = held_size, scratch_size, workers
        self._slots = [Slot(_BUFFERS.take(held_size)) for _ in range(self.depth)]
        self._scratch: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(workers):
            self._scratch.put(_BUFFERS.take(scratch_size))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kmcrypt")
        self._running: dict[int, Future[None]] = {}

    def __enter__(self) -> ChunkPipeline:
        for index in range(self.depth):
            self._start(index)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        # Every job has ended: no thread uses a buffer any more, and the next pipeline of this process takes them.
        for slot in self._slots:
            _BUFFERS.give(self._held_size, slot.held)
        for _ in range(self._workers):
            _BUFFERS.give(self._scratch_size, self._scratch.get_nowait())

    def slot(self, index: int) -> Slot:
        return self._slots[index % self.depth]

    def done(self, index: int) -> None:
        """Wait for chunk ``index`` (raising its error) and give its slot to a later chunk."""
        self._running.pop(index).result()
        if index + self.depth < self._count:
            self._start(index + self.depth)

    def _start(self, index: int) -> None:
        slot = self.slot(index)
        slot.loaded = Future()
        self._running[index] = self._pool.submit(self._run, index, slot)

    def _run(self, index: int, slot: Slot) -> None:
        scratch = self._scratch.get_nowait()  # never empty: no more jobs run than buffers exist
        try:
            self._job(index, slot, scratch)
        except BaseException as exc:
            if not slot.loaded.done():  # whoever waits for the input sees the error too
                slot.loaded.set_exception(exc)
            raise
        finally:
            self._scratch.put(scratch)


def page_aligned(size: int) -> memoryview:
    """``size`` bytes of fresh anonymous memory starting on a page boundary, plus one page of slack.

    The slack lets :func:`matching` place each transfer at its file offset's own page offset. Copies
    between the page cache and a buffer whose page offset is a little ahead of the file's (by 16 bytes,
    as malloc'd bytearrays are to page-aligned file offsets) run about 3x slower on this class of CPU
    (4K aliasing in `rep movsb`); with equal page offsets they run at full speed.
    """
    return memoryview(mmap.mmap(-1, size + mmap.PAGESIZE))


# Enough for one pipeline's buffers of 4 MiB chunks on 4 workers (8 held, 4 scratch), kept for the next one.
_BUFFERS: Final = BufferPool(page_aligned, limit=64 * 1024 * 1024)


def matching(buffer: memoryview, file_offset: int, length: int) -> memoryview:
    """The ``length`` bytes of page-aligned ``buffer`` at the same page offset as ``file_offset``."""
    start = file_offset % mmap.PAGESIZE
    return buffer[start : start + length]


def advise_sequential(fd: int) -> None:
    # Read-ahead hint for disk-backed sources; purely advisory, so a refusal changes nothing.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; returns fewer bytes only at end of file."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled:]], offset + filled)
        if not got:
            break
        filled += got
    return filled


# Writes into the page cache go in pieces of at most this many bytes, the size boto3's transfer manager
# writes a download in (s3transfer's io_chunksize). The kernel sizes a file's page-cache folios after the
# write, and on a VM whose free memory goes back to its host (virtio-balloon free page reporting, in 2 MiB
# blocks) a folio of 1 MiB or more is built from such a block, faulted in again from the host: writing 1 GiB
# of new page cache in 4 MiB pieces took 2.6 s on the 2-core VMs this project is tested on, in 256 KiB
# pieces 0.19 s (README.md, the object store benchmark). Elsewhere the pieces cost only more system calls.
WRITE_PIECE = 256 * 1024


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view[:WRITE_PIECE], offset)
        view, offset = view[written:], offset + written
