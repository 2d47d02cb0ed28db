"""What a real node changes on the host, captured before it starts and put back by `down`.

A kubelet, kube-proxy, containerd and the CNI plugins write to shared places: sysctls, iptables
chains (the kubelet's KUBE-FIREWALL survives `kube-proxy --cleanup`), mounts, network namespaces and
links, cgroups and a few fixed directories. `capture()` records each of them; `restore()` undoes
the difference once the node's processes are gone; `differences()` is what the host test asserts
is empty (docs/local-cluster.md, "A real node").
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# Set by the kubelet (kernel.*, vm.*) and kube-proxy/CNI (net.*); the bridge-nf ones by us, so that
# pod -> Service -> pod traffic on one bridge passes through kube-proxy's rules.
SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
)
# Fixed places a kubelet or containerd 1.6 use whatever their configured roots are.
FIXED_PATHS = (
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/netns",
    "/opt/containerd",
    "/etc/cni",
)
IPTABLES = ("iptables", "ip6tables")
BUILTIN_CHAINS = ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"


class HostRestoreError(RuntimeError):
    """Something the node changed could not be put back; the message names it."""


@dataclass
class HostState:
    sysctls: dict[str, str]
    # table -> the rules of `iptables-save -t table`, without counters or comments
    iptables: dict[str, dict[str, list[str]]]
    links: list[str]
    netns: list[str]
    mounts: list[str]
    paths: dict[str, bool]
    cgroups: list[str]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> HostState:
        return cls(**json.loads(path.read_text()))


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(FileNotFoundError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def _iptables_rules(tool: str) -> dict[str, list[str]]:
    """Rules by table; chain policies are kept, packet counters and the save header/footer dropped."""
    result = subprocess.run([f"{tool}-save"], capture_output=True, text=True)
    if result.returncode != 0:
        return {}
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            current.append(f":{name} {policy}")
        elif line.startswith("-"):
            current.append(line)
    return tables


def _links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))


def _netns() -> list[str]:
    directory = Path("/run/netns")
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def mount_points() -> list[str]:
    """Mount points as /proc/self/mountinfo lists them (octal escapes kept)."""
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _cgroups() -> list[str]:
    """The kubelet's QoS cgroups (`/kubepods` with the cgroupfs driver) in every v1 hierarchy or in v2."""
    return sorted(str(p) for p in CGROUP_ROOT.glob(f"*/{KUBEPODS}")) + sorted(
        str(p) for p in CGROUP_ROOT.glob(KUBEPODS)
    )


def capture() -> HostState:
    return HostState(
        sysctls=_read_sysctls(),
        iptables={tool: _iptables_rules(tool) for tool in IPTABLES},
        links=_links(),
        netns=_netns(),
        mounts=mount_points(),
        paths={p: Path(p).exists() for p in FIXED_PATHS},
        cgroups=_cgroups(),
    )


def differences(before: HostState, after: HostState) -> list[str]:
    """Human-readable differences; empty when the host is as it was."""
    found = []
    for name, value in before.sysctls.items():
        if after.sysctls.get(name) != value:
            found.append(f"sysctl {name}: {value} -> {after.sysctls.get(name)}")
    for tool in IPTABLES:
        for table in sorted(set(before.iptables.get(tool, {})) | set(after.iptables.get(tool, {}))):
            old, new = (
                _effective(before.iptables.get(tool, {}).get(table, [])),
                _effective(after.iptables.get(tool, {}).get(table, [])),
            )
            if sorted(old) != sorted(new):
                added = sorted(set(new) - set(old))
                removed = sorted(set(old) - set(new))
                found.append(f"{tool} table {table}: added {added[:8]} removed {removed[:8]}")
    for label, old_list, new_list in (
        ("link", before.links, after.links),
        ("netns", before.netns, after.netns),
        ("mount", before.mounts, after.mounts),
        ("cgroup", before.cgroups, after.cgroups),
    ):
        added = sorted(set(new_list) - set(old_list))
        # Other programs on a shared machine unmount their own things; only a mount we add is ours.
        removed = [] if label == "mount" else sorted(set(old_list) - set(new_list))
        if added or removed:
            found.append(f"{label}s added {added[:8]} removed {removed[:8]}")
    for path, existed in before.paths.items():
        if after.paths.get(path) != existed:
            found.append(f"{path}: {'existed' if existed else 'absent'} before, {'present' if not existed else 'gone'}")
    return found


def _effective(rules: list[str]) -> list[str]:
    """A table's rules that change anything: iptables cannot unload a table once a tool touched it, and a
    loaded table holding only built-in chains with the ACCEPT policy filters nothing, as an absent one."""
    builtin_accept = {f":{chain} ACCEPT" for chain in BUILTIN_CHAINS}
    return [] if set(rules) <= builtin_accept else rules


def set_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value)


def restore(before: HostState, owned_roots: list[Path]) -> None:
    """Undo what a stopped node left: mounts under `owned_roots` and the fixed paths, network
    namespaces, links, cgroups, iptables rules, sysctls and fixed directories. Raises
    HostRestoreError naming whatever could not be put back, after trying everything."""
    problems: list[str] = []
    _unmount_new(before, owned_roots, problems)
    for name in sorted(set(_netns()) - set(before.netns)):
        _run(["ip", "netns", "delete", name], problems)
    for name in sorted(set(_links()) - set(before.links)):
        # A veth whose peer went with its namespace is already gone; the bridge is not.
        if name in _links():
            _run(["ip", "link", "delete", name], problems)
    _remove_cgroups(before, problems)
    _restore_iptables(before, problems)
    for name, value in before.sysctls.items():
        try:
            if _sysctl_path(name).read_text().strip() != value:
                set_sysctl(name, value)
        except OSError as error:
            problems.append(f"sysctl {name}: {error}")
    for path, existed in before.paths.items():
        if not existed and Path(path).exists():
            shutil.rmtree(path, ignore_errors=True)
            if Path(path).exists():
                problems.append(f"could not remove {path}")
    if problems:
        raise HostRestoreError("the host was not fully restored:\n  " + "\n  ".join(problems))


def _unmount_new(before: HostState, owned_roots: list[Path], problems: list[str]) -> None:
    prefixes = [str(r) for r in owned_roots] + list(FIXED_PATHS)
    old = set(before.mounts)
    # Deepest first, so a bind mount's children go before it.
    for point in sorted(set(mount_points()) - old, key=len, reverse=True):
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            _run(["umount", "--lazy", point], problems)


def _remove_cgroups(before: HostState, problems: list[str]) -> None:
    for top in sorted(set(_cgroups()) - set(before.cgroups)):
        # rmdir works on an empty cgroup only (no processes); children go first.
        for directory in sorted(
            (p for p in Path(top).rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()
        try:
            Path(top).rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            problems.append(f"cgroup {top}: {error}")


def _restore_iptables(before: HostState, problems: list[str]) -> None:
    for tool in IPTABLES:
        now = _iptables_rules(tool)
        for table, rules in now.items():
            old = before.iptables.get(tool, {}).get(table, [])
            if sorted(_effective(rules)) == sorted(_effective(old)):
                continue
            # iptables-restore replaces a whole table with what it is given: the saved rules, or an empty table
            # (built-in chains only, default policy) when the table was not loaded before.
            body = [f"*{table}", *(old or _builtin_chains(rules)), "COMMIT", ""]
            result = subprocess.run([f"{tool}-restore"], input="\n".join(body), capture_output=True, text=True)
            if result.returncode != 0:
                problems.append(f"{tool}-restore -t {table}: {result.stderr.strip()}")


def _builtin_chains(rules: list[str]) -> list[str]:
    return [
        f":{line[1:].split()[0]} ACCEPT"
        for line in rules
        if line.startswith(":") and line[1:].split()[0] in BUILTIN_CHAINS
    ]


def _run(command: list[str], problems: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        problems.append(f"{' '.join(command)}: {result.stderr.strip()}")
