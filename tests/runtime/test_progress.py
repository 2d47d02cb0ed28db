"""Rank 0's progress document and its endpoint (the operator reads it: docs/runtime-contract.md §10)."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.processes import free_port
from kubemaas import contract
from kubemaas.runtime.progress import Progress, ProgressServer

from .trainer_launch import Job, log_text, ranks, wait_all, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rates_eta_and_checkpoint_follow_the_reports() -> None:
    clock = Clock()
    progress = Progress(clock)
    assert progress.snapshot() == {}
    for step in range(1, 11):
        progress.report(step, 100, loss=2.0 / step, samples=64, metrics={"accuracy": 0.5, "bad": float("nan")})
        clock.now += 0.5
    clock.now -= 0.5
    doc = progress.snapshot()
    assert (doc["step"], doc["totalSteps"]) == (10, 100)
    assert doc["stepsPerSecond"] == pytest.approx(2.0)
    assert doc["samplesPerSecond"] == pytest.approx(128.0)
    assert doc["etaSeconds"] == pytest.approx(45.0)
    assert doc["loss"] == pytest.approx(0.2) and doc["metrics"] == {"accuracy": 0.5}
    assert doc["updateTime"] == "2027-01-15T08:00:04Z"
    progress.checkpointed(10)
    assert progress.snapshot()["lastCheckpoint"] == {"step": 10, "time": "2027-01-15T08:00:04Z"}
    # A restart from an older checkpoint starts a new pace instead of a negative one.
    clock.now += 10
    progress.report(5, 100)
    assert "stepsPerSecond" not in progress.snapshot() and progress.snapshot()["step"] == 5


def test_the_endpoint_serves_the_snapshot_and_nothing_else() -> None:
    progress = Progress()
    progress.report(3, 30, loss=1.5)
    server = ProgressServer(progress, 0, host="127.0.0.1").start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/progress", timeout=5) as answer:
            assert json.loads(answer.read())["step"] == 3
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5)
        assert missing.value.code == 404
    finally:
        server.close()


@pytest.mark.torch
def test_the_example_reports_its_steps_while_it_trains(tmp_path: Path) -> None:
    job = Job(tmp_path)
    port = free_port()
    seen: list[dict[str, object]] = []

    def poll() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as answer:
                doc = json.loads(answer.read())
        except OSError:
            return False
        if doc and (not seen or doc["step"] != seen[-1]["step"]):
            seen.append(doc)
        return len(seen) >= 3

    env = {contract.PROGRESS_PORT: str(port), contract.CHECKPOINT_EVERY: "50"}
    with ranks(job, 1, attempt=0, args=["--steps", "4000"], rank_env={0: env}) as procs:
        wait_for(poll, timeout=180, what="three distinct progress reports")
        procs[0].terminate()
        wait_all(procs, timeout=60)
    steps = [int(str(d["step"])) for d in seen]
    assert steps == sorted(steps) and len(set(steps)) == 3, log_text(job, 0, 0)
    assert all(d["totalSteps"] == 4000 for d in seen)
    assert "loss" in seen[-1] and "etaSeconds" in seen[-1]


@pytest.mark.torch
def test_a_restarted_rank_continues_the_step_count_from_its_checkpoint(tmp_path: Path) -> None:
    """Preempted at some step, restarted: the first step rank 0 reports is past the checkpoint, never from 0."""
    job = Job(tmp_path)
    port = free_port()
    env = {contract.PROGRESS_PORT: str(port), contract.CHECKPOINT_EVERY: "1000000"}
    args = ["--steps", "100000"]

    def report() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as answer:
                doc: dict[str, Any] = json.loads(answer.read())
        except OSError:
            return None
        return doc or None

    with ranks(job, 1, attempt=0, args=args, rank_env={0: env}) as procs:
        wait_for(lambda: (r := report()) is not None and r["step"] >= 200, timeout=180, what="step 200")
        procs[0].send_signal(signal.SIGTERM)  # checkpoint at the step reached, exit 143
        assert wait_all(procs, timeout=60) == [143], log_text(job, 0, 0)
    checkpointed = int(job.result(0)["message"].split("terminated at step ")[1].split(";")[0])
    assert checkpointed >= 200

    first: list[dict[str, Any]] = []

    def reported() -> bool:
        found = report()
        if found is not None:
            first.append(found)
        return bool(first)

    with ranks(job, 1, attempt=1, args=args, rank_env={0: env}) as procs:
        wait_for(reported, timeout=180, what="a report after the restart")
        procs[0].send_signal(signal.SIGKILL)
        wait_all(procs, timeout=60)
    assert first[0]["step"] > checkpointed, (first[0], checkpointed)
    assert first[0]["lastCheckpoint"]["step"] == checkpointed  # the checkpoint it resumed from
