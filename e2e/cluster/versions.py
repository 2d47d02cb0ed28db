"""The pinned components (versions.toml) and the cache key derived from them."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

CLUSTER_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = CLUSTER_DIR / "versions.toml"


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str
    module_dir: Path
    binaries: dict[str, str]  # binary name -> Go package path
    crds: tuple[str, ...] = ()
    # Go package variable -> value template for `-ldflags -X` ({version}, {major}, {minor}, {build_date}).
    stamps: tuple[tuple[str, str], ...] = ()
    # Go build tags (`go build -tags`), for upstream's own switches such as Prometheus's remove_all_sd.
    tags: tuple[str, ...] = ()

    def ldflags(self, build_date: str) -> list[str]:
        """`-X pkg.var=value` arguments that stamp this component's version into its binaries."""
        major, minor = self.version.lstrip("v").split(".")[:2]
        values = {"version": self.version, "major": major, "minor": minor, "build_date": build_date}
        return [f"-X {var}={template.format(**values)}" for var, template in self.stamps]


def load_components(path: Path = VERSIONS_FILE) -> list[Component]:
    data = tomllib.loads(path.read_text())
    return [
        Component(
            name=c["name"],
            module=c["module"],
            version=c["version"],
            module_dir=CLUSTER_DIR / c["dir"],
            binaries=dict(c["binaries"]),
            crds=tuple(c.get("crds", ())),
            stamps=tuple(sorted(c.get("stamps", {}).items())),
            tags=tuple(c.get("tags", ())),
        )
        for c in data["component"]
    ]


def required_version(go_mod: Path, module: str) -> str | None:
    """The version go.mod requires for `module` (None when absent)."""
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", re.MULTILINE)
    match = pattern.search(go_mod.read_text())
    return match.group(1) if match else None


def check_pins(components: list[Component]) -> list[str]:
    """Disagreements between versions.toml and the go.mod files, as messages."""
    problems = []
    for c in components:
        found = required_version(c.module_dir / "go.mod", c.module)
        if found != c.version:
            problems.append(
                f"{c.name}: versions.toml pins {c.module} {c.version} but {c.module_dir / 'go.mod'} requires {found}"
            )
    return problems


def go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def cache_root() -> Path:
    base = os.environ.get("KUBEMAAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubemaas"
    )
    return Path(base)


def build_key(components: list[Component], toolchain: str) -> str:
    """Hash of everything that decides the binaries' bytes."""
    digest = hashlib.sha256(toolchain.encode())
    digest.update(VERSIONS_FILE.read_bytes())
    for module_dir in sorted({c.module_dir for c in components}):
        # go.mod/go.sum pin the dependencies; a module's own main packages (e.g. modules/kube/coredns/main.go) are
        # source.
        for path in sorted([module_dir / "go.mod", module_dir / "go.sum", *module_dir.rglob("*.go")]):
            digest.update(str(path.relative_to(module_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bin_dir(components: list[Component], toolchain: str) -> Path:
    return cache_root() / "cluster" / build_key(components, toolchain) / "bin"


def run_dir() -> Path:
    return Path(os.environ.get("KUBEMAAS_CLUSTER_RUN_DIR") or cache_root() / "run")
