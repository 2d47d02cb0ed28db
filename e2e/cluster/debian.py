"""Debian packages the local cluster needs beyond the Go builds, installed once with apt-get.

CI machines start bare; every package here is checked with `dpkg-query` first, so a warm machine
spends nothing. One function for every caller (the real node, the image build) so the list of
what is installed by hand stays in code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable


class PackageError(RuntimeError):
    """apt-get failed or is not available; the message says which packages and why."""


def missing(packages: Iterable[str]) -> list[str]:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure_packages(packages: Iterable[str]) -> None:
    """Install whichever of `packages` are missing (needs root and Debian's archive)."""
    wanted = list(packages)
    absent = missing(wanted)
    if not absent:
        return
    if os.geteuid() != 0:
        raise PackageError(f"Debian packages {', '.join(absent)} are missing and installing them needs root")
    print(f"[cluster] installing Debian packages: {' '.join(absent)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *absent]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise PackageError(f"apt-get install {' '.join(absent)} failed:\n{tail}")
