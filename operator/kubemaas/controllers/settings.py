"""kopf's settings, all in one startup handler."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import kopf

from kubemaas.controllers import WATCH_SERVER_TIMEOUT
from kubemaas.controllers.children import watched
from kubemaas.manifests.labels import MANAGED_BY_SELECTOR

# Under a structural schema the API server prunes `status.kopf`, so kopf keeps its progress in annotations.
ANNOTATION_PREFIX = "kubemaas.io"
PEERING_NAME = "kubemaas"

# Kinds the operator watches only to see its own children, each with the server-side selector
# (children.watched() says why).
CHILD_RESOURCES: tuple[tuple[str, str], ...] = tuple(watched())


@dataclass(frozen=True)
class OperatorOptions:
    """What `kubemaas run` was told on its command line, as the startup handler needs it."""

    standalone: bool
    # None: no timeoutSeconds on watches, the API server ends each after its --min-request-timeout (x1-2).
    watch_timeout: int | None = WATCH_SERVER_TIMEOUT


def apply_settings(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = options.watch_timeout
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    for group, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, plural] = MANAGED_BY_SELECTOR
    # Events are for what a user must act on; routine progress stays in logs and conditions.
    settings.posting.level = logging.WARNING
    # kopf already set peering.clusterwide from `-n` (namespaced peering when namespaces are given) and
    # peering.standalone from `--standalone`; both stay as the command line said. Without --standalone
    # peering is mandatory: with the peering CRD missing, two replicas would otherwise both reconcile
    # the same objects, silently. The chart installs the CRD whenever it runs more than one replica.
    settings.peering.name = PEERING_NAME
    settings.peering.mandatory = not options.standalone
