"""Launch the example training program as real ranks on loopback (shared by the trainer tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubemaas.runtime.keyring import write_keyring_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "training" / "digits_mlp.py"
KEY = bytes(range(32))
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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

    def env(self, rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in RANK_VARS and not k.startswith("KUBEMAAS_")}
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world_size),
            RANK=str(rank),
            LOCAL_RANK="0",
            OMP_NUM_THREADS="1",
            KUBEMAAS_MODEL_NAME="digits",
            KUBEMAAS_MODEL_VERSION=self.version,
            KUBEMAAS_OUTPUT_URI=f"file://{self.store}",
            KUBEMAAS_KEY_DIR=str(self.root / "keys"),
            KUBEMAAS_TERMINATION_LOG=str(self.termination(rank)),
            KUBEMAAS_DIST_TIMEOUT_SECONDS="60",
        )
        env.update(extra)
        return env


@contextmanager
def ranks(
    job: Job, world_size: int, attempt: int, args: list[str], **extra: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``world_size`` ranks of the example; kill whatever is still running on exit."""
    port = free_port()
    procs = []
    try:
        for rank in range(world_size):
            log = job.log(rank, attempt).open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(EXAMPLE), *args],
                    env=job.env(rank, world_size, port, **extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


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
