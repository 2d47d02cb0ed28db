"""The real node (e2e/cluster/node.py): real containers under Pod Security `restricted`, and a host left
as it was found.

`test_host_restored_after_down` starts a cluster of its own, so `make e2e` runs it alone before the rest
of the suite (marker `host_restore`); one real node per machine (fixed ports, the /kubepods cgroups).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e import waits
from e2e.cluster import control_plane, host, node, processes
from e2e.conftest import E2ECluster, RealNode

PAUSE_IMAGE = "localhost/kubemaas/pause:1.0"
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


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


@pytest.mark.real_node
def test_restricted_pod_runs_as_a_real_container(cluster: E2ECluster, namespace: str, real_node: RealNode) -> None:
    """A pod admitted under `restricted` runs on the real node: the kubelet reports a live container with
    its own cgroup's CPU and memory, gets an IP from the node's bridge, and its deletion stops it."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, pause_pod("pause", real_node.placement()))
    pod = cluster.wait_object("v1", "Pod", namespace, "pause", pod_ready, what="pause pod Ready", timeout=90)
    live = core.read_namespaced_pod("pause", namespace)
    assert live.spec.node_name == real_node.name
    assert live.status.pod_ip and live.status.pod_ip.startswith(node.NODE_POD_SUBNET.rsplit(".", 2)[0]), (
        live.status.pod_ip
    )
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
