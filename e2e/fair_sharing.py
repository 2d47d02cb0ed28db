"""Kueue fair sharing between teams, as e2e/test_fair_sharing.py and e2e/bench/bench_fair_sharing.py run it.

The pool: a kwok GPU node of its own, labelled and tainted with the namespace's name (no other scenario's pod lands
on it, and a team's pods land nowhere else), a ResourceFlavor for it, and a Cohort that holds the pool's whole
quota. Each team is a ClusterQueue in that Cohort with a nominal quota of 0 and its fair-sharing weight, and a
LocalQueue `team-<name>`: every GPU a team uses is borrowed from the Cohort, so Kueue's share of a team (its
borrowed GPUs / the pool's / its weight) is what orders admission and preemption between them. With nominal
quotas the weights would only split what is borrowed beyond them. `reclaimWithinCohort: Any` lets a team below
its share preempt the other's jobs under the fair-sharing strategies instead of waiting for one to end
(`borrowWithinCohort` is classical preemption's; Kueue's API says it does not apply under fair sharing).

The jobs are TrainingJobs of one rank, queued through the operator. kwok runs each pod for a fixed time: the
ledger labels every pod it sees Running to succeed that long after (e2e/cluster/kwok-stages.yaml), and records,
from the pods' watch, when each run started and ended and whether it ended by preemption (the pod deleted).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import waits
from e2e.cluster.nodes import NodeShape, node_manifest
from e2e.conftest import E2ECluster
from e2e.kube import OUTCOME_LABEL, TERMINATION_MESSAGE_ANNOTATION, TRAININGJOB_API, bound_claim, training_job
from e2e.kueue import KUEUE, local_queue
from e2e.typed_client import body_as, json_object, present

POOL_LABEL = "kubemaas.io/gpu-pool"  # the pool node's label and taint key; the value is the namespace
DELAY_ANNOTATION = "kwok.kubemaas.io/delay"
JOB_LABEL = "kubemaas.io/trainingjob"  # on every pod of a TrainingJob, any backend: the job's name
GPU = "nvidia.com/gpu"
# The pool's CPU and memory: far beyond what its jobs ask, so GPUs are always the dominant resource of a share.
POOL_CPU, POOL_MEMORY = "96", "1024Gi"
JOB_RESOURCES = {"cpu": "1", "memory": "1Gi"}
SHA = "5e" * 32  # the digest the finished ranks report (the store is not read here)
WORKLOAD = ("/".join(KUEUE), "Workload")
# The quota ledger's watch: longer than any scenario; once told to stop, it ends at the next Workload event.
LEDGER_SECONDS = 1800.0


@dataclass(frozen=True)
class Pool:
    namespace: str
    gpus: int
    weights: dict[str, int]  # team -> fair-sharing weight
    queues: dict[str, str]  # team -> its LocalQueue in the namespace
    cluster_queues: dict[str, str]  # team -> its ClusterQueue
    toleration: dict[str, str]  # what a pod needs to run on the pool's node


def _quota(flavor: str, amounts: Mapping[str, str]) -> list[dict[str, Any]]:
    resources = [{"name": name, "nominalQuota": amount} for name, amount in amounts.items()]
    return [{"coveredResources": list(amounts), "flavors": [{"name": flavor, "resources": resources}]}]


@contextlib.contextmanager
def gpu_pool(cluster: E2ECluster, namespace: str, gpus: int, weights: Mapping[str, int]) -> Iterator[Pool]:
    """The pool of `gpus` GPUs shared by `weights` (team -> weight), and the claim `models` its TrainingJobs publish
    to. Cluster-scoped objects are named after the namespace and removed on exit, once the pool is drained."""
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    name = f"pool-{namespace}"[:63]
    shape = NodeShape(name, POOL_CPU, POOL_MEMORY, gpus, "NVIDIA-H100-80GB-HBM3", 81559, "hopper")
    node = node_manifest(shape)
    node["metadata"]["labels"][POOL_LABEL] = namespace
    node["spec"]["taints"] = [{"key": POOL_LABEL, "value": namespace, "effect": "NoSchedule"}]
    del node["status"]["nodeInfo"]  # the client's model wants every field of it; kwok reports its own
    toleration = {"key": POOL_LABEL, "operator": "Equal", "value": namespace, "effect": "NoSchedule"}
    cluster_queues = {team: f"{team}-{namespace}"[:63] for team in weights}
    amounts = {"cpu": POOL_CPU, "memory": POOL_MEMORY, GPU: str(gpus)}
    volume = ""
    try:
        core.create_node(body_as(client.V1Node, node))
        volume = bound_claim(cluster.api, namespace, "models", {"hostPath": {"path": f"/tmp/kubemaas-e2e/{name}"}})
        custom.create_cluster_custom_object(*KUEUE, "resourceflavors", {
            "apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": name},
            "spec": {"nodeLabels": {POOL_LABEL: namespace}},
        })  # fmt: skip
        custom.create_cluster_custom_object(*KUEUE, "cohorts", {
            "apiVersion": "/".join(KUEUE), "kind": "Cohort", "metadata": {"name": name},
            "spec": {"resourceGroups": _quota(name, amounts)},
        })  # fmt: skip
        for team, weight in weights.items():
            custom.create_cluster_custom_object(*KUEUE, "clusterqueues", {
                "apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": cluster_queues[team]},
                "spec": {
                    "cohortName": name,
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "resourceGroups": _quota(name, dict.fromkeys(amounts, "0")),
                    "fairSharing": {"weight": str(weight)},
                    "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "Never"},
                },
            })  # fmt: skip
            local_queue(cluster, namespace, f"team-{team}", cluster_queues[team])
        cluster.wait_for(f"node {name} Ready", lambda: _node_ready(core, name), timeout=60)
        cluster.wait_for(
            f"ClusterQueues {sorted(cluster_queues.values())} Active with status.fairSharing (Kueue sets it only "
            "where its configuration enables fairSharing, e2e/cluster/batch.py: a cluster started before needs a "
            "restart)",
            lambda: all(_fair_and_active(custom, q) for q in cluster_queues.values()),
            timeout=60,
        )
        queues = {team: f"team-{team}" for team in weights}
        yield Pool(namespace, gpus, dict(weights), queues, cluster_queues, toleration)
    finally:
        # Kueue drains the pool first (evicts every admitted job), so no pod is left running on the node that goes
        # with it: a pod bound to a deleted node waits for the pod garbage collector, and its namespace with it.
        for queue in cluster_queues.values():
            with contextlib.suppress(ApiException):
                drain = {"spec": {"stopPolicy": "HoldAndDrain"}}
                custom.patch_cluster_custom_object(
                    *KUEUE, "clusterqueues", queue, drain, _content_type="application/merge-patch+json"
                )
        with contextlib.suppress(waits.WaitTimeout):
            cluster.wait_objects(
                "v1", "Pod", namespace, lambda pods: not any(map(_active, pods.values())), what="drained", timeout=120
            )
        for plural, obj in [
            *(("clusterqueues", q) for q in cluster_queues.values()),
            ("cohorts", name),
            ("resourceflavors", name),
        ]:
            with contextlib.suppress(ApiException):
                custom.delete_cluster_custom_object(*KUEUE, plural, obj)
        with contextlib.suppress(ApiException):
            core.delete_node(name)
        if volume:
            with contextlib.suppress(ApiException):
                core.delete_persistent_volume(volume)


def _active(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _node_ready(core: client.CoreV1Api, name: str) -> bool:
    conditions = present(core.read_node(name).status, f"node {name}'s status").conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _fair_and_active(custom: client.CustomObjectsApi, name: str) -> bool:
    queue = json_object(custom.get_cluster_custom_object(*KUEUE, "clusterqueues", name))
    return waits.condition_is(queue, "Active") and "fairSharing" in (queue.get("status") or {})


@dataclass
class Run:
    """One pod of a job, from when it was seen Running to when it was seen ending (None: still running)."""

    pod: str
    job: str
    team: str
    gpus: int
    start: float
    end: float | None = None
    preempted: bool = False  # ended by deletion (Kueue's eviction), not by finishing

    def relative(self, t0: float) -> dict[str, Any]:
        """The run as JSON, its times in seconds from `t0`."""
        end = None if self.end is None else round(self.end - t0, 3)
        return {**asdict(self), "start": round(self.start - t0, 3), "end": end}


def _gpus(pod: dict[str, Any]) -> int:
    return sum(int((c.get("resources") or {}).get("limits", {}).get(GPU, 0)) for c in pod["spec"]["containers"])


def team_of(job: str) -> str:
    return job.split("-", 1)[0]


def success_message(pod: dict[str, Any]) -> str:
    """What rank 0 writes to its termination log after publishing, from the contract environment of its pod."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or ()}
    model, version = env["KUBEMAAS_MODEL_NAME"], env["KUBEMAAS_MODEL_VERSION"]
    uri = f"{env['KUBEMAAS_OUTPUT_URI']}/{model}/{version}"
    return json.dumps({"keyId": "k1", "model": model, "sha256": SHA, "uri": uri, "version": version})


def _reserved_gpus(workload: dict[str, Any]) -> int:
    assignments = ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or ()
    return sum(int((a.get("resourceUsage") or {}).get(GPU, 0)) for a in assignments)


def job_of_workload(workload: dict[str, Any]) -> str:
    """The TrainingJob `<team>-<n>` a Workload queues: its owner is that job's TrainJob, or `<job>-workers`."""
    return "-".join(workload["metadata"]["ownerReferences"][0]["name"].split("-")[:2])


class QuotaLedger:
    """Each Workload's holds of the pool's quota, as Kueue's Workloads arrive from a watch (on a thread of its own,
    beside the pods' watch): a hold starts when a workload is seen with QuotaReserved, and ends when it is seen
    Finished, without QuotaReserved (evicted by a preemption: it waits again), or gone. Kueue's fair sharing
    orders teams by the quota their admitted workloads hold, so these are the GPU-seconds it gave each team,
    whatever the pods' start-up on a loaded machine added after admission."""

    def __init__(self, cluster: E2ECluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.holds: list[Run] = []
        self._open: dict[str, Run] = {}  # workload name -> its hold now
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="quota-ledger", daemon=True)

    def __enter__(self) -> QuotaLedger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Not joined: the watch ends at its next Workload event, which the pool's drain (gpu_pool's exit) makes.
        self._stopped.set()

    def snapshot(self) -> dict[str, Run]:
        """Every hold so far, keyed `<workload>#<n>` (a preempted workload holds again when readmitted)."""
        with self._lock:
            return {f"{h.pod}#{n}": replace(h) for n, h in enumerate(self.holds)}

    def _watch(self) -> None:
        with contextlib.suppress(waits.WaitTimeout):
            self.cluster.wait_objects(
                *WORKLOAD, self.namespace, self._observe, what="the fair-sharing scenario's end", timeout=LEDGER_SECONDS
            )

    def _observe(self, workloads: waits.Objects) -> bool:
        now = time.time()
        with self._lock:
            for name, workload in workloads.items():
                holding = waits.condition_is(workload, "QuotaReserved") and not waits.condition_is(workload, "Finished")
                hold = self._open.get(name)
                if hold is None and holding:
                    job = job_of_workload(workload)
                    self._open[name] = hold = Run(name, job, team_of(job), _reserved_gpus(workload), now)
                    self.holds.append(hold)
                elif hold is not None and not holding:
                    hold.end, hold.preempted = now, not waits.condition_is(workload, "Finished")
                    del self._open[name]
            for name in [n for n in self._open if n not in workloads]:  # deleted between two events we saw
                hold = self._open.pop(name)
                hold.end, hold.preempted = now, True
        return self._stopped.is_set()


@dataclass
class Scenario:
    """Teams' TrainingJobs on a pool: submits them, runs their pods for `run_seconds`, keeps the ledger."""

    cluster: E2ECluster
    pool: Pool
    run_seconds: float
    backend: str = "TrainJob"
    gpus_per_job: int = 1
    submitted: dict[str, float] = field(default_factory=dict)  # job -> when its TrainingJob was created
    runs: dict[str, Run] = field(default_factory=dict)  # pod name -> its run

    def submit(self, team: str, count: int) -> None:
        """`count` more TrainingJobs `<team>-<n>` on the team's queue, created one after another."""
        custom = client.CustomObjectsApi(self.cluster.api)
        first = sum(1 for job in self.submitted if team_of(job) == team)
        scheduling = {
            "queueName": self.pool.queues[team],
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [self.pool.toleration],
        }
        for n in range(first, first + count):
            job = f"{team}-{n:03d}"
            body = training_job(
                job,
                backend=self.backend,
                replicas=1,
                resources={"gpus": self.gpus_per_job, **JOB_RESOURCES},
                scheduling=scheduling,
                data=None,
            )  # and its own key (`<job>-key`, generated): a generated key is its job's alone
            custom.create_namespaced_custom_object(*TRAININGJOB_API[:2], self.pool.namespace, TRAININGJOB_API[2], body)
            self.submitted[job] = time.time()

    def follow(self, until: Callable[[], bool], what: str, timeout: float) -> None:
        """Watch the pods, drive and record each run, until `until()` holds."""

        def check(pods: waits.Objects) -> bool:
            self._observe(pods)
            return until()

        self.cluster.wait_objects(
            "v1", "Pod", self.pool.namespace, check, what=what, timeout=timeout, label_selector=JOB_LABEL
        )

    def _observe(self, pods: waits.Objects) -> None:
        now = time.time()
        for name, pod in pods.items():
            phase = (pod.get("status") or {}).get("phase")
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            run = self.runs.get(name)
            if run is None and phase == "Running" and not deleting:
                job = pod["metadata"]["labels"][JOB_LABEL]
                self.runs[name] = run = Run(name, job, team_of(job), _gpus(pod), now)
                self._finish_later(pod)
            if run is not None and run.end is None and (phase in ("Succeeded", "Failed") or deleting):
                run.end, run.preempted = now, deleting and phase not in ("Succeeded", "Failed")
        for name, run in self.runs.items():
            if run.end is None and name not in pods:  # deleted between two events we saw
                run.end, run.preempted = now, True

    def _finish_later(self, pod: dict[str, Any]) -> None:
        """kwok ends the pod `run_seconds` after this label (rank 0 of one: its success ends the job)."""
        annotations = {
            DELAY_ANNOTATION: f"{self.run_seconds}s",
            TERMINATION_MESSAGE_ANNOTATION: success_message(pod),
        }
        patch = {"metadata": {"labels": {OUTCOME_LABEL: "succeed"}, "annotations": annotations}}
        with contextlib.suppress(ApiException):  # preempted and gone already
            client.CoreV1Api(self.cluster.api).patch_namespaced_pod(pod["metadata"]["name"], self.pool.namespace, patch)

    def running_gpus(self, team: str) -> int:
        return sum(r.gpus for r in self.runs.values() if r.team == team and r.end is None)

    def backlog_emptied(self, team: str, ledger: Mapping[str, Run] | None = None) -> float | None:
        """When the team's last waiting job started (in `ledger`, the pods' runs by default), once none of its
        jobs waits (a preempted one waits again)."""
        runs = (self.runs if ledger is None else ledger).values()
        jobs = [job for job in self.submitted if team_of(job) == team]
        served = {r.job for r in runs if r.end is None or not r.preempted}
        if not jobs or any(job not in served for job in jobs):
            return None
        return max(r.start for r in runs if r.team == team)

    def a_backlog_emptied(self) -> bool:
        return any(self.backlog_emptied(team) is not None for team in self.pool.weights)

    def queued(self) -> dict[str, float]:
        """When each team's first Kueue Workload was created (its backlog reached Kueue's queue): the API server's
        creationTimestamp, whole seconds, so up to 1 s early."""
        listed = client.CustomObjectsApi(self.cluster.api).list_namespaced_custom_object(
            *KUEUE, self.pool.namespace, "workloads"
        )
        first: dict[str, float] = {}
        for workload in json_object(listed)["items"]:
            owner = workload["metadata"]["ownerReferences"][0]["name"]  # the job's TrainJob or Job, `<job>-workers`
            created = datetime.fromisoformat(workload["metadata"]["creationTimestamp"]).timestamp()
            team = team_of(owner)
            first[team] = min(first.get(team, math.inf), created)
        return first

    def result(self, *, from_running: bool = False, quota: QuotaLedger | None = None) -> Result:
        """The shares over the window in which every team had jobs waiting in Kueue's queues: from the last team's
        first Workload (`from_running`: its first pod running, which leaves the late team's start-up to its first
        wait) to the moment the first team's backlog emptied. A team's first wait is from its first Workload to its
        first pod running: the operator's own latency before (making a TrainingJob's workload, which a loaded
        machine stretches for every job alike) is reported beside it, from the first submission.

        `quota`: the same from the quota Kueue held for each job (QuotaLedger) instead of its pod's run: a job
        "runs" from its admission, and its first wait ends there."""
        teams = list(self.pool.weights)
        ledger = self.runs if quota is None else quota.snapshot()
        first_submit = {t: min(s for j, s in self.submitted.items() if team_of(j) == t) for t in teams}
        queued = self.queued()
        first_queued = {t: queued.get(t, math.inf) for t in teams}
        first_start = {t: min((r.start for r in ledger.values() if r.team == t), default=math.inf) for t in teams}
        start = max((first_start if from_running else first_queued).values())
        ends = [e for e in (self.backlog_emptied(t, ledger) for t in teams) if e is not None]
        assert ends, "no team's backlog emptied: the window has not ended"
        end = min(ends)
        gpu_seconds = dict.fromkeys(teams, 0.0)
        preempted = dict.fromkeys(teams, 0)
        for run in ledger.values():
            overlap = min(run.end if run.end is not None else end, end) - max(run.start, start)
            gpu_seconds[run.team] += max(0.0, overlap) * run.gpus
            preempted[run.team] += run.preempted
        total = sum(gpu_seconds.values())
        weights = sum(self.pool.weights.values())
        t0 = min(first_submit.values())
        return Result(
            pool_gpus=self.pool.gpus,
            run_seconds=self.run_seconds,
            backend=self.backend,
            weights=dict(self.pool.weights),
            jobs={t: sum(1 for j in self.submitted if team_of(j) == t) for t in teams},
            window_start=round(start - t0, 3),
            window_end=round(end - t0, 3),
            gpu_seconds={t: round(v, 2) for t, v in gpu_seconds.items()},
            share={t: round(v / total, 4) for t, v in gpu_seconds.items()},
            weight_share={t: round(w / weights, 4) for t, w in self.pool.weights.items()},
            first_wait={t: round(first_start[t] - first_queued[t], 2) for t in teams},
            first_wait_from_submission={t: round(first_start[t] - first_submit[t], 2) for t in teams},
            preempted_runs=preempted,
            utilization=round(total / (self.pool.gpus * (end - start)), 4),
            basis="pods" if quota is None else "quota",
            runs=[r.relative(t0) for r in sorted(ledger.values(), key=lambda r: r.start)],
        )


@dataclass(frozen=True)
class Result:
    """Times in seconds from the first submission; shares of the GPU-seconds used inside the window."""

    pool_gpus: int
    run_seconds: float
    backend: str
    weights: dict[str, int]
    jobs: dict[str, int]
    window_start: float
    window_end: float
    gpu_seconds: dict[str, float]
    share: dict[str, float]
    weight_share: dict[str, float]
    first_wait: dict[str, float]  # the team's first Workload -> its first pod running (quota: its admission)
    first_wait_from_submission: dict[str, float]  # the team's first TrainingJob -> its first pod running
    preempted_runs: dict[str, int]
    utilization: float  # GPU-seconds used / the pool's GPU-seconds in the window
    basis: Literal["pods", "quota"]  # what `runs` are: the pods' runs, or the quota Kueue held for each job
    runs: list[dict[str, Any]]

    def share_error(self, team: str) -> float:
        """How far the team's share is from its weight's, relative to the weight's (0.1 is 10 %)."""
        return (self.share[team] - self.weight_share[team]) / self.weight_share[team]
