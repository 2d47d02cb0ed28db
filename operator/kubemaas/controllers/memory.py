"""Giving the memory a burst freed back to the system.

A burst of events (1,000 ModelServices created at once, a re-list after a restart) decodes hundreds of MB of
JSON that is garbage a few seconds later. The operator's image runs Python objects on glibc's malloc
(`PYTHONMALLOC=malloc`: pymalloc keeps every 1 MiB arena that one long-lived object still uses, and after a
burst that was most of them) in two arenas (`MALLOC_ARENA_MAX=2`). glibc returns free memory at the top of
its heap by itself, but not the free pages between live chunks; `malloc_trim(0)` does (madvise), so a
thread calls it every TRIM_SECONDS. It takes the allocator's lock for the few milliseconds of the walk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

TRIM_SECONDS = 30.0


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim  # glibc only: musl and others have none
    except (OSError, AttributeError, TypeError):
        return None


def trim_periodically(interval: float = TRIM_SECONDS) -> threading.Thread | None:
    """Start a daemon thread that hands free heap pages back every `interval` seconds; None without glibc."""
    trim = _malloc_trim()
    if trim is None:
        log.info("no malloc_trim in this C library: freed memory stays with the process")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            trim(0)

    thread = threading.Thread(target=run, name="malloc-trim", daemon=True)
    thread.start()
    return thread
