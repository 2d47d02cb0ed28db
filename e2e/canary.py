"""What the stepped Canary scenarios on the real node share (e2e/test_canary.py): a store of good and bad
versions on the node, a ModelService with `rollout.canary`, a client pod that opens a new connection per
request (kube-proxy then picks an endpoint per request: the canary's share of the ready endpoints), and each
serving pod's own Triton counters read from this machine."""

from __future__ import annotations

import base64
import os
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.images import BASE_IMAGE, DOCKERFILE_IMAGES
from e2e.conftest import E2ECluster, RealNode
from e2e.kube import (
    GROUP,
    RESTRICTED_CONTAINER,
    VERSION,
    bound_claim,
    client_requests,
    client_resources,
    from_first_answer,
    model_service,
)
from e2e.typed_client import body_as, meta, pod_status, present
from kubemaas.controllers.modelservice_core.steps import EVENT_REASONS
from kubemaas.manifests.modelservice import METRICS_PORT, TRACK_LABEL, VERSION_LABEL
from kubemaas.manifests.pods import WORKLOAD_UID
from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.keyring import generate_key
from kubemaas.serving_metrics import TritonCounters, parse_triton_metrics
from tests.serving.canary_models import POISON, publish_poisoned, publish_slow
from tests.serving.conftest import IN_FEATURES, KEY_ID, MODEL, publish

STORE_ROOT = Path("/tmp/kubemaas-e2e-canary")
TRITON_IMAGE = DOCKERFILE_IMAGES["triton-python"].ref
NAME = "digits"

# Every `every`-th request is poisoned (its first pixel POISON); a good version answers it like any other.
CLIENT = """
import json, sys, time, urllib.request
url, pause, every = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
poison, width = float(sys.argv[4]), int(sys.argv[5])
i = 0
while True:
    i += 1
    poisoned = every > 0 and i % every == 0
    pixels = [poison if poisoned else 0.5] + [0.5] * (width - 1)
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, width], "datatype": "FP32", "data": pixels}]})
    started = time.time()
    try:
        # A new connection per request (urllib sends Connection: close).
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            json.load(response)
        print(json.dumps({"t": started, "poisoned": poisoned}), flush=True)
    except Exception as error:
        print(json.dumps({"t": started, "poisoned": poisoned, "error": repr(error)[:300]}), flush=True)
    time.sleep(pause)
"""


def store_root(namespace: str) -> Path:
    return STORE_ROOT / namespace


@pytest.fixture
def canary_store(cluster: E2ECluster, namespace: str, real_node: RealNode) -> Iterator[Path]:
    """Claim `models` bound to a local PersistentVolume on the real node, at `store_root(namespace)`."""
    root = store_root(namespace)
    root.mkdir(parents=True)
    os.chown(root, WORKLOAD_UID, WORKLOAD_UID)
    pv = bound_claim(cluster.api, namespace, "models", {"local": {"path": str(root)}}, node=real_node.name)
    try:
        yield root
    finally:
        client.CoreV1Api(cluster.api).delete_persistent_volume(pv)
        shutil.rmtree(root, ignore_errors=True)


def publish_versions(cluster: E2ECluster, namespace: str, root: Path, workdir: Path, canary: str) -> None:
    """v1 a good MLP; v2 a good one (`canary` "good"), one failing poisoned inputs ("erroring") or a slow one
    ("slow"); the key Secret `digits-key`. World-readable: the pods read the store as 65532."""
    key = generate_key()
    store = ArtifactStore(root / "store")
    publish(store, workdir, model=MODEL, version="v1", seed=1, key=key)
    if canary == "good":
        publish(store, workdir, model=MODEL, version="v2", seed=2, key=key)
    elif canary == "erroring":
        publish_poisoned(store, workdir, model=MODEL, version="v2", seed=2, key=key)
    else:
        publish_slow(store, workdir, model=MODEL, version="v2", seed=2, key=key, rounds=20)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    data = {f"key-{KEY_ID}": base64.b64encode(key).decode(), "active": base64.b64encode(KEY_ID.encode()).decode()}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-key"}, "data": data}
    client.CoreV1Api(cluster.api).create_namespaced_secret(namespace, body_as(client.V1Secret, secret))


def stepped_model_service(placement: dict[str, Any], steps: list[dict[str, int]], **analysis: Any) -> dict[str, Any]:
    """ModelService `digits` serving v1 on 2 pods, its next version through `steps`."""
    source = {
        "uri": f"pvc://models/store/{MODEL}",
        "version": "v1",
        "encryption": {"keySecretRef": {"name": "digits-key"}},
    }
    rollout = {"strategy": "Canary", "canary": {"steps": steps, "analysis": analysis}}
    return model_service(
        NAME, source, scheduling=placement, runtime={"image": TRITON_IMAGE, "backend": "python"}, replicas=2,
        rollout=rollout,
    )  # fmt: skip


def create(cluster: E2ECluster, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservices", body
    )


def roll_to_v2(cluster: E2ECluster, namespace: str) -> None:
    patch = {"spec": {"model": {"version": "v2"}}}
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservices", NAME, patch
    )


def start_client(cluster: E2ECluster, namespace: str, placement: dict[str, Any], *, poison_every: int = 0) -> None:
    url = f"http://{NAME}.{namespace}.svc:8000/v2/models/{MODEL}/infer"
    args = [url, "0.05", str(poison_every), str(POISON), str(IN_FEATURES)]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "traffic"},
        "spec": {
            **placement,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main", "image": BASE_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", CLIENT, *args], "securityContext": RESTRICTED_CONTAINER,
                "resources": client_resources("200m"),
            }],
        },
    }  # fmt: skip
    client.CoreV1Api(cluster.api).create_namespaced_pod(namespace, body_as(client.V1Pod, pod))
    cluster.wait_for("the first answer through the Service", lambda: bool(requests_seen(cluster, namespace)), 120)


def requests_seen(cluster: E2ECluster, namespace: str) -> list[dict[str, Any]]:
    """The client's requests from its first answer on: time, whether poisoned, and the error if it failed
    (kube.from_first_answer: what failed before, the Service did not route yet)."""
    try:
        log = client.CoreV1Api(cluster.api).read_namespaced_pod_log("traffic", namespace, container="main")
    except client.ApiException:
        return []  # not started yet
    return from_first_answer(client_requests(log))


def serving_pods(cluster: E2ECluster, namespace: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
        namespace, label_selector=f"kubemaas.io/modelservice={NAME}"
    )
    return [p for p in pods.items if meta(p).deletion_timestamp is None]


def track_of(pod: client.V1Pod) -> tuple[str, str]:
    labels = meta(pod).labels or {}
    return labels.get(TRACK_LABEL, ""), labels.get(VERSION_LABEL, "")


def pod_counters(pod: client.V1Pod) -> TritonCounters:
    """The pod's own Triton counters, read from this machine as the operator reads them."""
    with urllib.request.urlopen(f"http://{pod_status(pod).pod_ip}:{METRICS_PORT}/metrics", timeout=5) as response:
        return parse_triton_metrics(response.read().decode())


def step_judgements(cluster: E2ECluster, namespace: str, step: int) -> list[tuple[datetime, str, str]]:
    """Every verdict of canary step `step` the operator posted as an Event (passed, inconclusive or failed),
    oldest first: when, the reason, the message."""
    found = client.CoreV1Api(cluster.api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
    judged: list[tuple[datetime, str, str]] = []
    for event in found.items:
        reason, message = event.reason or "", event.message or ""
        if reason in EVENT_REASONS.values() and f"step {step} of " in message:
            when = event.first_timestamp or event.event_time or event.metadata.creation_timestamp
            judged.append((present(when, f"the time of Event {event.metadata.name}"), reason, message))
    return sorted(judged)
