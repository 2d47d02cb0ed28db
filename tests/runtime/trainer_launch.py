"""Launch the example training program as real ranks on loopback (shared by the trainer tests).

Two ways, both from the runtime contract's one definition (kubemaas.contract):
- :func:`ranks`: one process per rank with RANK/WORLD_SIZE set directly (a pod with nprocPerNode 1);
- :func:`pods`: one launcher per pod, each running ``nproc_per_node`` processes under torchrun, with
  the env the operator renders for the Job backend and the command it builds (launch_command), as
  the kubelet would materialise and expand them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.processes import free_port
from kubemaas import contract
from kubemaas.contract import Rendezvous, Settings, launch_command, render
from kubemaas.runtime.keyring import write_keyring_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "training" / "digits_mlp.py"
EXAMPLE_JOB = REPO / "examples" / "trainingjob-digits.yaml"
KEY = bytes(range(32))
CONTRACT_VARS = (
    contract.RANK, contract.WORLD_SIZE, contract.LOCAL_RANK, contract.MASTER_ADDR, contract.MASTER_PORT,
    contract.JOB_COMPLETION_INDEX, contract.PET_NNODES, contract.PET_NPROC_PER_NODE, contract.PET_NODE_RANK,
    contract.PET_MASTER_ADDR, contract.PET_MASTER_PORT,
)  # fmt: skip
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def example_args() -> list[str]:
    """The args of the shipped TrainingJob example, exactly."""
    args: list[str] = yaml.safe_load(EXAMPLE_JOB.read_text())["spec"]["args"]
    return args


def kubelet_env(entries: list[dict[str, Any]], completion_index: int) -> dict[str, str]:
    """What a container of an Indexed Job's pod sees for these env entries."""
    env = {contract.JOB_COMPLETION_INDEX: str(completion_index)}  # Kubernetes sets it in every Indexed Job pod
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": contract.COMPLETION_INDEX_FIELD}}, entry
            env[entry["name"]] = str(completion_index)
    return env


def expand(words: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args (an unknown name stays as written)."""
    return [_VAR_REF.sub(lambda m: env.get(m[1], m[0]), word) for word in words]


@dataclass
class Job:
    """Files one simulated TrainingJob uses: the store, the key Secret, per-rank logs and messages."""

    root: Path
    version: str = "v1"

    def __post_init__(self) -> None:
        (self.root / "store").mkdir(parents=True, exist_ok=True)
        write_keyring_dir(self.root / "keys", {"k1": KEY}, "k1")

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def checkpoints(self) -> Path:
        return self.store / "digits" / ".checkpoints" / self.version

    def termination(self, rank: int) -> Path:
        return self.root / f"termination-{rank}.json"

    def result(self, rank: int = 0) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.termination(rank).read_text())
        return loaded

    def log(self, rank: int, attempt: int) -> Path:
        return self.root / f"rank{rank}-attempt{attempt}.log"

    def settings(self, rank: int, **extra: str) -> dict[str, str]:
        """The KUBEMAAS_* env of one rank (or pod): rendered from the contract's Settings."""
        settings = Settings(
            model_name="digits",
            model_version=self.version,
            output_uri=f"file://{self.store}",
            key_dir=self.root / "keys",
            termination_log=self.termination(rank),
            dist_timeout_seconds=60,
        )
        env = {entry["name"]: entry["value"] for entry in render(settings)}
        env.update(extra)
        return env

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARS and not k.startswith(contract.PREFIX)}
        # `python` in launch_command is the interpreter running the tests, as it is the image's in a pod.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["OMP_NUM_THREADS"] = "1"
        return env

    def env(self, rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                contract.MASTER_ADDR: "127.0.0.1",
                contract.MASTER_PORT: str(port),
                contract.WORLD_SIZE: str(world_size),
                contract.RANK: str(rank),
                contract.LOCAL_RANK: "0",
            }
        )
        env.update(self.settings(rank, **extra))
        return env


def _start(job: Job, rank: int, attempt: int, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # The kubelet gives every container a fresh termination-message file.
    job.termination(rank).unlink(missing_ok=True)
    with job.log(rank, attempt).open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def _killing(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


@contextmanager
def ranks(
    job: Job, world_size: int, attempt: int, args: list[str], rank_env: Mapping[int, Mapping[str, str]] | None = None,
    **extra: str,
) -> Iterator[list[subprocess.Popen[bytes]]]:  # fmt: skip
    """Start ``world_size`` ranks of the example; kill whatever is still running on exit."""
    with program_ranks(EXAMPLE, job, world_size, attempt, args, rank_env, **extra) as procs:
        yield procs


@contextmanager
def program_ranks(
    program: Path, job: Job, world_size: int, attempt: int, args: list[str],
    rank_env: Mapping[int, Mapping[str, str]] | None = None, /, **extra: str,
) -> Iterator[list[subprocess.Popen[bytes]]]:  # fmt: skip
    """Start ``world_size`` ranks of ``program``, a training program on the harness (kubemaas.runtime.trainer)."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with _killing(procs):
        for rank in range(world_size):
            env = job.env(rank, world_size, port, **{**extra, **(rank_env or {}).get(rank, {})})
            procs.append(_start(job, rank, attempt, [sys.executable, str(program), *args], env))
        yield procs


@contextmanager
def pods(
    job: Job, nnodes: int, nproc_per_node: int, attempt: int, args: list[str], **extra: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``nnodes`` pods of the example under the launcher; ranks and logs are per pod."""
    rendezvous = Rendezvous(
        master_addr="127.0.0.1", master_port=free_port(), nnodes=nnodes, nproc_per_node=nproc_per_node
    )
    command = launch_command(["python", str(EXAMPLE)], args, nproc_per_node)
    procs: list[subprocess.Popen[bytes]] = []
    with _killing(procs):
        for node in range(nnodes):
            pod_env = kubelet_env(render(Settings.model_validate(job.settings(node, **extra)), rendezvous), node)
            env = {**job.base_env(), **pod_env}
            procs.append(_start(job, node, attempt, expand(command, env), env))
        yield procs


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def log_text(job: Job, rank: int, attempt: int) -> str:
    path = job.log(rank, attempt)
    return path.read_text(errors="replace") if path.exists() else ""
