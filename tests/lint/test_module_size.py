"""Every module of the kubemaas package says one thing: a docstring that names it, and at most 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "kubemaas"
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_limit() -> None:
    too_long = {
        str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"split these by idea (at most {MAX_LINES} lines each): {too_long}"


def test_every_module_names_its_idea() -> None:
    undocumented = [str(p.relative_to(PACKAGE)) for p in _modules() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == [], f"modules without a docstring: {undocumented}"


def test_the_check_sees_the_package() -> None:
    # A wrong path would make both checks pass vacuously.
    assert len(_modules()) > 50
    assert PACKAGE / "api" / "core" / "__init__.py" in _modules()
