"""`kubemaas run` under tracemalloc, for the reconcile benchmark's memory profile (not for production).

    python -X tracemalloc=1 e2e/bench/traced_operator.py OUT run -n NS --standalone ...

On SIGUSR1 it writes the live allocations, grouped by source line and by file, to OUT (text), and goes on.
"""

from __future__ import annotations

import gc
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dump(out: Path) -> None:
    rss = _rss_mib()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = [
        f"RSS {rss:.1f} MiB; traced total {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB",
        "\n# live objects by type (top 20)",
    ]
    kinds = Counter(type(o).__name__ for o in gc.get_objects())
    lines += [f"{count:9d} {name}" for name, count in kinds.most_common(20)]
    for group in ("filename", "lineno"):
        lines.append(f"\n# top 30 by {group}")
        lines += [str(stat) for stat in snapshot.statistics(group)[:30]]
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
