"""The local control plane's own promises: failures name the component, and down leaves nothing behind.

These tests start a second, throwaway local cluster in a temporary run
directory (without the training operator, whose webhook cert path is
host-global), so killing its API server does not disturb the session's cluster.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster import control_plane, processes
from e2e.cluster.build import ensure_built
from e2e.cluster.processes import ComponentError
from e2e.conftest import SERIAL_THROWAWAY, E2ECluster
from e2e.typed_client import new_client

pytestmark = [
    pytest.mark.skipif(
        bool(os.environ.get("KUBEMAAS_E2E_KUBECONFIG")), reason="exercises the local control plane only"
    ),
    SERIAL_THROWAWAY,
]


# Issue 3's promise for a warm `make cluster-up` (binaries already built by the session's cluster).
WARM_UP_LIMIT_SECONDS = 30


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[control_plane.Cluster]:
    root = tmp_path / "run"
    cluster = control_plane.up(root, training_operator=False)
    try:
        yield cluster
    finally:
        control_plane.down(root)


def test_warm_up_is_ready_in_under_30_seconds(tmp_path: Path) -> None:
    # The promise is for a warm start: on a new machine the first call compiles every component (minutes,
    # its progress on stderr), and that must not be timed. `make e2e` builds before pytest starts; this call
    # makes the test hold when pytest runs alone.
    ensure_built()
    root = tmp_path / "run"
    started = time.monotonic()
    try:
        control_plane.up(root, training_operator=False)
        elapsed = time.monotonic() - started
    finally:
        control_plane.down(root)
    assert elapsed < WARM_UP_LIMIT_SECONDS, f"warm up took {elapsed:.1f}s"


def test_killed_api_server_is_named_with_its_log_tail(throwaway: control_plane.Cluster) -> None:
    api = new_client(throwaway.kubeconfig)
    waiting = E2ECluster(throwaway.kubeconfig, api, throwaway)
    apiserver = throwaway.component("kube-apiserver")
    killer = threading.Timer(1.0, os.kill, args=(apiserver.pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(ComponentError) as failure:
            # Waits for something that never happens; only the dead API server may end it.
            waiting.wait_for(
                "a node that does not exist", lambda: client.CoreV1Api(api).read_node("no-such-node"), timeout=60
            )
    finally:
        killer.cancel()
    message = str(failure.value)
    assert "kube-apiserver" in message
    assert apiserver.log in message
    # The tail is the API server's own log, not an empty placeholder.
    assert processes.log_tail(Path(apiserver.log)).splitlines()[-1] in message


def test_down_leaves_no_process_or_port_behind(throwaway: control_plane.Cluster) -> None:
    components = list(throwaway.components)
    assert {c.name for c in components} >= {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    ports = [p for c in components for p in c.ports]
    assert all(processes.port_in_use(p) for c in components[:2] for p in c.ports[:1])
    control_plane.down(throwaway.root)
    alive = [f"{c.name} (pid {c.pid})" for c in components if c.alive()]
    assert alive == [], f"still running after down: {alive}"
    listening = [p for p in ports if processes.port_in_use(p)]
    assert listening == [], f"ports still listening after down: {listening}"
    assert control_plane.load(throwaway.root) is None


def test_api_server_and_etcd_restart_in_place_keeping_data(throwaway: control_plane.Cluster) -> None:
    """The fault hooks the operator's fault tests use: a restarted component serves again on its old ports,
    and what etcd held survives."""
    api = new_client(throwaway.kubeconfig)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="survives-restarts")))
    old_pids = {name: throwaway.component(name).pid for name in ("kube-apiserver", "etcd")}
    control_plane.restart_component(throwaway, "kube-apiserver")
    control_plane.restart_component(throwaway, "etcd", downtime=2)
    for name, pid in old_pids.items():
        assert throwaway.component(name).pid != pid and throwaway.component(name).alive()
    waiting = E2ECluster(throwaway.kubeconfig, api, throwaway)
    # The API server reconnects to etcd by itself; reads answer again within seconds.
    assert waiting.wait_for("the namespace to read back", lambda: core.read_namespace("survives-restarts"), 60)
    # The recorded state names the new pids, so `down` stops the restarted processes.
    reloaded = control_plane.load(throwaway.root)
    assert reloaded is not None
    assert {c.name: c.pid for c in reloaded.components}["etcd"] == throwaway.component("etcd").pid
