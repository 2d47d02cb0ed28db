"""Entry point of `kubemaas run`: load the handlers and hand control to kopf."""

from __future__ import annotations

import logging

import kopf

# Importing the modules registers their handlers with kopf's default registry.
from kubemaas.controllers import settings as _settings  # noqa: F401


def run_operator(*, namespaces: list[str], standalone: bool, liveness_endpoint: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.run(
        clusterwide=not namespaces,
        namespaces=tuple(namespaces),
        standalone=standalone,
        liveness_endpoint=liveness_endpoint,
    )
    return 0
