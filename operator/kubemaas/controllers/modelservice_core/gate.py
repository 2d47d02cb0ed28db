"""Stage 2, the promotion gate: ``promotion.requireMetrics`` against a candidate's published metrics. Whether
a value passes is the API's ``MetricThreshold.admits``; this module says why one does not."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from kubemaas.api.modelservice import (
    MetricThreshold,
    ModelService,
)
from kubemaas.controllers.modelservice_core.model import Candidate, parse_metric


def spec_thresholds(ms: ModelService) -> list[MetricThreshold]:
    promotion = ms.spec.promotion
    return list(promotion.require_metrics) if promotion is not None else []


def gate_failures(candidate: Candidate, thresholds: Sequence[MetricThreshold]) -> list[str]:
    """Human-readable failures of the gate ("heldOutAccuracy 0.91 < min 0.95"); empty when it passes.
    Whether a value passes is the API's `MetricThreshold.admits`; this only says why it did not."""
    if not thresholds or candidate.metrics is None:
        return []
    failures = []
    for t in thresholds:
        value = candidate.metrics.get(t.name)
        low, high = parse_metric(t.min), parse_metric(t.max)
        if value is None:
            failures.append(f"{t.name} missing (required {_describe(low, high)})")
        elif t.admits(str(value)):
            continue
        elif low is not None and value < low:
            failures.append(f"{t.name} {value} < min {low}")
        else:
            failures.append(f"{t.name} {value} > max {high}")
    return failures


def _describe(low: Decimal | None, high: Decimal | None) -> str:
    parts = ([f"min {low}"] if low is not None else []) + ([f"max {high}"] if high is not None else [])
    return " and ".join(parts) or "present"
