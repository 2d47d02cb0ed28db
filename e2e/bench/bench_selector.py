"""Selector resolution: what a ModelService with `trainingJobSelector` costs the event loop among many TrainingJobs.

Run from the repository root:  .venv/bin/python e2e/bench/bench_selector.py   (no cluster; a few seconds)

Two costs, each measured two ways on the same indexes (built by the operator's own indexers from synthetic
Succeeded TrainingJobs):

* one reconcile of the ModelService (`modelservice.reconcile` with a fake API), given N jobs in its namespace
  of which K match its selector;
* one TrainingJob event reaching the ModelService controller (`ms_training_job_changed`) with M ModelServices
  in the namespace, each selecting its own team's jobs: which of them it reconciles, and how long deciding
  that takes.

"index": the jobs come from the index by label (`training_jobs_for`) and the ModelServices an event concerns
from `ms_by_source`. "scan": the code before that, kept below as the reference: every job of the namespace
handed to the core, and every ModelService of the index visited per event, each scanning the jobs for the
one that changed. Writes e2e/bench/results/selector.json and prints a markdown table.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from kubemaas.api import ModelService  # noqa: E402
from kubemaas.api.core import LabelSelector  # noqa: E402
from kubemaas.controllers import modelservice as handlers  # noqa: E402
from tests.controllers.fakes import FakeKube, index, indexed  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
NS, STORE = "serving", "pvc://models/store"


def job(i: int, team: str) -> dict[str, Any]:
    name = f"train-{i:05d}"
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{i}", "labels": {"team": team}},
        "spec": {
            "output": {"uri": STORE, "modelName": team},
            "encryption": {"keySecretRef": {"name": f"{name}-key"}},
        },
        "status": {
            "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}],
            "completionTime": f"2026-11-29T{10 + i // 3600 % 10:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "model": {"uri": f"{STORE}/{team}/v{i}", "version": f"v{i}", "metrics": {"heldOutAccuracy": "0.9"}},
        },
    }


def modelservice(name: str, team: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "7"},
        "spec": {"model": {"trainingJobSelector": {"matchLabels": {"team": team}}}},
    }


def indexes(services: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: index() for name in handlers.INDEXERS}
    out["ms_bodies"] = indexed(handlers.ms_bodies, *services)
    out["ms_by_source"] = indexed(handlers.ms_by_source, *services)
    out["ms_training_jobs"] = indexed(handlers.ms_training_jobs, *jobs)
    return out


# --------------------------------------------------------------------------- the code before, as reference


def scan_jobs(index: Any, namespace: str, ms: ModelService) -> list[dict[str, Any]]:
    """Before: every TrainingJob of the namespace, for the core to filter."""
    return handlers._values(index, (namespace,))


async def scan_event(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    """Before: every ModelService of the index visited, each with a selector scanning the namespace's jobs."""
    for key in list(kwargs["ms_bodies"]):
        if key[0] != namespace:
            continue
        for body in handlers._values(kwargs["ms_bodies"], key):
            if _refers_to(body, name, kwargs):
                await handlers._run(key, memo, kwargs)


def _refers_to(body: Mapping[str, Any], job_name: str, kwargs: Mapping[str, Any]) -> bool:
    model = body.get("spec", {}).get("model", {})
    if (model.get("trainingJobRef") or {}).get("name") == job_name:
        return True
    selector = LabelSelector.model_validate(model["trainingJobSelector"])
    jobs = handlers._values(kwargs["ms_training_jobs"], (body["metadata"]["namespace"],))
    found = next((j for j in jobs if j["metadata"]["name"] == job_name), None)
    return found is None or selector.matches((found or {}).get("metadata", {}).get("labels") or {})


@contextmanager
def mode(name: str) -> Iterator[Callable[..., Any]]:
    """The job lookup and the event handler of `name` ("index" or "scan")."""
    saved = handlers.training_jobs_for
    if name == "scan":
        handlers.training_jobs_for = scan_jobs
    try:
        yield scan_event if name == "scan" else handlers.ms_training_job_changed
    finally:
        handlers.training_jobs_for = saved


# --------------------------------------------------------------------------- measurements


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of `fn` over `repeat` runs (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(samples), 3)


def reconcile_ms(n: int, k: int, how: str) -> float:
    """One reconcile of a ModelService whose selector matches k of n jobs."""
    jobs = [job(i, "digits" if i < k else f"team-{i % 50}") for i in range(n)]
    ms = modelservice("digits", "digits")
    kwargs = indexes([ms], jobs)
    memo = {"kube": FakeKube(), "triton_image": "triton:1"}
    loop = asyncio.new_event_loop()
    with mode(how):
        try:
            return timed(lambda: loop.run_until_complete(handlers.reconcile((NS, "digits"), memo, kwargs)), 15)
        finally:
            loop.close()


def event_dispatch(n: int, m: int, how: str) -> tuple[float, int]:
    """One TrainingJob event with m ModelServices (one team each) and n jobs spread over the m teams: the
    milliseconds to decide which ModelServices to reconcile (the reconciles themselves stubbed out), and
    how many were chosen."""
    jobs = [job(i, f"team-{i % m}") for i in range(n)]
    services = [modelservice(f"ms-{t}", f"team-{t}") for t in range(m)]
    kwargs = indexes(services, jobs)
    chosen: list[Any] = []

    async def count(key: Any, memo: Any, kwargs: Any) -> None:
        chosen.append(key)

    saved = handlers._run
    handlers._run = count
    loop = asyncio.new_event_loop()
    try:
        with mode(how) as handler:
            ms = timed(lambda: loop.run_until_complete(handler(namespace=NS, name="train-00007", memo={}, **kwargs)), 9)
    finally:
        handlers._run = saved
        loop.close()
    return ms, len(chosen) // 10  # warm-up + 9 runs


def main() -> int:
    rows: list[dict[str, Any]] = []
    for n, k in ((1000, 1000), (5000, 5000), (1000, 10), (5000, 10)):
        for how in ("scan", "index"):
            rows.append({"what": "reconcile", "jobs": n, "matching": k, "how": how, "ms": reconcile_ms(n, k, how)})
            print(rows[-1], flush=True)
    for n, m in ((1000, 100), (5000, 1000)):
        for how in ("scan", "index"):
            ms, chosen = event_dispatch(n, m, how)
            rows.append({"what": "job event", "jobs": n, "modelservices": m, "how": how, "ms": ms, "chosen": chosen})
            print(rows[-1], flush=True)
    info = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "selector.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    print("| what | jobs | matching / ModelServices | scan ms | index ms |\n|---|---|---|---|---|")
    for scan, by_index in zip(rows[::2], rows[1::2], strict=True):
        other = scan.get("matching", scan.get("modelservices"))
        print(f"| {scan['what']} | {scan['jobs']} | {other} | {scan['ms']} | {by_index['ms']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
