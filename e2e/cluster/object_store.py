"""The local cluster's S3 server: versitygw (modules/versitygw: its posix backend only) serving a directory of
the run dir, started with the control plane and stopped with it (docs/local-cluster.md, "Object storage").

Where it answers:
  this machine  http://127.0.0.1:<port>, for the tests' and benchmarks' clients (`connection`)
  pods          http://kubemaas-s3.kubemaas-system.svc.cluster.local: a selector-less Service whose
                EndpointSlice names <node IP>:<port>. versitygw binds the node IP only when the cluster has a
                real node: without one no pod runs, and the Service has no endpoint.
Layout under the run directory (wiped by the next `up`, so every cluster starts with no buckets and new keys):
  s3/                   the buckets, a directory each; objects are files, their metadata extended attributes
  s3-credentials.json   the root account's keys, made for this cluster, mode 0600. Nothing prints or logs them
                        (versitygw reads the file itself, so they are in no argv, environment or state.json).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import processes
from .host_service import Port, host_service
from .node import CLUSTER_DOMAIN
from .processes import ComponentError, Running

if TYPE_CHECKING:
    from .control_plane import Cluster

NAME = "versitygw"
NAMESPACE = "kubemaas-system"
SERVICE = "kubemaas-s3"
SERVICE_PORT = 80
IN_CLUSTER_URL = f"http://{SERVICE}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
# versitygw's default: what clients sign for.
REGION = "us-east-1"
HEALTH_PATH = "/health"
DATA_DIR = "s3"
CREDENTIALS_FILE = "s3-credentials.json"
# AWS's shapes: a 20-character access key id of capitals and digits, a 40-character secret.
ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class ObjectStore:
    """How a client on this machine reaches the cluster's S3 server and signs for it (path-style addressing:
    bucket names are no host names here). The keys stay out of repr, so no assertion message shows them."""

    endpoint_url: str
    in_cluster_url: str
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    # The server's request log: a line per request with the client's address, method and path (no credentials).
    request_log: Path | None = None


def connection(cluster: Cluster) -> ObjectStore:
    """The S3 server of a started cluster: its loopback endpoint, the Service URL pods use, region and keys."""
    running = _component(cluster)
    if running is None:
        raise ComponentError(f"the cluster in {cluster.root} runs no S3 server (started before it had one?)")
    keys = json.loads((cluster.root / CREDENTIALS_FILE).read_text())
    return ObjectStore(
        f"http://127.0.0.1:{running.ports[0]}",
        IN_CLUSTER_URL,
        REGION,
        keys["accessKeyId"],
        keys["secretAccessKey"],
        request_log=cluster.root / "logs" / f"{NAME}.log",
    )


def describe(cluster: Cluster) -> str:
    """Where the S3 server answers and where its keys are (never the keys), for `status` and `make run`."""
    running = _component(cluster)
    if running is None:
        return "S3 server: none"
    return (
        f"S3 server (versitygw, region {REGION}, path-style): http://127.0.0.1:{running.ports[0]} from here,\n"
        f"{IN_CLUSTER_URL} from pods; its keys: {cluster.root / CREDENTIALS_FILE}"
    )


def start(cluster: Cluster) -> tuple[Running, subprocess.Popen[bytes], processes.Probe]:
    """Launch versitygw with new keys over an empty bucket directory; the caller waits on the returned probe
    beside the other components, then calls `publish`."""
    (cluster.root / DATA_DIR).mkdir(mode=0o700)
    credentials = write_credentials(cluster.root)
    port = processes.free_port()
    # Loopback for this machine's clients; the node IP, where the Service's endpoint points, only for pods.
    listen = ",".join(f"{address}:{port}" for address in ("127.0.0.1", cluster.node_ip) if address)
    args = [
        f"--listen={listen}",
        f"--credentials-file={credentials}",
        f"--region={REGION}",
        f"--health={HEALTH_PATH}",
        str(cluster.root / DATA_DIR),
    ]
    running, process = processes.start(NAME, cluster.bin / NAME, args, cluster.root / "logs", [port])
    cluster.components.append(running)
    return running, process, _health(port)


def publish(cluster: Cluster) -> None:
    """The namespace and the Service pods reach the server through (with its endpoint when there is a real node)."""
    running = _component(cluster)
    assert running is not None, "publish after start"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    service = host_service(
        SERVICE,
        NAMESPACE,
        cluster.node_ip or None,
        [Port("s3", SERVICE_PORT, running.ports[0])],
        labels={"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "kubemaas-local-cluster"},
    )
    manifests = yaml.safe_dump_all([namespace, *service])
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifests)


def serving(cluster: Cluster) -> bool:
    """Whether a recorded cluster has its S3 server and the server answers (a cluster an older checkout started
    has none, and is restarted to get one)."""
    running = _component(cluster)
    return running is not None and _health(running.ports[0])()


def write_credentials(root: Path) -> Path:
    """Root keys for a new cluster, in a file created readable by this user alone (never wider, not even
    briefly: os.open applies the mode as it creates the file)."""
    path = root / CREDENTIALS_FILE
    keys = {
        "accessKeyId": "".join(secrets.choice(ACCESS_KEY_ALPHABET) for _ in range(20)),
        "secretAccessKey": secrets.token_urlsafe(30),  # 40 characters
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(keys, handle)
    return path


def _component(cluster: Cluster) -> Running | None:
    return next((c for c in cluster.components if c.name == NAME), None)


def _health(port: int) -> processes.Probe:
    return processes.http_probe(f"http://127.0.0.1:{port}{HEALTH_PATH}")
