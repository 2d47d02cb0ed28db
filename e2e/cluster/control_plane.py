"""Bring the local control plane up and down.

Layout of the run directory (default ~/.cache/kubemaas/run):
  kubeconfig       admin kubeconfig (system:masters), printed by `up`
  pki/             CA, serving and client certs, service-account keys
  kubeconfigs/     one per component, each with its own identity
  logs/<name>.log  one log per component
  etcd-data/       etcd's data (wiped on every `up`)
  s3/, s3-credentials.json   the S3 server's buckets and keys (object_store.py)
  state.json       pids and ports, read by `down`
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import batch, node, object_store, processes
from .build import ensure_built, module_source_dir
from .kubeconfig import write_kubeconfig
from .nodes import ALL_NODES, node_manifest
from .pki import CertificateAuthority, KeyPair, service_account_keys
from .processes import ComponentError, Running
from .training_operator import project_webhook_cert, training_operator_args
from .versions import CLUSTER_DIR, load_components, run_dir

# All test traffic stays on this machine, in addresses that resemble no other network: pod and Service
# ranges come from the benchmarking block 198.18.0.0/15 (RFC 2544), never from 10/8, 172.16/12 or 192.168/16.
POD_CIDR = "198.18.0.0/16"
# kwok hands out pod IPs from the lower half; the real node's bridge takes node.NODE_POD_SUBNET in the upper.
KWOK_POD_CIDR = "198.18.0.0/17"
SERVICE_CIDR = "198.19.0.0/16"
SERVICE_IP = "198.19.0.1"
READY_TIMEOUT = 90.0
STAGES_FILE = CLUSTER_DIR / "kwok-stages.yaml"
ADMISSION_PLUGINS = ",".join(
    [
        "NamespaceLifecycle",
        "LimitRanger",
        "ServiceAccount",
        "DefaultStorageClass",
        "DefaultTolerationSeconds",
        "MutatingAdmissionWebhook",
        "ValidatingAdmissionWebhook",
        "ValidatingAdmissionPolicy",
        "ResourceQuota",
        "Priority",
        "PodSecurity",
        "NodeRestriction",
    ]
)


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@dataclass
class Cluster:
    """A started control plane, as recorded in the run directory."""

    root: Path
    bin: Path
    components: list[Running] = field(default_factory=list)
    api_port: int = 0
    # The address the API server advertises and a real node's kubelet uses; empty without a real node.
    node_ip: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def component(self, name: str) -> Running:
        return next(c for c in self.components if c.name == name)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        command = [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ComponentError(f"kubectl {' '.join(args)[:200]} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def save(self) -> None:
        extra = {"bin": str(self.bin), "api_port": self.api_port, "node_ip": self.node_ip}
        processes.save_state(self.state_file, self.components, extra)


def load(root: Path | None = None) -> Cluster | None:
    root = root or run_dir()
    state = root / "state.json"
    if not state.exists():
        return None
    components, extra = processes.load_state(state)
    return Cluster(
        root, Path(str(extra["bin"])), components, int(str(extra["api_port"])), str(extra.get("node_ip") or "")
    )


def api_tls(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def healthy(cluster: Cluster) -> bool:
    if not all(c.alive() for c in cluster.components):
        return False
    probe = processes.http_probe(f"https://127.0.0.1:{cluster.api_port}/readyz", api_tls(cluster.root / "pki"), b"ok")
    return probe()


def reusable(existing: Cluster, *, real_node: bool, batch_controllers: bool) -> bool:
    """A recorded cluster `up` keeps: healthy, its S3 server serving, with the real node and the batch controllers
    if asked for."""
    started = {c.name for c in existing.components}
    has_batch = all(c.name in started for c in batch.CONTROLLERS if batch.runnable(c))
    wanted = (bool(existing.node_ip) or not real_node) and (has_batch or not batch_controllers)
    return wanted and healthy(existing) and object_store.serving(existing)


def up(
    root: Path | None = None,
    *,
    training_operator: bool = True,
    batch_controllers: bool = False,
    apiserver_args: Sequence[str] = (),
    real_node: bool = False,
) -> Cluster:
    """Start everything (or reuse a healthy cluster already recorded in the run dir).

    `apiserver_args` are appended to kube-apiserver's flags (a later flag wins), e.g. a short
    `--min-request-timeout` for a fault test; a restarted API server keeps them. `real_node` adds a
    kubelet with containerd, kube-proxy and CoreDNS (node.py); a running cluster without one is
    restarted to get it. `batch_controllers` starts JobSet, Kubeflow Trainer v2 and Kueue (batch.py), likewise.
    """
    started = time.monotonic()
    root = root or run_dir()
    existing = load(root)
    if existing is not None:
        if reusable(existing, real_node=real_node, batch_controllers=batch_controllers):
            log(f"cluster already running; kubeconfig: {existing.kubeconfig}")
            return existing
        log("found a stale or broken cluster (or one without the real node or batch controllers asked for); stopping")
        down(root)
    bin_dir = ensure_built()
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("pki", "kubeconfigs", "logs"):
        (root / sub).mkdir(parents=True)
    cluster = Cluster(root, bin_dir, node_ip=node.node_ip() if real_node else "")
    try:
        _start_all(cluster, training_operator, batch_controllers, tuple(apiserver_args))
    except BaseException:
        cluster.save()
        log("start failed; stopping what was started")
        down(root)
        raise
    log(f"cluster ready in {time.monotonic() - started:.1f}s")
    log(f"kubeconfig: {cluster.kubeconfig}")
    return cluster


def _start_all(
    cluster: Cluster, training_operator: bool, batch_controllers: bool, apiserver_args: tuple[str, ...]
) -> None:
    pki, logs, configs = cluster.root / "pki", cluster.root / "logs", cluster.root / "kubeconfigs"
    ca = CertificateAuthority(pki, "ca")
    sa = service_account_keys(pki)
    cluster.api_port = processes.free_port()
    server = f"https://127.0.0.1:{cluster.api_port}"

    etcd_url = _start_etcd(cluster, logs)
    _start_apiserver(cluster, ca, sa, etcd_url, logs, apiserver_args)
    identities = {
        "admin": ("kubernetes-admin", "system:masters"),
        "kube-controller-manager": ("system:kube-controller-manager", None),
        "kube-scheduler": ("system:kube-scheduler", None),
        # Simulating kubelets of many nodes and a cluster-wide operator: both need broad rights.
        "kwok": ("kwok-controller", "system:masters"),
        "training-operator": ("kubeflow-training-operator", "system:masters"),
        **{c.name: (c.name, "system:masters") for c in batch.CONTROLLERS},
    }
    for name, (user, group) in identities.items():
        pair = ca.issue(name, user, group)
        target = cluster.kubeconfig if name == "admin" else configs / f"{name}.kubeconfig"
        write_kubeconfig(target, server, ca.pair.cert, pair, user)
    cluster.save()

    waits = [
        _start_controller_manager(cluster, ca, sa, configs, logs),
        _start_scheduler(cluster, configs, logs),
        _start_kwok(cluster, configs, logs),
        object_store.start(cluster),
    ]
    for running, process, probe in waits:
        processes.wait_ready(running, process, probe, READY_TIMEOUT)
        log(f"{running.name} ready")
    cluster.save()
    object_store.publish(cluster)
    _create_nodes(cluster)
    if cluster.node_ip:
        started = time.monotonic()
        node.start(cluster, ca, cluster.node_ip, server, POD_CIDR)
        log(f"real node {node.NODE_NAME} Ready ({cluster.node_ip}) in {time.monotonic() - started:.1f}s")
    if training_operator:
        _start_training_operator(cluster, configs, logs)
    if batch_controllers:
        _start_batch_controllers(cluster, configs, ca)
    cluster.save()


def _launch(
    cluster: Cluster, name: str, args: list[str], ports: list[int], env: dict[str, str] | None = None
) -> tuple[Running, subprocess.Popen[bytes]]:
    running, process = processes.start(name, cluster.bin / name, args, cluster.root / "logs", ports, env)
    cluster.components.append(running)
    return running, process


def _start_etcd(cluster: Cluster, logs: Path) -> str:
    client, peer = processes.free_port(), processes.free_port()
    url = f"http://127.0.0.1:{client}"
    running, process = _launch(
        cluster,
        "etcd",
        [
            "--name=kubemaas",
            f"--data-dir={cluster.root / 'etcd-data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=kubemaas=http://127.0.0.1:{peer}",
            # A throwaway test cluster: durability is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        [client, peer],
    )
    processes.wait_ready(running, process, processes.http_probe(f"{url}/health", expect=b'"health":"true"'), 30)
    log("etcd ready")
    return url


def _start_apiserver(
    cluster: Cluster, ca: CertificateAuthority, sa: KeyPair, etcd_url: str, logs: Path, extra: tuple[str, ...]
) -> None:
    pki = cluster.root / "pki"
    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", SERVICE_IP, *([cluster.node_ip] if cluster.node_ip else [])),
    )
    if cluster.node_ip:
        # Pods reach the API server through the `kubernetes` Service, whose endpoint is the advertised address.
        addresses = ["--bind-address=0.0.0.0", f"--advertise-address={cluster.node_ip}"]
        addresses += node.apiserver_args(ca, pki)
    else:
        # No kubelet or kube-proxy would reach a loopback-advertised endpoint anyway.
        addresses = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
    running, process = _launch(
        cluster,
        "kube-apiserver",
        [
            f"--etcd-servers={etcd_url}",
            *addresses,
            f"--secure-port={cluster.api_port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.pair.cert}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            # Privileged pods are allowed cluster-wide; Pod Security decides per namespace.
            "--allow-privileged=true",
            "--profiling=false",
            *extra,
        ],
        [cluster.api_port],
    )
    probe = processes.http_probe(f"https://127.0.0.1:{cluster.api_port}/readyz", _admin_tls(ca, pki), b"ok")
    processes.wait_ready(running, process, probe, READY_TIMEOUT)
    log(f"kube-apiserver ready on https://127.0.0.1:{cluster.api_port}")


def _admin_tls(ca: CertificateAuthority, pki: Path) -> ssl.SSLContext:
    # The admin client cert is issued after the API server starts; probe with a throwaway one.
    probe_pair = ca.issue("readiness-probe", "kubemaas-readiness-probe", "system:masters")
    context = ssl.create_default_context(cafile=str(ca.pair.cert))
    context.load_cert_chain(str(probe_pair.cert), str(probe_pair.key))
    return context


Wait = tuple[Running, "subprocess.Popen[bytes]", processes.Probe]


def _secure_component_args(cluster: Cluster, name: str, configs: Path, port: int) -> list[str]:
    kubeconfig = configs / f"{name}.kubeconfig"
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cluster.root / 'pki' / name}",
        "--leader-elect=false",
    ]


def _start_controller_manager(
    cluster: Cluster, ca: CertificateAuthority, sa: KeyPair, configs: Path, logs: Path
) -> Wait:
    port = processes.free_port()
    running, process = _launch(
        cluster,
        "kube-controller-manager",
        [
            *_secure_component_args(cluster, "kube-controller-manager", configs, port),
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.pair.cert}",
            # Each controller acts as its own service account with its bootstrap role, as in kubeadm.
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ],
        [port],
    )
    return running, process, processes.http_probe(f"https://127.0.0.1:{port}/healthz", processes.insecure_tls())


def _start_scheduler(cluster: Cluster, configs: Path, logs: Path) -> Wait:
    port = processes.free_port()
    running, process = _launch(
        cluster, "kube-scheduler", _secure_component_args(cluster, "kube-scheduler", configs, port), [port]
    )
    return running, process, processes.http_probe(f"https://127.0.0.1:{port}/healthz", processes.insecure_tls())


def _start_kwok(cluster: Cluster, configs: Path, logs: Path) -> Wait:
    port = processes.free_port()
    running, process = _launch(
        cluster,
        "kwok",
        [
            f"--config={STAGES_FILE}",
            f"--kubeconfig={configs / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # kwok takes the range as gateway/prefix; its default is 10.0.0.1/24.
            f"--cidr={_gateway_cidr(KWOK_POD_CIDR)}",
            f"--server-address=127.0.0.1:{port}",
            "--node-lease-duration-seconds=40",
        ],
        [port],
    )
    return running, process, processes.http_probe(f"http://127.0.0.1:{port}/healthz")


def _gateway_cidr(cidr: str) -> str:
    network = ipaddress.ip_network(cidr)
    return f"{network[1]}/{network.prefixlen}"


def _create_nodes(cluster: Cluster) -> None:
    manifests = yaml.safe_dump_all([node_manifest(n) for n in ALL_NODES])
    cluster.kubectl("apply", "-f", "-", stdin=manifests)
    names = [n.name for n in ALL_NODES]
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n}" for n in names])
    log(f"{len(names)} kwok nodes Ready: {', '.join(names)}")


def _start_training_operator(cluster: Cluster, configs: Path, logs: Path) -> None:
    component = next(c for c in load_components() if c.name == "training-operator")
    source = module_source_dir(component)
    for crd in component.crds:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(source / crd))
    _wait_established(cluster, "pytorchjobs.kubeflow.org")
    namespace, secret = "kubeflow", "training-operator-webhook-cert"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", secret, "-n", namespace)
    args, env, ports, probe = training_operator_args(configs / "training-operator.kubeconfig", namespace)
    running, process = _launch(cluster, "training-operator", args, ports, env)
    stop_projection = threading.Event()
    projector = threading.Thread(
        target=project_webhook_cert, args=(cluster.kubectl, namespace, secret, stop_projection), daemon=True
    )
    projector.start()
    try:
        processes.wait_ready(running, process, probe, READY_TIMEOUT)
    finally:
        stop_projection.set()
        projector.join()
    log(f"training-operator {component.version} ready (PyTorchJob)")


def _start_batch_controllers(cluster: Cluster, configs: Path, ca: CertificateAuthority) -> None:
    """JobSet, then Trainer v2 (its TrainJobs make JobSets), then Kueue (which admits both): CRDs, the process,
    and once it answers, its webhooks."""
    components = {c.name: c for c in load_components()}
    for controller in batch.CONTROLLERS:
        if not batch.runnable(controller):
            log(f"{controller.name} not started: it needs root here (e2e/cluster/batch.py)")
            continue
        started = time.monotonic()
        component = next(c for c in components.values() if controller.name in c.binaries)
        source = module_source_dir(component)
        for crd in batch.crd_files(source, controller.crds):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        for name in batch.crd_names(source, controller.crds):
            _wait_established(cluster, name)
        cluster.kubectl("create", "namespace", controller.namespace)
        launch = batch.prepare(controller, configs / f"{controller.name}.kubeconfig", cluster.root / "batch", ca)
        running, process = _launch(cluster, controller.name, launch.args, launch.ports, launch.env)
        processes.wait_ready(running, process, launch.probe, READY_TIMEOUT)
        manifests = (source / controller.webhooks).read_text()
        for configuration in batch.webhook_configurations(
            manifests, controller, launch.webhook_port, ca.pair.cert.read_bytes()
        ):
            cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(configuration))
        log(f"{controller.name} {component.version} ready in {time.monotonic() - started:.1f}s")


def _wait_established(cluster: Cluster, crd: str, timeout: float = 60.0) -> None:
    # `kubectl wait` fails at once while the CRD has no conditions yet; poll instead.
    deadline = time.monotonic() + timeout

    def established() -> bool:
        status = json.loads(cluster.kubectl("get", f"crd/{crd}", "-o", "json")).get("status") or {}
        return any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or [])

    while not established():
        if time.monotonic() > deadline:
            raise ComponentError(f"CRD {crd} not Established after {timeout:.0f}s")
        time.sleep(0.2)


def down(root: Path | None = None) -> None:
    """Stop every recorded component, newest first, and remove nothing but processes."""
    cluster = load(root)
    if cluster is None:
        log("no cluster recorded; nothing to stop")
        return
    if cluster.node_ip:
        # Containers first, then the node's processes; the host is put back before the control plane goes.
        node.stop(cluster)
    for running in reversed(cluster.components):
        processes.stop(running)
    if any(c.name in {b.name for b in batch.CONTROLLERS} for c in cluster.components):
        batch.remove_fixed_directories()
    busy = [p for c in cluster.components for p in c.ports if processes.port_in_use(p)]
    cluster.state_file.unlink()
    if busy:
        raise ComponentError(f"ports still answering after stop: {busy}")
    log(f"stopped {len(cluster.components)} components")


def stop_component(cluster: Cluster, name: str) -> None:
    """Stop one component (SIGTERM, then SIGKILL): a fault test's way to take the API server or etcd away."""
    processes.stop(cluster.component(name))


def start_component(cluster: Cluster, name: str, timeout: float = READY_TIMEOUT) -> None:
    """Start a stopped component again with the arguments, environment and ports it had, and wait until it
    serves (the API server's /readyz, etcd's /health; others: alive)."""
    old = cluster.component(name)
    if old.alive():
        raise ComponentError(f"{name} (pid {old.pid}) is still running")
    running, process = processes.start(
        name, Path(old.binary), old.args, cluster.root / "logs", old.ports, old.env or None
    )
    cluster.components[cluster.components.index(old)] = running
    cluster.save()
    if name == "kube-apiserver":
        probe = processes.http_probe(
            f"https://127.0.0.1:{cluster.api_port}/readyz", api_tls(cluster.root / "pki"), b"ok"
        )
    elif name == "etcd":
        probe = processes.http_probe(f"http://127.0.0.1:{old.ports[0]}/health", expect=b'"health":"true"')
    else:
        probe = running.alive
    processes.wait_ready(running, process, probe, timeout)
    log(f"{name} restarted (pid {running.pid})")


def restart_component(cluster: Cluster, name: str, downtime: float = 0.0) -> None:
    """Stop `name`, keep it down for `downtime` seconds, start it again and wait until it serves."""
    stop_component(cluster, name)
    time.sleep(downtime)
    start_component(cluster, name)


def check_alive(cluster: Cluster) -> None:
    """Raise ComponentError naming every dead component, with the tail of its log."""
    dead = [c for c in cluster.components if not c.alive()]
    if dead:
        raise ComponentError(
            "\n".join(
                f"{c.name} (pid {c.pid}) is not running; last lines of {c.log}:\n{processes.log_tail(Path(c.log))}"
                for c in dead
            )
        )
