"""The ClusterIP Service over every serving pod, and the addresses it gives clients."""

from __future__ import annotations

from typing import Any

from kubemaas.manifests.modelservice.inputs import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    Parent,
    child_meta,
    service_host,
)


def service(parent: Parent) -> dict[str, Any]:
    """ClusterIP Service over every serving pod (stable and canary), ports by name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(parent, parent.name),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(parent.selector),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def endpoints(parent: Parent) -> dict[str, str]:
    host = service_host(parent.name, parent.namespace)
    return {"http": f"{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}"}


def url(parent: Parent) -> str:
    return f"http://{service_host(parent.name, parent.namespace)}:{HTTP_PORT}"
