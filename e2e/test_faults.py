"""The operator under faults: SIGKILLed over and over, the API server and etcd taken away, watches the API
server ends early. Each test asserts what a user would observe afterwards: every ModelService Ready at its
latest generation, exactly one child set each (one Deployment, one Service, one ReplicaSet per Deployment),
the status intact, and whether `kubemaas run` itself lived through it.

The SIGKILL test runs on the shared cluster in its own namespace. The control-plane faults run on a
throwaway local cluster (module scope, no training operator): restarting the shared API server or etcd
would break every other test running against it. That cluster's API server runs with a short
`--min-request-timeout`, which only changes watches that do not ask for their own timeout, i.e. only
the operator of the watch test (`--watch-timeout=0`).

Each test bounds its own time; together they take about 4 minutes on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster import control_plane
from e2e.conftest import PSS_RESTRICTED, SERIAL_THROWAWAY, E2ECluster, OperatorLauncher
from e2e.kube import GROUP, VERSION, apiserver_requests, model_service, requests_between
from e2e.test_modelservice import (  # noqa: F401  (crds and store are fixtures)
    crds,
    create_job,
    custom,
    publish,
    store,
)
from e2e.typed_client import as_json, body_as, json_object, meta, name_of, new_client, present
from e2e.waits import WaitTimeout
from kubemaas.controllers.labels import parent_label

# A throwaway control plane each, whose API server and etcd these tests stop: one at a time.
pytestmark = SERIAL_THROWAWAY

PARENT = parent_label("ModelService")
MIN_REQUEST_TIMEOUT = 4  # seconds; the API server ends a watch without timeoutSeconds after 4-8 s
CONVERGE_TIMEOUT = 180.0

Replicas = dict[str, int]  # ModelService name -> spec.replicas it must converge to


# --------------------------------------------------------------------------- what converged means


def converged(objects: dict[str, dict[str, Any]], want: Replicas) -> bool:
    """Every ModelService exists, Ready, its status written for its latest generation, all replicas ready."""
    if set(objects) != set(want):
        return False
    for name, ms in objects.items():
        status = ms.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        if not (
            ready
            and status.get("observedGeneration") == ms["metadata"]["generation"]
            and status.get("readyReplicas") == want[name]
            and status.get("replicas") == want[name]
        ):
            return False
    return True


def wait_converged(cluster: E2ECluster, namespace: str, want: Replicas, timeout: float = CONVERGE_TIMEOUT) -> float:
    started = time.monotonic()
    try:
        cluster.wait_objects(
            f"{GROUP}/{VERSION}",
            "ModelService",
            namespace,
            lambda objects: converged(objects, want),
            what=f"{len(want)} ModelServices Ready at their latest generation",
            timeout=timeout,
        )
    except WaitTimeout as error:
        raise WaitTimeout(f"{error}\n{stalled(cluster, namespace, want)}") from None
    return time.monotonic() - started


def stalled(cluster: E2ECluster, namespace: str, want: Replicas) -> str:
    """Where the ModelServices that did not converge stand: their Deployments, pods and the nodes (on a timeout)."""
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)

    def plain(listed: object) -> dict[str, Any]:
        return as_json(cluster.api, listed)

    services = json_object(custom(cluster).list_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices"))
    behind = {
        ms["metadata"]["name"]: ms.get("status")
        for ms in services["items"]
        if not converged({"ms": ms}, {"ms": want.get(ms["metadata"]["name"], -1)})
    }
    deployments = {d["metadata"]["name"]: d for d in plain(apps.list_namespaced_deployment(namespace))["items"]}
    pods = plain(core.list_namespaced_pod(namespace))["items"]
    lines = [f"{len(behind)} of {len(want)} not converged: {', '.join(sorted(behind))}"]
    for name in sorted(behind)[:5]:
        lines.append(f"  {name} status: {json.dumps(behind[name])[:400]}")
        lines.append(f"    Deployment status: {json.dumps((deployments.get(name) or {}).get('status'))[:600]}")
        lines += [
            f"    pod {pod['metadata']['name']} on {pod['spec'].get('nodeName')}: {json.dumps(pod.get('status'))[:400]}"
            for pod in pods
            if pod["metadata"]["name"].startswith(f"{name}-")
        ]
    for node in plain(core.list_node())["items"]:
        ready = [c for c in node["status"].get("conditions", ()) if c["type"] == "Ready"]
        lines.append(f"  node {node['metadata']['name']}: {ready} taints {node['spec'].get('taints')}")
    return "\n".join(lines)


def assert_one_child_set(cluster: E2ECluster, namespace: str, want: Replicas) -> None:
    """Exactly the children one reconcile of each spec makes, each owned by its ModelService, nothing else."""
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    listed = json_object(custom(cluster).list_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices"))
    uids = {ms["metadata"]["name"]: ms["metadata"]["uid"] for ms in listed["items"]}
    assert set(uids) == set(want)
    for kind, items in (
        ("Deployment", apps.list_namespaced_deployment(namespace, label_selector=PARENT).items),
        ("Service", core.list_namespaced_service(namespace, label_selector=PARENT).items),
    ):
        by_parent: dict[str, list[str]] = defaultdict(list)
        for item in items:
            name, metadata = name_of(item), meta(item)
            parent = present(metadata.labels, f"{kind} {name}'s labels")[PARENT]
            by_parent[parent].append(name)
            (owner,) = present(metadata.owner_references, f"{kind} {name}'s owners")
            assert owner.controller and owner.uid == uids.get(parent), f"{kind} {name}: {owner}"
            if isinstance(item, client.V1Deployment):
                replicas = present(item.spec, f"Deployment {name}'s spec").replicas
                assert replicas == want[parent], f"Deployment {name}: {replicas}"
        wrong = {p: sorted(n) for p, n in by_parent.items() if n != [p]}
        assert not wrong and set(by_parent) == set(want), f"{kind}s per ModelService: {wrong or sorted(by_parent)}"
    # One ReplicaSet per Deployment: the template never changed, so a second one would mean the operator
    # wrote a different template at some point (a duplicate or flapping child).
    replica_sets = Counter(
        owners[0].name
        for rs in apps.list_namespaced_replica_set(namespace).items
        if (owners := meta(rs).owner_references)
    )
    assert replica_sets == Counter(dict.fromkeys(want, 1)), f"ReplicaSets per Deployment: {replica_sets}"


def create_services(cluster: E2ECluster, namespace: str, want: Replicas) -> None:
    """Create the ModelServices at once (8 concurrent requests), as a burst from a CI pipeline would."""
    api = custom(cluster)

    def one(item: tuple[str, int]) -> None:
        body = model_service(item[0], {"trainingJobRef": {"name": "digits"}}, replicas=item[1])
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, want.items()))


def set_replicas(cluster: E2ECluster, namespace: str, want: Replicas) -> None:
    api = custom(cluster)

    def one(item: tuple[str, int]) -> None:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelservices", item[0], {"spec": {"replicas": item[1]}}
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, want.items()))


def operator_log_summary(log: Path) -> dict[str, int]:
    """How often the operator started, and what kopf logged about the API going away."""
    text = log.read_text(errors="replace")
    return {
        "starts": text.count("Initial authentication has been initiated"),
        "request_retries": len(re.findall(r"Request attempt #\d+ failed; will retry", text)),
        "tracebacks": text.count("Traceback"),
    }


# --------------------------------------------------------------------------- the operator SIGKILLed

KILL_OBJECTS = 40
KILL_ROUNDS = 10


def test_operator_sigkilled_ten_times_while_objects_change_converges_exactly(
    cluster: E2ECluster,
    namespace: str,
    crds: None,  # noqa: F811
    store: str,  # noqa: F811
    operator_launcher: OperatorLauncher,
) -> None:
    create_job(cluster, namespace, "digits")
    publish(cluster, namespace, "digits", "v1")
    chance = random.Random(15)
    names = [f"k{i:03d}" for i in range(KILL_OBJECTS)]
    want: Replicas = dict.fromkeys(names, 1)
    operator_launcher.start()
    started = time.monotonic()
    create_services(cluster, namespace, want)
    for round_ in range(KILL_ROUNDS):
        if round_:
            # Every object changes in every round: scale between 1 and 3 replicas.
            want = {name: 1 + (i + round_) % 3 for i, name in enumerate(names)}
            set_replicas(cluster, namespace, want)
        time.sleep(chance.uniform(0.5, 2.5))
        assert operator_launcher.current is not None
        operator_launcher.current.kill9()
        # Up and watching again before the next round changes objects: each kill lands on a working operator.
        operator_launcher.start()
    converge_seconds = wait_converged(cluster, namespace, want)
    assert_one_child_set(cluster, namespace, want)
    summary = operator_log_summary(operator_launcher.log)
    killing = time.monotonic() - started - converge_seconds
    print(
        f"\n{KILL_OBJECTS} ModelServices, {KILL_ROUNDS} SIGKILLs in {killing:.0f}s;"
        f" converged {converge_seconds:.1f}s after the last restart; {summary}"
    )
    assert summary["starts"] == KILL_ROUNDS + 1
    assert summary["tracebacks"] == 0, operator_launcher.log.read_text(errors="replace")[-4000:]


# --------------------------------------------------------------------------- a throwaway control plane


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    """A second local cluster whose API server and etcd these tests may stop; CRDs applied."""
    if os.environ.get("KUBEMAAS_E2E_KUBECONFIG"):
        pytest.skip("needs the local control plane to start a throwaway cluster")
    root = tmp_path_factory.mktemp("faults") / "run"
    local = control_plane.up(
        root, training_operator=False, apiserver_args=[f"--min-request-timeout={MIN_REQUEST_TIMEOUT}"]
    )
    try:
        cluster = E2ECluster(local.kubeconfig, new_client(local.kubeconfig), local)
        cluster.install_crds()
        yield cluster
    finally:
        control_plane.down(root)


def serving_namespace(cluster: E2ECluster, name: str) -> str:
    """A restricted namespace with the model store's claim (bound), its key Secret and a published job."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=PSS_RESTRICTED)))
    cluster.wait_object("v1", "ServiceAccount", name, "default", lambda sa: True, what=f"service account in {name}")
    volume = {
        "metadata": {"name": f"{name}-models"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/kubemaas-e2e/{name}"},
            "claimRef": {"namespace": name, "name": "models"},
        },
    }
    core.create_persistent_volume(body_as(client.V1PersistentVolume, volume))
    claim = {
        "metadata": {"name": "models"},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"{name}-models",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    core.create_namespaced_persistent_volume_claim(name, body_as(client.V1PersistentVolumeClaim, claim))
    secret = {"metadata": {"name": "digits-key"}, "stringData": {"active": "k1"}}
    core.create_namespaced_secret(name, body_as(client.V1Secret, secret))
    cluster.wait_for(
        "claim models to be Bound",
        lambda: present(core.read_namespaced_persistent_volume_claim("models", name).status).phase == "Bound",
        # A just-started controller-manager on the loaded machine once took over 30 s for the first bind.
        timeout=90,
    )
    cluster.wait_for(
        "the ModelService CRD to be served in the new namespace",
        lambda: custom(cluster).list_namespaced_custom_object(GROUP, VERSION, name, "modelservices"),
    )
    create_job(cluster, name, "digits")
    publish(cluster, name, "digits", "v1")
    return name


def deployments_exist(cluster: E2ECluster, namespace: str, count: int) -> int:
    """Wait until at least `count` Deployments exist; returns how many do."""
    return cluster.wait_objects(
        "apps/v1",
        "Deployment",
        namespace,
        lambda objects: len(objects) if len(objects) >= count else None,
        what=f"{count} Deployments",
        label_selector=PARENT,
    )


def statuses_written(cluster: E2ECluster, namespace: str) -> int:
    items = json_object(custom(cluster).list_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices"))[
        "items"
    ]
    return sum(1 for ms in items if (ms.get("status") or {}).get("observedGeneration"))


# --------------------------------------------------------------------------- watches the API server ends

WATCH_OBJECTS = 10
WATCH_WINDOW = 30.0


def test_watches_the_api_server_ends_are_resumed_without_a_hot_loop(throwaway: E2ECluster, tmp_path: Path) -> None:
    namespace = serving_namespace(throwaway, "watch-closed")
    launcher = OperatorLauncher(throwaway.kubeconfig, [namespace], tmp_path / "kubemaas-run.log", ["--watch-timeout=0"])
    assert throwaway.local is not None
    local = throwaway.local
    try:
        launcher.start()
        want: Replicas = {f"w{i:02d}": 1 for i in range(WATCH_OBJECTS)}
        create_services(throwaway, namespace, want)
        wait_converged(throwaway, namespace, want, timeout=90)
        before = apiserver_requests(local.api_port, local.root / "pki")
        time.sleep(WATCH_WINDOW)
        after = apiserver_requests(local.api_port, local.root / "pki")
        window = requests_between(before, after)
        # Only this operator watches ModelServices without a timeout of its own (the garbage collector's
        # informers choose 5-10 minutes client-side), so these are its reconnects.
        rewatches = window[("WATCH", "modelservices", "")]
        relists = window[("LIST", "modelservices", "")]
        watch_kinds = {r for (verb, r, _) in window if verb == "WATCH"}
        total_rate = sum(window.values()) / WATCH_WINDOW
        writes = {k: v for k, v in window.items() if k[0] in ("POST", "PUT", "PATCH", "APPLY") and k[2] == ""}
        print(
            f"\nin {WATCH_WINDOW:.0f}s with --min-request-timeout={MIN_REQUEST_TIMEOUT}: modelservices WATCH "
            f"{rewatches}, LIST {relists}; all clients {total_rate:.1f} requests/s over {len(watch_kinds)} watched "
            f"resources; writes {writes}"
        )
        # The server ended each watch every 4-8 s and the operator came back each time ...
        assert rewatches >= WATCH_WINDOW / (2 * MIN_REQUEST_TIMEOUT) - 1, window
        # ... at most once per server timeout: no reconnect storm (a hot loop would be hundreds per second).
        assert rewatches <= WATCH_WINDOW / MIN_REQUEST_TIMEOUT + 2, window
        assert total_rate < 20, f"{total_rate:.1f} requests/s: {window.most_common(10)}"
        assert ("PATCH", "modelservices", "status") not in window, "the idle operator patched a status"
        # It still sees changes: a new object and a changed one converge.
        want = {**want, "w00": 2, "late": 1}
        create_services(throwaway, namespace, {"late": 1})
        set_replicas(throwaway, namespace, {"w00": 2})
        wait_converged(throwaway, namespace, want, timeout=60)
        assert_one_child_set(throwaway, namespace, want)
        assert launcher.current is not None
        assert launcher.current.process.poll() is None, launcher.current.tail()
    finally:
        launcher.stop()


# --------------------------------------------------------------------------- API server and etcd restarts

RESTART_OBJECTS = 60  # 200 in the issue: at ~2 reconciles/s on this 2-core machine that alone is 100 s a test


@pytest.mark.parametrize(("component", "downtime"), [("kube-apiserver", 5.0), ("etcd", 20.0)])
def test_control_plane_restart_while_reconciling_loses_nothing(
    throwaway: E2ECluster, tmp_path: Path, component: str, downtime: float
) -> None:
    namespace = serving_namespace(throwaway, f"restart-{component}")
    launcher = OperatorLauncher(throwaway.kubeconfig, [namespace], tmp_path / "kubemaas-run.log")
    assert throwaway.local is not None
    try:
        launcher.start()
        want: Replicas = {f"r{i:03d}": 1 + i % 2 for i in range(RESTART_OBJECTS)}
        started = time.monotonic()
        create_services(throwaway, namespace, want)
        # Mid-burst: some children exist, most do not yet (asserted below from what was seen at the stop).
        deployments = deployments_exist(throwaway, namespace, RESTART_OBJECTS // 10)
        statuses = statuses_written(throwaway, namespace)
        into = time.monotonic() - started
        control_plane.restart_component(throwaway.local, component, downtime=downtime)
        converge_seconds = wait_converged(throwaway, namespace, want)
        assert_one_child_set(throwaway, namespace, want)
        assert statuses < RESTART_OBJECTS, "everything had converged before the fault: the test proved nothing"
        assert launcher.current is not None
        exited = launcher.current.process.poll()
        summary = operator_log_summary(launcher.log)
        print(
            f"\n{component} stopped {into:.1f}s into a burst of {RESTART_OBJECTS} ModelServices ({deployments}"
            f" Deployments, {statuses} statuses written), down {downtime:.0f}s; all converged {converge_seconds:.1f}s"
            f" after it served again; operator exit code {exited} (None: still running); {summary}"
        )
        # Designed: the operator rides a control-plane outage out (kopf retries requests and watches) and
        # never exits for it; a restart of the process is not needed to converge.
        assert exited is None, launcher.current.tail()
        assert summary["starts"] == 1 and summary["tracebacks"] == 0, launcher.current.tail()
    finally:
        launcher.stop()
