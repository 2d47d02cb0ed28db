"""Every Debian package the project needs, declared once, and the one function that installs them.

CI runs on whatever machine the last session used, where a package installed by hand hides a missing install
step until the first new machine (buildah, debootstrap and runc were never installed by the project, and
`make test` failed there). So each package is declared here with why it is needed, grouped by the step that
first needs it, and `ensure(step)` installs that step's packages before the step runs. Every package is checked
with `dpkg-query` first, so a warm machine spends nothing.

The programs a new machine of this kind already has (Debian 12 with git, make, Go, Python, iproute2, util-linux)
are named here too: tests/cluster/test_packages.py fails when code runs a program that neither a package below
nor that list nor the project's own build provides.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Step = Literal["images", "node"]


@dataclass(frozen=True)
class Package:
    name: str
    why: str
    programs: tuple[str, ...] = ()  # the programs the project runs from it (checked by the guard test)


# The image build (e2e/cluster/images.py): the base rootfs and every Dockerfile.
IMAGE_BUILD = (
    Package("buildah", "builds the Dockerfiles in images/ without a Docker engine", ("buildah",)),
    Package("debootstrap", "makes the Python base image's root filesystem", ("debootstrap",)),
    # buildah only recommends an OCI runtime, and apt here installs no recommends: without runc every RUN step
    # fails with "exec: no command".
    Package("runc", "the OCI runtime buildah runs each RUN step in", ("runc",)),
)
# The real node (e2e/cluster/node.py, host.py): containerd's CRI plugin behind the kubelet, pod networking.
REAL_NODE = (
    Package(
        "containerd",
        "the container runtime behind the kubelet (1.6 speaks CRI v1, which kubelet 1.34 needs)",
        ("containerd", "ctr"),
    ),
    Package("runc", "the OCI runtime containerd starts containers with", ("runc",)),
    Package("containernetworking-plugins", "bridge, host-local, portmap and loopback CNI plugins for pods"),
    Package(
        "iptables",
        "kube-proxy's Service rules; host.py saves and restores the host's rules around the node",
        ("iptables", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"),
    ),
    Package("conntrack", "kube-proxy flushes stale UDP entries (CoreDNS) with it", ("conntrack",)),
)
PACKAGES: dict[Step, tuple[Package, ...]] = {"images": IMAGE_BUILD, "node": REAL_NODE}

# What a new machine of this kind has before the project installs anything (the env documentation's list, and
# checked on one), by the program the project runs; the value says where it comes from.
NEW_MACHINE_PROGRAMS = {
    "apt-get": "apt",
    "bash": "bash",
    "df": "coreutils",
    "dpkg-query": "dpkg",
    "git": "git",
    "go": "Go 1.26 in /usr/local/go",
    "ip": "iproute2",
    "make": "make",
    "nsenter": "util-linux",
    "openssl": "openssl",
    "python": "Python 3.11 (pyenv)",
    "python3": "Python 3.11 (pyenv)",
    "sh": "dash",
    "tar": "tar",
    "umount": "mount",
}


class PackageError(RuntimeError):
    """apt-get failed or is not available; the message says which packages and why."""


def programs_of(step: Step) -> dict[str, str]:
    """Program -> the package that provides it, for one step."""
    return {program: package.name for package in PACKAGES[step] for program in package.programs}


def provider(program: str) -> str | None:
    """The Debian package (of any step) that provides `program`, for error messages."""
    for step in PACKAGES:
        if (name := programs_of(step).get(program)) is not None:
            return name
    return None


def missing(packages: Iterable[str]) -> list[str]:
    wanted = list(packages)
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *wanted], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in wanted if p not in installed]


def ensure(step: Step) -> None:
    """Install whichever of `step`'s packages are missing (needs root and Debian's archive)."""
    absent = missing(package.name for package in PACKAGES[step])
    if not absent:
        return
    reasons = "; ".join(f"{p.name}: {p.why}" for p in PACKAGES[step] if p.name in absent)
    if os.geteuid() != 0:
        raise PackageError(
            f"Debian packages {', '.join(absent)} are missing and installing them needs root ({reasons})"
        )
    print(f"[packages] installing for the {step} step: {' '.join(absent)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *absent]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise PackageError(f"apt-get install {' '.join(absent)} failed ({reasons}):\n{tail}")
