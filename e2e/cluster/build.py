"""Compile the pinned components into the versioned cache (one `go build` per Go module)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from .versions import Component, bin_dir, check_pins, go_version, load_components

# Two modules compile at once: each `go build` already uses every core to compile, but it downloads its modules
# from the proxy and links each binary on one core, and those stretches leave the other core idle. Measured on
# the 2-core build machine (docs/local-cluster.md).
PARALLEL_MODULES = 2

# -dwarf=false: the linker drops the debug information anyway (-w below), so the compiler need not make it:
# 10 % less compiler CPU (kwok in an empty build cache on the 2-core machine: 116 s of user time instead of
# 129 s). The binaries differ only in their build ID and the flags their build information records.
GO_BUILD_FLAGS = ["-trimpath", "-gcflags=all=-dwarf=false"]
# Strip symbols as upstream release builds do; the version stamps (versions.toml) are appended.
BASE_LDFLAGS = ["-s", "-w"]
COMPLETE_MARKER = ".complete"
TAIL_LINES = 40


class BuildError(RuntimeError):
    """A component failed to build; the message names it and carries the compiler's tail."""


def log(message: str) -> None:
    print(f"[cluster build] {message}", file=sys.stderr, flush=True)


def go_output_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a main package (skips a /vN suffix)."""
    parts = package.split("/")
    if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def ensure_built() -> Path:
    """Return the bin directory, building whatever the cache lacks."""
    components = load_components()
    problems = check_pins(components)
    if problems:
        raise BuildError("versions.toml and go.mod disagree:\n  " + "\n  ".join(problems))
    target = bin_dir(components, go_version())
    if (target / COMPLETE_MARKER).exists():
        log(f"using cached binaries in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # `make test` starts this build before the venv exists and `prepare` asks again later: the second caller
    # waits for the first one's binaries instead of compiling the same modules beside it.
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).exists():
            log(f"using the binaries another build just made in {target}")
            return target
        return _build_all(components, target)


def _build_all(components: list[Component], target: Path) -> Path:
    staging = target.with_name(f"bin.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    by_module: dict[Path, list[Component]] = defaultdict(list)
    for c in components:
        by_module[c.module_dir].append(c)
    # versions.toml lists the longest build (Kubernetes) first, so it starts first.
    with ThreadPoolExecutor(max_workers=PARALLEL_MODULES) as pool:
        builds = [pool.submit(build_module, module_dir, group, staging) for module_dir, group in by_module.items()]
        for build in builds:
            build.result()  # the first failure, after every build has ended
    (staging / COMPLETE_MARKER).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log(f"all components built in {time.monotonic() - started:.0f}s into {target}")
    return target


def build_module(module_dir: Path, group: list[Component], out: Path) -> None:
    """One `go build` for every binary of a module, so shared packages compile once."""
    names = ", ".join(f"{c.name} {c.version}" for c in group)
    binaries = {name: pkg for c in group for name, pkg in c.binaries.items()}
    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = " ".join(BASE_LDFLAGS + [flag for c in group for flag in c.ldflags(build_date)])
    log(f"building {names} ({', '.join(binaries)}) from {module_dir.name}/ ...")
    started = time.monotonic()
    raw = out / f".go-{module_dir.name}"
    raw.mkdir()
    tags = sorted({tag for c in group for tag in c.tags})
    tag_flags = [f"-tags={','.join(tags)}"] if tags else []
    command = ["go", "build", *GO_BUILD_FLAGS, *tag_flags, f"-ldflags={ldflags}", "-o", f"{raw}/", *binaries.values()]
    result = subprocess.run(command, cwd=module_dir, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-TAIL_LINES:])
        raise BuildError(f"building {names} failed (go build exited {result.returncode} in {module_dir}):\n{tail}")
    for name, pkg in binaries.items():
        (raw / go_output_name(pkg)).rename(out / name)
    raw.rmdir()
    log(f"built {names} in {time.monotonic() - started:.0f}s")


def module_source_dir(component: Component) -> Path:
    """Where the module cache holds the pinned source (for files such as CRDs). A module cache emptied beside a
    kept binary cache (`go clean -modcache`, a disk clean-up) lists the module without a directory: the source
    is downloaded then, as a build would, instead of failing the cluster's start."""
    for attempt in range(2):
        result = subprocess.run(
            ["go", "list", "-m", "-f", "{{.Dir}}", component.module],
            cwd=component.module_dir,
            capture_output=True,
            text=True,
        )
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
        if attempt == 0:
            log(f"downloading the source of {component.module} {component.version} (not in the module cache)")
            subprocess.run(
                ["go", "mod", "download", component.module], cwd=component.module_dir, capture_output=True, text=True
            )
    raise BuildError(f"cannot locate {component.module} {component.version}: {result.stderr.strip()}")


if __name__ == "__main__":
    # `python3 -m e2e.cluster.build`: the standard library only, so `make test` can start the Go build with the
    # system Python while the venv is still being made (tests/cluster/test_build.py keeps it that way).
    try:
        ensure_built()
    except BuildError as error:
        log(str(error))
        sys.exit(1)
