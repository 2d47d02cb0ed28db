"""pytest wiring for the end-to-end suite: one cluster per run, one namespace per test.

The suite needs nothing but a kubeconfig. With KUBEMAAS_E2E_KUBECONFIG set it
uses that cluster as is; otherwise it starts the local control plane from
e2e/cluster (reusing one that `make cluster-up` already started, and leaving
that one running afterwards). KUBEMAAS_E2E_REAL_NODE=1 (what `make e2e` sets
unless REAL_NODE=0) adds the real node; tests marked `real_node` skip without one.

`make e2e` runs the suite on pytest-xdist workers (most of it is waiting on the API server and on pods): each
test has its own namespace and its own operator, so tests share nothing but the cluster. The first worker that
needs the cluster starts it under a file lock, the others find it running, and the controller process stops it
when the whole run ends (a worker's session ends while others still use it). Tests that must not overlap each
other share an `xdist_group` (one worker runs a group in order): the real node's containerd tests, the real
node's training scenarios, its serving scenarios, and the throwaway control planes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import waits
from e2e.chart import Tools, chart_identity
from e2e.cluster import control_plane, images, node, object_store, processes
from e2e.cluster.node import REAL_NODE_LABEL, pod_placement
from e2e.cluster.processes import ComponentError, free_port, log_tail
from e2e.cluster.versions import run_dir
from e2e.kube import apply_crd, load_crds, python_pod
from e2e.typed_client import body_as, name_of, new_client

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# Groups of tests that one xdist worker runs in order (`--dist loadgroup`), beside the rest of the suite.
SERIAL_THROWAWAY = pytest.mark.xdist_group("throwaway-control-planes")  # a second API server + etcd each
SERIAL_NODE_CONTAINERS = pytest.mark.xdist_group("node-containerd")  # containers in the node's containerd
# The real node's scenarios in two groups that run side by side: most of a scenario is waiting (pods starting,
# Triton loading, canary windows), and the pods of one training scenario (two ranks of 600m, one Triton pod, a
# client of 50m) and one serving scenario (at most two Triton pods of 250m and a client of 50m) fit the node's 2
# CPUs together. Test clients request little and are bounded by their limit (e2e/kube.py client_resources).
SERIAL_NODE_TRAINING = pytest.mark.xdist_group("real-node-training")  # ranks train on the node's CPU
SERIAL_NODE_SERVING = pytest.mark.xdist_group("real-node-serving")  # Triton serves models published by the test
# Names this pytest run; xdist's workers inherit it. The worker that starts the local cluster writes it
# beside the cluster's state, and the controller stops the cluster at the end only if this run started it.
RUN_ID_VARIABLE = "KUBEMAAS_E2E_RUN_ID"
STARTED_BY = "started-by-run"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_node: runs real containers on the cluster's real node (skips without one)")
    config.addinivalue_line(
        "markers", "host_restore: starts and stops a real node of its own; `make e2e` runs these alone, first"
    )
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist): before workers start
        os.environ[RUN_ID_VARIABLE] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller stops the local cluster once every worker is done, if this run started it."""
    if hasattr(session.config, "workerinput"):
        return
    marker = run_dir() / STARTED_BY
    if marker.is_file() and marker.read_text() == os.environ.get(RUN_ID_VARIABLE):
        marker.unlink()
        control_plane.down()


@contextlib.contextmanager
def _worker_lock(name: str) -> Iterator[None]:
    """One xdist worker at a time in the block (starting or finding the cluster, importing the node's images)."""
    lock = run_dir().parent / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class E2ECluster:
    kubeconfig: Path
    api: client.ApiClient
    local: control_plane.Cluster | None  # None when the suite runs against someone else's cluster

    def install_crds(self) -> dict[str, list[str]]:
        """Apply every CRD in crds/ and wait until each is Established; name -> the API server's Warning headers.

        Tests that share a cluster call it before they create objects: another checkout may have applied
        an older schema in between."""
        crds = load_crds()
        warnings = {crd["metadata"]["name"]: apply_crd(self.api, crd) for crd in crds}
        for name in warnings:
            self.wait_object(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
                lambda crd: waits.condition_is(crd, "Established"),
                what=f"CRD {name} to be Established",
                timeout=30,
            )
        return warnings

    def kubectl_command(self) -> list[str]:
        # The local cluster's own kubectl (its pinned version), else the one on PATH.
        binary = str(self.local.bin / "kubectl") if self.local is not None else shutil.which("kubectl")
        assert binary, "kubectl not found"
        return [binary, "--kubeconfig", str(self.kubeconfig)]

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self.kubectl_command(), *args], input=stdin, text=True, capture_output=True, timeout=timeout
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int, timeout: float = 30) -> Iterator[int]:
        """`kubectl port-forward` to a free local port for the duration of the block; yields that port once
        the tunnel forwards (kubectl prints `Forwarding from` then)."""
        local = free_port()
        command = [*self.kubectl_command(), "-n", namespace, "port-forward", target, f"{local}:{port}"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert process.stdout is not None
            first = process.stdout.readline()  # blocks until kubectl forwards or fails
            if "Forwarding from" not in first:
                process.kill()
                raise AssertionError(f"kubectl port-forward {target} failed: {first}{process.stdout.read()}")
            yield local
        finally:
            process.terminate()
            process.wait(timeout=timeout)

    def run_python_pod(
        self, namespace: str, name: str, placement: dict[str, Any], script: str, *args: str
    ) -> tuple[Any, str]:
        """Run `python -c script args` in a pod of the base image (e2e/kube.py python_pod) until it ends; returns
        its last log line parsed as JSON (what the script found) and the whole log (for assertion messages)."""
        core = client.CoreV1Api(self.api)
        pod = python_pod(name, placement, ["python", "-c", script, *args], restartPolicy="Never")
        core.create_namespaced_pod(namespace, body_as(client.V1Pod, pod))
        self.wait_object(
            "v1",
            "Pod",
            namespace,
            name,
            lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"),
            what=f"pod {name} to finish",
            timeout=90,
        )
        log = core.read_namespaced_pod_log(name, namespace)
        return json.loads(log.strip().splitlines()[-1]), log

    def check_alive(self) -> None:
        if self.local is not None:
            control_plane.check_alive(self.local)

    def wait_object(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        check: Callable[[dict[str, Any]], T | None],
        *,
        what: str,
        timeout: float = 60.0,
    ) -> T:
        """Watch one object until `check(obj)` holds (e2e/waits.py); a dead component ends the wait at once."""
        return waits.wait_for_object(
            self.api, api_version, kind, namespace, name, check, what=what, timeout=timeout, alive=self.check_alive
        )

    def wait_objects(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        check: Callable[[waits.Objects], T | None],
        *,
        what: str,
        timeout: float = 60.0,
        label_selector: str | None = None,
    ) -> T:
        """Watch a set of objects (a kind in a namespace, optionally by label) until `check(objects)` holds."""
        return waits.wait_for_objects(
            self.api,
            api_version,
            kind,
            namespace,
            check,
            what=what,
            timeout=timeout,
            label_selector=label_selector,
            alive=self.check_alive,
        )

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
        """Poll `check` until it returns a value other than None/False (prefer `wait_object`: it watches).

        API errors while polling are retried, but if a local component died the
        wait ends at once with that component's name and log tail.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result is not None and result is not False:
                    return result
            except ApiException as error:
                last_error = error
            except Exception as error:  # urllib3 connection errors when the API server is gone
                last_error = error
                self.check_alive()
            self.check_alive()
            time.sleep(0.25)
        self.check_alive()
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_error}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[E2ECluster]:
    external = os.environ.get("KUBEMAAS_E2E_KUBECONFIG")
    if external:
        yield E2ECluster(Path(external), new_client(external), None)
        return
    real_node = os.environ.get("KUBEMAAS_E2E_REAL_NODE", "0") == "1"
    with _worker_lock("run"):
        existing = control_plane.load()
        reused = existing is not None and control_plane.reusable(existing, real_node=real_node, batch_controllers=True)
        local = control_plane.up(real_node=real_node, batch_controllers=True)
        if not reused:  # stopped by pytest_sessionfinish once every worker is done
            (run_dir() / STARTED_BY).write_text(os.environ.get(RUN_ID_VARIABLE, ""))
    yield E2ECluster(local.kubeconfig, new_client(local.kubeconfig), local)


@pytest.fixture(scope="session")
def s3_server(cluster: E2ECluster) -> object_store.ObjectStore:
    """The local cluster's S3 server (e2e/cluster/object_store.py): endpoint, region and the root keys."""
    if cluster.local is None:
        pytest.skip("the S3 server is the local cluster's (e2e/cluster/object_store.py)")
    return object_store.connection(cluster.local)


@dataclass(frozen=True)
class RealNode:
    """The cluster's real node (node.py locally; any node labelled REAL_NODE_LABEL elsewhere)."""

    name: str

    def placement(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on this node and nowhere else."""
        return pod_placement()


@pytest.fixture(scope="session")
def real_node(cluster: E2ECluster) -> RealNode:
    nodes = client.CoreV1Api(cluster.api).list_node(label_selector=f"{REAL_NODE_LABEL}=true").items
    if not nodes:
        pytest.skip(f"no node labelled {REAL_NODE_LABEL}=true (make e2e starts one; REAL_NODE=0 turns it off)")
    return RealNode(name_of(nodes[0]))


@pytest.fixture(scope="session")
def node_images(cluster: E2ECluster, real_node: RealNode) -> None:
    """Every image of e2e/cluster/images.py in the local real node's containerd (`make e2e` builds them
    before pytest starts); another cluster's node must have them already."""
    _import_node_images(cluster, list(images.BUILDERS))


@pytest.fixture(scope="session")
def base_image(cluster: E2ECluster, real_node: RealNode) -> None:
    """Only the base image (Debian's python3, e2e/kube.py python_pod) on the real node: for probe pods of tests
    that run nothing else, so they need not wait for the trainer's and Triton's images."""
    _import_node_images(cluster, ["base"])


def _import_node_images(cluster: E2ECluster, names: list[str]) -> None:
    if cluster.local is not None:
        with _worker_lock("node-images"):  # the first worker imports; the next finds every layer held
            node.load_images(cluster.local, names)


PSS_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture
def namespace(cluster: E2ECluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security `restricted`, deleted after the test."""
    core = client.CoreV1Api(cluster.api)
    stem = request.node.name.lower().replace("_", "-")
    # 40 random bits: a namespace of this run may still be terminating when a case of the same test (the same
    # stem) draws its name, and 20 bits collided once among a parametrized test's cases.
    name = f"e2e-{''.join(ch for ch in stem if ch.isalnum() or ch == '-')[:36].strip('-')}-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=PSS_RESTRICTED)))
    # Pods are refused until the service-account controller has made `default`.
    cluster.wait_object(
        "v1", "ServiceAccount", name, "default", lambda sa: True, what=f"service account default in {name}", timeout=30
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


@dataclass
class OperatorProcess:
    """One `kubemaas run`; its whole log is kept for greps (restarts of a launcher append to it)."""

    process: subprocess.Popen[bytes]
    log: Path
    liveness_url: str
    metrics_url: str

    def tail(self) -> str:
        return log_tail(self.log)

    def text(self) -> str:
        """The whole log, every start of the launcher included."""
        return self.log.read_text(errors="replace")

    def wait_live(self, timeout: float = 60.0) -> None:
        """Wait until kopf's liveness endpoint answers 200 (it does once the operator is up and watching).

        The same wait as for the cluster's components: an exit or a timeout names `kubemaas run`
        and shows its log tail.
        """
        running = processes.Running("kubemaas run", self.process.pid, "kubemaas", str(self.log), [])
        processes.wait_ready(running, self.process, processes.http_probe(self.liveness_url), timeout)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill9(self) -> None:
        """SIGKILL: no clean-up, no goodbye; what a crashed or OOM-killed operator looks like."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class OperatorLauncher:
    """Starts `kubemaas run --namespace=<ns>... --standalone` with `kubeconfig`, and starts it again: the one
    way the e2e tests and the benchmarks run the operator."""

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        log: Path,
        args: Sequence[str] = (),
        *,
        program: Sequence[str] = (),
    ) -> None:
        self.kubeconfig, self.namespaces, self.log = kubeconfig, namespaces, log
        self.args = list(args)  # more `kubemaas run` flags, e.g. --watch-timeout
        # What runs the CLI: the venv's `kubemaas` script unless given (a benchmark's tracemalloc wrapper).
        self.program = list(program) or [str(Path(sys.executable).with_name("kubemaas"))]
        self.current: OperatorProcess | None = None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> OperatorProcess:
        """Start `kubemaas run` on two free ports (`free_port`); with `wait`, until it is live (`timeout` s)."""
        running = self._spawn()
        if wait:
            running.wait_live(timeout)
        return running

    def _spawn(self) -> OperatorProcess:
        liveness_url = f"http://127.0.0.1:{free_port()}/healthz"
        metrics_port = free_port()
        with self.log.open("ab") as log_file:
            process = subprocess.Popen(
                [
                    *self.program,
                    "run",
                    "--standalone",
                    *(f"--namespace={ns}" for ns in self.namespaces),
                    f"--liveness={liveness_url}",
                    f"--metrics-port={metrics_port}",
                    *self.args,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                cwd=REPO,
            )
        self.current = OperatorProcess(process, self.log, liveness_url, f"http://127.0.0.1:{metrics_port}/metrics")
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


@contextlib.contextmanager
def operator_process(kubeconfig: Path, namespace: str, workdir: Path) -> Iterator[OperatorProcess]:
    """`kubemaas run` as a subprocess watching `namespace`, authenticated by `kubeconfig`; stopped on exit."""
    launcher = OperatorLauncher(kubeconfig, [namespace], workdir / "kubemaas-run.log")
    running = launcher.start(wait=False)
    try:
        yield running
        if running.process.poll() is not None and running.process.returncode != 0:
            raise ComponentError(f"kubemaas run exited early with {running.process.returncode}:\n{running.tail()}")
    finally:
        launcher.stop()


@pytest.fixture
def chart_kubeconfig(cluster: E2ECluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the Helm chart's ServiceAccount with the chart's RBAC for the test's namespace."""
    with chart_identity(chart_tools(cluster, tmp_path / "helm-home"), namespace, tmp_path) as kubeconfig:
        yield kubeconfig


def chart_tools(cluster: E2ECluster, home: Path) -> Tools:
    """helm and kubectl for the chart: the local cluster's pinned builds, or (another cluster) those on PATH."""
    return Tools.find(cluster.local.bin if cluster.local is not None else None, cluster.kubeconfig, home)


@pytest.fixture(scope="module")
def tools(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """`chart_tools` for a test module (the chart and alerting-rule tests)."""
    return chart_tools(cluster, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture
def operator(chart_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`kubemaas run` as a subprocess against the test cluster, stopped after the test.

    It watches only the test's namespace, so tests (and developers) sharing one cluster never run two
    operators over the same objects; one replica, so `--standalone` (no peering). It authenticates as the
    Helm chart's ServiceAccount with the chart's RBAC for that namespace (e2e/chart.py), never as the
    admin: every scenario that uses this fixture proves the chart grants what the controllers do.
    """
    with operator_process(chart_kubeconfig, namespace, tmp_path) as running:
        yield running


@pytest.fixture
def operator_launcher(chart_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorLauncher]:
    """Not started: for tests that start, kill and restart the operator themselves (as the chart's identity)."""
    launcher = OperatorLauncher(chart_kubeconfig, [namespace], tmp_path / "kubemaas-run.log")
    try:
        yield launcher
    finally:
        launcher.stop()


def restricted_container(name: str = "main", **extra: Any) -> dict[str, Any]:
    """A container spec that passes Pod Security `restricted`."""
    return {
        "name": name,
        "image": "registry.k8s.io/pause:3.10",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
    }
