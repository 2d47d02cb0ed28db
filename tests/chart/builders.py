"""What the chart tests share: where the chart is, the Triton series its dashboard reads, the operator's it exports."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from kubemaas import serving_metrics
from kubemaas.controllers import metrics as _operator_metrics  # noqa: F401  (registers the operator's metrics)
from kubemaas.controllers import object_metrics as _object_metrics  # noqa: F401  (and the objects' series)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubemaas"
TEMPLATES = CHART / "templates"

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


def exported_operator_series() -> set[str]:
    """The series names kubemaas.controllers.metrics exports (a counter's family `x` is scraped as `x_total`)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    out = set()
    for family in REGISTRY.collect():
        if family.name.startswith("kubemaas_"):
            out |= {family.name + suffix for suffix in suffixes[family.type]}
    return out
