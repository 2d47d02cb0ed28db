"""The operator's Prometheus metrics, served on its own port (`kubemaas run --metrics-port`).

Its own work here; the state of the objects it manages in `object_metrics`. docs/alerts.md lists the alerts
that read them.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubemaas.controllers import DEFAULT_METRICS_PORT

__all__ = ["DEFAULT_METRICS_PORT", "count_watch_restarts", "start_metrics_server"]

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

LAST_SUCCESS = Gauge(
    "kubemaas_reconcile_last_success_timestamp_seconds",
    "When a reconcile of this kind last succeeded (Unix time); the operator reconciles every object at start.",
    ["kind"],
)
WATCH_RESTARTS = Counter(
    "kubemaas_watch_restarts_total",
    "Watch streams kopf started again: expired (410 Gone, the resource version is too old; kopf lists again) "
    "or inactive (no event within kopf's inactivity timeout; kopf reconnects).",
    ["cause"],
)

# kopf has no hook for its watch streams; it logs each restart at DEBUG (kopf/_cogs/clients/watching.py).
# tests/controllers/test_object_metrics.py checks these messages are still in the installed kopf's source.
KOPF_WATCH_LOGGER = "kopf._cogs.clients.watching"
WATCH_RESTART_MESSAGES = {"Restarting the watch-stream": "expired", "is inactive, reconnecting": "inactive"}


class _WatchRestartCounter(logging.Filter):
    """Counts kopf's watch restarts from its DEBUG records, then lets through only what the logger's level
    set before would have."""

    def __init__(self, passthrough_level: int) -> None:
        super().__init__()
        self.passthrough_level = passthrough_level

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for text, cause in WATCH_RESTART_MESSAGES.items():
            if text in message:
                WATCH_RESTARTS.labels(cause).inc()
        return record.levelno >= self.passthrough_level


def count_watch_restarts() -> None:
    """Let kopf's watch logger emit DEBUG records to the counter (and no further than its level allowed)."""
    logger = logging.getLogger(KOPF_WATCH_LOGGER)
    if any(isinstance(f, _WatchRestartCounter) for f in logger.filters):
        return
    logger.addFilter(_WatchRestartCounter(logger.getEffectiveLevel()))
    logger.setLevel(logging.DEBUG)
    for cause in WATCH_RESTART_MESSAGES.values():
        WATCH_RESTARTS.labels(cause)  # present at 0 from the start, so rate() sees the first restart


def start_metrics_server(port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on a daemon thread."""
    start_http_server(port, addr=address, registry=registry)
