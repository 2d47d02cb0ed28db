"""Ports for processes about to start (e2e/cluster/processes.py free_port).

A port the kernel picks (bind to 0) comes from the ephemeral range, where any outgoing connection can take it
before the child binds it: an e2e run lost `kubemaas run`'s liveness port that way. These tests hold that
ports come from below that range, from a slice per xdist worker, and never twice in a row from one process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster import processes
from tests.runtime.trainer_launch import wait_for


def ephemeral_start() -> int:
    return int(processes.EPHEMERAL_RANGE.read_text().split()[0])


def test_each_xdist_worker_draws_from_its_own_slice_below_the_ephemeral_range() -> None:
    slices = [processes.port_slice(worker) for worker in (None, "gw0", "gw1", "gw2", "gw5")]
    for ports in slices:
        assert ports.start >= processes.PORTS_START and ports.stop <= min(processes.PORTS_END, ephemeral_start())
    for i, ports in enumerate(slices):
        for other in slices[i + 1 :]:
            assert not set(ports) & set(other), f"{ports} and {other} overlap"
    assert processes.port_slice("gw0") == processes.port_slice("gw0")
    assert processes.port_slice("master") == processes.port_slice(None)


def test_ports_handed_out_before_any_is_bound_differ_and_lie_in_this_workers_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    ports = [processes.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port in processes.port_slice("gw3") for port in ports)


def test_a_port_some_process_holds_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")
    upcoming = processes.free_port() + 1  # the cursor walks the slice in turn
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        try:
            holder.bind(("127.0.0.1", upcoming))
        except OSError:
            pytest.skip(f"port {upcoming} is taken on this machine already")
        holder.listen()
        assert processes.free_port() != upcoming


# The main thread leaves (pthread_exit) while another thread holds a listening socket: what a killed Go
# program looks like for a moment, its leader a zombie whose threads still hold its files.
LEADER_EXITS_FIRST = """
import ctypes, socket, sys, threading, time
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
threading.Thread(target=lambda: time.sleep(60)).start()
print("listening", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_process_whose_main_thread_exited_first_is_alive_while_its_threads_hold_its_port() -> None:
    port = processes.free_port()
    child = subprocess.Popen([sys.executable, "-c", LEADER_EXITS_FIRST, str(port)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"listening\n"
        # The main thread is gone; the other thread holds the socket.
        wait_for(lambda: state(child.pid) == "Z", 10, f"the main thread of {child.pid} to exit")
        assert processes.port_in_use(port)
        assert processes.process_matches(child.pid, sys.executable), "its port answers: it is alive"
        child.kill()
        child.wait()
        assert not processes.process_matches(child.pid, sys.executable)
        assert not processes.port_in_use(port)
    finally:
        child.kill()
        child.wait()
