"""Workloads on kwok nodes: rollouts, GPU placement, scheduler reasons, Pod Security."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.nodes import CPU_NODES, GPU_NODES, MAX_GPUS_PER_NODE
from e2e.conftest import E2ECluster, restricted_container
from e2e.typed_client import as_json, body_as, meta, pod_spec, pod_status, present


def _pod(name: str, gpus: int = 0, **spec: Any) -> client.V1Pod:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [restricted_container(resources=resources)], **spec},
    }
    return body_as(client.V1Pod, pod)  # the manifest, typed for create_namespaced_pod


def test_deployment_rolls_out_with_ready_pods(cluster: E2ECluster, namespace: str) -> None:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [restricted_container()]}},
        },
    }
    client.AppsV1Api(cluster.api).create_namespaced_deployment(namespace, body_as(client.V1Deployment, deployment))

    def rolled_out(deployment: dict[str, Any]) -> bool:
        status = deployment.get("status") or {}
        return all(status.get(key) == 3 for key in ("readyReplicas", "updatedReplicas", "availableReplicas"))

    cluster.wait_object(
        "apps/v1", "Deployment", namespace, "web", rolled_out, what="deployment web: 3 ready, available replicas"
    )
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    for pod in pods:
        status = pod_status(pod)
        assert status.phase == "Running"
        assert {c.type: c.status for c in present(status.conditions, "pod conditions")}["Ready"] == "True"


def _ready(pod: dict[str, Any]) -> str | None:
    return next((c["status"] for c in (pod.get("status") or {}).get("conditions") or () if c["type"] == "Ready"), None)


def test_a_pod_marked_not_ready_by_the_node_controller_is_ready_again(cluster: E2ECluster, namespace: str) -> None:
    """What the node lifecycle controller does when a kwok node's lease goes stale (etcd or the API server away
    longer than the grace period): it marks the node's pods not Ready. A kubelet that is back reports them Ready
    again; so must kwok (the pod-ready-again stage), or every Deployment on the node stays unavailable for good."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, _pod("steady"))
    cluster.wait_object("v1", "Pod", namespace, "steady", lambda p: _ready(p) == "True", what="pod steady Ready")
    marked = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeNotReady"}]}}
    patched = core.patch_namespaced_pod_status("steady", namespace, marked)
    assert _ready(as_json(cluster.api, patched)) == "False"
    after = int(present(meta(patched).resource_version, "the patched pod's resourceVersion"))

    def ready_again(pod: dict[str, Any]) -> bool:  # Ready in a version newer than the one that marked it
        return _ready(pod) == "True" and int(pod["metadata"]["resourceVersion"]) > after

    cluster.wait_object("v1", "Pod", namespace, "steady", ready_again, what="pod steady Ready again", timeout=30)


def test_gpu_pod_is_bound_to_a_gpu_node(cluster: E2ECluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    names = [f"gpu-{i}" for i in range(4)]
    for name in names:
        core.create_namespaced_pod(namespace, _pod(name, gpus=1))
    gpu_nodes = {n.name for n in GPU_NODES}
    cpu_nodes = {n.name for n in CPU_NODES}
    running = cluster.wait_objects(
        "v1",
        "Pod",
        namespace,
        lambda pods: (
            pods if len(pods) == 4 and all(p["status"].get("phase") == "Running" for p in pods.values()) else None
        ),
        what="4 GPU pods Running",
    )
    for name, pod in running.items():
        node = pod["spec"]["nodeName"]
        assert node in gpu_nodes and node not in cpu_nodes, f"{name} landed on {node}"
        labels = present(meta(core.read_node(node)).labels, f"node {node}'s labels")
        assert labels["nvidia.com/gpu.present"] == "true"


def test_pod_asking_more_gpus_than_any_node_stays_pending(cluster: E2ECluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, _pod("too-big", gpus=MAX_GPUS_PER_NODE + 1))

    def unschedulable(pod: dict[str, Any]) -> str | None:
        for condition in pod["status"].get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition["status"] == "False":
                return str(condition["message"])
        return None

    message = cluster.wait_object(
        "v1", "Pod", namespace, "too-big", unschedulable, what="the scheduler to mark too-big unschedulable"
    )
    assert "Insufficient nvidia.com/gpu" in message
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod_status(pod).phase == "Pending" and not pod_spec(pod).node_name

    cluster.wait_objects(
        "v1",
        "Event",
        namespace,
        lambda events: any(
            e["involvedObject"]["name"] == "too-big"
            and e["reason"] == "FailedScheduling"
            and "nvidia.com/gpu" in e["message"]
            for e in events.values()
        ),
        what="a FailedScheduling event for too-big",
        timeout=30,
    )


def test_gpu_product_label_selects_the_node(cluster: E2ECluster, namespace: str) -> None:
    h100 = next(n for n in GPU_NODES if "H100" in n.gpu_product)
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(
        namespace, _pod("on-h100", gpus=1, nodeSelector={"nvidia.com/gpu.product": h100.gpu_product})
    )
    node = cluster.wait_object(
        "v1", "Pod", namespace, "on-h100", lambda pod: pod["spec"].get("nodeName"), what="pod on-h100 to be scheduled"
    )
    assert node == h100.name


def test_privileged_pod_is_rejected_in_a_restricted_namespace(cluster: E2ECluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10", "securityContext": {"privileged": True}}
            ]
        },
    }
    with pytest.raises(client.ApiException) as rejected:
        client.CoreV1Api(cluster.api).create_namespaced_pod(namespace, body_as(client.V1Pod, pod))
    assert rejected.value.status == 403
    message = json.loads(present(rejected.value.body, "the refusal's body"))["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'container "main" must not set securityContext.privileged=true' in message
