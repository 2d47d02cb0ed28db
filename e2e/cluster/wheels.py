"""The wheel cache's key: what decides which wheels `make venv` downloads, and nothing else.

`make venv` downloads every wheel once into ~/.cache/kubemaas/wheels/<key> and installs offline from there;
the image build mounts the same directory into its RUN steps (images.py). The key hashes the dependency
declarations of pyproject.toml (the build requirements, the dependencies and every extra, the Python
requirement), so an edit to a tool's settings in the same file does not throw away several GB of wheels.

Run as a script (no third-party imports: the Makefile calls it with the system Python before the venv
exists), it prints the key of the repository's pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def dependency_declarations(pyproject: Path = PYPROJECT) -> dict[str, object]:
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    return {
        "build-system": data.get("build-system", {}).get("requires", []),
        "requires-python": project.get("requires-python", ""),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }


def key(pyproject: Path = PYPROJECT) -> str:
    canonical = json.dumps(dependency_declarations(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(key(Path(sys.argv[1]) if len(sys.argv) > 1 else PYPROJECT))
