"""A PyTorchJob created directly becomes pods through the Kubeflow training operator and succeeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import E2ECluster, restricted_container
from e2e.kube import drive_pod, skip_unless_served
from e2e.typed_client import body_as, container_statuses, pod_spec, present, terminated
from e2e.waits import condition_is

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


def _replica(replicas: int) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "restartPolicy": "Never",
        "template": {"spec": {"containers": [restricted_container("pytorch", command=["python", "train.py"])]}},
    }


@pytest.fixture
def pytorchjob_served(cluster: E2ECluster) -> None:
    skip_unless_served(cluster.api, f"{PLURAL}.{GROUP}", "kubeflow.org/v1 PyTorchJob")


def test_pytorchjob_gets_master_and_worker_pods_and_succeeds(
    cluster: E2ECluster, namespace: str, pytorchjob_served: None
) -> None:
    custom, core = client.CustomObjectsApi(cluster.api), client.CoreV1Api(cluster.api)
    job = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": "smoke"},
        "spec": {"pytorchReplicaSpecs": {"Master": _replica(1), "Worker": _replica(2)}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    selector = "training.kubeflow.org/job-name=smoke"

    def running_pods(pods: dict[str, dict[str, Any]]) -> dict[str, str] | None:
        running = {
            name: p["metadata"]["labels"]["training.kubeflow.org/replica-type"]
            for name, p in pods.items()
            if p["status"].get("phase") == "Running"
        }
        return running if len(running) == 3 else None

    pods = cluster.wait_objects(
        "v1",
        "Pod",
        namespace,
        running_pods,
        label_selector=selector,
        what="3 running PyTorchJob pods (1 master, 2 workers)",
        timeout=90,
    )
    assert sorted(pods.values()) == ["master", "worker", "worker"]
    worker = next(name for name, role in pods.items() if role == "worker")
    init_containers = present(pod_spec(core.read_namespaced_pod(worker, namespace)).init_containers, "init containers")
    assert [c.name for c in init_containers] == ["init-pytorch"]
    master = pod_spec(core.read_namespaced_pod("smoke-master-0", namespace)).containers[0]
    master_env = {e.name: e.value for e in present(master.env, "the master's env")}
    assert master_env["WORLD_SIZE"] == "3" and master_env["RANK"] == "0"

    report = json.dumps({"model": {"version": "1", "sha256": "ab" * 32}})
    for name in pods:
        drive_pod(cluster.api, namespace, name, "succeed", report if name == "smoke-master-0" else "")

    cluster.wait_object(
        f"{GROUP}/{VERSION}",
        "PyTorchJob",
        namespace,
        "smoke",
        lambda current: condition_is(current, "Succeeded"),
        what="PyTorchJob smoke to be Succeeded",
        timeout=90,
    )
    ended = terminated(container_statuses(core.read_namespaced_pod("smoke-master-0", namespace))[0])
    assert ended.exit_code == 0
    assert json.loads(present(ended.message, "the termination message")) == json.loads(report)


def test_failed_pod_reports_exit_code_and_message(cluster: E2ECluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "doomed"},
        "spec": {"restartPolicy": "Never", "containers": [restricted_container()]},
    }
    core.create_namespaced_pod(namespace, body_as(client.V1Pod, pod))

    def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
        return lambda pod: pod["status"].get("phase") == phase

    cluster.wait_object("v1", "Pod", namespace, "doomed", phase_is("Running"), what="pod doomed to be Running")
    drive_pod(cluster.api, namespace, "doomed", "fail", '{"error": "loss is NaN"}')
    cluster.wait_object("v1", "Pod", namespace, "doomed", phase_is("Failed"), what="pod doomed to be Failed")
    ended = terminated(container_statuses(core.read_namespaced_pod("doomed", namespace))[0])
    assert ended.exit_code == 1
    assert json.loads(present(ended.message, "the termination message")) == {"error": "loss is NaN"}
