"""Reconcile benchmark: the operator against the API server's own round trips, on the local control plane.

Run from the repository root:  make bench-reconcile   (or .venv/bin/python e2e/bench/bench_reconcile.py
--n 100 500 1000 --rest-seconds 600; a quick look: --n 300 --tj-max 100 --rest-seconds 60). It uses the
running local cluster (`python -m e2e.cluster up`) and only its own namespaces (`bench-*`, deleted
afterwards); the operator it starts watches only those.

For each N, in one run and on the same cluster:

* ModelService: N ModelServices created at once (16 concurrent creates), measured until every child
  (Deployment, Service) exists and every status is written (status.observedGeneration), from watches.
* Baseline: the same N ModelServices in another namespace with no operator watching it, and this script
  writing exactly the children and status the operator would (bodies from the operator's own pure core and
  `kubemaas.manifests` builders, server-side apply through the operator's own `Kube` client: same library,
  same 16-thread concurrency), each object's writes starting as soon as its create returned. This is the
  physical limit: the API round trips without watches, indexes or kopf.
* TrainingJob -> PyTorchJob through Kubemaas, and the peer: the Kubeflow training operator (Go,
  controller-runtime) on the same cluster turning the same number of PyTorchJobs (the bodies Kubemaas made)
  into pods.

Per phase: total seconds, ratio to the baseline, p50/p99 create -> child exists, API requests per object by
verb and resource (apiserver_request_total deltas, scraped with the admin client cert; the cluster is shared,
so other clients' requests in the same window are included), operator CPU seconds and peak RSS (psutil).
Then the objects at rest: the operator's own write counters per minute (target 0), the API server's write
counts for our resources, and RSS.

At rest, besides, the write rate of progress (docs/runtime-contract.md §10), per group of parents, from watches
(e2e/bench/write_rate.py): TrainingJobs whose rank 0 answers GET /progress with an advancing step
(--progress-jobs; their pods sit in a `bench-loopback-*` namespace, where kwok gives pods the IP 127.0.0.1, and
this process serves rank 0 there with the harness's own kubemaas.runtime.progress: at most one write per 10 s
each), TrainingJobs that reported progress and then succeeded (--finished-jobs: none), the N TrainingJobs whose
kwok pods have IPs no one answers on (none), and every other parent (none). A group over its limit, or a
reporting job never written in the window, fails the run (exit 1) after the results are written. The API
server refuses loopback endpoints: for about 3 minutes after the loopback pods start, the controller-manager's
Endpoints controller retries their Kubeflow Services with a Warning Event each time (16 per Service), which
the window's API server event writes include. A quick look: --n 100 --tj-max 100 --rest-seconds 180
--no-baseline --no-peer --out reconcile-progress-100.

ModelServices are created with `replicas: 0`: the benchmark measures the operator's reconcile, not
controller-manager and kwok running pods (which the shared cluster has no capacity for at N=500).
Writes e2e/bench/results/reconcile.json and reconcile.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, config

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from e2e.bench.write_rate import (  # noqa: E402
    LOOPBACK_NAMESPACE_PREFIX,
    LOOPBACK_POD_IP,
    GroupWrites,
    Write,
    failures,
    group_writes,
)
from e2e.cluster import control_plane  # noqa: E402
from e2e.cluster.nodes import KWOK_ANNOTATION  # noqa: E402
from e2e.conftest import PSS_RESTRICTED, OperatorLauncher  # noqa: E402
from e2e.kube import (  # noqa: E402
    OUTCOME_LABEL,
    STATUS_ONLY_JOB,
    TERMINATION_MESSAGE_ANNOTATION,
    apiserver_requests,
    apply_crd,
    bound_claim,
    load_crds,
    model_service,
    requests_between,
    training_job,
)
from e2e.typed_client import Watch, as_json, body_as, json_object  # noqa: E402
from e2e.waits import condition_is, wait_for_objects  # noqa: E402
from kubemaas.api import ModelService  # noqa: E402
from kubemaas.contract import environment as contract  # noqa: E402
from kubemaas.contract.published import version_uri  # noqa: E402
from kubemaas.contract.termination import SuccessMessage  # noqa: E402
from kubemaas.controllers import modelservice as ms_controller  # noqa: E402
from kubemaas.controllers import modelservice_core as ms_core  # noqa: E402
from kubemaas.controllers.apply import Kube  # noqa: E402
from kubemaas.controllers.conditions import utc_now  # noqa: E402
from kubemaas.controllers.trainingjob_progress import PROGRESS_INTERVAL  # noqa: E402
from kubemaas.manifests.labels import parent_label  # noqa: E402
from kubemaas.runtime.progress import Progress, ProgressServer  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
GROUP, VERSION = "kubemaas.io", "v1alpha1"
CREATE_CONCURRENCY = 16
STORE = "pvc://models/store"
PYTORCHJOB_POD_LABEL = "training.kubeflow.org/job-name"
PHASE_TIMEOUT = 900.0
# py-spy (not a project dependency: `pip install py-spy` into any venv and pass --py-spy PATH) samples the
# operator during the Kubemaas ModelService phase into results/<out>-<N>.profile.txt (collapsed stacks).
PROFILER: dict[str, Any] = {}


@dataclass
class Phase:
    name: str
    n: int
    seconds: float  # first create sent -> last child and status seen
    p50_ms: float  # create sent -> the primary child (Deployment, PyTorchJob, pods) exists
    p99_ms: float
    requests_per_object: dict[str, float]  # "VERB resource[/sub]" -> requests / N, over the phase
    operator_cpu_seconds: float | None = None
    operator_peak_rss_mb: float | None = None
    ratio_to_baseline: float | None = None
    settled_rss_mb: float | None = None  # the operator's RSS once it ran no reconcile for 5 s after the phase
    load_average: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))  # 1 min, at the phase's end


@dataclass
class Rest:
    objects: int
    seconds: float
    operator_writes_per_minute: float  # the operator's own counters: children applied + status patches
    parents_written: int  # ModelServices/TrainingJobs whose resourceVersion changed (kopf's annotations too)
    apiserver_writes_per_minute: dict[str, float]
    operator_rss_mb: float
    # WATCH requests in the window for the kinds the operator watches: for the parents (only this operator
    # watches kubemaas.io kinds) that is its watch reconnects; the children's include other clients'.
    watch_requests: dict[str, int]
    # The writes of each group of parents in the window, from watches, against the group's limit
    # (e2e/bench/write_rate.py); operator_writes_per_minute and parents_written include the reporting group's.
    groups: list[GroupWrites] = field(default_factory=list)
    limit_failures: list[str] = field(default_factory=list)  # empty: every group within its limit
    rank0_steps_per_second: float | None = None  # the pace of the loopback rank 0 the reporting jobs read


@dataclass
class Run:
    n: int
    phases: list[Phase] = field(default_factory=list)
    rest: Rest | None = None
    notes: list[str] = field(default_factory=list)  # what differs from the plain order of phases, and why


# --------------------------------------------------------------------------- cluster access


class Bench:
    def __init__(self, cluster: control_plane.Cluster) -> None:
        self.cluster = cluster
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        # The creators (16 threads), the baseline's Kube (16) and the watches share one pool: no waiting on it.
        configuration.connection_pool_maxsize = 48
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.made_volumes: list[str] = []

    def requests(self) -> Counter[tuple[str, str, str]]:
        return apiserver_requests(self.cluster.api_port, self.cluster.root / "pki")

    def namespace(self, stem: str) -> str:
        name = f"bench-{stem}-{uuid.uuid4().hex[:5]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=PSS_RESTRICTED)))
        return name

    def claim(self, namespace: str, name: str) -> None:
        volume = {"hostPath": {"path": f"/tmp/kubemaas-bench/{namespace}-{name}"}}
        self.made_volumes.append(bound_claim(self.api, namespace, name, volume))

    def serving_namespace(self, stem: str) -> tuple[str, dict[str, Any]]:
        """A namespace with the store claim, a key Secret and a TrainingJob that published v1."""
        namespace = self.namespace(stem)
        self.claim(namespace, "models")
        secret = {"metadata": {"name": "digits-key"}, "stringData": {"active": "k1"}}
        self.core.create_namespaced_secret(namespace, body_as(client.V1Secret, secret))
        job = training_job("digits", **STATUS_ONLY_JOB)
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", job)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "conditions": [
                {"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "", "lastTransitionTime": now}
            ],
            "completionTime": now,
            "model": {"uri": f"{STORE}/digits/v1", "version": "v1", "sha256": "0" * 64, "keyId": "k1"},
        }
        published = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "trainingjobs", "digits", {"status": status}
        )
        return namespace, json_object(published)

    def cleanup(self, namespaces: list[str]) -> None:
        for namespace in namespaces:
            try:
                self.core.delete_namespace(namespace)
            except client.ApiException as error:
                if error.status != 404:
                    raise
        # The garbage collector deletes a namespace's objects one by one: the next phase must not be timed
        # while the API server is still busy with the last one's N ModelServices and their children.
        wait_for_objects(
            self.api,
            "v1",
            "Namespace",
            None,
            lambda found: not any(ns in found for ns in namespaces),
            what=f"namespaces {', '.join(namespaces)} to be deleted",
            timeout=PHASE_TIMEOUT,
        )
        for pv in [v for v in self.made_volumes if v.startswith(tuple(namespaces))]:
            self.made_volumes.remove(pv)
            try:
                self.core.delete_persistent_volume(pv)
            except client.ApiException as error:
                if error.status != 404:
                    raise


# --------------------------------------------------------------------------- first-seen times from watches


class FirstSeen:
    """Watches one kind in one namespace and records, per key, the wall time `key_of(obj)` first held."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        namespace: str,
        key_of: Callable[[dict[str, Any]], str | None],
        label_selector: str | None = None,
    ) -> None:
        self.list_fn, self.namespace, self.key_of, self.label_selector = list_fn, namespace, key_of, label_selector
        self.times: dict[str, float] = {}
        self.counts: Counter[str] = Counter()  # for keys that need several objects (pods of one job)
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FirstSeen:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            w = Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 30}
                if self.label_selector:
                    kwargs["label_selector"] = self.label_selector
                for event in w.stream(self.list_fn, self.namespace, **kwargs):
                    now = time.time()
                    obj = event["object"]
                    raw = obj if isinstance(obj, dict) else as_json(client.ApiClient(), obj)
                    key = self.key_of(raw)
                    uid = raw["metadata"]["uid"]
                    if key is not None and uid not in self._seen:
                        self._seen.add(uid)
                        self.counts[key] += 1
                        self.times.setdefault(f"{key}#{self.counts[key]}", now)
                    with self._changed:
                        self._changed.notify_all()
                    if self._stop.is_set():
                        w.stop()
            except Exception:  # a watch ended by the server or a reset: watch again
                time.sleep(0.2)

    def wait(self, want: Callable[[FirstSeen], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not want(self):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out after {timeout:.0f}s; seen {len(self.times)}")
                self._changed.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    def first(self, key: str, count: int = 1) -> float | None:
        return self.times.get(f"{key}#{count}")


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _status_written(obj: dict[str, Any]) -> str | None:
    status = obj.get("status") or {}
    return _name(obj) if status.get("observedGeneration") or status.get("conditions") else None


class ParentWrites:
    """Every write to the parents of one kind in one namespace, from a watch that starts at a LIST's version
    and resumes from the last event's: "namespace/name" -> [(wall time, status.progress.step)], one per
    MODIFIED."""

    def __init__(self, bench: Bench, plural: str, namespace: str) -> None:
        self.plural, self.namespace, self._custom = plural, namespace, bench.custom
        listed = json_object(self._list(namespace))
        self.keys = {f"{namespace}/{o['metadata']['name']}" for o in listed["items"]}  # the parents at the start
        self._version = str(listed["metadata"]["resourceVersion"])
        self._writes: dict[str, list[Write]] = {}
        self._lock = threading.Lock()
        # A watch that could not resume (410 Gone: its version was compacted) may have missed writes: the
        # counts are then a lower bound, and the run says so instead of passing on them.
        self.resumed_after_gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _list(self, namespace: str, **kwargs: Any) -> Any:
        return self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, **kwargs)

    def _run(self) -> None:
        while not self._stop.is_set():
            w = Watch()
            try:
                for event in w.stream(self._list, self.namespace, resource_version=self._version, timeout_seconds=30):
                    now, obj = time.time(), event["object"]  # an ERROR event (410 Gone) raises ApiException
                    meta = obj["metadata"]
                    self._version = str(meta["resourceVersion"])
                    if event["type"] == "MODIFIED":
                        step = ((obj.get("status") or {}).get("progress") or {}).get("step")
                        write = (now, step if isinstance(step, int) else None)
                        with self._lock:
                            self._writes.setdefault(f"{self.namespace}/{meta['name']}", []).append(write)
                    if self._stop.is_set():
                        w.stop()
            except client.ApiException as error:
                if error.status == 410:
                    self.resumed_after_gone = True
                    self._version = str(json_object(self._list(self.namespace))["metadata"]["resourceVersion"])
                time.sleep(0.2)
            except Exception:  # a watch ended by the server or a reset: resume from the last version
                time.sleep(0.2)

    def snapshot(self) -> dict[str, list[Write]]:
        with self._lock:
            return {key: list(ws) for key, ws in self._writes.items()}

    def stop(self) -> None:
        self._stop.set()


class LoopbackRankZero:
    """Rank 0 of every TrainingJob in the loopback namespace: the harness's own progress recorder and server
    (kubemaas.runtime.progress, GET /progress on 127.0.0.1:9400), fed by a thread that steps like a training
    loop and checkpoints every 100 steps. All those jobs read the same advancing step: the operator keeps its
    reads per job, not per address, so each job is read and written on its own schedule."""

    def __init__(self, steps_per_second: float, total_steps: int = 10**7) -> None:
        self.steps_per_second, self.total_steps = steps_per_second, total_steps
        self.progress = Progress()
        self.progress.report(0, total_steps)
        try:
            self.server = ProgressServer(self.progress, contract.DEFAULT_PROGRESS_PORT, host=LOOPBACK_POD_IP)
        except OSError as error:
            raise SystemExit(
                f"cannot serve rank 0's progress on {LOOPBACK_POD_IP}:{contract.DEFAULT_PROGRESS_PORT} ({error}):"
                " is another bench_reconcile running? Or run with --progress-jobs 0 --finished-jobs 0"
            ) from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._train, daemon=True)

    def _train(self) -> None:
        step = 0
        while not self._stop.wait(1.0 / self.steps_per_second):
            step += 1
            self.progress.report(step, self.total_steps, loss=1.0 / (1.0 + step / 1000), samples=64)
            if step % 100 == 0:
                self.progress.checkpointed(step)

    def __enter__(self) -> LoopbackRankZero:
        self.server.start()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


# --------------------------------------------------------------------------- the operator process


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def _sum(self, *prefixes: str) -> float:
        # Minutes, not seconds: under tracemalloc a scrape of 1,000 objects' series waits for the busy GIL.
        with urllib.request.urlopen(self.metrics_url, timeout=120) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes))

    def writes(self) -> float:
        return self._sum("kubemaas_children_applied_total{", "kubemaas_status_writes_total{")

    def settle(self, quiet: float = 5.0, limit: float = 120.0) -> None:
        """Return once the operator ran no reconcile for `quiet` seconds: the tail of a burst (children's
        status events) must not run into the next phase's measurement."""
        deadline = time.monotonic() + limit
        last = self._sum("kubemaas_reconcile_total{")
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._sum("kubemaas_reconcile_total{")
            if now == last:
                return
            last = now


OPERATOR_DOCKERFILE = REPO_ROOT / "images" / "operator" / "Dockerfile"


def image_malloc_env() -> dict[str, str]:
    """The allocator settings the operator's image sets (`ENV PYTHONMALLOC=... MALLOC_...`), so the benchmark
    measures the operator's memory as it ships."""
    return dict(re.findall(r"\b((?:PYTHON)?MALLOC(?:_[A-Z_]+)?)=(\S+)", OPERATOR_DOCKERFILE.read_text()))


@contextmanager
def operator(cluster: control_plane.Cluster, namespaces: list[str], log: Path, n: int) -> Iterator[Operator]:
    program: list[str] = []
    if PROFILER.get("tracemalloc"):
        memory = PROFILER["memory"] = RESULTS / f"{PROFILER['stem']}-{n}.memory.txt"
        wrapper = Path(__file__).with_name("traced_operator.py")
        frames = PROFILER.get("tracemalloc_frames", 1)
        tracing = ["-X", f"tracemalloc={frames}"] if frames else []  # 0: allocator stats only, true RSS
        program = [sys.executable, *tracing, str(wrapper), str(memory)]
    log.unlink(missing_ok=True)  # one run's log: the launcher appends
    launcher = OperatorLauncher(cluster.kubeconfig, namespaces, log, program=program)
    malloc = image_malloc_env() if PROFILER.get("image_malloc", True) else {}
    saved = {k: os.environ.get(k) for k in malloc}
    os.environ.update(malloc)  # the launcher passes this process's environment on
    try:
        running = launcher.start(timeout=120)
        yield Operator(running.process, running.metrics_url, log)
    finally:
        launcher.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Where a sample's innermost frames put it, first match wins: (label, substrings of a frame).
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: event loop waiting (epoll)", ("EpollSelector.select", "_PollLikeSelector.select")),
    ("request threads: waiting on the API server (SSL, HTTP)", ("kubernetes/client/", "urllib3/", "http/client.py")),
    ("request threads: idle or handing over work", ("concurrent/futures/thread.py",)),
    ("Kubemaas: reconcile, builders, apply diff, JSON", ("kubemaas/controllers/", "kubemaas/manifests/")),
    ("kopf: watch streams and JSON decoding", ("kopf/_cogs/clients/watching.py", "kopf/_cogs/clients/api.py")),
    ("kopf: indexing", ("kopf/_core/engines/indexing.py",)),
    ("kopf: event processing and its own requests (patches, Events)", ("kopf/",)),
)


def summarize_profile(raw: Path) -> str:
    """A py-spy `--format raw` profile (collapsed stacks) as text: samples by bucket, then the top self frames."""
    total = 0
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaves[frames[-1]] += samples
        # The innermost frame decides, except that a reconcile's own API calls count as waiting.
        label = "other (asyncio, threading, logging)"
        for frame in reversed(frames):
            found = next((name for name, keys in PROFILE_BUCKETS if any(k in frame for k in keys)), None)
            if found is not None:
                label = found
                break
        buckets[label] += samples
    lines = [f"{total} samples at 50 Hz ({total / 50:.0f} thread-seconds), by where the innermost known frame is:"]
    lines += [f"{n / total:6.1%}  {label}" for label, n in buckets.most_common()]
    lines.append("top 15 frames by own samples:")
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in leaves.most_common(15)]
    return "\n".join(lines) + "\n"


@contextmanager
def profiling(op: Operator | None, n: int) -> Iterator[None]:
    if op is None or not PROFILER.get("py_spy"):
        yield
        return
    # The raw collapsed stacks are megabytes: kept beside the operator's logs; results get the summary.
    out = PROFILER["log_dir"] / f"{PROFILER['stem']}-{n}.profile.raw"
    command = [PROFILER["py_spy"], "record", "--pid", str(op.process.pid), "--rate", "50", "--format", "raw"]
    spy = subprocess.Popen(
        [*command, "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        spy.wait(timeout=60)
        if out.exists():
            (RESULTS / f"{PROFILER['stem']}-{n}.profile.txt").write_text(summarize_profile(out))


@contextmanager
def sampling_rss(op: Operator | None) -> Iterator[list[float]]:
    peak: list[float] = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set() and op is not None:
            peak[0] = max(peak[0], op.rss_mb())
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- phases


def create_all(bodies: list[dict[str, Any]], create: Callable[[dict[str, Any]], Any]) -> dict[str, float]:
    """Create every body with CREATE_CONCURRENCY threads; returns name -> wall time the create was sent."""
    sent: dict[str, float] = {}

    def one(body: dict[str, Any]) -> None:
        sent[body["metadata"]["name"]] = time.time()
        create(body)

    with ThreadPoolExecutor(CREATE_CONCURRENCY) as pool:
        list(pool.map(one, bodies))
    return sent


def per_object(window: Counter[tuple[str, str, str]], n: int, resources: set[str]) -> dict[str, float]:
    out = {
        f"{verb} {resource}{'/' + sub if sub else ''}": round(count / n, 2)
        for (verb, resource, sub), count in window.items()
        if resource in resources
    }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def latencies(sent: dict[str, float], seen: FirstSeen, count: int = 1) -> tuple[float, float]:
    ms = sorted((seen.first(name, count) or 0.0) - t for name, t in sent.items())
    ms = [1000 * x for x in ms]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99


MS_RESOURCES = {"modelservices", "deployments", "services", "secrets", "events", "trainingjobs"}


def phase_modelservices(bench: Bench, namespace: str, n: int, op: Operator | None, baseline_job: Any) -> Phase:
    """With `op`, the operator reconciles; without, this process writes the same children (the baseline)."""
    apps = client.AppsV1Api(bench.api)
    deployments = FirstSeen(apps.list_namespaced_deployment, namespace, _name).start()
    services = FirstSeen(bench.core.list_namespaced_service, namespace, _name).start()
    statuses = FirstSeen(
        lambda ns, **kw: bench.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modelservices", **kw),
        namespace,
        _status_written,
    ).start()
    time.sleep(1.0)  # the watches are established
    bodies = [model_service(f"ms-{i:04d}", {"trainingJobRef": {"name": "digits"}}, replicas=0) for i in range(n)]
    before, cpu_before = bench.requests(), op.cpu_seconds() if op else 0.0
    with sampling_rss(op) as peak, profiling(op, n):
        started = time.time()
        if op is not None:
            sent = create_all(
                bodies,
                lambda b: bench.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", b),
            )
        else:
            sent = asyncio.run(baseline_modelservices(bench, namespace, bodies, baseline_job))
        for seen in (deployments, services, statuses):
            seen.wait(lambda s: len(s.times) >= n, PHASE_TIMEOUT)
        ended = max(max(s.times.values()) for s in (deployments, services, statuses))
    window = requests_between(before, bench.requests())
    for seen in (deployments, services, statuses):
        seen.stop()
    p50, p99 = latencies(sent, deployments)
    return Phase(
        name="ModelService (Kubemaas)" if op else "ModelService (baseline)",
        n=n,
        seconds=round(ended - started, 2),
        p50_ms=round(p50, 1),
        p99_ms=round(p99, 1),
        requests_per_object=per_object(window, n, MS_RESOURCES),
        operator_cpu_seconds=round(op.cpu_seconds() - cpu_before, 2) if op else None,
        operator_peak_rss_mb=round(peak[0], 1) if op else None,
    )


async def baseline_modelservices(
    bench: Bench, namespace: str, bodies: list[dict[str, Any]], job: dict[str, Any]
) -> dict[str, float]:
    """Create each ModelService, then write what the operator's reconcile writes for it: children by
    server-side apply and the status, through the operator's own Kube client."""
    kube = Kube(bench.api)
    sent: dict[str, float] = {}
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            sent[body["metadata"]["name"]] = time.time()
            created = await kube.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})
        assert created is not None
        ms = ModelService.parse(created)
        observed = ms_core.Observed(
            training_jobs=[job], secrets={name: True for name in ms_core.required_secrets(ms, [job])}
        )
        outcome = ms_core.reconcile(
            ms,
            ms_core.Previous.from_status(None),
            observed,
            ms_controller.parent_for(created),
            ms_controller.serving_options(ms),
            utc_now(),
        )
        for obj in outcome.apply:
            await kube.apply(obj, None)
        status, _, _ = ms_controller.new_status(created, outcome, created["metadata"].get("generation"))
        await kube.patch_status(created, status)

    try:
        await asyncio.gather(*(one(b) for b in bodies))
    finally:
        kube._pool.shutdown(wait=True)
    return sent


TJ_RESOURCES = {"trainingjobs", "pytorchjobs", "secrets", "events", "pods", "services"}


def phase_trainingjobs(bench: Bench, namespace: str, n: int, op: Operator) -> Phase:
    pytorchjobs = FirstSeen(
        lambda ns, **kw: bench.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", **kw),
        namespace,
        _name,
    ).start()
    statuses = FirstSeen(
        lambda ns, **kw: bench.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", **kw),
        namespace,
        _status_written,
    ).start()
    time.sleep(1.0)
    small = {"cpu": "10m", "memory": "16Mi"}  # the e2e suite's TrainingJob as one small CPU pod
    bodies = [
        training_job(f"tj-{i:04d}", replicas=1, backend="PyTorchJob", resources=small, scheduling={}) for i in range(n)
    ]
    before, cpu_before = bench.requests(), op.cpu_seconds()
    with sampling_rss(op) as peak:
        started = time.time()
        sent = create_all(
            bodies, lambda b: bench.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", b)
        )
        for seen in (pytorchjobs, statuses):
            seen.wait(lambda s: len(s.times) >= n, PHASE_TIMEOUT)
        ended = max(max(s.times.values()) for s in (pytorchjobs, statuses))
    window = requests_between(before, bench.requests())
    for seen in (pytorchjobs, statuses):
        seen.stop()
    p50, p99 = latencies(sent, pytorchjobs)
    return Phase(
        name="TrainingJob -> PyTorchJob (Kubemaas)",
        n=n,
        seconds=round(ended - started, 2),
        p50_ms=round(p50, 1),
        p99_ms=round(p99, 1),
        requests_per_object=per_object(window, n, TJ_RESOURCES),
        operator_cpu_seconds=round(op.cpu_seconds() - cpu_before, 2),
        operator_peak_rss_mb=round(peak[0], 1),
    )


def phase_peer(bench: Bench, source_namespace: str, namespace: str, n: int) -> Phase:
    """The Kubeflow training operator: the PyTorchJobs Kubemaas made, created again without an owner,
    measured from create to every pod of the job existing."""
    listed = bench.custom.list_namespaced_custom_object("kubeflow.org", "v1", source_namespace, "pytorchjobs")
    templates = json_object(listed)["items"]
    template = templates[0]
    pods_per_job = sum(int(r.get("replicas", 1)) for r in template["spec"]["pytorchReplicaSpecs"].values())
    bodies = []
    for i in range(n):
        spec = json.loads(json.dumps(template["spec"]))
        bodies.append(
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJob",
                "metadata": {"name": f"peer-{i:04d}"},
                "spec": spec,
            }
        )
    pods = FirstSeen(
        bench.core.list_namespaced_pod,
        namespace,
        lambda pod: (pod["metadata"].get("labels") or {}).get(PYTORCHJOB_POD_LABEL),
        label_selector=PYTORCHJOB_POD_LABEL,
    ).start()
    time.sleep(1.0)
    before = bench.requests()
    started = time.time()
    sent = create_all(
        bodies,
        lambda b: bench.custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", b),
    )
    pods.wait(lambda s: sum(1 for k in s.counts if s.counts[k] >= pods_per_job) >= n, PHASE_TIMEOUT)
    ended = max(pods.times.values())
    window = requests_between(before, bench.requests())
    pods.stop()
    p50, p99 = latencies(sent, pods, pods_per_job)
    return Phase(
        name=f"PyTorchJob -> {pods_per_job} pod(s) (Kubeflow, Go)",
        n=n,
        seconds=round(ended - started, 2),
        p50_ms=round(p50, 1),
        p99_ms=round(p99, 1),
        requests_per_object=per_object(window, n, {"pytorchjobs", "pods", "services", "events"}),
    )


TRAININGJOB_LABEL = parent_label("TrainingJob")  # on every pod of a TrainingJob: its name


def free_pod_slots(bench: Bench) -> int:
    """Pods the kwok nodes still take: their allocatable pods less the pods on them that have not ended."""
    nodes = as_json(bench.api, bench.core.list_node())["items"]
    kwok = {
        n["metadata"]["name"]: int(n["status"].get("allocatable", {}).get("pods", 0))
        for n in nodes
        if (n["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION)
    }
    ended = "status.phase!=Succeeded,status.phase!=Failed"
    pods = as_json(bench.api, bench.core.list_pod_for_all_namespaces(field_selector=ended))["items"]
    return sum(kwok.values()) - sum(1 for p in pods if p["spec"].get("nodeName") in kwok)


def success_message(pod: dict[str, Any]) -> str:
    """What rank 0 writes to its termination log after publishing (kubemaas.contract.termination): the
    version and URI the pod's contract environment names; the digest and key id as the e2e tests write them."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or ()}
    model, version = str(env[contract.MODEL_NAME]), str(env[contract.MODEL_VERSION])
    message = SuccessMessage(
        model=model,
        version=version,
        uri=version_uri(str(env[contract.OUTPUT_URI]), model, version),
        sha256="5e" * 32,
        key_id="k1",
    )
    return message.to_json().decode()


def phase_loopback(bench: Bench, namespace: str, reporting: int, finished: int) -> tuple[set[str], set[str]]:
    """TrainingJobs whose rank 0 answers GET /progress (LoopbackRankZero): `reporting` of them keep running,
    `finished` report and then succeed. Returns both sets of names once every job has status.progress (the
    operator reached rank 0) and the finished ones are Succeeded."""
    running = {f"progress-{i:04d}" for i in range(reporting)}
    done = {f"finished-{i:04d}" for i in range(finished)}
    small = {"cpu": "10m", "memory": "16Mi"}
    bodies = [
        training_job(name, replicas=1, backend="PyTorchJob", resources=small, scheduling={})
        for name in sorted(running | done)
    ]
    create_all(
        bodies, lambda b: bench.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", b)
    )

    def pods_running(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
        up = {
            p["metadata"]["labels"][TRAININGJOB_LABEL]: p
            for p in found.values()
            if (p.get("status") or {}).get("phase") == "Running"
        }
        return up if len(up) == len(bodies) else None

    pods: dict[str, dict[str, Any]] = wait_for_objects(
        bench.api,
        "v1",
        "Pod",
        namespace,
        pods_running,
        what=f"the {len(bodies)} loopback TrainingJobs' pods to be Running",
        timeout=PHASE_TIMEOUT,
        label_selector=TRAININGJOB_LABEL,
    )
    elsewhere = sorted({str(p["status"].get("podIP")) for p in pods.values()} - {LOOPBACK_POD_IP})
    if elsewhere:
        raise RuntimeError(
            f"kwok gave the pods in {namespace} the IPs {elsewhere[:3]}, not {LOOPBACK_POD_IP}: the cluster's kwok was"
            " started before its pod-ready stage had the loopback rule (e2e/cluster/kwok-stages.yaml); restart the"
            " cluster when no one else uses it: python -m e2e.cluster down && python -m e2e.cluster up"
        )
    wait_for_objects(
        bench.api,
        f"{GROUP}/{VERSION}",
        "TrainingJob",
        namespace,
        lambda found: (
            len(found) == len(bodies) and all((o.get("status") or {}).get("progress") for o in found.values())
        ),
        what="every loopback TrainingJob's status.progress (the operator read its rank 0)",
        timeout=120,
    )
    for name in sorted(done):
        pod = pods[name]
        patch = {
            "metadata": {
                "labels": {OUTCOME_LABEL: "succeed"},
                "annotations": {TERMINATION_MESSAGE_ANNOTATION: success_message(pod)},
            }
        }
        bench.core.patch_namespaced_pod(pod["metadata"]["name"], namespace, patch)
    wait_for_objects(
        bench.api,
        f"{GROUP}/{VERSION}",
        "TrainingJob",
        namespace,
        lambda found: all(condition_is(found.get(n, {}), "Succeeded") for n in done),
        what=f"the {len(done)} finished loopback TrainingJobs to be Succeeded",
        timeout=120,
    )
    return running, done


def parent_versions(bench: Bench, namespaces: list[str]) -> dict[str, str]:
    """uid -> resourceVersion of every ModelService and TrainingJob in `namespaces`: only Kubemaas (and kopf
    on its behalf) writes them once created, so a changed version is a write of ours."""
    out: dict[str, str] = {}
    for namespace in namespaces:
        for plural in ("modelservices", "trainingjobs"):
            listed = json_object(bench.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural))
            for obj in listed["items"]:
                out[obj["metadata"]["uid"]] = obj["metadata"]["resourceVersion"]
    return out


def memory_profile(op: Operator, phase: str = "") -> None:
    """With --tracemalloc: traced_operator.py writes the live allocations (results/<out>-<N>[-phase].memory.txt);
    a snapshot of a large heap takes minutes."""
    if not PROFILER.get("tracemalloc"):
        return
    memory: Path = PROFILER["memory"]
    memory.unlink(missing_ok=True)
    op.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 600
    while not memory.exists() and time.monotonic() < deadline:
        time.sleep(5)
    if phase and memory.exists():
        memory.rename(memory.with_name(memory.name.replace(".memory.txt", f"-{phase}.memory.txt")))


@dataclass
class Loopback:
    """The loopback namespace's TrainingJobs (phase_loopback) and the pace of the rank 0 they read."""

    namespace: str
    reporting: set[str]
    finished: set[str]
    steps_per_second: float


def settle_writes(watches: list[ParentWrites], busy: set[str], quiet: float, limit: float) -> None:
    """Return once no parent outside `busy` ("namespace/name") was written for `quiet` seconds. With
    progress-reporting jobs the operator reconciles every 10 s for good, so "no reconcile for 10 s"
    (Operator.settle) never comes; what the window needs is the other parents' bursts to be over."""
    started = time.time()
    while time.time() < started + limit:
        time.sleep(1.0)
        seen = [t for w in watches for key, ws in w.snapshot().items() if key not in busy for t, _ in ws]
        if time.time() - max(seen, default=started) >= quiet:
            return


def write_groups(
    watches: list[ParentWrites], window: tuple[float, float], running: set[str], loopback: Loopback | None
) -> list[GroupWrites]:
    """The parents by group ("namespace/name"), each against its limit (e2e/bench/write_rate.py)."""
    writes = {key: ws for w in watches for key, ws in w.snapshot().items()}
    everyone = {key for w in watches for key in w.keys}
    reporting = {f"{loopback.namespace}/{n}" for n in loopback.reporting} if loopback else set()
    finished = {f"{loopback.namespace}/{n}" for n in loopback.finished} if loopback else set()
    others = everyone - reporting - finished - running
    groups: list[GroupWrites] = []
    if loopback is not None:
        groups += [
            group_writes("running, rank 0 reports", reporting, writes, window, PROGRESS_INTERVAL, must_write=True),
            group_writes("finished after reporting", finished, writes, window, None),
        ]
    groups += [
        group_writes("running, rank 0 does not answer", running, writes, window, None),
        group_writes("other parents (ModelServices, jobs not running)", others, writes, window, None),
    ]
    return groups


def rest(
    bench: Bench,
    op: Operator,
    namespaces: list[str],
    seconds: float,
    ms_namespace: str,
    tj_namespace: str,
    loopback: Loopback | None = None,
) -> Rest:
    # The tail of the burst lands first. kube-controller-manager (20 requests/s) may be minutes behind on
    # the Deployments' status after 1000 ModelServices, and each ModelService turns Ready only then: "at
    # rest" starts once every ModelService is Ready and the operator ran no reconcile for 10 s (with
    # progress-reporting jobs: no parent but those was written for 10 s).
    wait_for_objects(
        bench.api,
        f"{GROUP}/{VERSION}",
        "ModelService",
        ms_namespace,
        lambda found: all(condition_is(o, "Ready") for o in found.values()),
        what=f"every ModelService in {ms_namespace} to be Ready",
        timeout=PHASE_TIMEOUT,
    )
    watches = [ParentWrites(bench, "modelservices", ms_namespace)]
    watches += [ParentWrites(bench, "trainingjobs", ns) for ns in namespaces]
    if loopback is None:
        op.settle(quiet=10.0, limit=300.0)
    else:
        settle_writes(watches, {f"{loopback.namespace}/{n}" for n in loopback.reporting}, quiet=10.0, limit=300.0)
    listed = json_object(bench.custom.list_namespaced_custom_object(GROUP, VERSION, tj_namespace, "trainingjobs"))
    running = {f"{tj_namespace}/{_name(o)}" for o in listed["items"] if condition_is(o, "Running")}
    before, writes_before, versions = bench.requests(), op.writes(), parent_versions(bench, namespaces)
    started = time.time()
    time.sleep(seconds)
    window_end = time.time()
    window = requests_between(before, bench.requests())
    versions_after = parent_versions(bench, namespaces)
    time.sleep(2.0)  # the watches' last events of the window are on their way
    for w in watches:
        w.stop()
    groups = write_groups(watches, (started, window_end), running, loopback)
    gone = [f"{w.plural} in {w.namespace}" for w in watches if w.resumed_after_gone]
    limit_failures = failures(groups)
    if gone:
        limit_failures.append(f"the watch of {', '.join(gone)} was re-listed after 410 Gone: writes may be missing")
    memory_profile(op)
    writes = op.writes() - writes_before
    ours = MS_RESOURCES | TJ_RESOURCES
    api_writes = {
        f"{verb} {resource}{'/' + sub if sub else ''}": round(count * 60 / seconds, 1)
        for (verb, resource, sub), count in window.items()
        if verb in ("POST", "PUT", "PATCH", "APPLY") and resource in ours
    }
    return Rest(
        objects=len(versions),
        seconds=seconds,
        operator_writes_per_minute=round(writes * 60 / seconds, 2),
        parents_written=sum(1 for uid, rv in versions.items() if versions_after.get(uid) != rv),
        apiserver_writes_per_minute=api_writes,
        operator_rss_mb=round(op.rss_mb(), 1),
        watch_requests={
            resource: count for (verb, resource, _), count in window.items() if verb == "WATCH" and resource in ours
        },
        groups=groups,
        limit_failures=limit_failures,
        rank0_steps_per_second=loopback.steps_per_second if loopback else None,
    )


# --------------------------------------------------------------------------- driver


RANK0_STEPS_PER_SECOND = 5.0  # the loopback rank 0's pace: 50 steps between two reads of a job


def start_loopback(stack: ExitStack, bench: Bench, namespace: str, reporting: int, finished: int) -> Loopback:
    """Serve rank 0 (until `stack` closes) and bring the loopback TrainingJobs to reporting, and finished."""
    stack.enter_context(LoopbackRankZero(RANK0_STEPS_PER_SECOND))
    running, done = phase_loopback(bench, namespace, reporting, finished)
    print(f"[bench]   {len(running)} TrainingJobs report progress, {len(done)} reported and finished", flush=True)
    return Loopback(namespace, running, done, RANK0_STEPS_PER_SECOND)


def run_one(
    bench: Bench,
    n: int,
    tj_n: int,
    rest_seconds: float,
    log_dir: Path,
    *,
    baseline: bool = True,
    peer: bool = True,
    progress_jobs: int = 0,
    finished_jobs: int = 0,
) -> Run:
    run = Run(n)
    ms_ns, job = bench.serving_namespace("ms")
    base_ns, base_job = bench.serving_namespace("base")
    tj_ns = bench.namespace("tj")
    for claim in ("datasets", "models"):
        bench.claim(tj_ns, claim)
    peer_ns = bench.namespace("peer")
    namespaces = [ms_ns, base_ns, tj_ns, peer_ns]
    watched = [ms_ns, tj_ns]
    loop_ns = None
    if rest_seconds and (progress_jobs or finished_jobs):
        loop_ns = bench.namespace("loopback")
        assert loop_ns.startswith(LOOPBACK_NAMESPACE_PREFIX), loop_ns  # where kwok gives pods 127.0.0.1
        for claim in ("datasets", "models"):
            bench.claim(loop_ns, claim)
        namespaces.append(loop_ns)
        watched.append(loop_ns)
    try:
        with ExitStack() as stack:
            op = stack.enter_context(operator(bench.cluster, watched, log_dir / f"operator-{n}.log", n))
            print(f"[bench] N={n}: operator up (rss {op.rss_mb():.0f} MB)", flush=True)
            # The baseline first, while the operator (watching other namespaces) is idle; then the operator.
            base = phase_modelservices(bench, base_ns, n, None, base_job) if baseline else None
            print(f"[bench]   {base}", flush=True)
            time.sleep(5)
            kubemaas = phase_modelservices(bench, ms_ns, n, op, job)
            print(f"[bench]   {kubemaas}", flush=True)
            op.settle()
            kubemaas.settled_rss_mb = round(op.rss_mb(), 1)
            memory_profile(op, "modelservices")
            if base is not None:
                kubemaas.ratio_to_baseline = round(kubemaas.seconds / base.seconds, 2)
            run.phases += [kubemaas, *([base] if base else [])]
            loopback = None
            # The loopback jobs' pods must run. After the TrainingJob phase the kwok nodes may have no room left
            # (N > ~500: some of its pods stay Pending): then they come first, and report during that phase.
            if loop_ns is not None and free_pod_slots(bench) < tj_n + progress_jobs + finished_jobs:
                run.notes.append(
                    f"the {progress_jobs} progress-reporting TrainingJobs ran (read and written every 10 s) during the"
                    " TrainingJob and Kubeflow phases: after those the kwok nodes would have had no room for their pods"
                )
                loopback = start_loopback(stack, bench, loop_ns, progress_jobs, finished_jobs)
            if tj_n:
                tj = phase_trainingjobs(bench, tj_ns, tj_n, op)
                print(f"[bench]   {tj}", flush=True)
                op.settle()
                tj.settled_rss_mb = round(op.rss_mb(), 1)
                run.phases.append(tj)
                if peer:
                    kubeflow = phase_peer(bench, tj_ns, peer_ns, tj_n)
                    print(f"[bench]   {kubeflow}", flush=True)
                    bench.cleanup([peer_ns])  # its pods hold kwok capacity other sessions' tests need
                    run.phases.append(kubeflow)
            if loop_ns is not None and loopback is None:
                loopback = start_loopback(stack, bench, loop_ns, progress_jobs, finished_jobs)
            if rest_seconds:
                run.rest = rest(bench, op, watched, rest_seconds, ms_ns, tj_ns, loopback)
                print(f"[bench]   {run.rest}", flush=True)
    finally:
        bench.cleanup(namespaces)
    return run


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "the load averages (at start, now, and per phase) show what else ran on the machine",
    }


def table(runs: list[Run]) -> str:
    lines = [
        "| N | phase | total s | ratio | p50 ms | p99 ms | op CPU s | op peak RSS MB | load | requests/object (top 4)|",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for p in run.phases:
            top = ", ".join(f"{k} {v}" for k, v in list(p.requests_per_object.items())[:4])
            lines.append(
                f"| {p.n} | {p.name} | {p.seconds:.1f} | {p.ratio_to_baseline or ''} | {p.p50_ms:.0f} | {p.p99_ms:.0f}"
                f" | {p.operator_cpu_seconds if p.operator_cpu_seconds is not None else ''}"
                f" | {p.operator_peak_rss_mb if p.operator_peak_rss_mb is not None else ''}"
                f"{f' (settled {p.settled_rss_mb})' if p.settled_rss_mb is not None else ''} | {p.load_average}"
                f" | {top} |"
            )
        if run.rest:
            r = run.rest
            parents = {k: v for k, v in r.watch_requests.items() if k in ("modelservices", "trainingjobs")}
            lines.append(
                f"| {run.n} | at rest, {r.objects} parents, {r.seconds:.0f} s | | | | | | {r.operator_rss_mb} |"
                f" | operator writes/min {r.operator_writes_per_minute}, parents written {r.parents_written},"
                f" WATCH requests of the parents {parents} |"
            )
            for g in r.groups:
                intervals = (
                    f", between two {g.min_interval_s}-{g.mean_interval_s} s (min-mean)" if g.mean_interval_s else ""
                )
                lines.append(
                    f"| {run.n} | at rest: {g.group}, {g.jobs} | | | | | | | | writes per parent mean {g.mean_per_job},"
                    f" max {g.max_per_job} (limit {g.limit_per_job}){intervals}:"
                    f" {'met' if g.met else 'EXCEEDED'} |"
                )
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r.n for r in runs]

    def series(prefix: str, attr: str) -> list[float]:
        return [float(next(getattr(p, attr) for p in r.phases if p.name.startswith(prefix))) for r in runs]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(ns, series("ModelService (Kubemaas)", "seconds"), "o-", label="ModelService, Kubemaas")
    with_baseline = all(any(p.name.startswith("ModelService (baseline)") for p in r.phases) for r in runs)
    if with_baseline:
        left.plot(ns, series("ModelService (baseline)", "seconds"), "s--", label="ModelService, baseline (raw API)")
    if all(any(p.name.startswith("TrainingJob") for p in r.phases) for r in runs):
        left.plot(ns, series("TrainingJob", "seconds"), "^-", label="TrainingJob -> PyTorchJob, Kubemaas")
    if all(any(p.name.startswith("PyTorchJob") for p in r.phases) for r in runs):
        left.plot(ns, series("PyTorchJob", "seconds"), "v--", label="PyTorchJob -> pods, Kubeflow (Go)")
    left.set_xlabel("objects created at once (N)")
    left.set_ylabel("seconds until every child and status exists")
    left.legend(fontsize=8)
    if with_baseline:
        right.plot(ns, series("ModelService (Kubemaas)", "ratio_to_baseline"), "o-")
        right.axhline(1.3, color="grey", linestyle=":", label="target 1.3")
        right.set_ylabel("Kubemaas / baseline")
    else:  # a memory run: the operator's RSS instead
        right.plot(ns, series("ModelService (Kubemaas)", "operator_peak_rss_mb"), "o-", label="peak, ModelServices")
        right.axhline(150, color="grey", linestyle=":", label="target 150 MB")
        right.set_ylabel("operator RSS MB")
    right.set_xlabel("N")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500, 1000])
    # Each TrainingJob and each peer PyTorchJob makes a pod; the kwok nodes have 550 pod slots, so from N=300
    # on some stay Pending (they exist, which is what the phases time). A shared cluster may want fewer.
    parser.add_argument("--tj-max", type=int, default=1000, help="at most this many TrainingJobs per N")
    parser.add_argument("--rest-seconds", type=float, default=600.0, help="the at-rest window after the largest N")
    parser.add_argument("--out", default="reconcile", help="results file stem in e2e/bench/results")
    # Only for the run with the at-rest window: their pods need the loopback rule of e2e/cluster/kwok-stages.yaml.
    parser.add_argument(
        "--progress-jobs", type=int, default=20, help="running TrainingJobs whose rank 0 reports progress, at rest"
    )
    parser.add_argument(
        "--finished-jobs", type=int, default=20, help="TrainingJobs that reported progress and succeeded, at rest"
    )
    parser.add_argument("--py-spy", default=None, help="py-spy executable: profile the operator's ModelService phase")
    parser.add_argument("--tracemalloc", action="store_true", help="the operator's live allocations after the rest")
    parser.add_argument(
        "--tracemalloc-frames",
        type=int,
        default=1,
        help="frames per allocation (>1: by call stack; 0: no tracing, the allocators' stats)",
    )
    # For iterating on the operator's memory: the raw-API baseline and the Kubeflow peer time other things.
    parser.add_argument("--no-baseline", action="store_true", help="skip the raw-API baseline phase (no ratio)")
    parser.add_argument("--no-peer", action="store_true", help="skip the Kubeflow training operator's phase")
    parser.add_argument(
        "--no-image-malloc", action="store_true", help="run the operator without the image's MALLOC_* settings"
    )
    args = parser.parse_args()
    PROFILER.update(
        py_spy=args.py_spy,
        stem=args.out,
        tracemalloc=args.tracemalloc,
        tracemalloc_frames=args.tracemalloc_frames,
        image_malloc=not args.no_image_malloc,
    )

    cluster = control_plane.up()
    bench = Bench(cluster)
    for crd in load_crds():
        apply_crd(bench.api, crd)
    info = machine()
    info["operator_malloc_env"] = image_malloc_env() if not args.no_image_malloc else {}
    log_dir = Path(tempfile.gettempdir()) / "kubemaas-bench-logs"  # the operator's logs: large, not results
    log_dir.mkdir(parents=True, exist_ok=True)
    PROFILER["log_dir"] = log_dir
    runs = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for n in args.n:
        rest_seconds = args.rest_seconds if n == max(args.n) else 0.0
        runs.append(
            run_one(
                bench,
                n,
                min(n, args.tj_max),
                rest_seconds,
                log_dir,
                baseline=not args.no_baseline,
                peer=not args.no_peer,
                progress_jobs=args.progress_jobs,
                finished_jobs=args.finished_jobs,
            )
        )
        # After each N: a run stopped later still leaves what it measured.
        info["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
        (RESULTS / f"{args.out}.json").write_text(
            json.dumps({"machine": info, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
        )
    plot(runs, RESULTS / f"{args.out}.png")
    print(table(runs))
    # The at-rest write limits are the benchmark's pass/fail: the results are written either way.
    exceeded = [f"N={r.n}: {line}" for r in runs if r.rest for line in r.rest.limit_failures]
    for line in exceeded:
        print(f"[bench] write limit: {line}", file=sys.stderr)
    return 1 if exceeded else 0


if __name__ == "__main__":
    raise SystemExit(main())
