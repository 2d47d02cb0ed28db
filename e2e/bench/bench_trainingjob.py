"""TrainingJob reconcile benchmark against the running local cluster (or $KUBEMAAS_E2E_KUBECONFIG).

Run from the repository root:  .venv/bin/python e2e/bench/bench_trainingjob.py [--jobs 50]

In a fresh namespace it measures, for N TrainingJobs (Job backend, one pod each) applied at once:

* create -> Job exists and create -> Created=True, per TrainingJob (p50, p99, last), from the
  creation timestamps to the first watch event that shows each;
* the baseline: the same N Services + Jobs the builders make, created with plain API calls from this
  process (the floor a controller cannot beat: it must make the same objects);
* what the operator did meanwhile (reconciles, children applied, status writes, from its /metrics)
  and its RSS once every job is Created.

Writes e2e/bench/results/trainingjob.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "operator"))

from kubernetes import client  # noqa: E402

from e2e.cluster import control_plane  # noqa: E402
from e2e.conftest import OperatorLauncher  # noqa: E402
from e2e.kube import TRAININGJOB_API, apply_crd, create_claim, load_crds, scrape, training_job  # noqa: E402
from e2e.typed_client import Watch, body_as, new_client  # noqa: E402
from kubemaas.api.trainingjob import TrainingJob  # noqa: E402
from kubemaas.manifests import trainingjob as manifests  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
COUNTERS = ("kubemaas_reconcile_total{", "kubemaas_children_applied_total{", "kubemaas_status_writes_total{")
GROUP, VERSION, PLURAL = TRAININGJOB_API


def body(name: str) -> dict[str, Any]:
    """One small Job-backend TrainingJob: one pod, no GPU, no data, a shared key."""
    return training_job(
        name,
        replicas=1,
        resources={"cpu": "10m", "memory": "16Mi"},
        scheduling={},
        data=None,
        encryption={"keySecretRef": {"name": "shared-key"}},
        backend="Job",
    )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(quantile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def metrics(url: str) -> dict[str, float]:
    return scrape(url, *COUNTERS)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_namespace(core: client.CoreV1Api, stem: str) -> str:
    name = f"bench-{stem}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(body_as(client.V1Namespace, {"metadata": {"name": name}}))
    return name


def first_seen(
    list_fn: Callable[..., Any],
    args: tuple[Any, ...],
    expected: set[str],
    holds: Callable[[Any], bool],
    started: threading.Event,
) -> dict[str, float]:
    """Wall time at which each expected object first satisfies `holds(obj)` (a watch, from before the creates)."""
    seen: dict[str, float] = {}
    stream = Watch()
    started.set()
    for event in stream.stream(list_fn, *args, timeout_seconds=300):
        obj = event["object"]
        name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
        if name not in seen and holds(obj):
            seen[name] = time.time()
            if set(seen) >= expected:
                stream.stop()
    return seen


def created(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Created" and c["status"] == "True" for c in conditions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBEMAAS_E2E_KUBECONFIG") or str(control_plane.up().kubeconfig)
    api = new_client(kubeconfig)
    core = client.CoreV1Api(api)
    for crd in load_crds():
        apply_crd(api, crd)
    names = [f"tj-{i:03d}" for i in range(args.jobs)]

    # The baseline: the builders' Services and Jobs, created directly.
    base_ns = make_namespace(core, "raw")
    batch = client.BatchV1Api(api)
    objects = []
    for name in names:
        job = TrainingJob.parse(
            {**body(name), "metadata": {"name": name, "namespace": base_ns, "uid": str(uuid.uuid4())}}
        )
        service, indexed = manifests.headless_service(job), manifests.indexed_job(job, "v1")
        for obj in (service, indexed):
            obj["metadata"].pop("ownerReferences")
        objects.append((service, indexed))
    started = time.perf_counter()
    for service, indexed in objects:
        core.create_namespaced_service(base_ns, body_as(client.V1Service, service))
        batch.create_namespaced_job(base_ns, body_as(client.V1Job, indexed))
    baseline = time.perf_counter() - started

    ns = make_namespace(core, "tj")
    log = Path(f"/tmp/bench-trainingjob-{ns}.log")
    create_claim(api, ns, "models")
    launcher = OperatorLauncher(Path(kubeconfig), [ns], log)
    try:
        running = launcher.start()
        url = running.metrics_url
        time.sleep(2)  # kopf's initial listing
        before = metrics(url)
        ready_created, ready_jobs = threading.Event(), threading.Event()
        results: dict[str, dict[str, float]] = {}
        custom, batch_api = client.CustomObjectsApi(api), client.BatchV1Api(api)
        tj_list = (GROUP, VERSION, ns, PLURAL)
        job_names = {f"{n}-workers" for n in names}
        watchers = [
            threading.Thread(
                target=lambda: results.__setitem__(
                    "created",
                    first_seen(custom.list_namespaced_custom_object, tj_list, set(names), created, ready_created),
                )
            ),
            threading.Thread(
                target=lambda: results.__setitem__(
                    "jobs", first_seen(batch_api.list_namespaced_job, (ns,), job_names, lambda _: True, ready_jobs)
                )
            ),
        ]
        for thread in watchers:
            thread.start()
        ready_created.wait(10), ready_jobs.wait(10)
        time.sleep(0.5)
        create_at: dict[str, float] = {}
        started = time.perf_counter()
        for name in names:
            create_at[name] = time.time()
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body(name))
        creates = time.perf_counter() - started
        for thread in watchers:
            thread.join(300)
        all_done = max(results["created"].values()) - min(create_at.values())
        to_job = [results["jobs"][f"{n}-workers"] - create_at[n] for n in names]
        to_created = [results["created"][n] - create_at[n] for n in names]
        after = metrics(url)
        rss = rss_mib(running.process.pid)
    finally:
        launcher.stop()
        core.delete_namespace(ns)
        core.delete_namespace(base_ns)

    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    report = {
        "jobs": args.jobs,
        "baseline_raw_create_s": round(baseline, 2),
        "trainingjob_creates_s": round(creates, 2),
        "all_created_s": round(all_done, 2),
        "create_to_job": summary(to_job),
        "create_to_created_condition": summary(to_created),
        "operator_rss_mib": round(rss, 1),
        "operator_counters": delta,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainingjob.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print()
    print("| measure | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for key in ("create_to_job", "create_to_created_condition"):
        s = report[key]
        assert isinstance(s, dict)
        print(f"| {key} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    print(
        f"\n{args.jobs} TrainingJobs: all Created {report['all_created_s']} s after the first create "
        f"(creating them took {report['trainingjob_creates_s']} s); the same Services + Jobs created directly: "
        f"{report['baseline_raw_create_s']} s; operator RSS {report['operator_rss_mib']} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
