"""Compile the pinned components into the versioned cache (one `go build` per Go module)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from .versions import Component, bin_dir, check_pins, go_version, load_components

GO_BUILD_FLAGS = ["-trimpath"]
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
    staging = target.with_name(f"bin.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    by_module: dict[Path, list[Component]] = defaultdict(list)
    for c in components:
        by_module[c.module_dir].append(c)
    for module_dir, group in by_module.items():
        build_module(module_dir, group, staging)
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
    """Where the module cache holds the pinned source (for files such as CRDs)."""
    result = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", component.module],
        cwd=component.module_dir,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise BuildError(f"cannot locate {component.module} {component.version}: {result.stderr.strip()}")
    return Path(result.stdout.strip())
