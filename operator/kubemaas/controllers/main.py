"""Entry point of `kubemaas run`: load the handlers and hand control to kopf."""

from __future__ import annotations

import logging

import kopf
import prometheus_client

from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE

# Importing the modules registers their handlers with kopf's default registry.
from kubemaas.controllers import settings as _settings  # noqa: F401


def run_operator(
    *,
    namespaces: list[str],
    standalone: bool,
    liveness_endpoint: str | None,
    metrics_port: int | None = None,
    triton_image: str = DEFAULT_TRITON_IMAGE,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if metrics_port is not None:
        prometheus_client.start_http_server(metrics_port)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=tuple(namespaces),
        standalone=standalone,
        liveness_endpoint=liveness_endpoint,
        # Handlers read operator-wide settings from kopf's memo (kwarg `memo`), not from globals.
        memo=kopf.Memo(triton_image=triton_image),
    )
    return 0
