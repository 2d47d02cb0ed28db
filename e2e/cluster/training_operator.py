"""Run the Kubeflow training operator v1 as a local process, restricted to PyTorchJob.

In a cluster the operator's webhook Secret is mounted into its pod at a fixed
path; its cert rotator fills the Secret and then waits for the files to
appear. Here no kubelet mounts anything, so `project_webhook_cert` plays the
kubelet's part and copies the Secret's keys to that path. No
ValidatingWebhookConfiguration is registered: the API server could not reach
the webhook under its in-cluster DNS name, and the CRD schema still validates.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path

from . import processes
from .images import BASE_IMAGE

# Hard-coded in training-operator v1.8.1 pkg/cert (and controller-runtime's default).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
INIT_CONTAINER_TEMPLATE = Path(__file__).resolve().parent / "pytorch-init-container.yaml"


def training_operator_args(
    kubeconfig: Path, namespace: str
) -> tuple[list[str], dict[str, str], list[int], processes.Probe]:
    metrics, health, webhook = processes.free_port(), processes.free_port(), processes.free_port()
    args = [
        f"--kubeconfig={kubeconfig}",
        "--enable-scheme=pytorchjob",
        f"--metrics-bind-address=127.0.0.1:{metrics}",
        f"--health-probe-bind-address=127.0.0.1:{health}",
        f"--webhook-server-port={webhook}",
        "--leader-elect=false",
        f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE}",
        # Upstream's default (alpine:3.10) cannot be pulled here; on the real node the local Debian base runs it.
        f"--pytorch-init-container-image={BASE_IMAGE}",
    ]
    env = {"MY_POD_NAMESPACE": namespace, "KUBECONFIG": str(kubeconfig), "TMPDIR": "/tmp"}
    probe = processes.http_probe(f"http://127.0.0.1:{health}/readyz")
    return args, env, [metrics, health, webhook], probe


Kubectl = Callable[..., str]


def project_webhook_cert(kubectl: Kubectl, namespace: str, secret: str, stop: threading.Event) -> None:
    """Copy tls.crt/tls.key from the Secret into WEBHOOK_CERT_DIR once the rotator has filled it."""
    for stale in ("tls.crt", "tls.key", "ca.crt"):
        (WEBHOOK_CERT_DIR / stale).unlink(missing_ok=True)
    while not stop.wait(0.3):
        try:
            data = json.loads(kubectl("get", "secret", secret, "-n", namespace, "-o", "json")).get("data") or {}
        except processes.ComponentError:
            continue
        if "tls.crt" in data and "tls.key" in data:
            WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key in ("tls.crt", "tls.key", "ca.crt"):
                if key in data:
                    target = WEBHOOK_CERT_DIR / key
                    target.write_bytes(base64.b64decode(data[key]))
                    target.chmod(0o600)
            return
