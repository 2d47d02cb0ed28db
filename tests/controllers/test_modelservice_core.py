"""The ModelService reconcile core as pure logic: observed objects in, children and status out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubemaas.api import ModelService
from kubemaas.api.core import LabelSelector
from kubemaas.api.modelservice import LastFailure, MetricThreshold
from kubemaas.contract.termination import SuccessMessage, encode
from kubemaas.controllers import modelservice_core as core
from kubemaas.controllers.modelservice_core import ChildKey, Cond, Observed, Previous, Reason
from kubemaas.manifests import modelservice as m
from tests.controllers.builders import (
    STORE,
    conditions,
    deployment,
    job,
    make_ms,
    options,
    ref,
    run,
    served_version,
)
from tests.manifests.builders import parent_of


def uri_ms(version: str = "v3", **spec: Any) -> ModelService:
    return make_ms(
        model={"uri": f"{STORE}/digits", "version": version, "encryption": {"keySecretRef": {"name": "digits-key"}}},
        **spec,
    )


def replica_set(ms: ModelService, model: m.ModelRef, revision: int) -> dict[str, Any]:
    template = m.pod_template(ms.spec, parent_of(ms), model, options(), m.Track.STABLE)
    return {
        "metadata": {"name": f"digits-{revision}", "annotations": {"deployment.kubernetes.io/revision": str(revision)}},
        "spec": {"template": template},
    }


def pod(version: str, *, loader: Mapping[str, Any] | None = None, source: str = "trainingjob/digits") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"digits-{version}-abc",
            "labels": {m.TRACK_LABEL: "stable", m.VERSION_LABEL: version},
            "annotations": {m.SOURCE_ANNOTATION: source},
        },
        "status": {"initContainerStatuses": [{"name": m.LOADER_CONTAINER, **(loader or {})}]},
    }


def kinds(outcome: core.Outcome) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in outcome.apply]


# --------------------------------------------------------------------------- sources


def test_pinned_uri_creates_deployment_and_service_and_waits_for_rollout() -> None:
    ms = uri_ms("v3")
    out = run(ms, Observed())
    assert kinds(out) == [("Deployment", "digits"), ("Service", "digits"), ("NetworkPolicy", "digits")]
    assert served_version(out.apply[0]) == "v3"
    assert out.apply[0]["spec"]["replicas"] == 1
    assert conditions(out)[Cond.READY][:2] == ("False", Reason.ROLLING_OUT)
    assert conditions(out)[Cond.PROGRESSING][:2] == ("True", Reason.ROLLING_OUT)
    assert out.status.served_version is None


def test_complete_rollout_is_ready_with_endpoints() -> None:
    ms = uri_ms("v3", replicas=2)
    source = f"{STORE}/digits@v3"
    stable = deployment(ms, ref("v3", source=source), replicas=2)
    out = run(ms, Observed(stable=stable))
    assert conditions(out)[Cond.READY] == ("True", Reason.SERVING, "serving v3")
    assert conditions(out)[Cond.PROGRESSING][:2] == ("False", Reason.ROLLOUT_COMPLETE)
    assert conditions(out)[Cond.DEGRADED][:2] == ("False", Reason.AS_EXPECTED)
    assert out.status.model_dump(by_alias=True, mode="json", exclude={"conditions"}) == {
        "desiredReplicas": 2,
        "replicas": 2,
        "readyReplicas": 2,
        "servedVersion": "v3",
        "canaryVersion": None,
        "canary": None,
        "lastGoodVersion": "v3",
        "lastFailure": None,
        "endpoints": {"http": "digits.serving.svc:8000", "grpc": "digits.serving.svc:8001"},
        "url": "http://digits.serving.svc:8000",
        "observedGeneration": 1,
    }
    assert ("PodDisruptionBudget", "digits") in kinds(out)
    assert [e.reason for e in out.events] == ["VersionServed"]


def test_missing_training_job_is_a_condition() -> None:
    out = run(make_ms(), Observed())
    assert out.apply == []
    assert conditions(out)[Cond.READY] == ("False", Reason.SOURCE_NOT_FOUND, "TrainingJob 'digits' not found")


def test_unfinished_training_job_waits() -> None:
    out = run(make_ms(), Observed(training_jobs=[job("digits", None)]))
    assert out.apply == []
    assert conditions(out)[Cond.READY][:2] == ("False", Reason.WAITING_FOR_MODEL)


def test_training_job_source_uses_its_model_and_key() -> None:
    out = run(make_ms(), Observed(training_jobs=[job("digits", "v7")]))
    dep = out.apply[0]
    assert served_version(dep) == "v7"
    assert m.model_ref_from_template(dep["spec"]["template"]) == ref("v7", key="digits-key")


def test_missing_key_secret_blocks_a_first_rollout() -> None:
    out = run(uri_ms("v3"), Observed(secrets={"digits-key": False}))
    assert out.apply == []
    assert conditions(out)[Cond.READY][:2] == ("False", Reason.KEY_SECRET_NOT_FOUND)


def s3_ms(credentials: str | None = "digits-s3") -> ModelService:
    s3: dict[str, Any] = {"endpoint": "https://s3.internal:9000", "pathStyle": True}
    if credentials is not None:
        s3["credentialsSecretRef"] = {"name": credentials}
    model = {
        "uri": "s3://models/store/digits",
        "version": "v3",
        "encryption": {"keySecretRef": {"name": "digits-key"}},
        "storage": {"s3": s3},
    }
    return make_ms(model=model)


def test_an_s3_source_needs_its_credentials_secret_and_serves_from_the_bucket() -> None:
    ms = s3_ms()
    assert core.required_secrets(ms, []) == ["digits-key", "digits-s3"]
    blocked = run(ms, Observed(secrets={"digits-key": True, "digits-s3": False}))
    assert blocked.apply == []
    assert conditions(blocked)[Cond.READY] == (
        "False",
        Reason.CREDENTIALS_SECRET_NOT_FOUND,
        "storage credentials Secret 'digits-s3' not found",
    )
    out = run(ms, Observed(secrets={"digits-key": True, "digits-s3": True}))
    served = m.model_ref_from_template(out.apply[0]["spec"]["template"])
    assert served is not None and served.store_uri == "s3://models/store" and served.claim is None
    storage = ms.spec.model.storage
    assert storage is not None and served.s3 == storage.s3
    # No credentials Secret: the SDK's default chain (a ServiceAccount's web identity), nothing to look up.
    assert core.required_secrets(s3_ms(credentials=None), []) == ["digits-key"]


def test_source_lost_keeps_serving_and_degrades() -> None:
    ms = make_ms()
    stable = deployment(ms, ref("v7"))
    out = run(ms, Observed(stable=stable), Previous(served_version="v7", last_good_version="v7"))
    assert served_version(out.apply[0]) == "v7"
    assert conditions(out)[Cond.READY][:2] == ("True", Reason.SERVING)
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.SOURCE_NOT_FOUND)


def test_selector_picks_newest_succeeded_job() -> None:
    jobs = [
        job("a", "v1", "2026-11-29T10:00:00Z"),
        job("c", "v3", "2026-11-29T12:00:00Z"),
        job("b", "v2", "2026-11-29T11:00:00Z"),
        job("d", None),
    ]
    jobs[1]["metadata"]["labels"] = {"team": "other"}
    ms = make_ms(model={"trainingJobSelector": {"matchLabels": {"team": "digits"}}})
    resolution = core.resolve_source(ms, jobs)
    assert [c.job for c in resolution.candidates] == ["b", "a"]
    waiting = core.resolve_source(ms, [job("d", None)]).problem
    assert waiting is not None and waiting.reason == Reason.WAITING_FOR_MODEL
    problem = core.resolve_source(ms, []).problem
    assert problem is not None and problem.reason == Reason.SOURCE_NOT_FOUND


# --------------------------------------------------------------------------- version pinning


def test_latest_is_pinned_to_the_version_the_loader_reported() -> None:
    ms = uri_ms("Latest")
    source = f"{STORE}/digits@Latest"
    stable = deployment(ms, ref("Latest", source=source))
    success = SuccessMessage(model="digits", version="v9", uri=f"{STORE}/digits/v9", sha256="a" * 64, key_id="k1")
    report = {"state": {"terminated": {"exitCode": 0, "message": encode(success).decode()}}}
    out = run(ms, Observed(stable=stable, pods=[pod("Latest", loader=report, source=source)]))
    assert served_version(out.apply[0]) == "v9"
    assert out.status.served_version == "v9"
    # Pinned once, the template keeps the pin without asking the pods again.
    pinned = deployment(ms, ref("v9", source=source))
    again = run(ms, Observed(stable=pinned))
    assert served_version(again.apply[0]) == "v9"
    assert conditions(again)[Cond.READY][:2] == ("True", Reason.SERVING)


def test_unresolved_latest_is_not_ready() -> None:
    ms = uri_ms("Latest")
    out = run(ms, Observed())
    assert served_version(out.apply[0]) == "Latest"
    assert conditions(out)[Cond.PROGRESSING][:2] == ("True", Reason.RESOLVING_VERSION)
    assert conditions(out)[Cond.READY][0] == "False"


# --------------------------------------------------------------------------- promotion gate


def test_gate_failures_name_metric_value_and_threshold() -> None:
    cand = core.Candidate(model=ref("v2"), job="b", metrics={"heldOutAccuracy": Decimal("0.91")})
    gate = [MetricThreshold(name="heldOutAccuracy", min="0.95"), MetricThreshold(name="loss", max="0.2")]
    assert core.gate_failures(cand, gate) == [
        "heldOutAccuracy 0.91 < min 0.95",
        "loss missing (required max 0.2)",
    ]
    assert core.gate_failures(cand, [MetricThreshold(name="heldOutAccuracy", min="0.9")]) == []


def test_selector_expressions() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "digits"},
            "matchExpressions": [
                {"key": "stage", "operator": "In", "values": ["prod", "canary"]},
                {"key": "experimental", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"team": "digits", "stage": "prod"})
    assert not selector.matches({"team": "digits", "stage": "dev"})
    assert not selector.matches({"team": "digits", "stage": "prod", "experimental": "yes"})
    assert not selector.matches({"stage": "prod"})
    assert selector.describe() == "team=digits,stage In (canary,prod),experimental DoesNotExist"


def test_metric_values_parse_as_decimals() -> None:
    assert core.parse_metric("0.95") == Decimal("0.95")
    assert core.parse_metric(0.5) == Decimal("0.5")
    assert core.parse_metric("nan") is None
    assert core.parse_metric(True) is None


def test_failing_candidate_is_not_rolled_out() -> None:
    ms = make_ms(promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.95"}]})
    stable = deployment(ms, ref("v1"))
    jobs = [job("digits", "v2", heldOutAccuracy=0.9)]
    out = run(ms, Observed(training_jobs=jobs, stable=stable), Previous(served_version="v1", last_good_version="v1"))
    assert served_version(out.apply[0]) == "v1"
    assert conditions(out)[Cond.PROMOTION_BLOCKED] == (
        "True",
        Reason.PROMOTION_BLOCKED,
        "TrainingJob 'digits' version v2: heldOutAccuracy 0.9 < min 0.95",
    )
    assert conditions(out)[Cond.READY][:2] == ("True", Reason.SERVING)
    assert out.promotion_refused and not out.rolled_back  # counted (object_metrics)
    # The next reconcile starts from that status: the same refusal is not a new one; another candidate is.
    refused = ms.model_copy(update={"status": out.status})
    previous = Previous(served_version="v1", last_good_version="v1")
    assert not run(refused, Observed(training_jobs=jobs, stable=stable), previous).promotion_refused
    recreated = [job("digits", "v3", heldOutAccuracy=0.91)]  # the job deleted and created again
    assert run(refused, Observed(training_jobs=recreated, stable=stable), previous).promotion_refused


def test_passing_candidate_is_rolled_out() -> None:
    ms = make_ms(promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.95"}]})
    stable = deployment(ms, ref("v1"))
    jobs = [job("digits", "v2", heldOutAccuracy=0.97)]
    out = run(ms, Observed(training_jobs=jobs, stable=stable), Previous(served_version="v1", last_good_version="v1"))
    assert served_version(out.apply[0]) == "v2"
    assert conditions(out)[Cond.PROMOTION_BLOCKED][:2] == ("False", Reason.GATE_PASSED)
    assert conditions(out)[Cond.READY][:2] == ("False", Reason.ROLLING_OUT)
    assert out.status.served_version == "v1"  # the old version serves until the rollout completed


# --------------------------------------------------------------------------- safe rollout


def test_deadline_exceeded_rolls_back_to_last_good_template() -> None:
    ms = make_ms()
    bad = deployment(ms, ref("v2"), complete=False, deadline_exceeded=True)
    observed = Observed(
        training_jobs=[job("digits", "v2")],
        stable=bad,
        replica_sets=[replica_set(ms, ref("v1"), 1), replica_set(ms, ref("v2"), 2)],
    )
    out = run(ms, observed, Previous(served_version="v1", last_good_version="v1"))
    rolled_back = out.apply[0]
    assert served_version(rolled_back) == "v1"
    assert rolled_back["spec"]["template"] == replica_set(ms, ref("v1"), 1)["spec"]["template"]
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.PROGRESS_DEADLINE)
    assert out.status.last_failure is not None
    assert out.status.last_failure.version == "v2"
    assert out.status.last_failure.reason == Reason.PROGRESS_DEADLINE
    assert out.status.served_version == "v1"
    assert [e.reason for e in out.events] == ["RolloutFailed"]
    assert out.rolled_back and not out.promotion_refused


def test_failed_version_is_not_retried_until_the_source_changes() -> None:
    ms = make_ms()
    previous = Previous(
        served_version="v1",
        last_good_version="v1",
        last_failure=LastFailure(version="v2", reason=Reason.PROGRESS_DEADLINE, message="timed out"),
        degraded=True,
    )
    stable = deployment(ms, ref("v1"))
    out = run(ms, Observed(training_jobs=[job("digits", "v2")], stable=stable), previous)
    assert served_version(out.apply[0]) == "v1"
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.PROGRESS_DEADLINE)
    assert conditions(out)[Cond.READY][:2] == ("True", Reason.SERVING)
    assert out.events == []
    assert not out.rolled_back  # rolled back already, by the reconcile that recorded the failure
    # A new version from the source is tried.
    newer = run(ms, Observed(training_jobs=[job("digits", "v3")], stable=stable), previous)
    assert served_version(newer.apply[0]) == "v3"
    assert conditions(newer)[Cond.DEGRADED][:2] == ("False", Reason.AS_EXPECTED)
    assert newer.status.last_failure is not None
    assert newer.status.last_failure.version == "v2"


def test_crash_looping_loader_reports_its_reason() -> None:
    ms = make_ms()
    stable = deployment(ms, ref("v2"), complete=False)
    message = {"exitCode": 78, "message": "kubemaas load-model: wrong key: ...", "reason": "WrongKey"}
    loader = {
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 78, "message": json.dumps(message)}},
    }
    observed = Observed(
        training_jobs=[job("digits", "v2")],
        stable=stable,
        pods=[pod("v2", loader=loader)],
        replica_sets=[replica_set(ms, ref("v1"), 1), replica_set(ms, ref("v2"), 2)],
    )
    out = run(ms, observed, Previous(served_version="v1", last_good_version="v1"))
    assert served_version(out.apply[0]) == "v1"
    assert out.status.last_failure is not None and out.status.last_failure.to_wire() == {
        "version": "v2",
        "reason": "WrongKey",
        "message": "kubemaas load-model: wrong key: ...",
        "exitCode": 78,
    }
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", "WrongKey")


def test_first_version_failing_has_nothing_to_roll_back_to() -> None:
    ms = make_ms()
    bad = deployment(ms, ref("v1"), complete=False, deadline_exceeded=True)
    out = run(ms, Observed(training_jobs=[job("digits", "v1")], stable=bad))
    assert ("Deployment", "digits") not in kinds(out)  # left as it is
    assert out.status.last_failure is not None and not out.rolled_back
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.PROGRESS_DEADLINE)
    assert conditions(out)[Cond.READY][0] == "False"


# --------------------------------------------------------------------------- autoscaling, PDB


def test_autoscaling_owns_replicas() -> None:
    ms = uri_ms("v3", autoscaling={"minReplicas": 2, "maxReplicas": 4})
    out = run(ms, Observed())
    dep = out.apply[0]
    assert "replicas" not in dep["spec"]
    assert out.status.desired_replicas is None  # no Deployment yet; then the autoscaler's count
    scaled = deployment(ms, ref("v3", source=f"{STORE}/digits@v3"), replicas=3)
    assert run(ms, Observed(stable=scaled)).status.desired_replicas == 3
    assert conditions(run(ms, Observed(stable=scaled)))[Cond.READY][0] == "True"
    # Created at one replica, before the HPA scaled it to minReplicas: not Ready yet.
    single = deployment(ms, ref("v3", source=f"{STORE}/digits@v3"), replicas=1)
    assert conditions(run(ms, Observed(stable=single)))[Cond.READY][0] == "False"
    assert kinds(out) == [
        ("Deployment", "digits"),
        ("Service", "digits"),
        ("NetworkPolicy", "digits"),
        ("HorizontalPodAutoscaler", "digits"),
        ("PodDisruptionBudget", "digits"),
    ]


def test_removed_autoscaling_and_single_replica_delete_hpa_and_pdb() -> None:
    ms = uri_ms("v3")
    out = run(ms, Observed(hpa={"kind": "HorizontalPodAutoscaler"}, pdb={"kind": "PodDisruptionBudget"}))
    assert out.delete == [
        ChildKey("autoscaling/v2", "HorizontalPodAutoscaler", "digits"),
        ChildKey("policy/v1", "PodDisruptionBudget", "digits"),
    ]


# --------------------------------------------------------------------------- canary


def test_canary_runs_beside_stable_then_is_promoted_then_removed() -> None:
    ms = make_ms(rollout={"strategy": "Canary", "canaryReplicas": 2}, replicas=3)
    jobs = [job("digits", "v2")]
    previous = Previous(served_version="v1", last_good_version="v1")
    stable_v1 = deployment(ms, ref("v1"), replicas=3)

    start = run(ms, Observed(training_jobs=jobs, stable=stable_v1), previous)
    by_name = {o["metadata"]["name"]: o for o in start.apply if o["kind"] == "Deployment"}
    assert served_version(by_name["digits"]) == "v1"
    assert served_version(by_name["digits-canary"]) == "v2"
    assert by_name["digits-canary"]["spec"]["replicas"] == 2
    assert start.status.canary_version == "v2"
    assert conditions(start)[Cond.PROGRESSING][:2] == ("True", Reason.CANARY)

    canary_ready = deployment(ms, ref("v2"), track=m.Track.CANARY, replicas=2)
    promote = run(ms, Observed(training_jobs=jobs, stable=stable_v1, canary=canary_ready), previous)
    by_name = {o["metadata"]["name"]: o for o in promote.apply if o["kind"] == "Deployment"}
    assert served_version(by_name["digits"]) == "v2"
    assert "digits-canary" in by_name
    assert promote.delete == []

    stable_rolling = deployment(ms, ref("v2"), replicas=3, complete=False)
    rolling = run(ms, Observed(training_jobs=jobs, stable=stable_rolling, canary=canary_ready), previous)
    assert ("Deployment", "digits-canary") in kinds(rolling)

    stable_v2 = deployment(ms, ref("v2"), replicas=3)
    done = run(ms, Observed(training_jobs=jobs, stable=stable_v2, canary=canary_ready), previous)
    assert ("Deployment", "digits-canary") not in kinds(done)
    assert done.delete == [ChildKey("apps/v1", "Deployment", "digits-canary")]
    assert done.status.served_version == "v2"
    assert conditions(done)[Cond.READY][:2] == ("True", Reason.SERVING)


def test_failed_canary_is_removed_and_stable_keeps_serving() -> None:
    ms = make_ms(rollout={"strategy": "Canary"})
    canary = deployment(ms, ref("v2"), track=m.Track.CANARY, complete=False, deadline_exceeded=True)
    observed = Observed(training_jobs=[job("digits", "v2")], stable=deployment(ms, ref("v1")), canary=canary)
    out = run(ms, observed, Previous(served_version="v1", last_good_version="v1"))
    assert kinds(out)[0] == ("Deployment", "digits")
    assert served_version(out.apply[0]) == "v1"
    assert out.delete == [ChildKey("apps/v1", "Deployment", "digits-canary")]
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.PROGRESS_DEADLINE)


def test_previous_reads_the_raw_status() -> None:
    previous = Previous.from_status(
        {
            "servedVersion": "v1",
            "lastGoodVersion": "v1",
            "lastFailure": {"version": "v2", "reason": "WrongKey", "message": "x", "exitCode": 78},
            "conditions": [{"type": "Degraded", "status": "True"}],
        }
    )
    failure = LastFailure(version="v2", reason="WrongKey", message="x", exit_code=78)
    assert previous == Previous("v1", "v1", failure, degraded=True)
    assert Previous.from_status(None) == Previous()


def test_stuck_rollout_of_the_served_version_is_degraded_without_rollback() -> None:
    ms = make_ms()
    stuck = deployment(ms, ref("v1"), complete=False, deadline_exceeded=True)
    out = run(ms, Observed(training_jobs=[job("digits", "v1")], stable=stuck), Previous("v1", "v1"))
    assert served_version(out.apply[0]) == "v1"
    assert conditions(out)[Cond.DEGRADED][:2] == ("True", Reason.PROGRESS_DEADLINE)
    assert out.status.last_failure is None  # nothing to remember: the version itself is good
