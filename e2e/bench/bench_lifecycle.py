"""Lifecycle benchmark on the real node: a ModelService from apply to its first correct answer, stage by stage,
and the rollout of a new version; beside the stages their floors, measured in the same run.

Run from the repository root, as root:  make bench-lifecycle
    (= .venv/bin/python e2e/bench/bench_lifecycle.py [--mib 256] [--rounds 2])
It starts the local cluster with its real node when none runs (`python -m e2e.cluster up --real-node`), imports
the images, and works in a namespace of its own (deleted afterwards).

Stages, from the local times at which this process's watches saw each change (the kubelet reports container
states as it syncs, so a stage is resolved to well under a second, not to the API's whole-second timestamps):

  operator   apply -> the Deployment exists
  schedule   Deployment -> the pod bound to the node
  start      bound -> the loader init container running (sandbox, network, volumes, container start)
  loader     the loader running -> finished: decrypting the artifact into the emptyDir, plus the process start;
             its own time for the load ("loaded ... in X s" in its log) is reported beside it
  serve      the loader finished -> the first correct answer through the Service, from a client pod asking
             every 50 ms (tritonserver starts and loads the model, the readiness probe passes, the endpoint
             reaches kube-proxy). When the watch saw the pod Ready is reported beside it, not as a stage
             boundary: it arrived up to a second after answers did, below what this split can resolve.

Floors, same run, same machine:

  copy       a plain copy of the artifact's bytes on the same filesystem, against the loader's own time
  tritonserver  the same tritonserver (the test harness's) starting on an already decrypted repository of the
             same model, until ready: the floor of the triton stage
  pod        a plain pod of the Triton image running `true`: apply -> the container started, the floor of
             schedule + start

Rollout: spec.model.version v1 -> v2, until the client's answers are all v2's and status.servedVersion says v2.
Writes e2e/bench/results/lifecycle.json and lifecycle.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from kubernetes import client

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from e2e.bench.bench_reconcile import machine, operator  # noqa: E402
from e2e.cluster import control_plane, images, node  # noqa: E402
from e2e.cluster.node import REAL_NODE_LABEL  # noqa: E402
from e2e.conftest import E2ECluster  # noqa: E402
from e2e.kube import KSERVE_CLIENT, apply_crd, bound_claim, client_requests, load_crds, model_service  # noqa: E402
from e2e.typed_client import Watch, body_as, name_of, new_client  # noqa: E402
from kubemaas.manifests.modelservice import VERSION_LABEL  # noqa: E402
from kubemaas.manifests.pods import (  # noqa: E402
    WORKLOAD_UID,
    restricted_container_security_context,
    restricted_pod_security_context,
)
from kubemaas.runtime.artifacts import ArtifactStore  # noqa: E402
from kubemaas.runtime.keyring import generate_key, write_keyring_dir  # noqa: E402
from kubemaas.runtime.loader import LoadRequest, load_model  # noqa: E402
from kubemaas.runtime.triton_config import Backend, InstanceKind, ServingSettings  # noqa: E402
from tests.serving.conftest import IN_FEATURES, INPUTS, KEY_ID, MODEL, OUT_FEATURES, OUTPUTS, save_torchscript  # noqa: E402
from tests.serving.triton_harness import TritonServer  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
GROUP, VERSION = "kubemaas.io", "v1alpha1"
TRITON_IMAGE = images.DOCKERFILE_IMAGES["triton-python"].ref
STAGES = ("operator", "schedule", "start", "loader", "serve")
LOADED = re.compile(r"loaded \S+ version \S+ \((\d+) bytes.* in ([0-9.]+)s")


@dataclass
class Round:
    stages: dict[str, float]  # stage -> seconds
    total: float  # apply -> first correct answer
    ready_seen_after_loader: float  # the watch saw the pod Ready this long after the loader finished
    loader_own_seconds: float  # the load itself, as the loader reports it
    copy_seconds: float  # a plain copy of the same bytes
    tritonserver_floor_seconds: float  # tritonserver ready on the decrypted repository
    pod_floor_seconds: float  # a plain pod of the Triton image: apply -> container started
    rollout_answers_seconds: float  # version patched -> every answer from v2
    rollout_status_seconds: float  # version patched -> status.servedVersion v2
    failed_requests_during_rollout: int


@dataclass
class Seen:
    """First local time each watched change was seen."""

    times: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, what: str) -> None:
        with self.lock:
            self.times.setdefault(what, time.time())


def mlp(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, OUT_FEATURES),
    ).eval()


def watch_serving_pods(api: client.ApiClient, namespace: str, seen: Seen, stop: threading.Event) -> None:
    """Mark, per model version, when its pod was bound, its loader ran and ended, its server started, it was Ready."""
    core = client.CoreV1Api(api)
    while not stop.is_set():
        for event in Watch().stream(
            core.list_namespaced_pod, namespace, label_selector="kubemaas.io/modelservice=digits", timeout_seconds=2
        ):
            pod = event["object"]
            version = (pod.metadata.labels or {}).get(VERSION_LABEL, "?")
            if pod.spec.node_name:
                seen.mark(f"{version}/bound")
            for status in pod.status.init_container_statuses or ():
                if status.state.running or status.state.terminated:
                    seen.mark(f"{version}/loader-running")
                if status.state.terminated and status.state.terminated.exit_code == 0:
                    seen.mark(f"{version}/loader-done")
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ()):
                seen.mark(f"{version}/ready")


def watch_deployment(api: client.ApiClient, namespace: str, seen: Seen, stop: threading.Event) -> None:
    apps = client.AppsV1Api(api)
    while not stop.is_set():
        for event in Watch().stream(apps.list_namespaced_deployment, namespace, timeout_seconds=2):
            if event["object"].metadata.name == "digits":
                seen.mark("deployment")


def client_pod(namespace: str, placement: dict[str, Any], pixels: list[float]) -> dict[str, Any]:
    url = f"http://digits.{namespace}.svc:8000/v2/models/{MODEL}/infer"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            **placement,
            "automountServiceAccountToken": False,
            "securityContext": restricted_pod_security_context(),
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": images.BASE_IMAGE,
                    "command": ["python", "-c", KSERVE_CLIENT, url, json.dumps(pixels), "0.05"],
                    "securityContext": restricted_container_security_context(),
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                }
            ],
        },
    }


def client_answers(core: client.CoreV1Api, namespace: str) -> list[dict[str, Any]]:
    log = core.read_namespaced_pod_log("client", namespace, container="main")
    return client_requests(log)


def matches(out: list[float], expected: list[float]) -> bool:
    return len(out) == len(expected) and all(
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(out, expected, strict=True)
    )


class Bench:
    def __init__(self, cluster: control_plane.Cluster, work: Path, mib: int) -> None:
        self.cluster = cluster
        self.api = new_client(cluster.kubeconfig)
        # The e2e suite's waits: watches for objects, its one polling wait for what cannot be watched (logs).
        self.e2e = E2ECluster(cluster.kubeconfig, self.api, cluster)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.work = work
        (real,) = self.core.list_node(label_selector=f"{REAL_NODE_LABEL}=true").items
        self.node_name = name_of(real)
        self.placement = node.pod_placement()
        self.hidden = int(math.sqrt(mib * 2**20 / 4))  # the hidden x hidden layer holds nearly all the bytes
        self.pixels = [float(i % 17) / 16.0 for i in range(IN_FEATURES)]
        self.models = {v: mlp(self.hidden, seed) for v, seed in (("v1", 1), ("v2", 2))}
        with torch.no_grad():
            row = torch.tensor([self.pixels])
            self.expected = {v: m(row)[0].tolist() for v, m in self.models.items()}

    def wait_object(self, api_version: str, kind: str, namespace: str, name: str, check: Any, what: str) -> Any:
        return self.e2e.wait_object(api_version, kind, namespace, name, check, what=what, timeout=600)

    def namespace(self) -> str:
        name = f"bench-lifecycle-{uuid.uuid4().hex[:6]}"
        labels = {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        self.core.create_namespace(body_as(client.V1Namespace, {"metadata": {"name": name, "labels": labels}}))
        return name

    def publish(self, root: Path) -> tuple[bytes, int]:
        """v1 and v2 encrypted into the store under `root`, readable by the pods; returns the key and the size."""
        key = generate_key()
        store = ArtifactStore(root / "store")
        for version, module in self.models.items():
            plaintext = save_torchscript(module, self.work / f"{version}.pt")
            store.publish(
                plaintext, model=MODEL, version=version, key=key, key_id=KEY_ID, inputs=INPUTS, outputs=OUTPUTS
            )
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        size = (root / "store" / MODEL / "v1" / "model.kmenc").stat().st_size
        return key, size

    def floor_copy(self, root: Path) -> float:
        source = root / "store" / MODEL / "v1" / "model.kmenc"
        target = self.work / "copy"
        started = time.monotonic()
        shutil.copyfile(source, target)
        with target.open("rb+") as f:
            os.fsync(f.fileno())  # the loader fsyncs what it writes
        seconds = time.monotonic() - started
        target.unlink()
        return seconds

    def floor_tritonserver(self, root: Path, key: bytes) -> float:
        """tritonserver ready on a repository the loader already decrypted (no container, no kubelet)."""
        key_dir = write_keyring_dir(self.work / "keys", {KEY_ID: key}, KEY_ID)
        repository = self.work / "repository"
        settings = ServingSettings(backend=Backend.PYTHON, instance_kind=InstanceKind.CPU)
        request = LoadRequest(f"file://{root / 'store'}", MODEL, "v1", key_dir, repository, settings)
        load_model(request)
        started = time.monotonic()
        with TritonServer(repository, self.work / "triton"):
            seconds = time.monotonic() - started
        for scratch in (repository, key_dir, self.work / "triton"):
            shutil.rmtree(scratch)
        return seconds

    def floor_pod(self, namespace: str) -> float:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "floor"},
            "spec": {
                **self.placement,
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": restricted_pod_security_context(),
                "containers": [
                    {
                        "name": "main",
                        "image": TRITON_IMAGE,
                        "command": ["true"],
                        "securityContext": restricted_container_security_context(),
                    }
                ],
            },
        }
        started = time.time()
        self.core.create_namespaced_pod(namespace, body_as(client.V1Pod, pod))

        def ran(p: dict[str, Any]) -> bool:
            statuses = (p.get("status") or {}).get("containerStatuses") or []
            return any((s.get("state") or {}).get("terminated") for s in statuses)

        self.wait_object("v1", "Pod", namespace, "floor", ran, "the floor pod to run")
        seconds = time.time() - started
        self.core.delete_namespaced_pod("floor", namespace, grace_period_seconds=0)
        return seconds

    def round(self, index: int) -> Round:
        namespace = self.namespace()
        root = Path("/tmp/kubemaas-bench-lifecycle") / namespace
        root.mkdir(parents=True)
        os.chown(root, WORKLOAD_UID, WORKLOAD_UID)
        volume = bound_claim(self.api, namespace, "models", {"local": {"path": str(root)}}, node=self.node_name)
        try:
            with operator(self.cluster, [namespace], self.work / f"operator-{index}.log", 0):
                return self._round(namespace, root)
        finally:
            self.core.delete_namespace(namespace)
            self.core.delete_persistent_volume(volume)
            shutil.rmtree(root, ignore_errors=True)

    def first_answer(self, namespace: str, version: str) -> float | None:
        """When the client first got `version`'s answer."""
        answers = client_answers(self.core, namespace)
        return next((a["t"] for a in answers if "out" in a and matches(a["out"], self.expected[version])), None)

    def _round(self, namespace: str, root: Path) -> Round:
        key, size = self.publish(root)
        secret = {"key-" + KEY_ID: base64.b64encode(key).decode(), "active": base64.b64encode(KEY_ID.encode()).decode()}
        key_secret = {"metadata": {"name": "digits-key"}, "data": secret}
        self.core.create_namespaced_secret(namespace, body_as(client.V1Secret, key_secret))
        copy_seconds = self.floor_copy(root)
        tritonserver_seconds = self.floor_tritonserver(root, key)
        pod_seconds = self.floor_pod(namespace)

        answering = client_pod(namespace, self.placement, self.pixels)
        self.core.create_namespaced_pod(namespace, body_as(client.V1Pod, answering))
        self.wait_object("v1", "Pod", namespace, "client", lambda p: (p.get("status") or {}).get("phase") == "Running",
                         "the client pod to run")  # fmt: skip
        seen, stop = Seen(), threading.Event()
        watchers = [
            threading.Thread(target=w, args=(self.api, namespace, seen, stop), daemon=True)
            for w in (watch_serving_pods, watch_deployment)
        ]
        for w in watchers:
            w.start()
        memory = f"{max(2, math.ceil(size * 4 / 2**30))}Gi"  # the python backend holds the model twice while loading
        source = {
            "uri": "pvc://models/store/digits",
            "version": "v1",
            "encryption": {"keySecretRef": {"name": "digits-key"}},
        }
        ms = model_service(
            "digits",
            source,
            replicas=1,
            scheduling=self.placement,
            resources={"memory": memory},
            runtime={"image": TRITON_IMAGE, "backend": "python"},
        )
        applied = time.time()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
        first = self.e2e.wait_for("the first correct answer", lambda: self.first_answer(namespace, "v1"), timeout=600)
        t = seen.times
        marks = [
            applied,
            t["deployment"],
            t["v1/bound"],
            t["v1/loader-running"],
            t["v1/loader-done"],
            first,
        ]
        stages = {name: round(b - a, 3) for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{VERSION_LABEL}=v1").items
        loader_log = self.core.read_namespaced_pod_log(name_of(pods[0]), namespace, container="model-loader")
        loaded = LOADED.search(loader_log)
        if loaded is None:
            raise RuntimeError(f"the loader's log has no 'loaded ... in X s' line:\n{loader_log}")

        patched = time.time()
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelservices", "digits", {"spec": {"model": {"version": "v2"}}}
        )

        def served(obj: dict[str, Any]) -> bool:
            return (obj.get("status") or {}).get("servedVersion") == "v2"

        self.wait_object(f"{GROUP}/{VERSION}", "ModelService", namespace, "digits", served, "servedVersion v2")
        status_seconds = time.time() - patched

        def only_v2_since() -> float | None:
            answers = [a for a in client_answers(self.core, namespace) if a["t"] >= patched and "out" in a]
            last_v1 = max((a["t"] for a in answers if matches(a["out"], self.expected["v1"])), default=patched)
            later = [a for a in answers if a["t"] > last_v1]
            # Settled: v2 answered for 3 s after the last v1 answer.
            return last_v1 if later and later[-1]["t"] - last_v1 > 3 else None

        last_v1 = self.e2e.wait_for("answers only from v2", only_v2_since, timeout=600)
        answers = [a for a in client_answers(self.core, namespace) if a["t"] >= patched]
        switched = min(
            a["t"] for a in answers if "out" in a and a["t"] > last_v1 and matches(a["out"], self.expected["v2"])
        )
        stop.set()
        return Round(
            stages=stages,
            total=round(first - applied, 3),
            ready_seen_after_loader=round(t["v1/ready"] - t["v1/loader-done"], 3),
            loader_own_seconds=float(loaded[2]),
            copy_seconds=round(copy_seconds, 3),
            tritonserver_floor_seconds=round(tritonserver_seconds, 3),
            pod_floor_seconds=round(pod_seconds, 3),
            rollout_answers_seconds=round(switched - patched, 3),
            rollout_status_seconds=round(status_seconds, 3),
            failed_requests_during_rollout=sum(1 for a in answers if "error" in a),
        )


def median(rounds: list[Round], get: Callable[[Round], float]) -> float:
    return round(statistics.median(get(r) for r in rounds), 3)


def pod_and_loader(r: Round) -> float:
    return r.stages["schedule"] + r.stages["start"] + r.stages["loader"]


def table(rounds: list[Round], size: int) -> str:
    def m(get: Callable[[Round], float]) -> str:
        return f"{median(rounds, get):.2f}"

    loader_ratio = median(rounds, lambda r: r.loader_own_seconds / r.copy_seconds)
    triton_ratio = median(rounds, lambda r: r.stages["serve"] / r.tritonserver_floor_seconds)
    pod_ratio = median(rounds, lambda r: pod_and_loader(r) / r.pod_floor_seconds)
    lines = [
        f"ModelService on the real node, a {size / 2**20:.0f} MiB model, median of {len(rounds)} rounds (seconds):",
        "",
        "| stage | seconds | floor, same run | seconds | ratio |",
        "|---|---:|---|---:|---:|",
        f"| operator: apply -> Deployment | {m(lambda r: r.stages['operator'])} | | | |",
        # The kubelet reports a short init container's start and end in one status update: schedule, start and
        # loader are one row, the loader's own time the next.
        f"| pod: Deployment -> scheduled, started, loader finished | {m(pod_and_loader)}"
        f" | a plain pod of the same image: apply -> ran | {m(lambda r: r.pod_floor_seconds)} | {pod_ratio:.2f} |",
        f"| the load itself (decrypt + write), as the loader reports it | {m(lambda r: r.loader_own_seconds)}"
        f" | a plain copy of the same bytes (+fsync) | {m(lambda r: r.copy_seconds)} | {loader_ratio:.2f} |",
        f"| serve: loader done -> first correct answer | {m(lambda r: r.stages['serve'])}"
        f" | tritonserver ready on the decrypted repository | {m(lambda r: r.tritonserver_floor_seconds)}"
        f" | {triton_ratio:.2f} |",
        f"| **apply -> first correct answer** | **{m(lambda r: r.total)}** | | | |",
        f"| rollout v1 -> v2: until every answer is v2's | {m(lambda r: r.rollout_answers_seconds)} | | | |",
        f"| rollout v1 -> v2: until status.servedVersion is v2 | {m(lambda r: r.rollout_status_seconds)} | | | |",
        "",
        f"Failed requests during the rollouts: {sum(r.failed_requests_during_rollout for r in rounds)}.",
    ]
    return "\n".join(lines)


def plot(rounds: list[Round], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    left = 0.0
    for stage in STAGES:
        value = median(rounds, lambda r, s=stage: r.stages[s])  # type: ignore[misc]
        ax.barh(["Kubemaas"], [value], left=left, label=stage)
        left += value
    floors = [
        ("pod floor", median(rounds, lambda r: r.pod_floor_seconds)),
        ("copy floor", median(rounds, lambda r: r.copy_seconds)),
        ("tritonserver floor", median(rounds, lambda r: r.tritonserver_floor_seconds)),
    ]
    left = 0.0
    for name, value in floors:
        ax.barh(["floors"], [value], left=left, label=name, hatch="//", alpha=0.6)
        left += value
    ax.set_xlabel("seconds (median of rounds)")
    ax.set_title("ModelService: apply -> first correct answer, by stage, beside the floors")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the served model (one hidden x hidden layer)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="lifecycle", help="results file stem in e2e/bench/results")
    parser.add_argument("--report", action="store_true", help="only print the table and plot of the saved results")
    args = parser.parse_args()
    if args.report:
        saved = json.loads((RESULTS / f"{args.out}.json").read_text())
        rounds = [Round(**r) for r in saved["rounds"]]
        plot(rounds, RESULTS / f"{args.out}.png")
        print(table(rounds, saved["model_bytes"]))
        return 0

    cluster = control_plane.up(real_node=True)
    node.load_images(cluster, list(images.BUILDERS))
    with tempfile.TemporaryDirectory(prefix="kubemaas-bench-lifecycle-") as scratch:
        bench = Bench(cluster, Path(scratch), args.mib)
        for crd in load_crds():
            apply_crd(bench.api, crd)
        info = machine()
        rounds = [bench.round(index) for index in range(args.rounds)]
        size = int(bench.hidden**2 * 4)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "model_bytes": size, "rounds": [asdict(r) for r in rounds]}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rounds, RESULTS / f"{args.out}.png")
    print(table(rounds, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
