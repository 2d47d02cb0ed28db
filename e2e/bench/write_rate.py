"""The at-rest window's write limits, per group of parents (bench_reconcile.py), pure.

The at-rest checks of `bench_reconcile` count the writes each parent (TrainingJob, ModelService) gets in a
window, from a watch, and hold every group to its limit: a running TrainingJob whose rank 0 reports progress
is written at most once per PROGRESS_INTERVAL (its status.progress, docs/runtime-contract.md §10); a finished
job, a running job whose rank 0 does not answer, and every other parent at rest are not written at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

# kwok gives the pods of a namespace with this prefix the pod IP 127.0.0.1 (e2e/cluster/kwok-stages.yaml,
# stage pod-ready): their rank 0 is then a server of the benchmark's own process, which the operator (a
# local process) reaches at the pod's IP as it would a real rank 0.
LOOPBACK_NAMESPACE_PREFIX = "bench-loopback-"
LOOPBACK_POD_IP = "127.0.0.1"
# The most names of jobs over their limit kept in the results (the count is always whole).
MAX_NAMES = 10

# One write as the watch saw it: (wall time, status.progress.step or None).
Write = tuple[float, int | None]


def limit_per_job(window_seconds: float, interval: float | None) -> int:
    """The most writes one job may get in the window: at most one per `interval` seconds allows one at the
    window's start and one after each full interval; no interval: none at all."""
    if interval is None:
        return 0
    return math.floor(window_seconds / interval) + 1


@dataclass(frozen=True)
class GroupWrites:
    """The writes of one group of parents in the at-rest window, against its limit."""

    group: str
    jobs: int
    writes: int
    limit_per_job: int  # the most writes one parent of the group may get in the window
    min_per_job: int  # at least this many per parent (a group that must be seen writing: 1; else 0)
    max_per_job: int
    mean_per_job: float
    # The shortest and the mean time between two consecutive writes of one parent (None: no parent written twice).
    min_interval_s: float | None
    mean_interval_s: float | None
    distinct_steps_per_job: float | None  # reporting group: distinct status.progress.step values written, mean
    over_limit: int = 0  # parents with more writes than the limit
    under_minimum: int = 0  # parents with fewer writes than the minimum
    examples: list[str] = field(default_factory=list)  # some of those parents (at most MAX_NAMES)

    @property
    def met(self) -> bool:
        return not self.over_limit and not self.under_minimum


def group_writes(
    group: str,
    members: Iterable[str],
    writes: Mapping[str, Sequence[Write]],
    window: tuple[float, float],
    interval: float | None,
    *,
    must_write: bool = False,
) -> GroupWrites:
    """Summarize the writes of `members` (parent keys) inside `window` (wall times, inclusive) from `writes`
    (parent key -> what the watch saw, any order, outside the window too)."""
    start, end = window
    limit = limit_per_job(end - start, interval)
    minimum = 1 if must_write else 0
    counts: dict[str, int] = {}
    intervals: list[float] = []
    steps: list[int] = []
    for key in sorted(set(members)):
        inside = sorted((w for w in writes.get(key, ()) if start <= w[0] <= end), key=lambda w: w[0])
        counts[key] = len(inside)
        intervals += [b[0] - a[0] for a, b in pairwise(inside)]
        steps.append(len({step for _, step in inside if step is not None}))
    total = sum(counts.values())
    return GroupWrites(
        group=group,
        jobs=len(counts),
        writes=total,
        limit_per_job=limit,
        min_per_job=minimum,
        max_per_job=max(counts.values(), default=0),
        mean_per_job=round(total / len(counts), 2) if counts else 0.0,
        min_interval_s=round(min(intervals), 2) if intervals else None,
        mean_interval_s=round(sum(intervals) / len(intervals), 2) if intervals else None,
        distinct_steps_per_job=round(sum(steps) / len(steps), 2) if must_write and steps else None,
        over_limit=sum(1 for n in counts.values() if n > limit),
        under_minimum=sum(1 for n in counts.values() if n < minimum),
        examples=[k for k, n in counts.items() if not minimum <= n <= limit][:MAX_NAMES],
    )


def failures(groups: Iterable[GroupWrites]) -> list[str]:
    """One line per group over its limit (or under its minimum): empty when every limit is met."""
    out: list[str] = []
    for g in groups:
        some = ", ".join(g.examples[:3])
        if g.over_limit:
            out.append(
                f"{g.group}: {g.over_limit} of {g.jobs} written more than {g.limit_per_job} times in the window"
                f" (max {g.max_per_job}; among them: {some})"
            )
        if g.under_minimum:
            out.append(
                f"{g.group}: {g.under_minimum} of {g.jobs} written fewer than {g.min_per_job} times in the window"
                f" (their rank 0's progress never reached the status; among them: {some})"
            )
    return out
