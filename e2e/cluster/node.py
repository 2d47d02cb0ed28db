"""A real node beside the kwok nodes: containerd + runc, the CNI bridge, a kubelet, kube-proxy and CoreDNS.

Pods that select this node run as real containers (docs/local-cluster.md, "A real node"). The node is
tainted so that nothing lands on it by accident: the kwok nodes keep serving GPU scheduling and scale
tests, and only pods that tolerate `REAL_NODE_TAINT` and select `REAL_NODE_LABEL` run here.

Layout under the run directory:
  node/containerd/   config.toml, the socket and containerd's state (images live in the cache, below)
  node/kubelet/      the kubelet's root dir, config and pod logs
  node/cni/          the bridge network's config and its IP allocations
  node/coredns/      the Corefile
  node/host.json     the host as it was before the node started (host.py), restored by `down`
Images survive `down` in ~/.cache/kubemaas/node/containerd, so a second `up` imports nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import debian, host, metrics_server, processes
from .host_service import Port, host_service
from .images import CRI_NAMESPACE, PAUSE_IMAGE, ensure_image, import_images
from .kubeconfig import write_kubeconfig
from .pki import CertificateAuthority, KeyPair
from .versions import cache_root

if TYPE_CHECKING:
    from .control_plane import Cluster

NODE_NAME = "kubemaas-node"
REAL_NODE_LABEL = "kubemaas.io/real-node"
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
CNI_BIN_DIR = "/usr/lib/cni"
BRIDGE = "kubemaas0"
# Inside POD_CIDR (control_plane.py), beside kwok's half: the real node's pods get 198.18.128.0/24.
NODE_POD_SUBNET = "198.18.128.0/24"
DNS_SERVICE_IP = "198.19.0.10"
DNS_PORT = 1053
CLUSTER_DOMAIN = "cluster.local"
# Fixed by the kubelet's and kube-proxy's defaults elsewhere; bound to loopback or the node IP only.
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
READY_TIMEOUT = 90.0


def pod_placement() -> dict[str, Any]:
    """Pod spec fields that put a pod on the real node and nowhere else."""
    return {
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
    }


class NodeError(RuntimeError):
    """The real node could not start; the message names the step."""


def node_ip() -> str:
    """This machine's own address on its default-route interface: the kubelet refuses a loopback one."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-4", "-j", "route", "show", "default"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    devices = [r["dev"] for r in routes if "dev" in r]
    out = subprocess.run(
        ["ip", "-4", "-j", "addr", "show", *(["dev", devices[0]] if devices else [])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for link in json.loads(out):
        for address in link.get("addr_info", []):
            if address.get("scope") == "global":
                return str(address["local"])
    raise NodeError("no global IPv4 address on this machine; a real node needs one (the kubelet refuses loopback)")


@dataclass(frozen=True)
class NodePaths:
    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "node" / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.root / "node" / "kubelet"

    @property
    def cni(self) -> Path:
        return self.root / "node" / "cni"

    @property
    def coredns(self) -> Path:
        return self.root / "node" / "coredns"

    @property
    def host_state(self) -> Path:
        return self.root / "node" / "host.json"

    @property
    def images(self) -> Path:
        """containerd's root (content and snapshots): kept across runs, like the binary cache."""
        return cache_root() / "node" / "containerd"

    def owned(self) -> list[Path]:
        return [self.root / "node", self.images]


def ctr_command(paths: NodePaths) -> list[str]:
    """`ctr` against this node's containerd (callers add `-n k8s.io`, the CRI plugin's namespace)."""
    return ["ctr", "--address", str(paths.socket)]


def containerd_config(paths: NodePaths, pause_image: str) -> str:
    state = paths.containerd / "state"
    return f"""version = 2
root = "{paths.images}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{paths.socket}"

[ttrpc]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.containerd / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # Nothing can be pulled here: the sandbox image is built locally and imported (images.py).
  sandbox_image = "{pause_image}"
  # This VM withholds CAP_SYS_RESOURCE, so a negative oom_score_adj fails every sandbox.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  stream_server_address = "127.0.0.1"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 with the cgroupfs driver, as the kubelet is configured (no systemd here).
        SystemdCgroup = false
        Root = "{state / "runc"}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{paths.cni / "net.d"}"
"""


def cni_config(paths: NodePaths) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "kubemaas",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Nothing leaves this machine, so nothing needs masquerading.
                "ipMasq": False,
                # A pod reaching itself through its own Service.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, ip: str, ca: Path, serving: KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        # cgroup v1 here (docs/local-cluster.md): the kubelet only logs that v1 is in maintenance mode.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        # Pods resolve cluster names only; the host's resolvers are not theirs to use.
        "resolvConf": "",
        "podLogsDir": str(paths.kubelet / "pod-logs"),
        "registerWithTaints": [REAL_NODE_TAINT],
        "serializeImagePulls": False,
        "maxPods": 60,
        # Images are imported, never pulled: the kubelet must not garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # No disk thresholds ("0%" turns a signal off): under disk pressure the eviction manager deletes every
        # image no running container uses, pause included, and an imported image cannot be pulled back here;
        # every later pod then fails "failed to get sandbox image" (a CI run lost all real-node tests so).
        # A full disk should fail as ENOSPC where it happens, not as missing images minutes later.
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "0%", "imagefs.available": "0%"},
        "staticPodPath": "",
    }


def corefile(ip: str, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    return f""".:{DNS_PORT} {{
    bind {ip}
    ready 127.0.0.1:{ready_port}
    health 127.0.0.1:{health_port}
    errors
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    loop
}}
"""


def dns_objects(ip: str) -> list[dict[str, Any]]:
    """The `kube-dns` Service pods' resolv.conf points at, with CoreDNS (a host process) as its endpoint."""
    ports = [Port("dns", 53, DNS_PORT, "UDP"), Port("dns-tcp", 53, DNS_PORT, "TCP")]
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    return [
        *host_service(
            "kube-dns", "kube-system", ip, ports, labels=labels, cluster_ip=DNS_SERVICE_IP, node_name=NODE_NAME
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}],
        },
    ]


def apiserver_args(ca: CertificateAuthority, pki: Path) -> list[str]:
    """What the API server needs for a real node: a client cert for the kubelet API (logs, exec,
    port-forward), verification of the kubelet's serving cert, and the aggregation layer for metrics-server."""
    client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    return [
        *metrics_server.apiserver_args(pki),
        f"--kubelet-client-certificate={client.cert}",
        f"--kubelet-client-key={client.key}",
        f"--kubelet-certificate-authority={ca.pair.cert}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


def start(cluster: Cluster, ca: CertificateAuthority, ip: str, server: str, pod_cidr: str) -> None:
    """Start containerd, the kubelet, kube-proxy, CoreDNS and metrics-server; return when the node is Ready,
    DNS answers and the resource metrics API is Available."""
    debian.ensure("node")
    paths = NodePaths(cluster.root)
    for directory in (paths.containerd / "state", paths.kubelet, paths.cni / "net.d", paths.coredns, paths.images):
        directory.mkdir(parents=True, exist_ok=True)
    host.capture().save(paths.host_state)
    # pod -> Service -> pod on one bridge must pass kube-proxy's iptables rules (restored by `down`).
    host.set_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    host.set_sysctl("net.ipv4.ip_forward", "1")

    _start_containerd(cluster, paths)
    import_images([ensure_image("pause")], ctr_command(paths), store=paths.images)
    configs = cluster.root / "kubeconfigs"
    identities = {
        "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
        "kube-proxy": ("system:kube-proxy", None),
        "coredns": ("system:coredns", None),
    }
    for name, (user, group) in identities.items():
        write_kubeconfig(configs / f"{name}.kubeconfig", server, ca.pair.cert, ca.issue(name, user, group), user)
    serving = ca.issue(
        "kubelet-serving",
        f"system:node:{NODE_NAME}",
        "system:nodes",
        server_names=(NODE_NAME, "localhost"),
        server_ips=(ip, "127.0.0.1"),
    )
    (paths.cni / "net.d" / "10-kubemaas.conflist").write_text(json.dumps(cni_config(paths), indent=2))
    config = paths.kubelet / "config.yaml"
    config.write_text(yaml.safe_dump(kubelet_config(paths, ip, ca.pair.cert, serving)))
    kubelet, process = _launch(
        cluster,
        "kubelet",
        [
            f"--config={config}",
            f"--kubeconfig={configs / 'kubelet.kubeconfig'}",
            f"--root-dir={paths.kubelet}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={ip}",
            f"--node-labels={REAL_NODE_LABEL}=true",
        ],
        [KUBELET_PORT, KUBELET_HEALTHZ_PORT],
    )
    processes.wait_ready(
        kubelet, process, processes.http_probe(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"), READY_TIMEOUT
    )
    proxy, process = _launch(
        cluster,
        "kube-proxy",
        [
            f"--kubeconfig={configs / 'kube-proxy.kubeconfig'}",
            f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={pod_cidr}",
            f"--healthz-bind-address=127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
            f"--metrics-bind-address=127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
            # Leave the host's conntrack table size and timeouts as they are.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            # NodePorts on 127.0.0.1 would need route_localnet=1 on every interface of the host.
            "--iptables-localhost-nodeports=false",
        ],
        [KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT],
    )
    processes.wait_ready(
        proxy, process, processes.http_probe(f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz"), READY_TIMEOUT
    )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(dns_objects(ip)))
    health, ready = processes.free_port(), processes.free_port()
    (paths.coredns / "Corefile").write_text(corefile(ip, configs / "coredns.kubeconfig", health, ready))
    dns, process = _launch(cluster, "coredns", ["-conf", str(paths.coredns / "Corefile")], [health, ready])
    processes.wait_ready(dns, process, processes.http_probe(f"http://127.0.0.1:{ready}/ready"), READY_TIMEOUT)
    cluster.kubectl("wait", "--for=condition=Ready", f"--timeout={READY_TIMEOUT:.0f}s", f"node/{NODE_NAME}")
    _start_metrics_server(cluster, ca, ip, server, configs)


def _start_metrics_server(cluster: Cluster, ca: CertificateAuthority, ip: str, server: str, configs: Path) -> None:
    user = metrics_server.USER
    write_kubeconfig(
        configs / "metrics-server.kubeconfig",
        server,
        ca.pair.cert,
        ca.issue("metrics-server", user),
        user,
    )
    serving = ca.issue(
        "metrics-server-serving", metrics_server.NAME, server_names=metrics_server.serving_names(), server_ips=(ip,)
    )
    port = processes.free_port()
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(metrics_server.objects(ip, port, ca.pair.cert)),
    )
    args = metrics_server.args(
        configs / "metrics-server.kubeconfig", ip, port, serving.cert, serving.key, ca.pair.cert, REAL_NODE_LABEL
    )
    running, process = _launch(cluster, "metrics-server", args, [port])
    probe = processes.http_probe(f"https://{ip}:{port}/livez", processes.insecure_tls())
    processes.wait_ready(running, process, probe, READY_TIMEOUT)
    cluster.kubectl(
        "wait", "--for=condition=Available", f"--timeout={READY_TIMEOUT:.0f}s", "apiservice/v1beta1.metrics.k8s.io"
    )


def load_images(cluster: Cluster, names: list[str]) -> list[str]:
    """Import the named images (images.BUILDERS; built first where the cache lacks them) into the node's
    containerd (only the layers it lacks travel); returns their references."""
    paths = NodePaths(cluster.root)
    return import_images([ensure_image(name) for name in names], ctr_command(paths), store=paths.images)


def _launch(
    cluster: Cluster, name: str, args: list[str], ports: list[int], binary: Path | None = None
) -> tuple[processes.Running, Any]:
    running, process = processes.start(name, binary or cluster.bin / name, args, cluster.root / "logs", ports)
    cluster.components.append(running)
    cluster.save()
    return running, process


def _which(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise NodeError(f"{binary} not found on PATH (Debian package missing?)")
    return found


def containerd_args(paths: NodePaths) -> list[str]:
    """Write the node's containerd config under `paths`; the arguments that start containerd with it."""
    config = paths.containerd / "config.toml"
    config.write_text(containerd_config(paths, PAUSE_IMAGE))
    return [f"--config={config}"]


def containerd_binary() -> Path:
    return Path(_which("containerd"))


def containerd_serving(paths: NodePaths) -> processes.Probe:
    return lambda: subprocess.run([*ctr_command(paths), "version"], capture_output=True).returncode == 0


def _start_containerd(cluster: Cluster, paths: NodePaths) -> None:
    running, process = _launch(cluster, "containerd", containerd_args(paths), [], containerd_binary())
    processes.wait_ready(running, process, containerd_serving(paths), READY_TIMEOUT)
    _remove_containers(paths)


def _remove_containers(paths: NodePaths) -> None:
    """Kill and delete every container in the CRI namespace (what a previous run left behind)."""
    ctr = [*ctr_command(paths), "-n", CRI_NAMESPACE]
    tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
    for task in tasks:
        subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", task], capture_output=True)
    for task in tasks:
        subprocess.run([*ctr, "tasks", "delete", "--force", task], capture_output=True)
    containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split()
    if containers:
        subprocess.run([*ctr, "containers", "delete", *containers], capture_output=True)


def stop(cluster: Cluster) -> None:
    """Stop the node's processes (the caller stops the rest) and put the host back as `start` found it."""
    paths = NodePaths(cluster.root)
    by_name = {c.name: c for c in cluster.components}
    for name in ("metrics-server", "coredns", "kube-proxy", "kubelet"):
        if name in by_name:
            processes.stop(by_name[name])
    if "containerd" in by_name and by_name["containerd"].alive():
        _remove_containers(paths)
        processes.stop(by_name["containerd"])
    _kill_shims(paths)
    if paths.host_state.exists():
        host.restore(host.HostState.load(paths.host_state), paths.owned())
        paths.host_state.unlink()


def _kill_shims(paths: NodePaths) -> None:
    """containerd-shim-runc-v2 outlives containerd by design; ours carry our socket in their arguments."""
    marker = str(paths.socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
