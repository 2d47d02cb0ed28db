"""What the chart tests share: the Triton series the chart's dashboard reads."""

from __future__ import annotations

from kubemaas import serving_metrics

TRITON_METRICS = {
    # Triton's per-model metrics the dashboard reads (Triton's metrics documentation; summaries need
    # --metrics-config=summary_latencies=true).
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_request_summary_us",
    serving_metrics.TRITON_QUEUE_DURATION_US,
    "nv_inference_count",
    "nv_inference_exec_count",
}
