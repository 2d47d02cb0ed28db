"""Entry point of `kubemaas run`: load the handlers and hand control to kopf."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE
from kubemaas.controllers import WATCH_SERVER_TIMEOUT
from kubemaas.controllers.apply import Kube
from kubemaas.controllers.metrics import start_metrics_server
from kubemaas.controllers.settings import OperatorOptions, apply_settings


def run_operator(
    *,
    namespaces: list[str],
    standalone: bool,
    liveness_endpoint: str | None,
    metrics_port: int | None,
    triton_image: str = DEFAULT_TRITON_IMAGE,
    watch_timeout: int | None = WATCH_SERVER_TIMEOUT,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Importing the controller modules registers their handlers with kopf's default registry.
    import kubemaas.controllers.handlers  # noqa: F401

    options = OperatorOptions(standalone=standalone, watch_timeout=watch_timeout)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        apply_settings(settings, options)

    if metrics_port:
        start_metrics_server(metrics_port)
    kube = Kube.from_environment()
    try:
        kopf.run(
            clusterwide=not namespaces,
            namespaces=tuple(namespaces),
            standalone=standalone,
            liveness_endpoint=liveness_endpoint,
            # triton_image: the default for ModelServices without spec.runtime.image (`--triton-image`).
            memo=kopf.Memo(kube=kube, triton_image=triton_image),
        )
    finally:
        kube.close()
    return 0
