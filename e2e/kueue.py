"""Kueue objects the e2e scenarios queue on (e2e/cluster/batch.py runs Kueue): a ClusterQueue for one test
namespace (a GPU flavor's, or any flavor's with preemption), its LocalQueues, and PriorityClasses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import E2ECluster

KUEUE = ("kueue.x-k8s.io", "v1beta2")


def local_queue(cluster: E2ECluster, namespace: str, name: str, cluster_queue: str) -> None:
    body = {"apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": name},
            "spec": {"clusterQueue": cluster_queue}}  # fmt: skip
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(*KUEUE, namespace, "localqueues", body)


@contextlib.contextmanager
def cluster_queue(
    cluster: E2ECluster,
    namespace: str,
    flavor_prefix: str,
    quotas: Mapping[str, str],
    *,
    node_labels: Mapping[str, str] | None = None,
    preemption: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """A ResourceFlavor `<flavor_prefix>-<namespace>` (for the nodes with `node_labels`, or any node) and a
    ClusterQueue of `quotas` (resource -> nominal quota) in it for `namespace` only, with `preemption` (Kueue's
    ClusterQueue field), and LocalQueue `team` in it; yields `team`. The cluster-scoped objects are named after
    the namespace and removed afterwards."""
    api = client.CustomObjectsApi(cluster.api)
    flavor, queue = f"{flavor_prefix}-{namespace}"[:63], f"queue-{namespace}"[:63]
    api.create_cluster_custom_object(*KUEUE, "resourceflavors", {
        "apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": flavor},
        "spec": {"nodeLabels": dict(node_labels)} if node_labels else {},
    })  # fmt: skip
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "resourceGroups": [{
            "coveredResources": list(quotas),
            "flavors": [{"name": flavor, "resources": [{"name": r, "nominalQuota": q} for r, q in quotas.items()]}],
        }],
    }  # fmt: skip
    if preemption is not None:
        spec["preemption"] = dict(preemption)
    api.create_cluster_custom_object(*KUEUE, "clusterqueues", {
        "apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": queue}, "spec": spec,
    })  # fmt: skip
    local_queue(cluster, namespace, "team", queue)
    try:
        yield "team"
    finally:
        with contextlib.suppress(ApiException):
            api.delete_cluster_custom_object(*KUEUE, "clusterqueues", queue)
        with contextlib.suppress(ApiException):
            api.delete_cluster_custom_object(*KUEUE, "resourceflavors", flavor)


@contextlib.contextmanager
def gpu_cluster_queue(
    cluster: E2ECluster, namespace: str, product: str, gpus: int, flavor_prefix: str
) -> Iterator[str]:
    """`cluster_queue` for the kwok nodes of GPU `product`: `gpus` of them (and 16 CPUs, 64Gi)."""
    quotas = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": str(gpus)}
    labels = {"nvidia.com/gpu.product": product}
    with cluster_queue(cluster, namespace, flavor_prefix, quotas, node_labels=labels) as team:
        yield team


@contextlib.contextmanager
def priority_classes(cluster: E2ECluster, namespace: str, **values: int) -> Iterator[dict[str, str]]:
    """PriorityClasses `<namespace>-<name>` of `values` (name -> priority), which Kueue also takes as its
    workloads' priorities; yields name -> PriorityClass name, and removes them afterwards.

    Non-preempting (`preemptionPolicy: Never`, as Kueue's maintainers advise where the priority is Kueue's alone:
    kubernetes-sigs/kueue#82): Kueue preempts among its workloads by their value either way, but kube-scheduler
    would also preempt any pod of a lower priority on the node for these pods. On the shared real node that was
    another test's Triton pod (priority 0) in the middle of its live traffic."""
    api = client.SchedulingV1Api(cluster.api)
    names = {name: f"{namespace}-{name}"[:63] for name in values}
    for name, value in values.items():
        body = client.V1PriorityClass(
            metadata=client.V1ObjectMeta(name=names[name]), value=value, preemption_policy="Never"
        )
        api.create_priority_class(body)
    try:
        yield names
    finally:
        for full in names.values():
            with contextlib.suppress(ApiException):
                api.delete_priority_class(full)
