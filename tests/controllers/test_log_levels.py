"""kopf's retried requests are not logged as errors (controllers/log_levels.py), through a real handler."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import kopf

from kubemaas.controllers.log_levels import RETRIED, lower_retried_requests


def logged(name: str, level: int, message: str) -> str:
    stream = io.StringIO()
    root = logging.Logger("test-root")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    lower_retried_requests(root)
    lower_retried_requests(root)  # idempotent
    assert len(handler.filters) == 1
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    root.handle(record)
    return stream.getvalue().strip()


def test_the_start_up_429_is_info_other_retries_warnings_and_giving_up_stays_an_error() -> None:
    starting = (
        "Request attempt #1/9 failed; will retry: GET https://127.0.0.1:6443/apis/kubemaas.io/v1alpha1/trainingjobs "
        "-> APITooManyRequestsError(429, 'storage is (re)initializing')"
    )
    assert logged("kopf._cogs.clients.watching", logging.ERROR, starting).startswith("INFO ")
    refused = "Request attempt #2/9 failed; will retry: PATCH ... -> ClientConnectorError('connection refused')"
    assert logged("kopf.objects", logging.ERROR, refused).startswith("WARNING ")
    escalating = "Request attempt #9/9 failed; escalating: GET ... -> APIServerError(500)"
    assert logged("kopf._cogs.clients.watching", logging.ERROR, escalating).startswith("ERROR ")
    assert logged("kubemaas.controllers.reconciler", logging.ERROR, refused).startswith("ERROR ")


def test_the_message_lowered_is_the_one_the_installed_kopf_logs() -> None:
    source = (Path(kopf.__file__).parent / "_cogs" / "clients" / "api.py").read_text()
    assert f'logger.error(f"Request attempt {{idx}} {RETRIED}: {{what}} -> {{e!r}}")' in source
