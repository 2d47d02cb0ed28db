"""Names of the Triton metrics a ModelService autoscales on, shared by the HPA builder and the Helm chart.

Triton exports cumulative counters per model; prometheus-adapter (the chart's `prometheusAdapter.rule`)
turns two of them into one Pods metric of the custom metrics API:
    rate(nv_inference_queue_duration_us) / rate(nv_inference_request_success)
= Triton's average queue time per request in microseconds, the unit of `autoscaling.target` for QueueTime.
`tests/chart` checks that the chart's rule serves exactly QUEUE_TIME_METRIC from these two series.
"""

from __future__ import annotations

# The Pods metric an HPA names for `autoscaling.metric: QueueTime`.
QUEUE_TIME_METRIC = "kubemaas_triton_queue_time_per_request_microseconds"

# Triton's counters the adapter rule divides (cumulative microseconds in queue; successful requests).
TRITON_QUEUE_DURATION_US = "nv_inference_queue_duration_us"
TRITON_REQUEST_SUCCESS = "nv_inference_request_success"
