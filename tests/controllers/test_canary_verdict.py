"""The Canary analysis verdict as pure functions over Triton counter samples (modelservice_core.verdict), and
the parsing of Triton's metrics page (serving_metrics.parse_triton_metrics)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubemaas.api.modelservice import CanaryAnalysis, CanaryVerdict, PodCounters
from kubemaas.controllers.modelservice_core.verdict import CANARY, STABLE, PodSample, baseline_of, judge
from kubemaas.serving_metrics import InvalidMetrics, TritonCounters, parse_triton_metrics

NOW = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)


def counters(success: int, failure: int = 0, *, latency_ms: float = 10.0, queue_ms: float = 1.0) -> TritonCounters:
    """Cumulative counters of a pod that served `success` requests at `latency_ms` each (p99 alike)."""
    return TritonCounters(
        success=success,
        failure=failure,
        request_us=int(success * latency_ms * 1000),
        queue_us=int(success * queue_ms * 1000),
        p99_us=latency_ms * 1000,
    )


def start(pod: str, track: str, c: TritonCounters) -> PodCounters:
    (one,) = baseline_of([PodSample(pod, track, c)]) or []
    return one


BASE = [
    start("s-1", STABLE, counters(1000)),
    start("s-2", STABLE, counters(2000)),
    start("c-1", CANARY, counters(0)),
]


def end(canary: TritonCounters, *, s1: int = 1200, s2: int = 2200, stable_ms: float = 10.0) -> list[PodSample]:
    return [
        PodSample("s-1", STABLE, counters(s1, latency_ms=stable_ms)),
        PodSample("s-2", STABLE, counters(s2, latency_ms=stable_ms)),
        PodSample("c-1", CANARY, canary),
    ]


def test_a_canary_like_the_stable_version_passes_with_its_figures() -> None:
    check = judge(CanaryAnalysis(), 1, BASE, end(counters(100, latency_ms=11.0)), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Pass, "WithinBounds")
    assert check.canary is not None and check.stable is not None
    assert (check.canary.requests, check.canary.failed, check.canary.error_percent) == (100, 0, "0.00")
    assert check.canary.latency_milliseconds == "11.00" and check.stable.latency_milliseconds == "10.00"
    assert (check.stable.pods, check.stable.requests) == (2, 400)
    assert check.served_percent == "20.00"  # 100 of 500 requests in the window


def test_an_erroring_canary_fails_naming_metric_value_and_bound() -> None:
    check = judge(CanaryAnalysis(max_error_percent="5"), 2, BASE, end(counters(90, 10)), NOW)
    assert (check.verdict, check.reason, check.step) == (CanaryVerdict.Fail, "ErrorRatio", 2)
    assert "canary error ratio 10.00% > max 5%" in check.message
    assert "10 of 100 requests failed" in check.message
    # Exactly at the bound passes: the bound is inclusive.
    assert judge(CanaryAnalysis(max_error_percent="10"), 2, BASE, end(counters(90, 10)), NOW).verdict is (
        CanaryVerdict.Pass
    )


def test_a_counter_reset_on_a_pod_restart_is_inconclusive_never_a_pass() -> None:
    base = [*BASE[:2], start("c-1", CANARY, counters(500, 3))]
    check = judge(CanaryAnalysis(), 1, base, end(counters(80)), NOW)  # Triton restarted: 500 -> 80
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "CounterReset")
    assert "c-1" in check.message


def test_too_few_canary_requests_is_inconclusive() -> None:
    check = judge(CanaryAnalysis(min_requests=50), 1, BASE, end(counters(49)), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "TooFewRequests")
    assert check.canary is not None and check.canary.requests == 49
    # 49 requests, all failed: still too few to judge, not a pass either.
    assert judge(CanaryAnalysis(min_requests=50), 1, BASE, end(counters(0, 49)), NOW).verdict is (
        CanaryVerdict.Inconclusive
    )


def test_a_pod_missing_from_the_end_scrape_is_inconclusive() -> None:
    samples = end(counters(100))
    samples[0] = PodSample("s-1", STABLE, None, "connection refused")
    check = judge(CanaryAnalysis(), 1, BASE, samples, NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "MetricsUnavailable")
    assert "s-1" in check.message and "connection refused" in check.message


def test_pods_that_came_or_went_during_the_window_are_inconclusive() -> None:
    gone = [s for s in end(counters(100)) if s.pod != "s-2"]
    check = judge(CanaryAnalysis(), 1, BASE, gone, NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "PodsChanged")
    assert "gone: s-2" in check.message
    new = [*end(counters(100)), PodSample("c-2", CANARY, counters(10))]
    assert "new: c-2" in judge(CanaryAnalysis(), 1, BASE, new, NOW).message


def test_a_canary_whose_pods_did_not_answer_the_baseline_has_no_window() -> None:
    assert baseline_of([PodSample("c-1", CANARY, None, "timeout")]) is None
    assert baseline_of([PodSample("c-1", CANARY, counters(3)), PodSample("s-1", STABLE, None, "timeout")]) is None
    (kept,) = baseline_of([PodSample("c-1", CANARY, counters(3, 1))]) or []
    assert (kept.pod, kept.track, kept.success, kept.failure, kept.request_us) == ("c-1", CANARY, 3, 1, 30_000)


def test_a_slow_canary_fails_the_relative_latency_bound() -> None:
    analysis = CanaryAnalysis(max_latency_ratio="1.5")
    check = judge(analysis, 1, BASE, end(counters(100, latency_ms=31.0)), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Fail, "RelativeLatency")
    assert "canary p99 latency 31.00 ms is 3.10x the stable version's 10.00 ms > maxLatencyRatio 1.5" in check.message
    # The mean from the duration counters judges alike.
    mean = judge(CanaryAnalysis(latency="Mean"), 1, BASE, end(counters(100, latency_ms=31.0)), NOW)
    assert (mean.verdict, mean.reason) == (CanaryVerdict.Fail, "RelativeLatency")
    assert "mean latency" in mean.message
    # 1.4x holds.
    assert judge(analysis, 1, BASE, end(counters(100, latency_ms=14.0)), NOW).verdict is CanaryVerdict.Pass


def test_the_absolute_latency_and_queue_bounds() -> None:
    check = judge(CanaryAnalysis(max_latency_milliseconds=8), 1, BASE, end(counters(100)), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Fail, "Latency")
    assert "canary p99 latency 10.00 ms > max 8 ms" in check.message
    queue = judge(CanaryAnalysis(max_queue_milliseconds=2), 1, BASE, end(counters(100, queue_ms=3.0)), NOW)
    assert (queue.verdict, queue.reason) == (CanaryVerdict.Fail, "QueueTime")
    assert "3.00 ms > max 2 ms" in queue.message


def test_the_relative_bound_needs_enough_stable_requests() -> None:
    check = judge(CanaryAnalysis(), 1, BASE, end(counters(100), s1=1010, s2=2010), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "TooFewStableRequests")
    # Without a relative bound the stable version's traffic does not matter.
    alone = CanaryAnalysis(max_latency_ratio=None)
    assert judge(alone, 1, BASE, end(counters(100), s1=1010, s2=2010), NOW).verdict is CanaryVerdict.Pass


def test_a_canary_pod_without_a_p99_is_inconclusive_for_a_p99_bound() -> None:
    slow = TritonCounters(success=100, failure=0, request_us=1_000_000, queue_us=0, p99_us=None)
    check = judge(CanaryAnalysis(), 1, BASE, end(slow), NOW)
    assert (check.verdict, check.reason) == (CanaryVerdict.Inconclusive, "LatencyUnavailable")


TRITON_PAGE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits",version="1"} 120
nv_inference_request_success{model="digits",version="2"} 30
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="digits",reason="BACKEND",version="1"} 4
nv_inference_request_failure{model="digits",reason="REJECTED",version="1"} 1
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="digits",version="1"} 1500000
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="digits",version="1"} 2500
# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="digits",version="1"} 120
nv_inference_request_summary_us_sum{model="digits",version="1"} 1500000
nv_inference_request_summary_us{model="digits",version="1",quantile="0.5"} 9000
nv_inference_request_summary_us{model="digits",version="1",quantile="0.99"} 24000
nv_inference_request_summary_us{model="digits",version="2",quantile="0.99"} NaN
"""


def test_triton_metrics_are_summed_over_the_pods_models() -> None:
    parsed = parse_triton_metrics(TRITON_PAGE)
    assert parsed == TritonCounters(success=150, failure=5, request_us=1_500_000, queue_us=2500, p99_us=24000.0)


@pytest.mark.parametrize(
    "page",
    ["", "<html>502 Bad Gateway</html>", "# TYPE nv_gpu_utilization gauge\nnv_gpu_utilization 0\n"],
)
def test_a_page_without_triton_request_counters_is_refused(page: str) -> None:
    with pytest.raises(InvalidMetrics):
        parse_triton_metrics(page)
