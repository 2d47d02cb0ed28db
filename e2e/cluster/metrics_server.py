"""metrics-server for the real node: the resource metrics API (metrics.k8s.io) the HPA controller reads.

It runs as a host process on the node IP, like CoreDNS, behind a selector-less Service that the API
server's aggregation layer reaches; it scrapes the real node's kubelet only (kwok nodes serve no stats).
The API server side (front-proxy CA, proxy client certificate, request-header flags) is in
`apiserver_args`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from .host_service import Port, host_service
from .pki import CertificateAuthority

NAMESPACE = "kube-system"
NAME = "metrics-server"
USER = "system:metrics-server"
FRONT_PROXY_CLIENT = "front-proxy-client"
# The kubelet's summary is scraped this often; the HPA controller syncs every 15 s.
RESOLUTION = "15s"


def apiserver_args(pki: Path) -> list[str]:
    """The aggregation layer: the API server proxies metrics.k8s.io to metrics-server as `front-proxy-client`,
    a certificate of a CA of its own (as kubeadm does), passing the user in X-Remote-* headers."""
    front_proxy = CertificateAuthority(pki, "front-proxy-ca")
    client = front_proxy.issue("front-proxy-client", FRONT_PROXY_CLIENT)
    return [
        f"--requestheader-client-ca-file={front_proxy.pair.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={client.cert}",
        f"--proxy-client-key-file={client.key}",
        # Proxy to the endpoint (this machine's address) rather than through the Service IP.
        "--enable-aggregator-routing=true",
    ]


def args(
    kubeconfig: Path, ip: str, port: int, serving_cert: Path, serving_key: Path, ca: Path, node_label: str
) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={ip}",
        f"--secure-port={port}",
        f"--tls-cert-file={serving_cert}",
        f"--tls-private-key-file={serving_key}",
        f"--kubelet-certificate-authority={ca}",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port",
        f"--node-selector={node_label}=true",
        f"--metric-resolution={RESOLUTION}",
    ]


def objects(ip: str, port: int, ca_cert: Path) -> list[dict[str, Any]]:
    """RBAC as upstream's manifests grant it, the Service the APIService names, its endpoint, the APIService."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": USER},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": USER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
            "subjects": [user],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "metrics-server:system:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [user],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [user],
        },
        *host_service(NAME, NAMESPACE, ip, [Port("https", 443, port)], labels={"k8s-app": NAME}),
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                "caBundle": base64.b64encode(ca_cert.read_bytes()).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def serving_names() -> tuple[str, ...]:
    return (NAME, f"{NAME}.{NAMESPACE}", f"{NAME}.{NAMESPACE}.svc")
