"""The operator's series of one TrainingJob or ModelService (kubemaas.controllers.object_metrics), read from
its /metrics endpoint as Prometheus reads them: what the chart's alerting rules select."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# (sample name, labels other than namespace and name) -> value
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def object_series(url: str, kind: str, namespace: str, name: str) -> Series:
    """Every `kubemaas_<kind>_*` sample of the object `namespace/name`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = f"kubemaas_{kind.lower()}_"
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.startswith(prefix) and (labels.pop("namespace", None), labels.pop("name", None)) == (
                namespace,
                name,
            ):
                out[(sample.name, frozenset(labels.items()))] = sample.value
    return out


def key(sample: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (sample, frozenset(labels.items()))


def wait_gone(url: str, kind: str, namespace: str, name: str, timeout: float = 30.0) -> None:
    """Until the object's series are gone (its DELETED event reached the operator)."""
    deadline = time.monotonic() + timeout
    while (left := object_series(url, kind, namespace, name)) and time.monotonic() < deadline:
        time.sleep(0.5)  # a scrape, not an API object: no watch to follow
    assert not left, f"{kind} {namespace}/{name} still has series {sorted(left)} after it was deleted"
