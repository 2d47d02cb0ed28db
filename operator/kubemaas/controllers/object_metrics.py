"""The state of every TrainingJob and ModelService as Prometheus series: what the chart's alerts fire on.

kube-state-metrics' way: the operator keeps a small snapshot of each object's status (conditions, versions,
counts) and turns it into series when Prometheus scrapes, so a deleted object's series go with it and an
operator restart rebuilds them from the initial listing (every object is reconciled again). The labels are
the object's namespace and name plus bounded enumerations (condition type, status, reason): no version or
message labels, except on the one `version_info` series per ModelService (as kube_pod_info carries a pod's
IPs).

Series, with `<kind>` `trainingjob` or `modelservice`:
- `kubemaas_<kind>_condition{namespace,name,type,status}`: 1 for the condition's current status (`true`,
  `false`, `unknown`), 0 for the other two (kube_pod_status_ready's shape: an alert reads `== 1`).
- `kubemaas_<kind>_condition_reason{namespace,name,type,reason}`: 1, one series per condition type.
- `kubemaas_modelservice_version_info{namespace,name,served_version,last_good_version,canary_version}`: 1.
- `kubemaas_modelservice_rollbacks_total` and `kubemaas_modelservice_promotion_refusals_total`: counted by
  this process when the reconcile that decided them wrote its status (they start at 0 after a restart,
  which `increase()` reads as a counter reset).
- `kubemaas_trainingjob_restarts_total`: the job's `status.restartCount`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubemaas.api.base import Condition
from kubemaas.api.modelservice import ModelServiceStatus
from kubemaas.api.trainingjob import TrainingJobStatus

ObjectKey = tuple[str, str]  # (namespace, name)
STATUSES = ("true", "false", "unknown")
VERSION_LABELS = ("served_version", "last_good_version", "canary_version")
# What the operator counts per object, by kind (`kubemaas_<kind>_<counter>_total`).
COUNTERS = {"ModelService": ("rollbacks", "promotion_refusals")}


@dataclass(frozen=True)
class Snapshot:
    """What the series of one object are made of."""

    conditions: tuple[tuple[str, str, str], ...] = ()  # (type, status lower-case, reason)
    versions: tuple[str, ...] | None = None  # VERSION_LABELS' values ("" when unset); ModelServices only
    restarts: int | None = None  # TrainingJobs only
    counts: tuple[tuple[str, int], ...] = ()  # this process's counters, by name


def _conditions(conditions: Sequence[Condition] | None) -> tuple[tuple[str, str, str], ...]:
    return tuple((c.type, c.status.value.lower(), c.reason) for c in conditions or ())


def trainingjob_snapshot(status: TrainingJobStatus) -> Snapshot:
    return Snapshot(conditions=_conditions(status.conditions), restarts=status.restart_count or 0)


def modelservice_snapshot(status: ModelServiceStatus) -> Snapshot:
    versions = (status.served_version, status.last_good_version, status.canary_version)
    return Snapshot(conditions=_conditions(status.conditions), versions=tuple(v or "" for v in versions))


@dataclass(eq=False)  # registered by identity
class ObjectStates(Collector):
    """The snapshots of one kind's objects, read by Prometheus through `collect`.

    Written from the operator's event loop and read from prometheus_client's HTTP thread: one lock.
    """

    kind: str  # TrainingJob | ModelService
    _snapshots: dict[ObjectKey, Snapshot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix(self) -> str:
        return f"kubemaas_{self.kind.lower()}"

    @property
    def counters(self) -> tuple[str, ...]:
        return COUNTERS.get(self.kind, ())

    def observe(self, key: ObjectKey, snapshot: Snapshot) -> None:
        """The object's state as its last reconcile computed it (its counters carry over)."""
        with self._lock:
            previous = self._snapshots.get(key)
            counts = previous.counts if previous is not None else ()
            self._snapshots[key] = replace(snapshot, counts=counts)

    def count(self, key: ObjectKey, counter: str) -> None:
        if counter not in self.counters:
            raise ValueError(f"{self.kind} has no counter {counter!r}")
        with self._lock:
            snapshot = self._snapshots.get(key, Snapshot())
            counts = dict(snapshot.counts)
            counts[counter] = counts.get(counter, 0) + 1
            self._snapshots[key] = replace(snapshot, counts=tuple(sorted(counts.items())))

    def forget(self, key: ObjectKey) -> None:
        """The object is deleted: its series go at the next scrape."""
        with self._lock:
            self._snapshots.pop(key, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshots = sorted(self._snapshots.items())
        prefix, kind = self.prefix, self.kind
        condition = GaugeMetricFamily(
            f"{prefix}_condition",
            f"{kind} conditions: 1 for the current status (true, false, unknown) of each type, 0 for the others.",
            labels=["namespace", "name", "type", "status"],
        )
        reason = GaugeMetricFamily(
            f"{prefix}_condition_reason",
            f"The reason of each {kind} condition (always 1).",
            labels=["namespace", "name", "type", "reason"],
        )
        counters = {
            name: CounterMetricFamily(
                f"{prefix}_{name}",
                f"{kind} {name.replace('_', ' ')} decided by this operator process.",
                labels=["namespace", "name"],
            )
            for name in self.counters
        }
        versions = GaugeMetricFamily(
            f"{prefix}_version_info",
            "The versions a ModelService serves, last served fully and tries as canary (always 1).",
            labels=["namespace", "name", *VERSION_LABELS],
        )
        restarts = CounterMetricFamily(
            f"{prefix}_restarts", "status.restartCount of the TrainingJob.", labels=["namespace", "name"]
        )
        for (namespace, name), snapshot in snapshots:
            for type_, current, why in snapshot.conditions:
                for status in STATUSES:
                    condition.add_metric([namespace, name, type_, status], 1.0 if status == current else 0.0)
                reason.add_metric([namespace, name, type_, why], 1.0)
            counts = dict(snapshot.counts)
            for counter_name, family in counters.items():
                family.add_metric([namespace, name], float(counts.get(counter_name, 0)))
            if snapshot.versions is not None:
                versions.add_metric([namespace, name, *snapshot.versions], 1.0)
            if snapshot.restarts is not None:
                restarts.add_metric([namespace, name], float(snapshot.restarts))
        yield condition
        yield reason
        yield from counters.values()
        # Each kind's own families, present (empty) before its first object, as the counters are.
        if self.kind == "ModelService":
            yield versions
        if self.kind == "TrainingJob":
            yield restarts


TRAININGJOBS = ObjectStates("TrainingJob")
MODELSERVICES = ObjectStates("ModelService")
REGISTRY.register(TRAININGJOBS)
REGISTRY.register(MODELSERVICES)
