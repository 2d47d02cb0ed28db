"""How kopf's retried API requests are logged: a retry is not an error.

kopf logs every failed attempt of a request it will retry at ERROR ("Request attempt #1/9 failed; will retry:
..."). At start-up the API server answers 429 "storage is (re)initializing" for a moment, so a newcomer's first
screen of `make run` was red although nothing was wrong. Attempts kopf retries are logged at WARNING, and
that start-up 429 at INFO; what kopf gives up on ("escalating") stays ERROR.
"""

from __future__ import annotations

import logging

RETRIED = "failed; will retry"
STARTING_UP = ("429", "(re)initializing")


class RetriedRequestLevel(logging.Filter):
    """Lowers the level of kopf's retried-request records; every other record passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("kopf") and record.levelno == logging.ERROR:
            message = record.getMessage()
            if RETRIED in message:
                level = logging.INFO if all(part in message for part in STARTING_UP) else logging.WARNING
                record.levelno, record.levelname = level, logging.getLevelName(level)
        return True


def lower_retried_requests(logger: logging.Logger | None = None) -> None:
    """Install the filter on the handlers of `logger` (the root logger's: where kopf's records end up)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RetriedRequestLevel) for f in handler.filters):
            handler.addFilter(RetriedRequestLevel())
