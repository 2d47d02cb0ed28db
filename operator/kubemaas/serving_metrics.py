"""Triton's metrics as Kubemaas reads them: the names a ModelService autoscales on (shared by the HPA builder
and the Helm chart), and the counters a Canary analysis reads off each serving pod's metrics port.

Triton exports cumulative counters per model; prometheus-adapter (the chart's `prometheusAdapter.rule`)
turns two of them into one Pods metric of the custom metrics API:
    rate(nv_inference_queue_duration_us) / rate(nv_inference_request_success)
= Triton's average queue time per request in microseconds, the unit of `autoscaling.target` for QueueTime.
`tests/chart` checks that the chart's rule serves exactly QUEUE_TIME_METRIC from these two series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The Pods metric an HPA names for `autoscaling.metric: QueueTime`.
QUEUE_TIME_METRIC = "kubemaas_triton_queue_time_per_request_microseconds"

# Triton's counters the adapter rule divides (cumulative microseconds in queue; successful requests).
TRITON_QUEUE_DURATION_US = "nv_inference_queue_duration_us"
TRITON_REQUEST_SUCCESS = "nv_inference_request_success"

# What a Canary analysis reads of each serving pod (docs/modelservice.md, "Canary in steps").
TRITON_REQUEST_FAILURE = "nv_inference_request_failure"
TRITON_REQUEST_DURATION_US = "nv_inference_request_duration_us"
# Enabled on every serving pod by `--metrics-config=summary_latencies=true` (manifests/modelservice).
TRITON_REQUEST_SUMMARY_US = "nv_inference_request_summary_us"
P99 = "0.99"

_COUNTERS = {
    TRITON_REQUEST_SUCCESS: "success",
    TRITON_REQUEST_FAILURE: "failure",
    TRITON_REQUEST_DURATION_US: "request_us",
    TRITON_QUEUE_DURATION_US: "queue_us",
}


class InvalidMetrics(ValueError):
    """A metrics page that is not Prometheus text, or lacks Triton's request counters."""


@dataclass(frozen=True)
class TritonCounters:
    """One serving pod's cumulative Triton counters, summed over its models (a ModelService serves one)."""

    success: int
    failure: int
    request_us: int
    queue_us: int
    # Triton's p99 request latency over its summary's sliding window; None when it has no observations.
    p99_us: float | None = None


def parse_triton_metrics(text: str) -> TritonCounters:
    """Triton's /metrics page (Prometheus text) as counters. Raises InvalidMetrics."""
    sums = dict.fromkeys(_COUNTERS.values(), 0.0)
    seen: set[str] = set()
    p99: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as error:  # the parser's ways of refusing a page
        raise InvalidMetrics(f"not Prometheus text: {type(error).__name__}") from None
    for family in families:
        field = _COUNTERS.get(family.name)
        for sample in family.samples:
            if field is not None and not sample.name.endswith("_created") and math.isfinite(sample.value):
                sums[field] += sample.value
                seen.add(field)
            elif (
                family.name == TRITON_REQUEST_SUMMARY_US
                and sample.name == TRITON_REQUEST_SUMMARY_US
                and sample.labels.get("quantile") == P99
                and math.isfinite(sample.value)
            ):
                p99 = sample.value if p99 is None else max(p99, sample.value)
    # Triton exports the counters once a model is loaded; a page without them is not a serving pod's.
    missing = {"success", "failure"} - seen
    if missing:
        raise InvalidMetrics(f"no {', '.join(sorted(missing))} counter")
    return TritonCounters(
        success=int(sums["success"]),
        failure=int(sums["failure"]),
        request_us=int(sums["request_us"]),
        queue_us=int(sums["queue_us"]),
        p99_us=p99,
    )
