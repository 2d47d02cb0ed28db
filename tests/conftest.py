"""Fixtures for every unit test."""

from __future__ import annotations

import pytest

from kubemaas.runtime import coredumps


@pytest.fixture(autouse=True)
def _core_dumps_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's entry points turn core dumps off for good (RLIMIT_CORE 0, the hard limit too). Run in-process
    by a test, they would do it to pytest and every child it starts after, and the test that checks it
    (tests/runtime/test_untrusted_store.py) could no longer start a child with a limit to lower."""
    monkeypatch.setattr(coredumps, "disable_core_dumps", lambda: None)
