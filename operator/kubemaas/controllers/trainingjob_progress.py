"""A running TrainingJob's progress: rank 0's report read into status.progress, and the Stalled condition. Pure.

Rank 0 runs the user's code, so its report is untrusted input: every field is checked and bounded here, and
a report that does not parse is ignored (the previous status.progress stays). The handlers read the report
(controllers/progress_reader.py) at most every PROGRESS_INTERVAL seconds per job, so status.progress changes,
and the status is written, at most that often whatever the step rate (docs/runtime-contract.md §10).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubemaas.api.base import METRIC_NAME_PATTERN
from kubemaas.api.progress import MAX_PROGRESS_METRICS, Checkpoint, TrainingProgress

PROGRESS_INTERVAL = 10.0
STALLED = "Stalled"
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
_MAX_STEPS = 2**53  # a JSON number every reader keeps exactly
_MAX_ETA = timedelta(days=3650)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_STEPS else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _decimal(value: float) -> str:
    return repr(float(f"{value:.6g}"))


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def duration(delta: timedelta) -> str:
    """`1h02m`, `4m10s`, `12s`: the remaining time as `kubectl get` shows ages."""
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_from(report: Mapping[str, Any]) -> TrainingProgress | None:
    """status.progress from rank 0's report (kubemaas.runtime.progress), or None if it is not one."""
    step, total, updated = _count(report.get("step")), _count(report.get("totalSteps")), _time(report.get("updateTime"))
    if step is None or total is None or updated is None:
        return None
    percent = min(100, step * 100 // total) if total else 0
    loss = _number(report.get("loss"))
    raw_metrics = report.get("metrics")
    metrics: dict[str, str] = {}
    if isinstance(raw_metrics, Mapping):
        for name in sorted(k for k in raw_metrics if isinstance(k, str)):
            value = _number(raw_metrics[name])
            if (
                len(metrics) < MAX_PROGRESS_METRICS
                and len(name) <= 63
                and _METRIC_NAME.fullmatch(name)
                and value is not None
            ):
                metrics[name] = _decimal(value)
    rate = _number(report.get("samplesPerSecond"))
    eta_seconds = _number(report.get("etaSeconds"))
    eta = None
    if eta_seconds is not None and 0 <= eta_seconds <= _MAX_ETA.total_seconds():
        eta = updated + timedelta(seconds=eta_seconds)
    checkpoint = None
    raw_checkpoint = report.get("lastCheckpoint")
    if isinstance(raw_checkpoint, Mapping):
        checkpoint_step, checkpoint_time = _count(raw_checkpoint.get("step")), _time(raw_checkpoint.get("time"))
        if checkpoint_step is not None and checkpoint_time is not None:
            checkpoint = Checkpoint(step=checkpoint_step, time=checkpoint_time)
    summary = f"{step}/{total} ({percent}%)"
    if eta is not None:
        summary += f", ETA {duration(eta - updated)}"
    return TrainingProgress(
        step=step,
        total_steps=total,
        percent=percent,
        loss=_decimal(loss) if loss is not None else None,
        metrics=metrics or None,
        samples_per_second=_decimal(rate) if rate is not None and rate >= 0 else None,
        eta=eta,
        last_checkpoint=checkpoint,
        update_time=updated.astimezone(UTC),
        summary=summary,
    )


def stalled(progress: TrainingProgress, timeout_seconds: int, now: datetime) -> tuple[bool, str, str]:
    """(stalled, reason, message): no new step reported for ``timeout_seconds``."""
    quiet = now - progress.update_time
    if quiet > timedelta(seconds=timeout_seconds):
        return (
            True,
            "NoProgress",
            (
                f"no new step for {duration(quiet)} (runPolicy.stallTimeoutSeconds: {timeout_seconds}); "
                f"last at step {progress.step} of {progress.total_steps}"
            ),
        )
    return False, "Progressing", f"step {progress.step} of {progress.total_steps}"
