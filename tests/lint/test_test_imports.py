"""Tests share helpers through builders, fakes and conftest modules, never by importing another test module."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _test_module_imports(path: Path) -> list[str]:
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    return [name for name in imported if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")]


def test_no_test_module_imports_another() -> None:
    offenders = {
        str(path.relative_to(REPO)): found
        for root in ("tests", "e2e")
        for path in sorted((REPO / root).rglob("*.py"))
        if (found := _test_module_imports(path))
    }
    assert offenders == {}, f"move the shared helpers into a builders.py or conftest.py: {offenders}"
