"""The verdict on one Canary analysis window: pure functions over the serving pods' Triton counters at the
window's start (the baseline, kept in status) and at its end (a scrape).

A window's figures are counter differences per pod, summed per track. Whatever makes them unknowable is
Inconclusive, never a pass: a pod that did not answer the scrape, a pod that was not there at the start or is
gone at the end (its requests fall outside what was counted), a counter that went down (the pod's Triton
restarted: the difference is meaningless), too few requests. A Fail names the metric, its value and the
bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from kubemaas.api.modelservice import (
    CanaryAnalysis,
    CanaryCheck,
    CanaryVerdict,
    LatencyStatistic,
    PodCounters,
    TrackFigures,
)
from kubemaas.serving_metrics import TritonCounters

STABLE, CANARY = "stable", "canary"


@dataclass(frozen=True)
class PodSample:
    """One serving pod's scrape: its counters, or why there are none."""

    pod: str
    track: str  # STABLE | CANARY
    counters: TritonCounters | None
    error: str = ""


@dataclass(frozen=True)
class TrackWindow:
    """One track's differences over the window."""

    pods: int
    success: int
    failure: int
    request_us: int
    queue_us: int
    p99_us: float | None  # the highest p99 among the track's pods that served requests
    p99_missing: str | None = None  # a pod that served requests but has no p99

    @property
    def requests(self) -> int:
        return self.success + self.failure


class Unknowable(Exception):
    """The window's figures cannot be known; the message says why (becomes an Inconclusive check)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def baseline_of(samples: Sequence[PodSample]) -> list[PodCounters] | None:
    """The counters to keep as a window's start; None when a pod did not answer (no window can start)."""
    if any(s.counters is None for s in samples):
        return None
    return [
        PodCounters(
            pod=s.pod,
            track=s.track,
            success=s.counters.success,
            failure=s.counters.failure,
            request_us=s.counters.request_us,
            queue_us=s.counters.queue_us,
        )
        for s in samples
        if s.counters is not None
    ]


def track_window(track: str, baseline: Sequence[PodCounters], end: Sequence[PodSample]) -> TrackWindow:
    """The track's differences between `baseline` and `end`. Raises Unknowable."""
    start = {b.pod: b for b in baseline if b.track == track}
    now = {s.pod: s for s in end if s.track == track}
    for pod, sample in sorted(now.items()):
        if sample.counters is None:
            raise Unknowable("MetricsUnavailable", f"{track} pod {pod}: metrics unavailable: {sample.error}")
    if start.keys() != now.keys():
        gone, new = sorted(start.keys() - now.keys()), sorted(now.keys() - start.keys())
        what = "; ".join(f"{label}: {', '.join(pods)}" for label, pods in (("gone", gone), ("new", new)) if pods)
        raise Unknowable("PodsChanged", f"{track} pods changed during the window ({what})")
    if not now:
        raise Unknowable("NoPods", f"no {track} pod to measure")
    totals = [0, 0, 0, 0]
    p99: float | None = None
    p99_missing: str | None = None
    for pod in sorted(now):
        counters = now[pod].counters
        assert counters is not None
        before = start[pod]
        deltas = [
            counters.success - before.success,
            counters.failure - before.failure,
            counters.request_us - before.request_us,
            counters.queue_us - before.queue_us,
        ]
        if any(d < 0 for d in deltas):
            raise Unknowable("CounterReset", f"{track} pod {pod}: Triton's counters went back (a restart)")
        totals = [t + d for t, d in zip(totals, deltas, strict=True)]
        if deltas[0] + deltas[1] > 0:
            if counters.p99_us is None:
                p99_missing = pod
            else:
                p99 = counters.p99_us if p99 is None else max(p99, counters.p99_us)
    success, failure, request_us, queue_us = totals
    return TrackWindow(len(now), success, failure, request_us, queue_us, p99_us=p99, p99_missing=p99_missing)


def judge(
    analysis: CanaryAnalysis,
    step: int,
    baseline: Sequence[PodCounters],
    end: Sequence[PodSample],
    now: datetime,
) -> CanaryCheck:
    """The verdict on the window from `baseline` to `end`."""

    def check(verdict: CanaryVerdict, reason: str, message: str, **figures: object) -> CanaryCheck:
        return CanaryCheck.model_validate(
            {"step": step, "verdict": verdict, "reason": reason, "message": message[:2048], "time": now, **figures}
        )

    try:
        canary = track_window(CANARY, baseline, end)
        stable = track_window(STABLE, baseline, end)
    except Unknowable as unknown:
        return check(CanaryVerdict.Inconclusive, unknown.reason, unknown.message)
    figures = {
        "canary": _figures(canary, analysis.latency),
        "stable": _figures(stable, analysis.latency),
        "served_percent": _percent(canary.requests, canary.requests + stable.requests),
    }
    if canary.requests < analysis.min_requests:
        message = f"the canary served {canary.requests} requests, fewer than minRequests {analysis.min_requests}"
        return check(CanaryVerdict.Inconclusive, "TooFewRequests", message, **figures)
    errors = Decimal(canary.failure * 100) / canary.requests
    bound = Decimal(analysis.max_error_percent)
    if errors > bound:
        message = (
            f"canary error ratio {_fmt(errors)}% > max {analysis.max_error_percent}% "
            f"({canary.failure} of {canary.requests} requests failed; stable: {stable.failure} of {stable.requests})"
        )
        return check(CanaryVerdict.Fail, "ErrorRatio", message, **figures)
    failed = _latency_verdict(analysis, canary, stable)
    if failed is not None:
        return check(failed[0], failed[1], failed[2], **figures)
    if analysis.max_queue_milliseconds is not None and canary.success > 0:
        queue_ms = Decimal(canary.queue_us) / canary.success / 1000
        if queue_ms > analysis.max_queue_milliseconds:
            message = f"canary mean queue time {_fmt(queue_ms)} ms > max {analysis.max_queue_milliseconds} ms"
            return check(CanaryVerdict.Fail, "QueueTime", message, **figures)
    return check(CanaryVerdict.Pass, "WithinBounds", f"{canary.requests} canary requests within every bound", **figures)


def latency_us(window: TrackWindow, statistic: LatencyStatistic) -> Decimal | None:
    """The track's latency over the window: its pods' highest p99, or its mean request duration."""
    if statistic is LatencyStatistic.P99:
        return Decimal(repr(window.p99_us)) if window.p99_us is not None and window.p99_missing is None else None
    return Decimal(window.request_us) / window.success if window.success > 0 else None


def _latency_verdict(
    analysis: CanaryAnalysis, canary: TrackWindow, stable: TrackWindow
) -> tuple[CanaryVerdict, str, str] | None:
    """A Fail or Inconclusive on latency, or None when the latency bounds hold."""
    name = "p99 latency" if analysis.latency is LatencyStatistic.P99 else "mean latency"
    absolute, ratio = analysis.max_latency_milliseconds, analysis.max_latency_ratio
    if absolute is None and ratio is None:
        return None
    mine = latency_us(canary, analysis.latency)
    if mine is None:
        why = f"pod {canary.p99_missing} has no p99" if canary.p99_missing else "no successful request"
        return CanaryVerdict.Inconclusive, "LatencyUnavailable", f"canary {name} unknown: {why}"
    if absolute is not None and mine > absolute * 1000:
        return CanaryVerdict.Fail, "Latency", f"canary {name} {_fmt(mine / 1000)} ms > max {absolute} ms"
    if ratio is None:
        return None
    if stable.requests < analysis.min_requests:
        message = (
            f"the stable version served {stable.requests} requests, fewer than minRequests {analysis.min_requests}: "
            f"the relative {name} bound cannot be judged"
        )
        return CanaryVerdict.Inconclusive, "TooFewStableRequests", message
    theirs = latency_us(stable, analysis.latency)
    if theirs is None or theirs <= 0:
        return CanaryVerdict.Inconclusive, "LatencyUnavailable", f"the stable version's {name} is unknown"
    if mine / theirs > Decimal(ratio):
        message = (
            f"canary {name} {_fmt(mine / 1000)} ms is {_fmt(mine / theirs)}x the stable version's "
            f"{_fmt(theirs / 1000)} ms > maxLatencyRatio {ratio}"
        )
        return CanaryVerdict.Fail, "RelativeLatency", message
    return None


def _figures(window: TrackWindow, statistic: LatencyStatistic) -> TrackFigures:
    latency = latency_us(window, statistic)
    return TrackFigures(
        pods=window.pods,
        requests=window.requests,
        failed=window.failure,
        error_percent=_percent(window.failure, window.requests),
        latency_milliseconds=_fmt(latency / 1000) if latency is not None else None,
        queue_milliseconds=_fmt(Decimal(window.queue_us) / window.success / 1000) if window.success else None,
    )


def _percent(part: int, whole: int) -> str | None:
    return _fmt(Decimal(part * 100) / whole) if whole else None


def _fmt(value: Decimal) -> str:
    """Two decimals, as status shows every figure (a decimal string: no floats in the API)."""
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
