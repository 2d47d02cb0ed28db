"""How the e2e suite reads a traffic client's log (e2e/kube.py): what counts as a request a rollout lost."""

from __future__ import annotations

from e2e.kube import client_requests, from_first_answer

REFUSED = {"error": "URLError(ConnectionRefusedError(111, 'Connection refused'))"}


def test_requests_refused_before_the_service_first_routes_are_not_counted() -> None:
    seen = [{"t": 1.0, **REFUSED}, {"t": 1.1, **REFUSED}, {"t": 1.2, "out": [0.5]}, {"t": 1.3, "out": [0.5]}]
    assert from_first_answer(seen) == seen[2:]


def test_every_failure_after_the_first_answer_is_kept() -> None:
    seen = [{"t": 1.0, "out": [0.5]}, {"t": 1.1, **REFUSED}, {"t": 1.2, "out": [0.5]}]
    assert from_first_answer(seen) == seen


def test_a_client_never_answered_has_no_requests_yet() -> None:
    assert from_first_answer([{"t": 1.0, **REFUSED}]) == []
    assert from_first_answer([]) == []


def test_a_client_log_reads_as_its_json_lines_only() -> None:
    log = 'starting\n{"t": 1.0, "out": [0.5]}\nTraceback (most recent call last):\n{"t": 1.1, "error": "x"}\n'
    assert client_requests(log) == [{"t": 1.0, "out": [0.5]}, {"t": 1.1, "error": "x"}]
