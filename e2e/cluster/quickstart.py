"""What `make run` does as root: the local cluster with its real node, the images on it, the operator installed
from the Helm chart as users install it, and the quickstart's store; then what to do next.

Without root there is no real node (containerd, iptables and mounts need it): the Makefile falls back to the
kwok-only cluster and the operator as a local process, where pods are scheduled but never run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kubemaas.manifests.pods import WORKLOAD_UID

from . import control_plane, images, node, object_store
from .control_plane import Cluster
from .processes import ComponentError

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubemaas"
RELEASE, NAMESPACE = "kubemaas", "kubemaas-system"
# The quickstart's store (examples/quickstart/00-store.yaml's local PersistentVolume): a directory of the real
# node, which is this machine. The trainer's rank 0 writes there as the workload user.
STORE = Path("/var/lib/kubemaas/quickstart")
OPERATOR_READY_SECONDS = 180


def log(message: str) -> None:
    print(f"[make run] {message}", file=sys.stderr, flush=True)


def prepare_store(path: Path = STORE) -> Path:
    """The quickstart's store directory, owned by the workload user (a local volume keeps its owner)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, WORKLOAD_UID, WORKLOAD_UID)
    path.chmod(0o755)
    return path


def operator_values() -> dict[str, object]:
    """The chart's values for the local cluster: the operator image on the real node, and Triton's CPU image
    (images/triton-python/Dockerfile.cpu) for ModelServices that name none."""
    return {
        "operator": {"tritonImage": images.DOCKERFILE_IMAGES["triton-python"].ref},
        **node.pod_placement(),
    }


def install_operator(cluster: Cluster) -> None:
    """`helm upgrade --install` of the chart (its CRDs included), waiting until the operator is Available."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump(operator_values(), values)
        values.flush()
        command = [
            str(cluster.bin / "helm"), "upgrade", "--install", RELEASE, str(CHART),
            "--namespace", NAMESPACE, "--create-namespace", "--kubeconfig", str(cluster.kubeconfig),
            "--values", values.name, "--wait", f"--timeout={OPERATOR_READY_SECONDS}s",
        ]  # fmt: skip
        helm_home = str(cluster.root / "helm")
        env = {**os.environ, "HELM_CACHE_HOME": helm_home, "HELM_CONFIG_HOME": helm_home, "HELM_DATA_HOME": helm_home}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ComponentError(f"helm upgrade --install failed: {result.stderr.strip()[-2000:]}")
    # The chart's CRDs are installed once by helm and never upgraded: apply this checkout's, as `make crds` made them.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))


def next_steps(cluster: Cluster, seconds: float) -> str:
    return f"""
Kubemaas is running in the local cluster ({seconds:.0f} s): the operator {NAMESPACE}/{RELEASE} on the real node.

  export KUBECONFIG={cluster.kubeconfig} PATH={cluster.bin}:$PATH
  kubectl apply -f examples/quickstart/      # a claim, a TrainingJob (2 CPU ranks), a ModelService
  kubectl get tj,ms -w                         # REASON says what each waits for; Ctrl-C when digits is Ready
  make query                                   # predictions and the held-out accuracy, over KServe v2

What to look at: `kubectl describe tj digits` and `kubectl describe ms digits` (conditions and Events),
`kubectl -n {NAMESPACE} logs deploy/{RELEASE}` (the operator), its metrics on port 8080 (docs/alerts.md).
{object_store.describe(cluster)}.
Stop everything: make cluster-down.
"""


def run() -> Cluster:
    """Everything after the build (`python -m e2e.cluster run` builds the components and images first, side by
    side, as `make test` does): the cluster, the node's images, the store, the chart; then the next steps."""
    started = time.monotonic()
    if os.geteuid() != 0:
        raise PermissionError("the real node needs root (containerd, iptables, mounts)")
    cluster = control_plane.up(real_node=True, batch_controllers=True)
    log("images onto the real node (only the layers it lacks) ...")
    node.load_images(cluster, list(images.BUILDERS))
    prepare_store()
    log(f"installing the operator from {CHART.relative_to(REPO)} (helm release {RELEASE} in {NAMESPACE}) ...")
    install_operator(cluster)
    print(next_steps(cluster, time.monotonic() - started), flush=True)
    return cluster


def follow_operator_log(cluster: Cluster) -> None:
    """Replace this process with `kubectl logs -f` of the operator: Ctrl-C stops following, not the cluster."""
    kubectl = str(cluster.bin / "kubectl")
    command = [kubectl, "--kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE, "logs", "-f", f"deploy/{RELEASE}"]
    os.execv(kubectl, command)
