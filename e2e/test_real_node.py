"""The real node (e2e/cluster/node.py): real containers under Pod Security `restricted`, and a host left
as it was found.

`test_host_restored_after_down` starts a cluster of its own, so `make e2e` runs it alone before the rest
of the suite (marker `host_restore`); one real node per machine (fixed ports, the /kubepods cgroups).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.utils import parse_quantity

from e2e import waits
from e2e.cluster import control_plane, host, node, processes
from e2e.cluster.images import BASE_IMAGE, DOCKERFILE_IMAGES, PAUSE_IMAGE
from e2e.conftest import REPO, SERIAL_NODE_SERVING, SERIAL_NODE_TRAINING, E2ECluster, OperatorProcess, RealNode
from e2e.kube import (
    GROUP,
    KSERVE_CLIENT,
    RESTRICTED_CONTAINER,
    VERSION,
    bound_claim,
    client_requests,
    client_resources,
    from_first_answer,
    model_service,
    python_pod,
    skip_unless_served,
    training_job,
)
from e2e.test_modelservice import condition, crds, wait_ms  # noqa: F401 (crds: a fixture)
from e2e.typed_client import body_as, container_statuses, meta, name_of, pod_spec, pod_status, present, terminated
from kubemaas.manifests.labels import parent_label
from kubemaas.manifests.modelservice import VERSION_LABEL
from kubemaas.manifests.pods import WORKLOAD_UID
from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.keyring import generate_key
from tests.serving.conftest import KEY_ID, MODEL, publish

# CPU training with torch.distributed and Triton on the one real node: at most one scenario of each group at a
# time (e2e/conftest.py). The host-restore test runs alone, before the suite (Makefile).
# The real node's local PersistentVolumes: directories of this machine, one per test namespace.
STORE_ROOT = Path("/tmp/kubemaas-e2e-real")


def pause_pod(name: str, placement: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **placement,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "pause",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": RESTRICTED_CONTAINER,
                    "resources": {"limits": {"cpu": "50m", "memory": "32Mi"}},
                }
            ],
        },
    }


def pod_ready(pod: dict[str, Any]) -> bool:
    return waits.condition_is(pod, "Ready")


def serve_on_node(cluster: E2ECluster, namespace: str, name: str, job: str, real_node: RealNode) -> dict[str, Any]:
    """A one-replica ModelService of TrainingJob `job` on the real node; returns it once Ready."""
    ms = model_service(
        name,
        {"trainingJobRef": {"name": job}},
        replicas=1,
        scheduling=real_node.placement(),
        # The CPU Triton image (images/triton-python/Dockerfile.cpu) has the python backend, not libtorch.
        runtime={"image": TRITON_IMAGE, "backend": "python"},
    )
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    return wait_ms(cluster, namespace, name, lambda o: condition(o, "Ready").get("status") == "True",
                   f"ModelService {name} Ready on the real node", timeout=300)  # fmt: skip


@pytest.mark.host_restore
def test_host_restored_after_down(tmp_path: Path) -> None:
    """`down` leaves sysctls, iptables, links, network namespaces, mounts, cgroups and fixed dirs as they were,
    after a real pod ran (bridge, veth, netns, overlay and tmpfs mounts, kube-proxy's and the kubelet's chains)."""
    running = control_plane.load()
    if (running is not None and running.node_ip) or processes.port_in_use(node.KUBELET_HEALTHZ_PORT):
        pytest.skip("a real node already runs on this machine (one per machine); `make e2e` runs this test first")
    before = host.capture()
    root = tmp_path / "run"
    cluster = control_plane.up(root, training_operator=False, real_node=True)
    try:
        cluster.kubectl("create", "namespace", "restore")
        cluster.kubectl("wait", "-n", "restore", "--for=create", "--timeout=30s", "serviceaccount/default")
        cluster.kubectl("apply", "-n", "restore", "-f", "-", stdin=json.dumps(pause_pod("p", node.pod_placement())))
        cluster.kubectl("wait", "-n", "restore", "--for=condition=Ready", "--timeout=60s", "pod/p")
        during = host.capture()
    except BaseException:
        control_plane.down(root)
        raise
    control_plane.down(root)
    after = host.capture()
    changed = host.differences(before, during)
    # The check can see what a node changes: otherwise an empty difference afterwards would prove nothing.
    assert any(line.startswith("links added") and node.BRIDGE in line for line in changed), changed
    assert any(line.startswith("iptables table nat") for line in changed), changed
    # containerd keeps network namespaces under its state dir (netns_mounts_under_state_dir): nsfs mounts.
    assert any(line.startswith("mounts added") and "netns" in line for line in changed), changed
    assert host.differences(before, after) == []


@SERIAL_NODE_SERVING
@pytest.mark.real_node
def test_restricted_pod_runs_as_a_real_container(cluster: E2ECluster, namespace: str, real_node: RealNode) -> None:
    """A pod admitted under `restricted` runs on the real node: the kubelet reports a live container with
    its own cgroup's CPU and memory, gets an IP from the node's bridge, and its deletion stops it."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, body_as(client.V1Pod, pause_pod("pause", real_node.placement())))
    pod = cluster.wait_object("v1", "Pod", namespace, "pause", pod_ready, what="pause pod Ready", timeout=90)
    live = core.read_namespaced_pod("pause", namespace)
    assert pod_spec(live).node_name == real_node.name
    pod_ip = pod_status(live).pod_ip
    assert pod_ip and pod_ip.startswith(node.NODE_POD_SUBNET.rsplit(".", 2)[0]), pod_ip
    assert pod

    def container_stats() -> dict[str, Any] | None:
        # The kubelet's summary API (through the API server's node proxy: the kubelet client cert at work);
        # cAdvisor picks a new container up within its housekeeping interval.
        raw: Any = core.connect_get_node_proxy_with_path(real_node.name, "stats/summary", _preload_content=False)
        for pod_stats in json.loads(raw.data)["pods"]:
            if pod_stats["podRef"]["namespace"] == namespace:
                for container in pod_stats.get("containers", []):
                    if container["name"] == "pause" and container.get("memory", {}).get("workingSetBytes"):
                        return dict(container)
        return None

    container = cluster.wait_for("the kubelet's stats of the pause container", container_stats, timeout=60)
    assert container["memory"]["workingSetBytes"] > 0, container
    assert container["cpu"]["usageCoreNanoSeconds"] >= 0, container
    core.delete_namespaced_pod("pause", namespace, grace_period_seconds=0)
    cluster.wait_objects("v1", "Pod", namespace, lambda pods: "pause" not in pods, what="pause pod gone", timeout=60)


# Run inside the pod: what a trainer or Triton pod relies on (cluster DNS for Services and for a pod behind
# a headless Service, the API server through the `kubernetes` Service with the cluster CA).
NETWORK_PROBE = """
import json, socket, ssl, sys, urllib.request
names = sys.argv[1:]
found = {n: socket.getaddrinfo(n, 443, socket.AF_INET)[0][4][0] for n in names}
context = ssl.create_default_context(cafile="/ca/ca.crt")
with urllib.request.urlopen("https://kubernetes.default.svc/version", context=context, timeout=10) as r:
    found["version"] = json.load(r)["gitVersion"]
print(json.dumps(found))
"""


@SERIAL_NODE_SERVING
@pytest.mark.real_node
def test_pod_dns_services_and_kubelet_streams(
    cluster: E2ECluster, namespace: str, real_node: RealNode, node_images: None
) -> None:
    """Cluster DNS resolves a Service and a pod behind a headless Service (`<host>.<subdomain>`, how rank 0
    is found); the API server answers through the `kubernetes` Service with a certificate the cluster CA
    signed; `kubectl logs`, `exec` and `port-forward` reach the container through the kubelet."""
    core = client.CoreV1Api(cluster.api)
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "workers"},
        "spec": {"clusterIP": "None", "selector": {"app": "server"}, "ports": [{"port": 8080}]},
    }
    core.create_namespaced_service(namespace, body_as(client.V1Service, headless))
    server = python_pod(
        "server",
        real_node.placement(),
        ["python", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", "/ca"],
        hostname="rank-0",
        subdomain="workers",
    )
    core.create_namespaced_pod(namespace, body_as(client.V1Pod, server))
    cluster.wait_object("v1", "Pod", namespace, "server", pod_ready, what="http server pod Ready", timeout=90)
    server_ip = pod_status(core.read_namespaced_pod("server", namespace)).pod_ip
    rank0 = f"rank-0.workers.{namespace}.svc.cluster.local"
    found, log = cluster.run_python_pod(
        namespace, "probe", real_node.placement(), NETWORK_PROBE, "kubernetes.default.svc.cluster.local", rank0
    )
    assert found["kubernetes.default.svc.cluster.local"] == "198.19.0.1", log
    assert found[rank0] == server_ip, log
    assert found["version"] == "v1.34.4", log

    exec_out = cluster.kubectl("-n", namespace, "exec", "server", "--", "python", "-c", "import os; print(os.getuid())")
    assert exec_out.strip() == "65532"
    with (
        cluster.port_forward(namespace, "pod/server", 8080) as local_port,
        urllib.request.urlopen(f"http://127.0.0.1:{local_port}/ca.crt", timeout=10) as response,
    ):
        assert b"BEGIN CERTIFICATE" in response.read()


@pytest.fixture
def node_store(cluster: E2ECluster, namespace: str, real_node: RealNode) -> Iterator[Path]:
    """Claim `models` bound to a local PersistentVolume on the real node (a directory of this machine);
    yields the directory (the claim's root)."""
    root = STORE_ROOT / namespace
    root.mkdir(parents=True)
    # A local volume keeps the directory's owner: the trainer's rank 0 writes as the workload uid.
    os.chown(root, WORKLOAD_UID, WORKLOAD_UID)
    local = {"local": {"path": str(root)}}
    pv = bound_claim(cluster.api, namespace, "models", local, node=real_node.name)
    try:
        yield root
    finally:
        client.CoreV1Api(cluster.api).delete_persistent_volume(pv)
        shutil.rmtree(root, ignore_errors=True)


def publish_digits(root: Path, workdir: Path, versions: dict[str, int]) -> bytes:
    """Publish TorchScript MLPs as the trainer does (encrypted, LATEST updated) under `root`/store; returns
    the key. Files are world-readable: the pods read them as 65532."""
    key = generate_key()
    store = ArtifactStore(root / "store")
    for version, seed in versions.items():
        publish(store, workdir, model=MODEL, version=version, seed=seed, key=key)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return key


def key_secret(key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "digits-key"},
        "data": {f"key-{KEY_ID}": base64.b64encode(key).decode(), "active": base64.b64encode(KEY_ID.encode()).decode()},
    }


TRAINER_IMAGE = DOCKERFILE_IMAGES["trainer"].ref
TRITON_IMAGE = DOCKERFILE_IMAGES["triton-python"].ref
INFER_BATCH = 8


def trainer_job(
    name: str,
    backend: str,
    placement: dict[str, Any],
    *,
    steps: int = 300,
    labels: dict[str, str] | None = None,
    generate_key: str = "IfMissing",
) -> dict[str, Any]:
    """A TrainingJob of the trainer image that trains the digits model on the real node's CPU; a later job that
    reuses the first one's key names it with `generate_key="Never"` (IfMissing uses only a key made for it)."""
    return training_job(
        name,
        labels=labels,
        image=TRAINER_IMAGE,
        command=None,
        args=["--steps", str(steps), "--batch-size", "32"],
        replicas=2,
        nprocPerNode=1,
        # Two ranks on a 2-core node, beside the node's own processes.
        resources={"cpu": "600m", "memory": "1536Mi"},
        scheduling=placement,
        data=None,
        output={"uri": "pvc://models/store", "modelName": MODEL},
        encryption={"keySecretRef": {"name": "digits-key"}, "generateKey": generate_key},
        runPolicy={"backoffLimit": 2, "activeDeadlineSeconds": 900},
        backend=backend,
    )


def create_training_job(cluster: E2ECluster, namespace: str, job: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", job)


def wait_trained(
    cluster: E2ECluster,
    namespace: str,
    name: str = "digits",
    observe: Callable[[dict[str, Any]], object] = lambda tj: None,
) -> dict[str, Any]:
    """Wait for TrainingJob `name` to end; assert it succeeded with a good model; return its status.model.
    `observe` sees the job as each write of it left it."""

    def finished(tj: dict[str, Any]) -> dict[str, Any] | None:
        observe(tj)
        conditions = (tj.get("status") or {}).get("conditions") or []
        return tj if any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in conditions) else None

    done = cluster.wait_object(
        f"{GROUP}/{VERSION}", "TrainingJob", namespace, name, finished,
        what=f"TrainingJob {name} to finish", timeout=600,
    )  # fmt: skip
    conditions = {c["type"]: c for c in done["status"]["conditions"]}
    if conditions.get("Succeeded", {}).get("status") != "True":
        status = json.dumps(done["status"], indent=1)[:4000]
        pytest.fail(f"TrainingJob {name} did not succeed: {status}\n{rank_logs(cluster, namespace, name)}")
    model: dict[str, Any] = done["status"]["model"]
    return model


def rank_logs(cluster: E2ECluster, namespace: str, job: str, lines: int = 30) -> str:
    """The last lines each of the job's pods logged, a restarted container's previous run's too: a failed job's
    namespace (and with it every pod log) is gone once the test ends."""
    core = client.CoreV1Api(cluster.api)
    pods = core.list_namespaced_pod(namespace, label_selector=f"{parent_label('TrainingJob')}={job}").items
    tails = []
    for pod in sorted(pods, key=name_of):
        restarted = any(s.restart_count for s in (pod.status and pod.status.container_statuses) or ())
        for previous in (True, False) if restarted else (False,):
            try:
                log = core.read_namespaced_pod_log(name_of(pod), namespace, tail_lines=lines, previous=previous)
            except client.ApiException as error:
                log = f"(no log: {error.reason})"
            tails.append(f"--- pod {name_of(pod)}{' (previous run)' if previous else ''}:\n{log}")
    return "\n".join(tails) or f"(no pod of {job} left)"


def train_on_the_node(cluster: E2ECluster, namespace: str, placement: dict[str, Any], backend: str) -> dict[str, Any]:
    """Run TrainingJob `digits` to its end; return its status.model."""
    create_training_job(cluster, namespace, trainer_job("digits", backend, placement))
    model = wait_trained(cluster, namespace)
    assert float(model["metrics"]["heldOutAccuracy"]) >= 0.9, model
    return model


def assert_published_ciphertext(cluster: E2ECluster, namespace: str, node_store: Path, model: dict[str, Any]) -> None:
    """What rank 0 wrote is ciphertext: no TorchScript (a zip archive) and no key on the shared volume."""
    data = (node_store / "store" / MODEL / model["version"] / "model.kmenc").read_bytes()
    assert len(data) > 10_000 and b"PK\x03\x04" not in data[:4096]
    secret = client.CoreV1Api(cluster.api).read_namespaced_secret("digits-key", namespace)
    keys = [base64.b64decode(v) for k, v in present(secret.data, "the Secret's data").items() if k.startswith("key-")]
    assert keys and all(key not in data for key in keys)


def assert_ran_on(cluster: E2ECluster, namespace: str, prefix: str, node_name: str) -> None:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items
    placed = {pod_spec(p).node_name for p in pods if name_of(p).startswith(prefix)}
    assert placed == {node_name}, placed


@SERIAL_NODE_TRAINING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_pytorchjob_trains_two_ranks_on_the_real_node(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    node_store: Path,
    operator: OperatorProcess,
) -> None:
    """The trainer image as two gloo ranks on CPU through the real training operator: the worker's init
    container waits for the master's Service name, the ranks meet at MASTER_ADDR, rank 0 publishes the
    encrypted model to the claim and its termination message becomes status.model."""
    skip_unless_served(cluster.api, "pytorchjobs.kubeflow.org", "the Kubeflow training operator's PyTorchJob")
    model = train_on_the_node(cluster, namespace, real_node.placement(), "PyTorchJob")
    assert_ran_on(cluster, namespace, "digits", real_node.name)
    assert_published_ciphertext(cluster, namespace, node_store, model)


def held_out_digits() -> tuple[Any, Any]:
    """The held-out split digits_mlp.py evaluates on, as the quickstart's client computes it (its own module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart_query", REPO / "examples" / "quickstart" / "query.py")
    assert spec is not None and spec.loader is not None
    query = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(query)
    held: tuple[Any, Any] = query.held_out()
    return held


@SERIAL_NODE_TRAINING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_indexed_job_trains_and_triton_serves_it_on_the_real_node(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    node_store: Path,
    operator: OperatorProcess,
) -> None:
    """The lifecycle in real containers: two ranks of an Indexed Job find rank 0 by its DNS name, train and
    publish; a ModelService serves that version (the loader decrypts into the emptyDir, tritonserver's python
    backend loads it); KServe v2 over HTTP and gRPC through the Service answers the held-out split with the
    accuracy the trainer reported."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    model = train_on_the_node(cluster, namespace, real_node.placement(), "Job")
    assert_ran_on(cluster, namespace, "digits", real_node.name)
    assert_published_ciphertext(cluster, namespace, node_store, model)

    ready = serve_on_node(cluster, namespace, "digits", "digits", real_node)
    assert ready["status"]["servedVersion"] == model["version"]
    assert_ran_on(cluster, namespace, "digits-", real_node.name)

    x, y = held_out_digits()
    with cluster.port_forward(namespace, "svc/digits", 8000) as http_port:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        batches = []
        for start in range(0, len(x), INFER_BATCH):  # within the model config's maxBatchSize
            request = httpclient.InferInput("pixels", [len(x[start : start + INFER_BATCH]), x.shape[1]], "FP32")
            request.set_data_from_numpy(x[start : start + INFER_BATCH])
            batches.append(http.infer(MODEL, [request]).as_numpy("logits"))
        logits = np.concatenate(batches)
    accuracy = float((np.argmax(logits, axis=1) == y).mean())
    assert accuracy >= 0.9, accuracy
    assert abs(accuracy - float(model["metrics"]["heldOutAccuracy"])) < 1e-6, (accuracy, model)
    with cluster.port_forward(namespace, "svc/digits", 8001) as grpc_port:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        request_g = grpcclient.InferInput("pixels", [1, x.shape[1]], "FP32")
        request_g.set_data_from_numpy(x[:1])
        assert np.allclose(grpc.infer(MODEL, [request_g]).as_numpy("logits"), logits[:1], atol=1e-5)


def deployment_replicas(want: int) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    return lambda d: (
        d if (d.get("status") or {}).get("readyReplicas") == want and d["spec"].get("replicas") == want else None
    )


BURN = "import os, time\nwhile os.environ.get('LOAD') == '1':\n    pass\ntime.sleep(10**9)"


def burner(placement: dict[str, Any], load: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "burn"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "burn"}},
            "template": {
                "metadata": {"labels": {"app": "burn"}},
                "spec": {
                    **placement,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "burn",
                            "image": BASE_IMAGE,
                            "command": ["python", "-c", BURN],
                            "env": [{"name": "LOAD", "value": load}],
                            "securityContext": RESTRICTED_CONTAINER,
                            # A busy loop is throttled at the limit: 200% of the request, bounded on 2 cores.
                            "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }


@SERIAL_NODE_SERVING
@pytest.mark.real_node
def test_hpa_scales_on_real_cpu_metrics(
    cluster: E2ECluster, namespace: str, real_node: RealNode, node_images: None
) -> None:
    """kubelet -> metrics-server -> the aggregated metrics.k8s.io API -> the HPA controller: busy pods make it
    scale the Deployment up to its maximum, idle ones back down to one."""
    apps = client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, body_as(client.V1Deployment, burner(real_node.placement(), "1")))
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burn"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 0},
            },
        },
    }
    client.AutoscalingV2Api(cluster.api).create_namespaced_horizontal_pod_autoscaler(
        namespace, body_as(client.V2HorizontalPodAutoscaler, hpa)
    )

    cluster.wait_object(
        "apps/v1", "Deployment", namespace, "burn", deployment_replicas(3), what="HPA to scale burn to 3", timeout=240
    )
    usage = json.loads(cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"))
    cpu = [c["usage"]["cpu"] for p in usage["items"] for c in p["containers"]]
    millicores = [float(parse_quantity(q)) * 1000 for q in cpu]  # type: ignore[no-untyped-call]  # unannotated
    assert millicores and max(millicores) > 50, usage  # above the request: the busy loop really ran
    apps.patch_namespaced_deployment(
        "burn",
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "burn", "env": [{"name": "LOAD", "value": "0"}]}]}}}},
    )
    cluster.wait_object(
        "apps/v1",
        "Deployment",
        namespace,
        "burn",
        deployment_replicas(1),
        what="HPA to scale burn back to 1",
        timeout=300,
    )


# --- serving under traffic: promotion, a tampered version, autoscaling -----------------------------------------


def traffic_pod(namespace: str, placement: dict[str, Any], *, pause: float, cpu: str = "200m") -> dict[str, Any]:
    """A pod sending requests to ModelService `digits` continuously (one held-out digit each time)."""
    x, _ = held_out_digits()
    url = f"http://digits.{namespace}.svc:8000/v2/models/{MODEL}/infer"
    pod = python_pod("traffic", placement, ["python", "-c", KSERVE_CLIENT, url, json.dumps(x[0].tolist()), str(pause)])
    pod["spec"]["containers"][0]["resources"] = client_resources(cpu)
    return pod


def answers(cluster: E2ECluster, namespace: str) -> list[dict[str, Any]]:
    """The traffic pod's requests from its first answer on (kube.from_first_answer); answers rounded, so two pods of
    one version answer alike."""
    log = client.CoreV1Api(cluster.api).read_namespaced_pod_log("traffic", namespace, container="main")
    seen = from_first_answer(client_requests(log))
    return [{**a, "out": [round(v, 4) for v in a["out"]]} if "out" in a else a for a in seen]


def start_traffic(cluster: E2ECluster, namespace: str, placement: dict[str, Any], **kwargs: Any) -> None:
    traffic = traffic_pod(namespace, placement, **kwargs)
    client.CoreV1Api(cluster.api).create_namespaced_pod(namespace, body_as(client.V1Pod, traffic))
    cluster.wait_object("v1", "Pod", namespace, "traffic", pod_ready, what="traffic pod Ready", timeout=90)
    cluster.wait_for("the first answer through the Service", lambda: bool(answers(cluster, namespace)), timeout=60)


def serving_pods(cluster: E2ECluster, namespace: str) -> dict[str, str]:
    """Serving pods of ModelService `digits` that are not terminating -> the version each serves."""
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
        namespace, label_selector="kubemaas.io/modelservice=digits"
    )
    return {
        name_of(p): present(meta(p).labels, "labels").get(VERSION_LABEL, "")
        for p in pods.items
        if meta(p).deletion_timestamp is None
    }


def triton_model_service(placement: dict[str, Any], model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    # The CPU Triton image (images/triton-python/Dockerfile.cpu) has the python backend, not libtorch.
    return model_service(
        "digits", model, scheduling=placement, runtime={"image": TRITON_IMAGE, "backend": "python"}, **spec
    )


def wait_serving(cluster: E2ECluster, namespace: str, version: str) -> dict[str, Any]:
    return wait_ms(
        cluster,
        namespace,
        "digits",
        lambda o: (
            (o.get("status") or {}).get("servedVersion") == version and condition(o, "Ready").get("status") == "True"
        ),
        f"ModelService digits Ready serving {version}",
        timeout=300,
    )


@SERIAL_NODE_TRAINING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_promotion_under_live_traffic_loses_no_request(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    node_store: Path,
    operator: OperatorProcess,
) -> None:
    """While a client pod sends requests through the Service, a second TrainingJob publishes a better model and
    the ModelService rolls it out: no request fails, and the answers switch from the old model's to the new
    one's (each told apart by its logits: the same digit, two sets of weights)."""
    labels = {"team": "digits"}
    placement = real_node.placement()
    create_training_job(cluster, namespace, trainer_job("digits-a", "Job", placement, steps=40, labels=labels))
    first = wait_trained(cluster, namespace, "digits-a")
    ms = triton_model_service(
        placement,
        {"trainingJobSelector": {"matchLabels": labels}},
        replicas=1,
        promotion={"requireMetrics": [{"name": "heldOutAccuracy", "min": "0.3"}]},
    )
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    wait_serving(cluster, namespace, first["version"])
    start_traffic(cluster, namespace, placement, pause=0.05)

    create_training_job(
        cluster, namespace, trainer_job("digits-b", "Job", placement, labels=labels, generate_key="Never")
    )
    second = wait_trained(cluster, namespace, "digits-b")
    assert float(second["metrics"]["heldOutAccuracy"]) > float(first["metrics"]["heldOutAccuracy"]), (first, second)
    wait_serving(cluster, namespace, second["version"])
    cluster.wait_for(
        "only the new version's pods serving",
        lambda: set(serving_pods(cluster, namespace).values()) == {second["version"]},
        timeout=120,
    )
    settled = time.time() + 3  # the old pod's endpoint is gone: every answer after this is the new model's
    cluster.wait_for("answers after the rollout", lambda: answers(cluster, namespace)[-1]["t"] > settled, timeout=60)

    seen = answers(cluster, namespace)
    failed = [a for a in seen if "error" in a]
    assert not failed, f"{len(failed)} of {len(seen)} requests failed during the rollout: {failed[:5]}"
    old, new = seen[0]["out"], seen[-1]["out"]
    assert old != new, "the two models answer alike: the switch cannot be told"
    assert all(a["out"] in (old, new) for a in seen), {tuple(a["out"]) for a in seen}
    switched = next(i for i, a in enumerate(seen) if a["out"] == new)
    assert switched > 0 and all(a["out"] == new for a in seen if a["t"] > settled), "old answers after the rollout"
    print(f"\n{len(seen)} requests, none failed; answers switched at request {switched}")


@SERIAL_NODE_SERVING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_model_service_autoscales_on_triton_cpu_and_a_tampered_version_leaves_the_old_one_serving(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    node_store: Path,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """Load on the Service makes the ModelService's HPA (kubelet -> metrics-server -> HPA) add a Triton pod and,
    once the load stops, remove it. Then a new version whose artifact was tampered with (a flipped byte): the
    loader init container (the model-loader image, the key Secret mounted as files) refuses it with exit 79 and
    its reason in the termination log, the ModelService turns Degraded with that reason (no key in the message
    or the operator's log), and the old version answers every request meanwhile."""
    key = publish_digits(node_store, tmp_path, {"v1": 1, "v2": 2})
    client.CoreV1Api(cluster.api).create_namespaced_secret(namespace, body_as(client.V1Secret, key_secret(key)))
    artifact = node_store / "store" / MODEL / "v2" / "model.kmenc"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01
    artifact.write_bytes(bytes(data))
    placement = real_node.placement()
    source = {
        "uri": "pvc://models/store/digits",
        "version": "v1",
        "encryption": {"keySecretRef": {"name": "digits-key"}},
    }
    ms = triton_model_service(
        placement,
        source,
        resources={"cpu": "250m", "memory": "2Gi"},
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 2,
            "metric": "CPU",
            "target": 50,
            "behavior": {"scaleDownStabilizationSeconds": 0},
        },
    )
    custom = client.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    wait_serving(cluster, namespace, "v1")

    start_traffic(cluster, namespace, placement, pause=0.0, cpu="500m")  # back to back: Triton's CPU is the limit
    cluster.wait_object("apps/v1", "Deployment", namespace, "digits", deployment_replicas(2),
                        what="the HPA to add a serving pod under load", timeout=300)  # fmt: skip
    core = client.CoreV1Api(cluster.api)
    core.delete_namespaced_pod("traffic", namespace, grace_period_seconds=0)
    cluster.wait_objects("v1", "Pod", namespace, lambda pods: "traffic" not in pods, what="load gone", timeout=60)
    cluster.wait_object("apps/v1", "Deployment", namespace, "digits", deployment_replicas(1),
                        what="the HPA to remove it once idle", timeout=300)  # fmt: skip

    start_traffic(cluster, namespace, placement, pause=0.05)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservices", "digits", {"spec": {"model": {"version": "v2"}}}
    )
    degraded = wait_ms(
        cluster,
        namespace,
        "digits",
        lambda o: condition(o, "Degraded").get("reason") == "TamperedArtifact",
        "ModelService digits Degraded=TamperedArtifact",
        timeout=180,
    )
    assert condition(degraded, "Degraded")["status"] == "True"
    assert "tampered artifact" in condition(degraded, "Degraded")["message"], degraded["status"]
    assert degraded["status"]["servedVersion"] == "v1"
    (refused,) = core.list_namespaced_pod(namespace, label_selector=f"{VERSION_LABEL}=v2").items
    assert pod_spec(refused).node_name == real_node.name
    (loader,) = container_statuses(refused, init=True)
    ended = present(loader.last_state, "the loader's last state").terminated or terminated(loader)
    assert ended.exit_code == 79, loader
    message = present(ended.message, "the loader's termination message")
    assert "tampered artifact" in message, message
    for leak in (base64.b64encode(key).decode(), key.hex()):
        assert leak not in message and leak not in operator.text()
    after = time.time() + 5
    cluster.wait_for("answers after the refusal", lambda: answers(cluster, namespace)[-1]["t"] > after, timeout=60)
    seen = answers(cluster, namespace)
    failed = [a for a in seen if "error" in a]
    assert not failed, f"{len(failed)} of {len(seen)} requests failed: {failed[:5]}"
    assert all(a["out"] == seen[0]["out"] for a in seen), "an answer came from something other than v1"
    assert "v1" in serving_pods(cluster, namespace).values()


@SERIAL_NODE_TRAINING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_a_rank_killed_mid_training_restarts_the_job_which_resumes_from_its_checkpoint(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    node_store: Path,
    operator: OperatorProcess,
) -> None:
    """SIGKILL one rank's container after rank 0's first checkpoint: the peer exits retryable (138), the Indexed
    Job recreates the failed pods, the ranks meet again and resume from the checkpoint, and the job succeeds."""
    if cluster.local is None:
        pytest.skip("killing a container needs the local node's containerd")
    # About 20 s of training alone: the kill lands well before the end, and the resumed run shows progress.
    job = trainer_job("digits", "Job", real_node.placement(), steps=5000)
    job["spec"]["runPolicy"]["backoffLimit"] = 4
    create_training_job(cluster, namespace, job)
    checkpoints = node_store / "store" / MODEL / ".checkpoints"

    def first_checkpoint() -> int | None:
        steps = [int(m[1]) for p in checkpoints.glob("*/*") if (m := re.fullmatch(r"step-(\d+)\.kmenc", p.name))]
        return min(steps) if steps else None

    checkpointed = cluster.wait_for("rank 0's first checkpoint", first_checkpoint, timeout=300)
    core = client.CoreV1Api(cluster.api)
    (rank1,) = core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-completion-index=1", field_selector="status.phase=Running"
    ).items
    container_id = present(container_statuses(rank1)[0].container_id, "rank 1's container id")
    container_id = container_id.removeprefix("containerd://")
    ctr = [*node.ctr_command(node.NodePaths(cluster.local.root)), "-n", "k8s.io"]
    subprocess.run([*ctr, "task", "kill", "--signal", "SIGKILL", container_id], check=True, capture_output=True)

    shown: list[dict[str, Any]] = []  # status.progress as each write of the job showed it

    def progress(tj: dict[str, Any]) -> None:
        if (report := (tj.get("status") or {}).get("progress")) and (not shown or shown[-1] != report):
            shown.append(report)

    model = wait_trained(cluster, namespace, observe=progress)
    assert float(model["metrics"]["heldOutAccuracy"]) >= 0.9, model
    workers = client.BatchV1Api(cluster.api).read_namespaced_job("digits-workers", namespace)
    assert (present(workers.status, "the Job's status").failed or 0) >= 1, workers.status
    pods = core.list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-completion-index=0").items
    (rank0,) = [p for p in pods if pod_status(p).phase == "Succeeded"]
    log = core.read_namespaced_pod_log(name_of(rank0), namespace)
    resumed = re.search(r"resumed from checkpoint at step (\d+)", log)
    assert resumed and int(resumed[1]) >= checkpointed, log[-3000:]
    # The restarted rank 0 continues the step count in status.progress: read from the new pod, from the step it
    # resumed at, never from 0.
    started = present(pod_status(rank0).start_time, "the restarted rank 0's start time")
    restarted = [p for p in shown if datetime.fromisoformat(p["updateTime"].replace("Z", "+00:00")) >= started]
    assert restarted, f"no progress read from the restarted rank 0 (started {started}): {shown}"
    assert min(p["step"] for p in restarted) >= int(resumed[1]), (resumed[1], restarted)
