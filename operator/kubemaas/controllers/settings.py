"""kopf's settings, all in one startup handler."""

from __future__ import annotations

import logging
from typing import Any

import kopf

# Under a structural schema the API server prunes `status.kopf`, so kopf keeps its progress in annotations.
ANNOTATION_PREFIX = "kubemaas.io"
PEERING_NAME = "kubemaas"


def apply_settings(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Ask the API server to end watches before any proxy or load balancer silently drops them.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Events are for what a user must act on; routine progress stays in logs and conditions.
    settings.posting.level = logging.WARNING
    settings.peering.name = PEERING_NAME
    settings.peering.clusterwide = True
    settings.peering.mandatory = False


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    apply_settings(settings)
