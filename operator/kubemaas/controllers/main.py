"""Entry point of `kubemaas run`: load the handlers and hand control to kopf."""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

import kopf

# kopf.run() types its `identity` argument with this NewType but does not export it.
from kopf._core.engines.peering import Identity

from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE
from kubemaas.controllers import WATCH_SERVER_TIMEOUT
from kubemaas.controllers.apply import Kube
from kubemaas.controllers.log_levels import lower_retried_requests
from kubemaas.controllers.memory import trim_periodically
from kubemaas.controllers.metrics import count_watch_restarts, start_metrics_server
from kubemaas.controllers.settings import OperatorOptions, apply_settings


def own_identity() -> Identity:
    """This process's kopf peering identity, in kopf's own format (user@host/time/random) but without
    `getpass.getuser()`: that raises KeyError under a UID with no passwd entry, which is how the image
    runs (65532) and how OpenShift assigns UIDs."""
    return Identity(f"kubemaas@{socket.gethostname()}/{datetime.now(UTC):%Y%m%d%H%M%S}/{secrets.token_hex(3)}")


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
    lower_retried_requests()  # a request kopf retries is not an error (log_levels.py)
    # kopf logs "Handler '...' succeeded." at INFO for every handler call: about 17 lines per ModelService
    # in a burst of 1,000, and a measurable share of the operator's CPU (README, "Reconcile"). What Kubemaas
    # does is logged by its own loggers; kopf's warnings and errors about objects still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Importing the controller modules registers their handlers with kopf's default registry.
    import kubemaas.controllers.handlers  # noqa: F401

    options = OperatorOptions(standalone=standalone, watch_timeout=watch_timeout)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        apply_settings(settings, options)

    if metrics_port:
        count_watch_restarts()
        start_metrics_server(metrics_port)
    trim_periodically()  # a burst's freed memory back to the system (memory.py)
    kube = Kube.from_environment()
    try:
        kopf.run(
            clusterwide=not namespaces,
            namespaces=tuple(namespaces),
            standalone=standalone,
            liveness_endpoint=liveness_endpoint,
            identity=own_identity(),
            # triton_image: the default for ModelServices without spec.runtime.image (`--triton-image`).
            memo=kopf.Memo(kube=kube, triton_image=triton_image),
        )
    finally:
        kube.close()
    return 0
