"""Fixtures of the controller tests; the fakes themselves are in tests/controllers/fakes.py."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def no_events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """kopf.event outside a running operator: recorded instead of posted."""
    import kopf

    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "event", lambda body, **kwargs: posted.append(kwargs))
    return posted


@pytest.fixture(autouse=True)
def fresh_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no status memory and no pending re-run of either controller."""
    from kubemaas.controllers import modelservice, trainingjob
    from kubemaas.controllers.reconciler import ReconcileLoop

    monkeypatch.setattr(modelservice, "LOOP", ReconcileLoop(modelservice.KIND))
    monkeypatch.setattr(trainingjob, "LOOP", ReconcileLoop(trainingjob.KIND))
