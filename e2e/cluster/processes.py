"""Start, watch and stop the control-plane processes; errors name the component."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 30


class ComponentError(RuntimeError):
    """A component died or never became ready; the message names it and shows its log tail."""


# Ports handed to processes about to start come from below the kernel's ephemeral range (its lower bound is
# read from /proc), never from it: every outgoing connection (a client of the API server, of an operator) also
# draws its local port from that range, and can take a port picked there between our check and the child's bind
# (it happened: `kubemaas run` lost its liveness port). Below the range only such picks compete, and each
# process draws from a slice of its own, so two xdist workers never hand out the same port.
PORTS_START = 12000  # above the well-known defaults (etcd 2379, kubelet 10250, kube-proxy 10256, Triton 8000)
PORTS_END = 30000  # Kubernetes' NodePort range starts here
PORTS_PER_SLICE = 1000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ports_lock = threading.Lock()
# This process's cursor in its slice; a random start, so that other processes on slice 0 start elsewhere.
_ports_cursor = itertools.count(random.randrange(PORTS_PER_SLICE))


def port_slice(worker: str | None) -> range:
    """The ports of one process: xdist worker `gwN` draws from slice N+1, any other process from slice 0."""
    end = PORTS_END
    with contextlib.suppress(OSError, ValueError):
        end = min(end, int(EPHEMERAL_RANGE.read_text().split()[0]))
    slices = max(1, (end - PORTS_START) // PORTS_PER_SLICE)
    index = int(worker[2:]) + 1 if worker and worker.startswith("gw") and worker[2:].isdigit() else 0
    start = PORTS_START + (index % slices) * PORTS_PER_SLICE
    return range(start, start + PORTS_PER_SLICE)


def free_port() -> int:
    """A TCP port nothing holds now on any address (see PORTS_START for where it comes from).

    The process walks its slice in turn, so a port it handed out comes back only after the whole slice has:
    two calls before either port is bound (an operator's liveness and metrics ports) never get the same one.
    """
    ports = port_slice(os.environ.get("PYTEST_XDIST_WORKER"))
    with _ports_lock:
        for _ in range(len(ports)):
            port = ports[next(_ports_cursor) % len(ports)]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("0.0.0.0", port))  # held on any address (the node IP too) counts
                except OSError:
                    continue
            return port
    raise ComponentError(f"no free port left in {ports.start}-{ports.stop - 1}")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Running:
    """What `down` needs to find a started component again."""

    name: str
    pid: int
    binary: str
    log: str
    ports: list[int]
    # How it was started, so a fault test can stop it and start it again exactly as it was.
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return process_matches(self.pid, self.binary)


def process_matches(pid: int, binary: str) -> bool:
    """True if `pid` is alive and still runs `binary` (guards against pid reuse).

    A killed Go program's main thread can exit before its other threads: the process then shows as a zombie
    with an empty command line while those threads, still exiting, hold its files, its listening sockets among
    them (a port answered after `down`). It is alive until its last thread is gone (its pid cannot be reused
    while it is listed, so no command line is needed to know it is ours).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return len(os.listdir(f"/proc/{pid}/task")) > 1
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return cmdline == binary


def start(
    name: str, binary: Path, args: list[str], log_dir: Path, ports: list[int], env: dict[str, str] | None = None
) -> tuple[Running, subprocess.Popen[bytes]]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        # A session of its own: stopping the cluster signals the group, and a
        # Ctrl-C meant for pytest does not kill the control plane mid-teardown.
        process = subprocess.Popen(
            [str(binary), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return Running(name, process.pid, str(binary), str(log_path), ports, list(args), dict(env or {})), process


Probe = Callable[[], bool]


def wait_ready(running: Running, process: subprocess.Popen[bytes] | None, probe: Probe, timeout: float) -> None:
    """Poll `probe` until it passes; fail fast, naming the component, if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() if process is not None else (None if running.alive() else -1)
        if exited is not None:
            raise ComponentError(
                f"{running.name} exited with status {exited} before becoming ready; "
                f"last lines of {running.log}:\n{log_tail(Path(running.log))}"
            )
        if probe():
            return
        time.sleep(0.2)
    raise ComponentError(
        f"{running.name} not ready after {timeout:.0f}s; last lines of {running.log}:\n{log_tail(Path(running.log))}"
    )


def http_probe(url: str, context: ssl.SSLContext | None = None, expect: bytes | None = None) -> Probe:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                body: bytes = response.read()
                return response.status == 200 and (expect is None or expect in body)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    return probe


def insecure_tls() -> ssl.SSLContext:
    """For /healthz of components that serve a self-signed cert on loopback."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def stop(running: Running, grace: float = 10.0) -> None:
    if not running.alive():
        return
    _signal_group(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running.alive():
        time.sleep(0.1)
    if running.alive():
        _signal_group(running.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and running.alive():
            time.sleep(0.1)
    if running.alive():
        raise ComponentError(f"{running.name} (pid {running.pid}) survived SIGKILL")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def save_state(path: Path, components: list[Running], extra: dict[str, object]) -> None:
    path.write_text(json.dumps({"components": [asdict(c) for c in components], **extra}, indent=2))


def load_state(path: Path) -> tuple[list[Running], dict[str, object]]:
    data = json.loads(path.read_text())
    components = [Running(**c) for c in data.pop("components")]
    return components, data
