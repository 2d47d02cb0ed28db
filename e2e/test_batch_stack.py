"""The local cluster's batch stack (e2e/cluster/batch.py): Kubeflow Trainer v2 runs a TrainJob as a JobSet, and
Kueue admits TrainJobs through a LocalQueue within a ClusterQueue's GPU quota, holding the rest suspended with
its own reason. Upstream's controllers and webhooks as built from the pinned modules, pods on kwok's GPU nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import E2ECluster, restricted_container
from e2e.kube import OUTCOME_LABEL
from e2e.kueue import KUEUE, gpu_cluster_queue
from e2e.typed_client import json_object, pod_spec
from e2e.waits import condition_is

TRAINER = ("trainer.kubeflow.org", "v1alpha1")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
A100 = "NVIDIA-A100-SXM4-80GB"  # e2e/cluster/nodes.py: one kwok node with 4 of them


def _runtime(name: str, seconds: int) -> dict[str, Any]:
    """A torch TrainingRuntime whose pods kwok completes after `seconds` (upstream's torch runtime's shape)."""
    pod = {
        "metadata": {
            "labels": {OUTCOME_LABEL: "succeed"},
            "annotations": {"kwok.kubemaas.io/delay": f"{seconds}s"},
        },
        "spec": {
            "nodeSelector": {"type": "kwok"},
            "containers": [restricted_container("node")],
        },
    }
    return {
        "apiVersion": "/".join(TRAINER),
        "kind": "TrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {"template": pod},
                            },
                        }
                    ]
                }
            },
        },
    }


def _train_job(name: str, runtime: str, *, nodes: int, gpus: int, queue: str | None = None) -> dict[str, Any]:
    per_node = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "/".join(TRAINER),
        "kind": "TrainJob",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue} if queue else {}},
        "spec": {
            "runtimeRef": {"name": runtime, "kind": "TrainingRuntime", "apiGroup": TRAINER[0]},
            "trainer": {"numNodes": nodes, "resourcesPerNode": {"requests": per_node, "limits": per_node}},
        },
    }


def _get(cluster: E2ECluster, group_version: tuple[str, str], namespace: str, plural: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(cluster.api)
    return json_object(api.get_namespaced_custom_object(*group_version, namespace, plural, name))


def _create(cluster: E2ECluster, group_version: tuple[str, str], namespace: str | None, plural: str, body: Any) -> None:
    api = client.CustomObjectsApi(cluster.api)
    if namespace is None:
        api.create_cluster_custom_object(*group_version, plural, body)
    else:
        api.create_namespaced_custom_object(*group_version, namespace, plural, body)


def _train_job_condition(cluster: E2ECluster, namespace: str, name: str, type_: str) -> bool:
    return condition_is(_get(cluster, TRAINER, namespace, "trainjobs", name), type_)


def _workload_of(cluster: E2ECluster, namespace: str, train_job: str) -> dict[str, Any] | None:
    api = client.CustomObjectsApi(cluster.api)
    workloads = json_object(api.list_namespaced_custom_object(*KUEUE, namespace, "workloads"))
    for workload in workloads["items"]:
        if any(o.get("name") == train_job for o in workload["metadata"].get("ownerReferences") or []):
            return dict(workload)
    return None


def _scheduled_nodes(cluster: E2ECluster, namespace: str, count: int) -> list[str] | None:
    nodes = [pod_spec(p).node_name for p in client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items]
    return [n for n in nodes if n] if len(nodes) == count and all(nodes) else None


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_a_train_job_runs_as_a_job_set_and_succeeds(cluster: E2ECluster, namespace: str) -> None:
    _create(cluster, TRAINER, namespace, "trainingruntimes", _runtime("torch", seconds=2))
    _create(cluster, TRAINER, namespace, "trainjobs", _train_job("digits", "torch", nodes=2, gpus=1))
    job_set = cluster.wait_for(
        "the TrainJob's JobSet", lambda: _get(cluster, ("jobset.x-k8s.io", "v1alpha2"), namespace, "jobsets", "digits")
    )
    assert job_set["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    nodes = cluster.wait_for("two rank pods scheduled", lambda: _scheduled_nodes(cluster, namespace, 2))
    assert all(str(node).startswith("kwok-gpu") for node in nodes), nodes
    cluster.wait_for("TrainJob Complete", lambda: _train_job_condition(cluster, namespace, "digits", "Complete"), 120)


@pytest.fixture
def gpu_queue(cluster: E2ECluster, namespace: str) -> Iterator[str]:
    """A ClusterQueue with 4 A100s for this namespace only, and its LocalQueue; yields the LocalQueue's name."""
    with gpu_cluster_queue(cluster, namespace, A100, 4, "a100") as team:
        yield team


def test_kueue_admits_train_jobs_within_the_gpu_quota_and_holds_the_rest(
    cluster: E2ECluster, namespace: str, gpu_queue: str
) -> None:
    _create(cluster, TRAINER, namespace, "trainingruntimes", _runtime("torch", seconds=8))
    # Each asks for all 4 GPUs of the quota (2 nodes x 2): one runs, the other waits for its quota.
    for name in ("first", "second"):
        _create(cluster, TRAINER, namespace, "trainjobs", _train_job(name, "torch", nodes=2, gpus=2, queue=gpu_queue))
    first = cluster.wait_for("the first Workload admitted", lambda: _admitted(cluster, namespace, "first"), 60)
    assert first["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"].startswith("a100-")
    pending = cluster.wait_for("the second Workload pending", lambda: _pending(cluster, namespace, "second"), 60)
    assert pending["reason"] == "Pending", pending
    assert "insufficient unused quota for nvidia.com/gpu in flavor a100-" in pending["message"], pending
    assert _get(cluster, TRAINER, namespace, "trainjobs", "second")["spec"].get("suspend") is True
    # The first one's pods finish (kwok, after 8 s); its quota goes to the second.
    cluster.wait_for(
        "TrainJob first Complete", lambda: _train_job_condition(cluster, namespace, "first", "Complete"), 120
    )
    cluster.wait_for("the second Workload admitted", lambda: _admitted(cluster, namespace, "second"), 60)
    cluster.wait_for(
        "TrainJob second Complete", lambda: _train_job_condition(cluster, namespace, "second", "Complete"), 120
    )


def _admitted(cluster: E2ECluster, namespace: str, train_job: str) -> dict[str, Any] | None:
    workload = _workload_of(cluster, namespace, train_job)
    return workload if workload is not None and condition_is(workload, "Admitted") else None


def _pending(cluster: E2ECluster, namespace: str, train_job: str) -> dict[str, Any] | None:
    workload = _workload_of(cluster, namespace, train_job)
    if workload is None:
        return None
    reserved = _condition(workload, "QuotaReserved")
    return reserved if reserved is not None and reserved["status"] == "False" and reserved.get("message") else None
