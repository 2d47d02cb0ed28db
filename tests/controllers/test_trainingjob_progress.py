"""status.progress: rank 0's report read at most every 10 s, parsed as untrusted input, Stalled when it stops."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemaas.api.trainingjob import TrainingJob
from kubemaas.controllers import trainingjob_core as core
from kubemaas.controllers.conditions import find_condition
from kubemaas.controllers.progress_reader import ProgressReader, Reading
from kubemaas.controllers.trainingjob_progress import PROGRESS_INTERVAL, duration, progress_from

T0 = datetime(2026, 11, 29, 21, 30, 10, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def report(step: int = 120, at: datetime = T0, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "totalSteps": 300,
        "loss": 0.4123456789,
        "metrics": {"accuracy": 0.875},
        "samplesPerSecond": 640.5,
        "stepsPerSecond": 10.0,
        "etaSeconds": 95.0,
        "lastCheckpoint": {"step": 100, "time": iso(at - timedelta(seconds=2))},
        "updateTime": iso(at),
        **extra,
    }


def test_a_report_becomes_status_progress() -> None:
    progress = progress_from(report())
    assert progress is not None
    assert progress.to_wire() == {
        "step": 120,
        "totalSteps": 300,
        "percent": 40,
        "loss": "0.412346",
        "metrics": {"accuracy": "0.875"},
        "samplesPerSecond": "640.5",
        "eta": "2026-11-29T21:31:45Z",
        "lastCheckpoint": {"step": 100, "time": "2026-11-29T21:30:08Z"},
        "updateTime": "2026-11-29T21:30:10Z",
        "summary": "120/300 (40%), ETA 1m35s",
    }
    assert [duration(timedelta(seconds=s)) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


@pytest.mark.parametrize(
    "bad",
    [
        {"step": "120"},
        {"step": -1},
        {"step": True},
        {"totalSteps": None},
        {"updateTime": "yesterday"},
        {"updateTime": "2026-11-29T21:30:10"},  # no time zone
    ],
)
def test_a_report_that_is_not_one_is_ignored(bad: dict[str, Any]) -> None:
    assert progress_from(report(**bad)) is None


def test_what_cannot_be_shown_is_left_out_not_failed() -> None:
    metrics = {f"m{i:02d}": float(i) for i in range(40)} | {"bad name!": 1.0, "nan": float("nan")}
    progress = progress_from(report(loss=float("inf"), metrics=metrics, etaSeconds=-5, lastCheckpoint="x"))
    assert progress is not None
    assert progress.loss is None and progress.eta is None and progress.last_checkpoint is None
    assert progress.metrics is not None and len(progress.metrics) == 16 and "bad name!" not in progress.metrics
    assert progress.summary == "120/300 (40%)"


def running_job(**run_policy: Any) -> TrainingJob:
    return TrainingJob.parse(
        {
            "apiVersion": "kubemaas.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {
                "name": "digits",
                "namespace": "team-a",
                "uid": "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b",
                "generation": 1,
                "creationTimestamp": "2026-11-29T21:30:05Z",
            },
            "spec": {
                "image": "kubemaas/trainer:0.1.0",
                "output": {"uri": "pvc://models/store"},
                "encryption": {"keySecretRef": {"name": "digits-key"}},
                "runPolicy": run_policy,
            },
            "status": {"backend": "PyTorchJob"},
        }
    )


WORKLOAD = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "digits", "namespace": "team-a"},
    "status": {"conditions": [{"type": "Running", "status": "True", "reason": "Running"}]},
}


def observed(
    progress: Mapping[str, Any] | None, workload: Mapping[str, Any] = WORKLOAD, read_in: float | None = None
) -> core.Observed:
    return core.Observed(pytorchjob_served=True, workload=workload, progress=progress, progress_read_in=read_in)


def stalled(desired: core.Desired) -> tuple[str, str] | None:
    found = find_condition(desired.status.conditions, "Stalled")
    return None if found is None else (found.status.value, found.reason)


def test_a_running_job_shows_its_progress_and_runs_again_when_the_next_read_is_due() -> None:
    desired = core.reconcile(running_job(), observed(report(), read_in=7.0), T0 + timedelta(seconds=3))
    assert desired.status.progress is not None and desired.status.progress.step == 120
    assert desired.requeue_after == 7.0  # when the next read is due
    # A read under way wakes the job itself: no requeue on top of it.
    assert core.reconcile(running_job(), observed(report()), T0).requeue_after is None
    assert stalled(desired) == ("False", "Progressing")
    # No report (yet, or the pod did not answer): nothing invented, nothing taken away.
    assert core.reconcile(running_job(), observed(None), T0).status.progress is None
    assert stalled(core.reconcile(running_job(), observed(None), T0)) is None


def test_no_new_step_for_the_stall_timeout_is_stalled() -> None:
    job = running_job(stallTimeoutSeconds=600)
    assert stalled(core.reconcile(job, observed(report()), T0 + timedelta(seconds=599))) == ("False", "Progressing")
    late = core.reconcile(job, observed(report()), T0 + timedelta(seconds=601))
    assert stalled(late) == ("True", "NoProgress")
    found = find_condition(late.status.conditions, "Stalled")
    assert found is not None and "last at step 120 of 300" in found.message
    # A new step clears it.
    fresh = report(step=121, at=T0 + timedelta(seconds=600))
    assert stalled(core.reconcile(job, observed(fresh), T0 + timedelta(seconds=601))) == ("False", "Progressing")


def test_a_finished_job_is_not_read_again_and_keeps_its_last_progress() -> None:
    job = running_job()
    job = with_status(job, core.reconcile(job, observed(report()), T0).status.to_wire())
    done = dict(WORKLOAD)
    done["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "Failed"}]}
    finished = core.reconcile(job, observed(report(step=130), done), T0 + timedelta(seconds=20))
    assert finished.requeue_after is None
    assert finished.status.progress is not None and finished.status.progress.step == 120


def with_status(job: TrainingJob, status: dict[str, Any]) -> TrainingJob:
    body = job.to_wire()
    body["metadata"] = job.metadata.model_dump(mode="json", exclude_none=True)
    body["status"] = status
    return TrainingJob.parse(body)


class FakePod(ProgressReader):
    """A reader whose pod answers with a new step on every request, and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(clock=lambda: self.now)
        self.requests = 0

    async def fetch(self, url: str) -> Mapping[str, Any] | None:
        self.requests += 1
        assert url == "http://198.18.0.7:9400/progress"
        return report(step=self.requests, at=T0 + timedelta(seconds=self.now))


def test_status_changes_at_most_once_per_ten_seconds_whatever_triggers_the_reconcile() -> None:
    """Reconciles every 0.5 s (pod events, requeues) for 120 s: the pod is read in the background, and
    status.progress changes (the only thing that would be written), at most once per PROGRESS_INTERVAL; a new
    report wakes the job at once; after a restart the pod is read at once."""
    key = ("team-a", "digits")

    async def scenario(reader: FakePod) -> list[float]:
        job = running_job()
        last = core.reconcile(job, observed(None), T0).status.to_wire()  # the job as it was before any report
        job, writes = with_status(job, last), []
        woken: list[float] = []
        for tick in range(240):
            reader.now = tick * 0.5
            passes = 0
            while passes == 0 or (woken and woken[-1] == reader.now and passes < 2):  # a tick, then its wake
                passes += 1
                got = reader.read(key, "198.18.0.7", 9400, lambda delay: woken.append(reader.now + delay))
                await reader.settled()  # here a read takes no time
                now = T0 + timedelta(seconds=reader.now)
                status = core.reconcile(job, observed(got.report, read_in=got.next_read_in), now).status.to_wire()
                if status != last:
                    writes.append(reader.now)
                    last = status
                    job = with_status(job, status)  # what the API server holds after the write
        assert woken == writes  # each report woke the job, and its pass wrote it
        return writes

    reader = FakePod()
    writes = asyncio.run(scenario(reader))
    assert reader.requests == 12 and len(writes) == 12  # every read brought a new step, and one write
    assert all(b - a >= PROGRESS_INTERVAL for a, b in itertools.pairwise(writes)), writes

    async def restart(reader: FakePod) -> None:
        reader.now = 5.0
        assert reader.read(key, "198.18.0.7", 9400, lambda delay: None).report is None  # nothing invented
        await reader.settled()

    restarted = FakePod()
    asyncio.run(restart(restarted))
    assert restarted.requests == 1  # an operator restart reads the pod at once: nothing stale


def test_the_handler_reads_the_running_rank_0_pod_of_its_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubemaas.controllers import trainingjob as handlers

    reader = FakePod()
    monkeypatch.setattr(handlers, "PROGRESS", reader)
    key = ("team-a", "digits")

    def pod(index: int, phase: str, ip: str | None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": phase, **({"podIP": ip} if ip else {})}
        annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
        return {"metadata": {"name": f"digits-workers-{index}", "annotations": annotations}, "status": status}

    async def scenario() -> Mapping[str, Any] | None:
        woken: list[float] = []
        assert handlers._progress(key, [pod(0, "Pending", None), pod(1, "Running", "198.18.0.8")], woken.append) is None
        await reader.settled()
        assert reader.requests == 0  # only rank 0 is asked, and only once it runs
        pods = [pod(1, "Running", "198.18.0.8"), pod(0, "Running", "198.18.0.7")]
        first = handlers._progress(key, pods, woken.append)
        assert first is not None and first.report is None and first.next_read_in is None  # no waiting for the pod
        await reader.settled()
        assert woken == [0.0] and reader.requests == 1  # the report wakes the job at once
        second = handlers._progress(key, pods, woken.append)
        assert second is not None and second.next_read_in == PROGRESS_INTERVAL
        return second.report

    found = asyncio.run(scenario())
    assert found is not None and found["step"] == 1
    assert stalled(core.reconcile(running_job(), observed(found), T0)) == ("False", "Progressing")
    late = core.reconcile(running_job(stallTimeoutSeconds=60), observed(found), T0 + timedelta(hours=1))
    stall = find_condition(late.status.conditions, "Stalled")
    assert stall is not None and core.WARNINGS(stall)  # a Warning Event, as Failed


class SilentPod(FakePod):
    async def fetch(self, url: str) -> Mapping[str, Any] | None:
        self.requests += 1
        return None


def test_a_pod_that_does_not_answer_costs_a_reconcile_per_read_and_ever_fewer_reads() -> None:
    """A program that reports no progress (or a pod out of reach): the job runs only when a read is due, after
    20 s, 40 s, ... at most 320 s; nothing else requeues it."""
    key = ("team-a", "digits")

    async def scenario(reader: SilentPod) -> list[float]:
        runs: list[float] = []
        due = [0.0]

        def wake(delay: float) -> None:
            due.append(reader.now + delay)

        while min(due) < 1200:
            reader.now = min(due)
            due[:] = [t for t in due if t != reader.now]
            runs.append(reader.now)
            reading = reader.read(key, "198.18.0.7", 9400, wake)
            observed_now = observed(reading.report, read_in=reading.next_read_in)
            desired = core.reconcile(running_job(), observed_now, T0 + timedelta(seconds=reader.now))
            if desired.requeue_after is not None:
                due.append(reader.now + desired.requeue_after)
            await reader.settled()
            assert reading.report is None and desired.status.progress is None
        return runs

    reader = SilentPod()
    runs = asyncio.run(scenario(reader))
    assert runs == [0, 20, 60, 140, 300, 620] + [620 + 320 * i for i in range(1, 2)]
    assert reader.requests == len(runs)


def test_a_new_rank_0_pod_is_read_at_once_whatever_backoff_its_predecessor_earned() -> None:
    """Rank 0 restarted (a new pod, another IP): while the pods were replaced the old address did not answer and
    earned a backoff, but the new pod is asked at once and its report, continuing the step count, is shown."""
    key = ("team-a", "digits")

    class ReplacedPod(FakePod):
        async def fetch(self, url: str) -> Mapping[str, Any] | None:
            self.requests += 1
            if "198.18.0.7" in url:  # the old pod: gone
                return None
            return report(step=500, at=T0 + timedelta(seconds=self.now))

    async def scenario(reader: ReplacedPod) -> Reading:
        for now in (0.0, 20.0, 60.0):  # three failed reads: the next is due 80 s later
            reader.now = now
            reader.read(key, "198.18.0.7", 9400, lambda delay: None)
            await reader.settled()
        reader.now = 61.0
        assert reader.read(key, "198.18.0.7", 9400, lambda delay: None).next_read_in == 79.0
        woken: list[float] = []
        reader.read(key, "198.18.0.9", 9400, woken.append)  # the new rank 0
        await reader.settled()
        assert reader.requests == 4 and woken == [0.0]
        return reader.read(key, "198.18.0.9", 9400, woken.append)

    reading = asyncio.run(scenario(ReplacedPod()))
    assert reading.report is not None and reading.report["step"] == 500
    assert reading.next_read_in == PROGRESS_INTERVAL  # and the normal pace from there


def test_the_reader_closes_with_reads_in_flight() -> None:
    class HangingPod(FakePod):
        async def fetch(self, url: str) -> Mapping[str, Any] | None:
            self.requests += 1
            await asyncio.sleep(3600)
            return None

    async def scenario() -> None:
        reader = HangingPod()
        reader.read(("team-a", "digits"), "198.18.0.7", 9400, lambda delay: None)
        await asyncio.sleep(0)
        assert reader.requests == 1
        await asyncio.wait_for(reader.close(), timeout=5)
        await asyncio.wait_for(reader.settled(), timeout=5)

    asyncio.run(scenario())
