"""The import layers `make lint` enforces (.importlinter): the real tree keeps them, an upward import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    if not binary.exists():
        pytest.skip("lint-imports is not installed: it comes with the dev extra (`make venv`)")
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(binary), "--no-cache", str(CONFIG)], capture_output=True, text=True, env=env, cwd=package_parent
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(REPO / "operator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("manifests/pods.py", "from kubemaas.controllers import reconciler"),  # manifests -> controllers
        ("contract/keys.py", "from kubemaas.runtime import keyring"),  # contract -> runtime
        ("api/errors.py", "from kubemaas.contract import store"),  # api -> contract
        ("manifests/labels.py", "from kubemaas.runtime import crypto"),  # operator -> runtime
    ],
)
def test_an_upward_import_fails_the_lint(tmp_path: Path, module: str, upward: str) -> None:
    copy = tmp_path / "kubemaas"
    shutil.copytree(REPO / "operator" / "kubemaas", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{upward}  # an upward import\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and upward.split()[1] in result.stdout


def test_pre_commit_runs_what_make_lint_runs() -> None:
    """Every command of `make lint` is a local hook of .pre-commit-config.yaml (and nothing is fetched)."""
    import yaml

    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    assert [r["repo"] for r in config["repos"]] == ["local"]
    entries = [hook["entry"] for hook in config["repos"][0]["hooks"]]
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip().split(" $(")[0] for line in recipe.splitlines()[1:] if line.startswith("\t")]
    for command in commands:
        # The hooks pass the changed files instead of the folders the recipe names.
        tool = command.replace("$(BIN)/", ".venv/bin/").removesuffix(" operator")
        assert any(entry.startswith(tool) for entry in entries), f"make lint runs {tool!r}; no hook does"
