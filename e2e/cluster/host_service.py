"""A Service whose endpoint is a process on this machine rather than a pod: CoreDNS, metrics-server and the
S3 server run as host processes, and pods reach them through a selector-less Service and an EndpointSlice
naming this machine's address. The API server refuses loopback endpoints, so that address is the real
node's (node.node_ip()), the one kube-proxy's rules on the node lead to.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Marks the slices this project writes, so the EndpointSlice controller (which manages the slices of Services
# with a selector) leaves them alone.
MANAGED_BY = "kubemaas-e2e"


class Port(NamedTuple):
    name: str
    port: int  # the Service's port, what clients dial
    target: int  # the host process's port
    protocol: str = "TCP"


def host_service(
    name: str,
    namespace: str,
    ip: str | None,
    ports: list[Port],
    *,
    labels: dict[str, str] | None = None,
    cluster_ip: str | None = None,
    node_name: str | None = None,
) -> list[dict[str, Any]]:
    """The Service and, when `ip` is given, its EndpointSlice (`<name>-host`); without an address the Service
    has no endpoint (no real node: no pod runs that could use one)."""
    spec: dict[str, Any] = {
        "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port, "targetPort": p.target} for p in ports]
    }
    if cluster_ip:
        spec = {"clusterIP": cluster_ip, **spec}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, **({"labels": labels} if labels else {})},
        "spec": spec,
    }
    if not ip:
        return [service]
    endpoint: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True}}
    if node_name:
        endpoint["nodeName"] = node_name
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-host",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
        },
        "addressType": "IPv4",
        "endpoints": [endpoint],
        "ports": [{"name": p.name, "protocol": p.protocol, "port": p.target} for p in ports],
    }
    return [service, endpoint_slice]
