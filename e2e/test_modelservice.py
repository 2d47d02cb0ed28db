"""The ModelService controller against the real API server, controller-manager and kwok GPU nodes.

The TrainingJob controller is another track: a TrainingJob here is an object whose status the test
writes itself through the status subresource, as that controller would after a successful run. kwok
pods become Ready at once, so "serving" means what the cluster reports (Deployment and pod status);
the real node (issue 14) covers Triton answering inside a pod.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.nodes import GPU_NODES
from e2e.conftest import E2ECluster, OperatorProcess
from e2e.kube import GROUP, STATUS_ONLY_JOB, VERSION, bound_claim, model_service, training_job
from e2e.operator_series import key, object_series, wait_gone
from e2e.typed_client import Watch, as_json, body_as, json_object, meta, pod_spec, present

MS_API = f"{GROUP}/{VERSION}"
VERSION_LABEL = "kubemaas.io/model-version"
STORE = "pvc://models/store"
SHA = "0" * 64
READY_TIMEOUT = 90.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def crds(cluster: E2ECluster) -> None:
    """This checkout's CRDs, applied before every test: helpers sharing the cluster apply their own."""
    cluster.install_crds()


@pytest.fixture
def store(cluster: E2ECluster, namespace: str) -> Iterator[str]:
    """The artifact store's claim (`models`), bound to a PV reserved for it, and a key Secret."""
    core = client.CoreV1Api(cluster.api)
    host_path = {"hostPath": {"path": f"/tmp/kubemaas-e2e/{namespace}"}}
    pv_name = bound_claim(cluster.api, namespace, "models", host_path, access_modes=("ReadOnlyMany",))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-key"}, "stringData": {"active": "k1"}}
    core.create_namespaced_secret(namespace, body_as(client.V1Secret, secret))
    cluster.wait_object(
        "v1",
        "PersistentVolumeClaim",
        namespace,
        "models",
        lambda pvc: (pvc.get("status") or {}).get("phase") == "Bound",
        what="claim models to be Bound",
        timeout=30,
    )
    try:
        yield "models"
    finally:
        core.delete_persistent_volume(pv_name)


def custom(cluster: E2ECluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def publish(cluster: E2ECluster, namespace: str, job: str, version: str, *, store: str = STORE, **metrics: str) -> None:
    """Write what the TrainingJob controller writes when rank 0 published `version` to the job's `store` (its
    spec.output.uri: the ModelService follows no status that points elsewhere).

    Works with the operator running or not: the operator's status writes are conditional on the version
    they were computed from, so one racing this write is refused and computed again from it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model: dict[str, Any] = {"uri": f"{store}/digits/{version}", "version": version, "sha256": SHA, "keyId": "k1"}
    if metrics:
        model["metrics"] = metrics
    status = {
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "", "lastTransitionTime": now}
        ],
        "completionTime": now,
        "model": model,
    }
    custom(cluster).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingjobs", job, {"status": status}
    )


def create_job(
    cluster: E2ECluster, namespace: str, name: str, labels: dict[str, str] | None = None, *, store: str = STORE
) -> None:
    spec = {**STATUS_ONLY_JOB, "output": {**STATUS_ONLY_JOB["output"], "uri": store}}
    custom(cluster).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", training_job(name, labels=labels, **spec)
    )


def serve_digits(cluster: E2ECluster, namespace: str, **spec: Any) -> None:
    """TrainingJob `digits` published v1, and a ModelService `digits` serving it, Ready."""
    create_job(cluster, namespace, "digits")
    publish(cluster, namespace, "digits", "v1")
    ms = model_service("digits", {"trainingJobRef": {"name": "digits"}}, **spec)
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    wait_condition(cluster, namespace, "digits", "Ready")


def served(ms: dict[str, Any]) -> str | None:
    return (ms.get("status") or {}).get("servedVersion")


def get_ms(cluster: E2ECluster, namespace: str, name: str) -> dict[str, Any]:
    return json_object(custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", name))


def condition(ms: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (ms.get("status") or {}).get("conditions") or () if c["type"] == type_), {})


def wait_ms(
    cluster: E2ECluster,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = READY_TIMEOUT,
) -> dict[str, Any]:
    """Follow the ModelService's watch until `check` holds; returns the object."""
    return cluster.wait_object(
        MS_API, "ModelService", namespace, name, lambda ms: ms if check(ms) else None, what=what, timeout=timeout
    )


def wait_condition(
    cluster: E2ECluster,
    namespace: str,
    name: str,
    type_: str,
    status: str = "True",
    timeout: float = READY_TIMEOUT,
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """Wait for condition `type_` at `status` and, when given, `reason` (a condition can hold its status
    with another reason from an earlier pass)."""
    return wait_ms(
        cluster,
        namespace,
        name,
        lambda ms: (
            condition(ms, type_).get("status") == status
            and (reason is None or condition(ms, type_).get("reason") == reason)
        ),
        f"ModelService {name} {type_}={status}" + (f" ({reason})" if reason else ""),
        timeout,
    )


def wait_deployment_version(cluster: E2ECluster, namespace: str, name: str, version: str, timeout: float = 30) -> None:
    cluster.wait_object(
        "apps/v1",
        "Deployment",
        namespace,
        name,
        lambda d: d["spec"]["template"]["metadata"]["labels"].get(VERSION_LABEL) == version,
        what=f"Deployment {name} on {version}",
        timeout=timeout,
    )


def template_version(deployment: Any) -> str:
    return str(deployment.spec.template.metadata.labels[VERSION_LABEL])


@dataclass
class DeploymentWatch:
    """Every status of one Deployment while a rollout runs: the fewest available replicas seen."""

    cluster: E2ECluster
    namespace: str
    name: str
    statuses: list[tuple[int, int, int]] = field(default_factory=list)  # (available, unavailable, replicas)
    spec_replicas: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watching: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> DeploymentWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # The rollout starts only once the watch has listed the Deployment: a watch that connected late (a
        # loaded cold run) saw nothing of it.
        assert self._watching.wait(timeout=30), f"the watch of Deployment {self.name} never listed it"
        return self

    def _run(self) -> None:
        apps = client.AppsV1Api(self.cluster.api)
        w = Watch()
        while not self._stop.is_set():
            try:
                for event in w.stream(
                    apps.list_namespaced_deployment,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=2,
                ):
                    s = event["object"].status
                    self.statuses.append((s.available_replicas or 0, s.unavailable_replicas or 0, s.replicas or 0))
                    self.spec_replicas.append(event["object"].spec.replicas)
                    self._watching.set()
                    if self._stop.is_set():
                        w.stop()
            except (ApiException, urllib3.exceptions.HTTPError):
                continue  # a slow API server: watch again (the next list repeats the current status)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def apiserver_writes(cluster: E2ECluster, resources: tuple[str, ...]) -> Counter[str]:
    """Mutating requests the API server counted for these resources (apiserver_request_total), by
    resource/subresource/verb."""
    text = cluster.kubectl("get", "--raw", "/metrics")
    total: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        # Not DELETE: the namespace controller's deletecollection calls (any test's namespace going away)
        # count there for every resource; the operator deletes only when the spec drops a child.
        if labels.get("verb") not in ("POST", "PUT", "PATCH", "APPLY"):
            continue
        if labels.get("resource") not in resources:
            continue
        # The controllers' own status updates of Deployments/HPAs are not ours; our status writes are.
        if labels.get("subresource") == "status" and labels.get("resource") != "modelservices":
            continue
        key = f"{labels['resource']}/{labels.get('subresource', '')}/{labels['verb']}"
        total[key] += int(float(line.rsplit(" ", 1)[1]))
    return total


def operator_writes(operator: OperatorProcess) -> float:
    """Children applied plus status patches, as the operator counts them itself."""
    text = urllib.request.urlopen(operator.metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("kubemaas_children_applied_total{", "kubemaas_status_writes_total{"))
    )


def writes_between(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


OPERATOR_RESOURCES = ("deployments", "horizontalpodautoscalers", "poddisruptionbudgets", "modelservices")


# --------------------------------------------------------------------------- tests


def test_gpu_modelservice_becomes_ready_and_leaves_replicas_to_the_hpa(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    create_job(cluster, namespace, "digits")
    publish(cluster, namespace, "digits", "v1")
    ms = model_service(
        "digits",
        {"trainingJobRef": {"name": "digits"}},
        resources={"gpus": 1, "cpu": "1", "memory": "2Gi"},
        autoscaling={"minReplicas": 2, "maxReplicas": 4},
    )
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)

    # What a user runs: returns once the ModelService is Ready.
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "modelservice/digits", "--timeout=90s")
    ms_now = get_ms(cluster, namespace, "digits")
    # No finalizer: deleting a ModelService never waits for the operator (children go by ownerReference).
    assert not ms_now["metadata"].get("finalizers"), ms_now["metadata"].get("finalizers")
    status = ms_now["status"]
    assert status["servedVersion"] == "v1"
    assert status["readyReplicas"] == 2
    assert status["endpoints"] == {"http": f"digits.{namespace}.svc:8000", "grpc": f"digits.{namespace}.svc:8001"}

    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    deployment = apps.read_namespaced_deployment("digits", namespace)
    assert present(meta(deployment).owner_references, "owners")[0].kind == "ModelService"
    strategy = present(present(deployment.spec, "spec").strategy, "strategy")
    assert present(strategy.rolling_update, "rollingUpdate").max_unavailable == 0
    service = core.read_namespaced_service("digits", namespace)
    ports = present(present(service.spec, "spec").ports, "ports")
    assert {p.name: p.port for p in ports} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    hpa = client.AutoscalingV2Api(cluster.api).read_namespaced_horizontal_pod_autoscaler("digits", namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 4)
    pdb = client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget("digits", namespace)
    assert present(pdb.spec, "spec").max_unavailable == 1

    pods = core.list_namespaced_pod(namespace, label_selector="kubemaas.io/modelservice=digits").items
    assert len(pods) == 2
    gpu_nodes = {n.name for n in GPU_NODES}
    for pod in pods:
        # Admitted in a namespace that enforces Pod Security `restricted`, bound to a GPU node.
        spec = pod_spec(pod)
        assert spec.node_name in gpu_nodes
        assert spec.automount_service_account_token is False
        triton = next(c for c in spec.containers if c.name == "tritonserver")
        assert present(present(triton.resources, "resources").limits, "limits")["nvidia.com/gpu"] == "1"
        assert "model-key" not in {m.name for m in present(triton.volume_mounts, "tritonserver's mounts")}
        assert not any("KEY" in (e.name or "") for e in triton.env or ())
        loader = next(c for c in present(spec.init_containers, "init containers") if c.name == "model-loader")
        assert "model-key" in {m.name for m in present(loader.volume_mounts, "model-loader's mounts")}

    # The real HPA controller processes the HPA: its conditions appear.
    conditions = cluster.wait_object(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        namespace,
        "digits",
        lambda hpa: (hpa.get("status") or {}).get("conditions"),
        what="HPA conditions from the HPA controller",
        timeout=60,
    )
    assert {c["type"] for c in conditions} >= {"AbleToScale"}

    # Scale as the HPA would; for 60 s every version of the Deployment keeps spec.replicas 3.
    apps.patch_namespaced_deployment_scale("digits", namespace, {"spec": {"replicas": 3}})
    with DeploymentWatch(cluster, namespace, "digits") as seen:
        time.sleep(60)
    operator_alive(operator)
    assert seen.spec_replicas and set(seen.spec_replicas) == {3}, f"replicas were changed: {seen.spec_replicas}"


def operator_alive(operator: OperatorProcess) -> None:
    assert operator.process.poll() is None, f"kubemaas run exited:\n{operator.tail()}"


def test_new_version_rolls_out_with_zero_unavailable_and_deletion_collects_children(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    serve_digits(cluster, namespace, replicas=3)

    apps = client.AppsV1Api(cluster.api)
    with DeploymentWatch(cluster, namespace, "digits") as seen:
        publish(cluster, namespace, "digits", "v2")

        wait_ms(
            cluster,
            namespace,
            "digits",
            lambda ms: served(ms) == "v2" and condition(ms, "Ready").get("status") == "True",
            "servedVersion v2 and Ready",
        )
    assert template_version(apps.read_namespaced_deployment("digits", namespace)) == "v2"
    assert seen.statuses, "the watch saw no Deployment status"
    # status.unavailableReplicas counts the surge pod that is not ready yet; what clients see is how many
    # pods are available, and that never drops below the desired 3.
    assert min(a for a, _, _ in seen.statuses) >= 3, f"fewer than 3 available during the rollout: {seen.statuses}"
    assert max(r for _, _, r in seen.statuses) > 3, "no surge: the rollout was not observed"

    # The inference ports answer this namespace only (the default), as the API server stored the policy.
    policy = as_json(
        cluster.api, client.NetworkingV1Api(cluster.api).read_namespaced_network_policy("digits", namespace)
    )
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"kubemaas.io/modelservice": "digits"}}

    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", "digits")
    for api_version, kind in (
        ("apps/v1", "Deployment"),
        ("apps/v1", "ReplicaSet"),
        ("v1", "Pod"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    ):
        cluster.wait_objects(
            api_version,
            kind,
            namespace,
            lambda objects: not objects,
            what=f"the garbage collector to remove every {kind} of digits",
            label_selector="kubemaas.io/modelservice=digits",
            timeout=60,
        )


def test_selector_promotes_a_better_job_and_blocks_one_failing_the_gate(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    labels = {"team": "digits"}
    create_job(cluster, namespace, "digits-1", labels)
    publish(cluster, namespace, "digits-1", "v1", heldOutAccuracy="0.95")
    ms = model_service(
        "digits",
        {"trainingJobSelector": {"matchLabels": labels}},
        replicas=2,
        promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.9"}]},
    )
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    wait_condition(cluster, namespace, "digits", "Ready")
    assert get_ms(cluster, namespace, "digits")["status"]["servedVersion"] == "v1"

    with DeploymentWatch(cluster, namespace, "digits") as seen:
        create_job(cluster, namespace, "digits-2", labels)
        publish(cluster, namespace, "digits-2", "v2", heldOutAccuracy="0.97")
        wait_ms(cluster, namespace, "digits", lambda ms: served(ms) == "v2", "servedVersion v2")
    assert min(a for a, _, _ in seen.statuses) >= 2, f"fewer than 2 available during the rollout: {seen.statuses}"

    create_job(cluster, namespace, "digits-3", labels)
    publish(cluster, namespace, "digits-3", "v3", heldOutAccuracy="0.5")
    blocked = wait_condition(cluster, namespace, "digits", "PromotionBlocked")
    message = condition(blocked, "PromotionBlocked")["message"]
    assert "heldOutAccuracy" in message and "0.5" in message and "0.9" in message, message
    assert blocked["status"]["servedVersion"] == "v2"
    deployment = client.AppsV1Api(cluster.api).read_namespaced_deployment("digits", namespace)
    assert template_version(deployment) == "v2"


def test_version_that_never_gets_ready_is_rolled_back(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    serve_digits(cluster, namespace, replicas=2, rollout={"progressDeadlineSeconds": 30})
    before = object_series(operator.metrics_url, "ModelService", namespace, "digits")
    assert before[key("kubemaas_modelservice_rollbacks_total")] == 0
    assert before[key("kubemaas_modelservice_condition", type="Degraded", status="false")] == 1

    # v2 lives on a claim that does not exist (its job's output): its pods stay Pending, never ready.
    lost = "pvc://lost-claim/store"
    create_job(cluster, namespace, "digits-lost", store=lost)
    publish(cluster, namespace, "digits-lost", "v2", store=lost)
    custom(cluster).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modelservices",
        "digits",
        {"spec": {"model": {"trainingJobRef": {"name": "digits-lost"}}}},
    )
    with DeploymentWatch(cluster, namespace, "digits") as seen:
        wait_deployment_version(cluster, namespace, "digits", "v2")
        # A pass that saw the ModelService's new source before the job's published status (the watches deliver
        # them apart) says Degraded=True, WaitingForModel, while still serving v1; that stays on record until the
        # status write of the pass that rolled v2 out lands, just after its Deployment did.
        degraded = wait_condition(
            cluster, namespace, "digits", "Degraded", timeout=120, reason="ProgressDeadlineExceeded"
        )
        assert degraded["status"]["lastFailure"]["version"] == "v2"
        wait_deployment_version(cluster, namespace, "digits", "v1")
        wait_condition(cluster, namespace, "digits", "Ready")
    assert min(a for a, _, _ in seen.statuses) >= 2, f"the old version stopped serving: {seen.statuses}"
    final = get_ms(cluster, namespace, "digits")
    assert final["status"]["servedVersion"] == "v1"
    assert condition(final, "Degraded")["status"] == "True"  # v2 is not retried until the source changes

    # What the chart's alerts read (KubemaasModelServiceDegraded, ...RolledBack): one rollback counted, the
    # conditions with their reasons, the versions; and nothing left once the ModelService is deleted.
    series = object_series(operator.metrics_url, "ModelService", namespace, "digits")
    assert series[key("kubemaas_modelservice_rollbacks_total")] == 1
    assert series[key("kubemaas_modelservice_condition", type="Degraded", status="true")] == 1
    assert series[key("kubemaas_modelservice_condition", type="Degraded", status="false")] == 0
    reason = key("kubemaas_modelservice_condition_reason", type="Degraded", reason="ProgressDeadlineExceeded")
    assert series[reason] == 1
    assert series[key("kubemaas_modelservice_condition", type="Ready", status="true")] == 1
    assert series[key("kubemaas_modelservice_version_info", served_version="v1", last_good_version="v1",
                      canary_version="")] == 1  # fmt: skip
    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", "digits")
    wait_gone(operator.metrics_url, "ModelService", namespace, "digits")


def test_canary_runs_beside_stable_and_is_folded_in(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    serve_digits(cluster, namespace, replicas=2, rollout={"strategy": "Canary", "canaryReplicas": 1})

    apps = client.AppsV1Api(cluster.api)
    publish(cluster, namespace, "digits", "v2")
    canary = cluster.wait_objects(
        "apps/v1", "Deployment", namespace, lambda objects: objects.get("digits-canary"), what="the canary Deployment"
    )
    assert canary["spec"]["replicas"] == 1
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[VERSION_LABEL] == "v2"
    service = client.CoreV1Api(cluster.api).read_namespaced_service("digits", namespace)
    assert set(present(present(service.spec, "spec").selector, "selector").items()) <= set(pod_labels.items())

    cluster.wait_objects(
        "apps/v1",
        "Deployment",
        namespace,
        lambda objects: "digits-canary" not in objects,
        what="the canary folded into the stable Deployment",
        timeout=READY_TIMEOUT,
    )
    wait_ms(cluster, namespace, "digits", lambda ms: served(ms) == "v2", "servedVersion v2")
    assert template_version(apps.read_namespaced_deployment("digits", namespace)) == "v2"


def test_a_stepped_canary_whose_metrics_cannot_be_read_is_rolled_back_never_promoted(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    """kwok's pods are Ready with an IP but serve no metrics: every window of the step is Inconclusive (never a
    pass), and at inconclusiveLimit the canary is scaled away and the stable version keeps its replicas (the
    real-node scenarios with Triton's metrics are e2e/test_canary.py)."""
    canary = {"steps": [{"weight": 50, "durationSeconds": 10}], "analysis": {"inconclusiveLimit": 2}}
    serve_digits(cluster, namespace, replicas=2, rollout={"strategy": "Canary", "canary": canary})
    publish(cluster, namespace, "digits", "v2")
    failed = wait_ms(
        cluster, namespace, "digits", lambda ms: condition(ms, "Degraded").get("status") == "True", "Degraded",
        timeout=READY_TIMEOUT,
    )  # fmt: skip
    assert condition(failed, "Degraded")["reason"] == "CanaryInconclusive", failed["status"]
    trial = failed["status"]["canary"]
    assert (trial["version"], trial["step"], trial["verdict"]) == ("v2", 1, "Fail"), trial
    assert (trial["lastCheck"]["verdict"], trial["lastCheck"]["reason"]) == ("Inconclusive", "MetricsUnavailable")
    assert served(failed) == "v1" and failed["status"]["lastFailure"]["version"] == "v2"
    cluster.wait_objects(
        "apps/v1", "Deployment", namespace, lambda objects: "digits-canary" not in objects,
        what="the canary scaled away",
    )  # fmt: skip
    stable = client.AppsV1Api(cluster.api).read_namespaced_deployment("digits", namespace)
    assert template_version(stable) == "v1" and present(stable.spec, "spec").replicas == 2


SCALE = 50


def test_fifty_modelservices_become_ready_and_idle_writes_nothing(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    create_job(cluster, namespace, "digits")
    publish(cluster, namespace, "digits", "v1")
    manifests = [model_service(f"ms-{i:02d}", {"trainingJobRef": {"name": "digits"}}, replicas=2) for i in range(SCALE)]
    text = yaml.safe_dump_all(manifests)
    started = time.monotonic()
    _apply(cluster, namespace, text)

    cluster.wait_objects(
        MS_API,
        "ModelService",
        namespace,
        lambda items: (
            len(items) == SCALE and all(condition(i, "Ready").get("status") == "True" for i in items.values())
        ),
        what=f"{SCALE} ModelServices Ready",
        timeout=300,
    )
    ready_seconds = time.monotonic() - started

    # Let the last status writes and child events settle, then re-apply the same manifests.
    time.sleep(5)
    before, ours_before = apiserver_writes(cluster, OPERATOR_RESOURCES), operator_writes(operator)
    _apply(cluster, namespace, text)
    time.sleep(10)
    after, ours_after = apiserver_writes(cluster, OPERATOR_RESOURCES), operator_writes(operator)
    # kubectl sends no patch for an unchanged object, and the operator must send nothing either.
    assert ours_after == ours_before, f"re-applying unchanged ModelServices caused {ours_after - ours_before} writes"
    reapply_writes = writes_between(before, after)

    time.sleep(120)
    idle, ours_idle = apiserver_writes(cluster, OPERATOR_RESOURCES), operator_writes(operator)
    operator_alive(operator)
    assert ours_idle == ours_after, f"{ours_idle - ours_after} operator writes in 2 idle minutes"
    # The API server's own counts have no namespace label: on a cluster other tests share they include their
    # writes too, so they are reported (and asserted where the suite has the cluster to itself).
    idle_writes = writes_between(after, idle)
    print(
        f"\n{SCALE} ModelServices Ready in {ready_seconds:.1f}s; API server writes to {OPERATOR_RESOURCES}: "
        f"re-apply {reapply_writes or 0}, 2 idle minutes {idle_writes or 0}"
    )
    if os.environ.get("KUBEMAAS_E2E_EXCLUSIVE"):
        assert reapply_writes == {} and idle_writes == {}, (reapply_writes, idle_writes)


def _apply(cluster: E2ECluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)


def test_missing_references_are_conditions(
    cluster: E2ECluster, namespace: str, crds: None, store: str, operator: OperatorProcess
) -> None:
    api = custom(cluster)
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservices", model_service("by-job", {"trainingJobRef": {"name": "later"}})
    )
    ready = wait_condition(cluster, namespace, "by-job", "Ready", "False")
    assert condition(ready, "Ready")["reason"] == "SourceNotFound"

    create_job(cluster, namespace, "later")  # exists, not Succeeded yet
    waiting = wait_ms(
        cluster,
        namespace,
        "by-job",
        lambda ms: condition(ms, "Ready").get("reason") == "WaitingForModel",
        "Ready=False WaitingForModel",
    )
    assert "later" in condition(waiting, "Ready")["message"]

    keyless = model_service(
        "by-uri",
        {"uri": f"{STORE}/digits", "version": "v1", "encryption": {"keySecretRef": {"name": "no-such-key"}}},
    )
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", keyless)
    missing = wait_ms(
        cluster,
        namespace,
        "by-uri",
        lambda ms: condition(ms, "Ready").get("reason") == "KeySecretNotFound",
        "Ready=False KeySecretNotFound",
    )
    assert "no-such-key" in condition(missing, "Ready")["message"]
    apps = client.AppsV1Api(cluster.api)
    assert not apps.list_namespaced_deployment(namespace).items, "a Deployment was made without its source or key"

    # Pointing at an existing key Secret is all it takes: the pinned uri version is served.
    api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modelservices",
        "by-uri",
        {"spec": {"model": {"encryption": {"keySecretRef": {"name": "digits-key"}}}}},
    )
    ready_now = wait_condition(cluster, namespace, "by-uri", "Ready")
    assert served(ready_now) == "v1"
    operator_alive(operator)
    assert "Traceback" not in operator.tail()
