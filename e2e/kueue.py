"""Kueue objects the e2e scenarios queue on (e2e/cluster/batch.py runs Kueue): a GPU flavor's ClusterQueue for one
test namespace, and its LocalQueues."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import E2ECluster

KUEUE = ("kueue.x-k8s.io", "v1beta2")


def local_queue(cluster: E2ECluster, namespace: str, name: str, cluster_queue: str) -> None:
    body = {"apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": name},
            "spec": {"clusterQueue": cluster_queue}}  # fmt: skip
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(*KUEUE, namespace, "localqueues", body)


@contextlib.contextmanager
def gpu_cluster_queue(
    cluster: E2ECluster, namespace: str, product: str, gpus: int, flavor_prefix: str
) -> Iterator[str]:
    """A ResourceFlavor `<flavor_prefix>-<namespace>` for the kwok nodes of GPU `product` and a ClusterQueue of
    `gpus` of them (and 16 CPUs, 64Gi) for `namespace` only, with LocalQueue `team` in it; yields `team`. The
    cluster-scoped objects are named after the namespace and removed afterwards."""
    api = client.CustomObjectsApi(cluster.api)
    flavor, queue = f"{flavor_prefix}-{namespace}"[:63], f"gpus-{namespace}"[:63]
    api.create_cluster_custom_object(*KUEUE, "resourceflavors", {
        "apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": flavor},
        "spec": {"nodeLabels": {"nvidia.com/gpu.product": product}},
    })  # fmt: skip
    api.create_cluster_custom_object(*KUEUE, "clusterqueues", {
        "apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": queue},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [{"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": "16"},
                    {"name": "memory", "nominalQuota": "64Gi"},
                    {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                ]}],
            }],
        },
    })  # fmt: skip
    local_queue(cluster, namespace, "team", queue)
    try:
        yield "team"
    finally:
        with contextlib.suppress(ApiException):
            api.delete_cluster_custom_object(*KUEUE, "clusterqueues", queue)
        with contextlib.suppress(ApiException):
            api.delete_cluster_custom_object(*KUEUE, "resourceflavors", flavor)
