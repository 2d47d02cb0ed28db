"""The objects' state as Prometheus series (object_metrics): what the chart's alerts read, scraped as
Prometheus scrapes it (the text exposition format, parsed back)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubemaas.api.base import Condition
from kubemaas.api.modelservice import ModelServiceStatus
from kubemaas.api.trainingjob import TrainingJobStatus
from kubemaas.controllers import metrics
from kubemaas.controllers import modelservice as ms_handlers
from kubemaas.controllers.object_metrics import (
    ObjectStates,
    modelservice_snapshot,
    trainingjob_snapshot,
)
from tests.controllers.fakes import FakeKube, index, indexed, run_handler

NOW = "2026-12-06T10:00:00Z"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(states: ObjectStates) -> Series:
    registry = CollectorRegistry()
    registry.register(states)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def condition(type_: str, status: str, reason: str) -> Condition:
    return Condition.model_validate(
        {"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": NOW}
    )


def labels(**items: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(items.items()))


def test_conditions_are_one_series_per_status_with_the_current_one_at_1() -> None:
    states = ObjectStates("TrainingJob")
    status = TrainingJobStatus(
        conditions=[condition("Failed", "True", "BadTerminationMessage"), condition("Ready", "False", "ClaimNotFound")],
        restart_count=2,
    )
    states.observe(("team-a", "digits"), trainingjob_snapshot(status))
    series = scrape(states)
    obj = {"namespace": "team-a", "name": "digits"}
    assert series[("kubemaas_trainingjob_condition", labels(**obj, type="Failed", status="true"))] == 1
    assert series[("kubemaas_trainingjob_condition", labels(**obj, type="Failed", status="false"))] == 0
    assert series[("kubemaas_trainingjob_condition", labels(**obj, type="Failed", status="unknown"))] == 0
    assert series[("kubemaas_trainingjob_condition", labels(**obj, type="Ready", status="false"))] == 1
    assert series[("kubemaas_trainingjob_condition_reason", labels(**obj, type="Ready", reason="ClaimNotFound"))] == 1
    assert series[("kubemaas_trainingjob_restarts_total", labels(**obj))] == 2
    # Bounded: 3 series per condition type, one reason per type, the restart count. No message, no version.
    assert len(series) == 2 * 3 + 2 + 1


def test_a_changed_reason_replaces_the_old_series_and_a_deleted_object_loses_all() -> None:
    states = ObjectStates("TrainingJob")
    key = ("team-a", "digits")
    states.observe(key, trainingjob_snapshot(TrainingJobStatus(conditions=[condition("Ready", "False", "Queued")])))
    states.observe(key, trainingjob_snapshot(TrainingJobStatus(conditions=[condition("Ready", "True", "Created")])))
    reasons = [k for k in scrape(states) if k[0] == "kubemaas_trainingjob_condition_reason"]
    assert reasons == [("kubemaas_trainingjob_condition_reason", labels(namespace="team-a", name="digits",
                                                                        type="Ready", reason="Created"))]  # fmt: skip
    states.forget(key)
    assert scrape(states) == {}


def test_modelservice_versions_and_counters_survive_a_new_snapshot() -> None:
    states = ObjectStates("ModelService")
    key = ("serving", "digits")
    status = ModelServiceStatus(
        conditions=[condition("Degraded", "True", "ProgressDeadlineExceeded")],
        served_version="v1",
        last_good_version="v1",
        canary_version="v2",
    )
    states.observe(key, modelservice_snapshot(status))
    states.count(key, "rollbacks")
    states.observe(key, modelservice_snapshot(status))  # the next reconcile keeps the count
    series = scrape(states)
    obj = {"namespace": "serving", "name": "digits"}
    info = labels(**obj, served_version="v1", last_good_version="v1", canary_version="v2")
    assert series[("kubemaas_modelservice_version_info", info)] == 1
    assert series[("kubemaas_modelservice_rollbacks_total", labels(**obj))] == 1
    assert series[("kubemaas_modelservice_promotion_refusals_total", labels(**obj))] == 0


# --- through the ModelService handler: the core's decisions counted once --------------------------


def gated_modelservice(status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits", "namespace": "serving", "uid": "uid-ms", "generation": 1,
                     "resourceVersion": "7"},
        "spec": {
            "model": {"trainingJobRef": {"name": "train-1"}},
            "promotion": {"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.95"}]},
        },
    }  # fmt: skip
    if status is not None:
        body["status"] = status
    return body


def weak_job() -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "train-1", "namespace": "serving"},
        "spec": {
            "output": {"uri": "pvc://models/store", "modelName": "digits"},
            "encryption": {"keySecretRef": {"name": "train-1-key"}},
        },
        "status": {
            "conditions": [{"type": "Succeeded", "status": "True"}],
            "completionTime": "2026-11-29T10:00:00Z",
            "model": {"uri": "pvc://models/store/digits/v1", "version": "v1", "metrics": {"heldOutAccuracy": "0.9"}},
        },
    }


def reconcile_once(body: dict[str, Any]) -> FakeKube:
    kwargs: dict[str, Any] = {name: index() for name in ms_handlers.INDEXERS}
    kwargs["ms_bodies"] = indexed(ms_handlers.ms_bodies, body)
    kwargs["ms_training_jobs"] = indexed(ms_handlers.ms_training_jobs, weak_job())
    kube = FakeKube()
    asyncio.run(ms_handlers.reconcile(("serving", "digits"), {"kube": kube, "triton_image": "t:1"}, kwargs))
    return kube


def test_a_refused_promotion_is_counted_once_and_the_series_go_with_the_object(
    no_events: list[dict[str, Any]],
) -> None:
    key = ("serving", "digits")
    kube = reconcile_once(gated_modelservice())
    series = scrape(ms_handlers.LOOP.states)
    obj = {"namespace": "serving", "name": "digits"}
    assert series[("kubemaas_modelservice_promotion_refusals_total", labels(**obj))] == 1
    blocked = labels(**obj, type="PromotionBlocked", status="true")
    assert series[("kubemaas_modelservice_condition", blocked)] == 1
    # The next pass starts from the status just written (a new index version): the same refusal again
    # is not a new one.
    (_, written, _), *_ = kube.statuses
    ms_handlers.LOOP.forget(key)
    reconcile_once(gated_modelservice(dict(written)))
    series = scrape(ms_handlers.LOOP.states)
    assert series[("kubemaas_modelservice_promotion_refusals_total", labels(**obj))] == 0  # forgotten, then 0
    assert series[("kubemaas_modelservice_condition", blocked)] == 1
    # A DELETED event drops the object's series.
    memo = {"kube": FakeKube(), "triton_image": "t:1"}
    run_handler(ms_handlers.on_modelservice, type="DELETED", namespace="serving", name="digits", memo=memo)
    assert scrape(ms_handlers.LOOP.states) == {}


# --- the operator's own health ----------------------------------------------------------------------


def test_kopf_watch_restarts_are_counted_and_its_debug_records_stay_quiet(caplog: Any) -> None:
    metrics.count_watch_restarts()
    metrics.count_watch_restarts()  # idempotent: one filter
    logger = logging.getLogger(metrics.KOPF_WATCH_LOGGER)
    before = metrics.WATCH_RESTARTS.labels("expired")._value.get()
    with caplog.at_level(logging.INFO):
        logger.debug("Restarting the watch-stream for trainingjobs.v1alpha1.kubemaas.io cluster-wide.")
        logger.debug("Starting the watch-stream for pods.v1 cluster-wide.")
    assert metrics.WATCH_RESTARTS.labels("expired")._value.get() == before + 1
    assert not [r for r in caplog.records if r.name == metrics.KOPF_WATCH_LOGGER]


def test_the_messages_counted_are_in_the_installed_kopf() -> None:
    # kopf offers no hook for watch restarts; if a kopf upgrade rewords them, the counter would stay at 0.
    source = (Path(kopf.__file__).parent / "_cogs" / "clients" / "watching.py").read_text()
    assert "logging.getLogger(__name__)" in source
    for message in metrics.WATCH_RESTART_MESSAGES:
        assert message in source, message
