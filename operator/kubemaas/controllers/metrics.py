"""The operator's Prometheus metrics, served on its own port (`kubemaas run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubemaas.controllers import DEFAULT_METRICS_PORT

__all__ = ["DEFAULT_METRICS_PORT", "start_metrics_server"]

RECONCILES = Counter(
    "kubemaas_reconcile_total",
    "Reconciles by kind and outcome (success, retry, invalid, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "kubemaas_reconcile_duration_seconds",
    "Time one reconcile took, API round trips included.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CHILDREN_APPLIED = Counter(
    "kubemaas_children_applied_total",
    "Child objects written with server-side apply (unchanged children are not written).",
    ["kind", "child_kind"],
)
STATUS_WRITES = Counter(
    "kubemaas_status_writes_total",
    "Status subresource patches (unchanged status is not written).",
    ["kind"],
)
API_ERRORS = Counter(
    "kubemaas_api_errors_total",
    "Failed API requests by verb and whether they are retried.",
    ["verb", "transient"],
)
PENDING = Gauge(
    "kubemaas_reconciles_pending",
    "Reconciles waiting for the per-object lock or running.",
    ["kind"],
)


def start_metrics_server(port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on a daemon thread."""
    start_http_server(port, addr=address, registry=registry)
