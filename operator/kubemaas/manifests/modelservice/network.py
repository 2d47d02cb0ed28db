"""The NetworkPolicy over a ModelService's serving pods (stable and canary): who may call Triton."""

from __future__ import annotations

from typing import Any

from kubemaas.api.modelservice import ServingNetwork
from kubemaas.manifests.modelservice.inputs import Parent, child_meta

# The container ports by name (deployment.py): the policy follows them if their numbers change.
INFERENCE_PORTS = ("http", "grpc")
METRICS_PORT_NAME = "metrics"


def network_policy(parent: Parent, network: ServingNetwork) -> dict[str, Any]:
    """HTTP and gRPC from `network.inferenceFrom` (absent: the ModelService's namespace), metrics from anyone
    (Prometheus scrapes from its own namespace; the metrics carry no model data)."""
    peers = (
        [peer.to_wire() for peer in network.inference_from]
        if network.inference_from
        else [{"podSelector": {}}]  # every pod of this namespace
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(parent, parent.name),
        "spec": {
            "podSelector": {"matchLabels": dict(parent.selector)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": peers, "ports": [{"port": name, "protocol": "TCP"} for name in INFERENCE_PORTS]},
                {"ports": [{"port": METRICS_PORT_NAME, "protocol": "TCP"}]},
            ],
        },
    }
