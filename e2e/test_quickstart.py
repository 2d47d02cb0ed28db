"""The README's quickstart as shipped: `kubectl apply -f examples/quickstart/` unmodified, on the real node, then
the query command (examples/quickstart/query.py, what `make query` runs) printing an accuracy of at least 0.9.
If the examples or the client rot, this fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster import quickstart
from e2e.conftest import REPO, SERIAL_NODE_TRAINING, E2ECluster, OperatorProcess, RealNode
from e2e.test_modelservice import condition, crds, wait_ms  # noqa: F401 (crds: a fixture)
from e2e.test_real_node import wait_trained

pytestmark = SERIAL_NODE_TRAINING  # trains and serves on the one real node

EXAMPLES = REPO / "examples" / "quickstart"
PERSISTENT_VOLUME = "kubemaas-quickstart-models"


@pytest.fixture
def quickstart_store(cluster: E2ECluster) -> Iterator[Path]:
    """The store directory `make run` prepares; the quickstart's PersistentVolume is removed afterwards (it is
    cluster-scoped and would stay bound to this test's deleted claim)."""
    core = client.CoreV1Api(cluster.api)
    try:
        existing = core.read_persistent_volume(PERSISTENT_VOLUME)
    except ApiException as error:
        assert error.status == 404, error
    else:
        pytest.fail(f"PersistentVolume {PERSISTENT_VOLUME} exists already (a `make run` quickstart?): {existing.spec}")
    created = not quickstart.STORE.exists()
    store = quickstart.prepare_store()
    try:
        yield store
    finally:
        core.delete_persistent_volume(PERSISTENT_VOLUME)
        if created:
            shutil.rmtree(store, ignore_errors=True)


@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_the_quickstart_trains_serves_and_answers(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    quickstart_store: Path,
    operator: OperatorProcess,
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    model = wait_trained(cluster, namespace, "digits")
    assert float(model["metrics"]["heldOutAccuracy"]) >= 0.9, model
    assert (quickstart_store / "store" / "digits" / model["version"] / "model.kmenc").is_file()
    wait_ms(cluster, namespace, "digits", lambda o: condition(o, "Ready").get("status") == "True",
            "the quickstart's ModelService Ready", timeout=300)  # fmt: skip

    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KUBECTL": cluster.kubectl_command()[0]}
    query = subprocess.run(
        [sys.executable, str(EXAMPLES / "query.py"), "--namespace", namespace],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert query.returncode == 0, query.stdout + query.stderr
    accuracy = re.search(r"^held-out accuracy: (\S+) ", query.stdout, re.MULTILINE)
    assert accuracy and float(accuracy.group(1)) >= 0.9, query.stdout
    # The model answers as the trainer measured it: the same split, the same weights.
    assert abs(float(accuracy.group(1)) - float(model["metrics"]["heldOutAccuracy"])) < 1e-3, query.stdout
    assert f"version {model['version']}" in query.stdout

    # `kubectl get` says what each waits for and, now, that both are ready.
    listed = cluster.kubectl("get", "-n", namespace, "tj,ms", "digits")
    assert re.search(r"trainingjob\.kubemaas\.io/digits\s.*\sWorkloadCreated\s", listed), listed
    assert re.search(r"modelservice\.kubemaas\.io/digits\s+True\s+Serving\s", listed), listed
