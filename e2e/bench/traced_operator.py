"""`kubemaas run` under tracemalloc, for the reconcile benchmark's memory profile (not for production).

    python -X tracemalloc=1 e2e/bench/traced_operator.py OUT run -n NS --standalone ...

On SIGUSR1 it writes the live allocations, grouped by source line and by file, to OUT (text), and goes on.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def dump(out: Path) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = [f"traced total {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MiB"]
    for group in ("filename", "lineno"):
        lines.append(f"\n# top 30 by {group}")
        lines += [str(stat) for stat in snapshot.statistics(group)[:30]]
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    out = Path(sys.argv[1])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        dump(out)

    signal.signal(signal.SIGUSR1, on_signal)
    from kubemaas.cli import main as kubemaas

    return kubemaas(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
