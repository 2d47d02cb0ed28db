"""`kubemaas run` under tracemalloc, for the reconcile benchmark's memory profile (not for production).

    python -X tracemalloc=1 e2e/bench/traced_operator.py OUT run -n NS --standalone ...
    python e2e/bench/traced_operator.py OUT run ...   (no tracing: RSS, the allocators' own stats, object counts)

On SIGUSR1 it writes the live allocations, grouped by source line and by file (and by call stack when
tracemalloc keeps more than one frame: -X tracemalloc=8), to OUT (text), and goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _allocator_stats() -> list[str]:
    """pymalloc's arenas (sys._debugmallocstats) and glibc's heaps (malloc_stats), both written to fd 2."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace").splitlines()
    # The summary of each, not pymalloc's per-size-class table.
    keep = ("arenas", "bytes in", "# bytes", "Arena", "system bytes", "in use bytes", "Total (incl. mmap)")
    return [line for line in text if any(k in line for k in keep)]


def dump(out: Path) -> None:
    rss = _rss_mib()
    collected = gc.collect()
    tracing = tracemalloc.is_tracing()
    snapshot = (
        tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if tracing
        else None
    )
    traced = sum(s.size for s in snapshot.statistics("filename")) / 2**20 if snapshot else float("nan")
    lines = [
        f"RSS {rss:.1f} MiB (after gc: {_rss_mib():.1f}, {collected} unreachable); traced total {traced:.1f} MiB",
        "\n# allocators",
        *_allocator_stats(),
        "\n# live objects by type (top 20)",
    ]
    kinds = Counter(type(o).__name__ for o in gc.get_objects())
    lines += [f"{count:9d} {name}" for name, count in kinds.most_common(20)]
    if snapshot is None:
        _write(out, lines)
        return
    for group in ("filename", "lineno"):
        lines.append(f"\n# top 30 by {group}")
        lines += [str(stat) for stat in snapshot.statistics(group)[:30]]
    if tracemalloc.get_traceback_limit() > 1:  # -X tracemalloc=N: who holds what, by call site
        lines.append("\n# top 25 by traceback (innermost frame last)")
        for stat in snapshot.statistics("traceback")[:25]:
            lines.append(f"{stat.size / 2**20:.1f} MiB in {stat.count} blocks")
            lines += [f"    {frame.filename}:{frame.lineno}" for frame in stat.traceback]
    _write(out, lines)


def _write(out: Path, lines: list[str]) -> None:
    partial = out.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.rename(out)  # whole, or not there: the benchmark waits for this name


def main() -> int:
    out = Path(sys.argv[1])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dump(out)

    signal.signal(signal.SIGUSR1, on_signal)
    from kubemaas.cli import main as kubemaas

    return kubemaas(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
