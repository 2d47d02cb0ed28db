"""The e2e suite's serial groups (e2e/conftest.py) hold only if xdist's `--dist loadgroup` really sends a group
to one worker: with pytest 9 and xdist 3.8 it silently did not, and the real node's containerd tests ran on three
workers at once. This runs a tiny suite the way `make e2e` runs the real one and checks where each test ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GROUPED = """
import pytest

pytestmark = pytest.mark.xdist_group("serial")


@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    pass
"""
FREE = """
import pytest


@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
"""


def test_a_group_runs_on_one_worker_beside_the_rest(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_free.py").write_text(FREE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ran = re.findall(r"\[(gw\d+)\] .*PASSED (test_\w+\.py)::", result.stdout)
    assert len(ran) == 12, result.stdout
    grouped = {worker for worker, file in ran if file == "test_grouped.py"}
    assert len(grouped) == 1, f"the group ran on {sorted(grouped)}"
