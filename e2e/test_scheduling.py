"""Workloads on kwok nodes: rollouts, GPU placement, scheduler reasons, Pod Security."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.nodes import CPU_NODES, GPU_NODES, MAX_GPUS_PER_NODE
from e2e.conftest import E2ECluster, restricted_container


def _pod(name: str, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [restricted_container(resources=resources)], **spec},
    }


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
    client.AppsV1Api(cluster.api).create_namespaced_deployment(namespace, deployment)

    def rolled_out() -> bool:
        status = client.AppsV1Api(cluster.api).read_namespaced_deployment_status("web", namespace).status
        return status.ready_replicas == 3 and status.updated_replicas == 3 and status.available_replicas == 3

    cluster.wait_for("deployment web to have 3 ready, available replicas", rolled_out, timeout=60)
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    for pod in pods:
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_gpu_pod_is_bound_to_a_gpu_node(cluster: E2ECluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    names = [f"gpu-{i}" for i in range(4)]
    for name in names:
        core.create_namespaced_pod(namespace, _pod(name, gpus=1))
    gpu_nodes = {n.name for n in GPU_NODES}
    cpu_nodes = {n.name for n in CPU_NODES}
    for name in names:
        node = cluster.wait_for(
            f"pod {name} to be scheduled", lambda n=name: core.read_namespaced_pod(n, namespace).spec.node_name
        )
        assert node in gpu_nodes and node not in cpu_nodes, f"{name} landed on {node}"
        labels = core.read_node(node).metadata.labels
        assert labels["nvidia.com/gpu.present"] == "true"
        cluster.wait_for(
            f"pod {name} to be Running", lambda n=name: core.read_namespaced_pod(n, namespace).status.phase == "Running"
        )


def test_pod_asking_more_gpus_than_any_node_stays_pending(cluster: E2ECluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, _pod("too-big", gpus=MAX_GPUS_PER_NODE + 1))

    def unschedulable() -> str | None:
        pod = core.read_namespaced_pod("too-big", namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return str(condition.message)
        return None

    message = cluster.wait_for("the scheduler to mark too-big unschedulable", unschedulable, timeout=60)
    assert "Insufficient nvidia.com/gpu" in message
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name

    def failed_scheduling_event() -> bool:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
        return any(e.reason == "FailedScheduling" and "nvidia.com/gpu" in e.message for e in events)

    cluster.wait_for("a FailedScheduling event for too-big", failed_scheduling_event, timeout=30)


def test_gpu_product_label_selects_the_node(cluster: E2ECluster, namespace: str) -> None:
    h100 = next(n for n in GPU_NODES if "H100" in n.gpu_product)
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(
        namespace, _pod("on-h100", gpus=1, nodeSelector={"nvidia.com/gpu.product": h100.gpu_product})
    )
    node = cluster.wait_for(
        "pod on-h100 to be scheduled", lambda: core.read_namespaced_pod("on-h100", namespace).spec.node_name
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
        client.CoreV1Api(cluster.api).create_namespaced_pod(namespace, pod)
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'container "main" must not set securityContext.privileged=true' in message
