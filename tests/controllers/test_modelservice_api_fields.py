"""The reconcile core and the handler seam with the API's promotion, selector, canary and runtime fields."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kubemaas.controllers import modelservice as handlers
from kubemaas.controllers.modelservice_core import ChildKey, Cond, Observed, Previous, Reason
from kubemaas.manifests import modelservice as m
from tests.controllers.builders import NOW, conditions, deployment, job, make_ms, ref, run
from tests.controllers.builders import served_version as version_of


def selector_ms(**spec: Any) -> Any:
    return make_ms(model={"trainingJobSelector": {"matchLabels": {"team": "digits"}}}, **spec)


def test_selector_serves_the_newest_succeeded_job() -> None:
    jobs = [job("a", "v1", "2026-11-29T10:00:00Z"), job("b", "v2", "2026-11-29T11:00:00Z"), job("c", None)]
    out = run(selector_ms(), Observed(training_jobs=jobs))
    assert version_of(out.apply[0]) == "v2"
    assert m.model_ref_from_template(out.apply[0]["spec"]["template"]) == ref("v2", source="trainingjob/b", key="b-key")


def pointing(body: dict[str, Any], uri: str) -> dict[str, Any]:
    """`body` whose status.model.uri says `uri`: written by hand, or by an older operator that trusted rank 0."""
    body["status"]["model"]["uri"] = uri
    return body


def test_a_job_whose_status_points_elsewhere_is_refused_as_a_condition_not_followed() -> None:
    # A URI that is not one used to raise in every reconcile of every matching ModelService (retried forever,
    # no status); a well-formed one on another claim pointed the loader there. Both are refused by name.
    for uri in ("x", "pvc://team-b/store/digits/v3"):
        bad = pointing(job("c", "v3", "2026-11-29T12:00:00Z"), uri)
        out = run(make_ms(model={"trainingJobRef": {"name": "c"}}), Observed(training_jobs=[bad]))
        assert out.apply == []
        status, reason, message = conditions(out)[Cond.READY]
        assert (status, reason) == ("False", Reason.INVALID_PUBLISHED_MODEL)
        assert repr(uri) in message and "'pvc://models/store/digits/v3'" in message
        # Beside good jobs, a selector skips it: the newest valid version is served.
        jobs = [job("b", "v2", "2026-11-29T11:00:00Z"), bad]
        assert version_of(run(selector_ms(), Observed(training_jobs=jobs)).apply[0]) == "v2"


def test_gate_from_the_spec_blocks_and_names_metric_value_and_threshold() -> None:
    ms = selector_ms(promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.9"}]})
    stable = deployment(ms, ref("v2", source="trainingjob/b", key="b-key"))
    jobs = [
        job("b", "v2", "2026-11-29T11:00:00Z", heldOutAccuracy="0.97"),
        job("c", "v3", "2026-11-29T12:00:00Z", heldOutAccuracy="0.5"),
    ]
    out = run(ms, Observed(training_jobs=jobs, stable=stable), Previous("v2", "v2"))
    assert version_of(out.apply[0]) == "v2"
    assert conditions(out)[Cond.PROMOTION_BLOCKED] == (
        "True",
        Reason.PROMOTION_BLOCKED,
        "TrainingJob 'c' version v3: heldOutAccuracy 0.5 < min 0.9",
    )


def test_nothing_served_yet_and_newest_blocked_serves_the_newest_passing_job() -> None:
    ms = selector_ms(promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.9"}]})
    jobs = [
        job("b", "v2", "2026-11-29T11:00:00Z", heldOutAccuracy="0.97"),
        job("c", "v3", "2026-11-29T12:00:00Z", heldOutAccuracy="0.5"),
    ]
    out = run(ms, Observed(training_jobs=jobs))
    assert version_of(out.apply[0]) == "v2"
    assert conditions(out)[Cond.PROMOTION_BLOCKED][0] == "True"


def canary_ms() -> Any:
    return make_ms(rollout={"strategy": "Canary", "canaryAnalysisSeconds": 60}, replicas=2)


def ready_canary(ms: Any, since: timedelta, restarts: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    canary = deployment(ms, ref("v2"), track=m.Track.CANARY)
    stamp = (NOW - since).strftime("%Y-%m-%dT%H:%M:%SZ")
    canary["status"]["conditions"].append({"type": "Available", "status": "True", "lastTransitionTime": stamp})
    pod = {
        "metadata": {"name": "c-1", "labels": {m.TRACK_LABEL: "canary", m.VERSION_LABEL: "v2"}},
        "status": {"containerStatuses": [{"name": "tritonserver", "restartCount": restarts}]},
    }
    return canary, [pod]


def test_canary_is_promoted_only_after_the_analysis_window() -> None:
    ms = canary_ms()
    previous = Previous("v1", "v1")
    stable = deployment(ms, ref("v1"), replicas=2)
    canary, pods = ready_canary(ms, timedelta(seconds=10))
    early = run(ms, Observed(training_jobs=[job("digits", "v2")], stable=stable, canary=canary, pods=pods), previous)
    by_name = {o["metadata"]["name"]: o for o in early.apply if o["kind"] == "Deployment"}
    assert version_of(by_name["digits"]) == "v1"
    assert early.requeue_after == 50
    canary, pods = ready_canary(ms, timedelta(seconds=61))
    late = run(ms, Observed(training_jobs=[job("digits", "v2")], stable=stable, canary=canary, pods=pods), previous)
    by_name = {o["metadata"]["name"]: o for o in late.apply if o["kind"] == "Deployment"}
    assert version_of(by_name["digits"]) == "v2"


def test_canary_restart_in_the_window_fails_it() -> None:
    ms = canary_ms()
    stable = deployment(ms, ref("v1"), replicas=2)
    canary, pods = ready_canary(ms, timedelta(seconds=10), restarts=1)
    observed = Observed(training_jobs=[job("digits", "v2")], stable=stable, canary=canary, pods=pods)
    out = run(ms, observed, Previous("v1", "v1"))
    assert out.delete == [ChildKey("apps/v1", "Deployment", "digits-canary")]
    assert out.status.last_failure is not None
    assert out.status.last_failure.reason == "CanaryRestarted"
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", "CanaryRestarted")


def test_serving_options_take_the_spec_fields() -> None:
    ms = make_ms(
        runtime={
            "image": "triton:2",
            "args": ["--log-verbose=1"],
            "env": [{"name": "OMP_NUM_THREADS", "value": "2"}],
            "startupTimeoutSeconds": 1800,
        },
        resources={"gpus": 1, "gpuResource": "nvidia.com/mig-1g.10gb", "shmSize": "2Gi"},
        rollout={"progressDeadlineSeconds": 120},
        disruptionBudget={"minAvailable": "50%"},
        serviceAccountName="serving",
        imagePullSecrets=[{"name": "regcred"}],
    )
    assert handlers.serving_options(ms) == m.ServingOptions(
        triton_image="triton:2",
        progress_deadline_seconds=120,
        startup_timeout_seconds=1800,
        shm_size="2Gi",
        service_account_name="serving",
        image_pull_secrets=("regcred",),
        triton_args=("--log-verbose=1",),
        triton_env=({"name": "OMP_NUM_THREADS", "value": "2"},),
        gpu_resource="nvidia.com/mig-1g.10gb",
        pdb_min_available="50%",
    )


def test_rollback_without_the_old_replica_set_uses_the_sources_older_job() -> None:
    ms = selector_ms()
    jobs = [job("a", "v1", "2026-11-29T10:00:00Z"), job("b", "v2", "2026-11-29T11:00:00Z")]
    bad = deployment(ms, ref("v2", source="trainingjob/b", key="b-key"), complete=False, deadline_exceeded=True)
    out = run(ms, Observed(training_jobs=jobs, stable=bad), Previous("v1", "v1"))
    assert m.model_ref_from_template(out.apply[0]["spec"]["template"]) == ref("v1", source="trainingjob/a", key="a-key")
    assert out.status.last_failure is not None
    assert out.status.last_failure.version == "v2"
