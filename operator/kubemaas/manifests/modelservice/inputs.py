"""What the ModelService builders take and the names they share: the typed inputs (parent, model,
options, track), ports, container names, paths, and the labels and annotations the controller reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kubemaas import __version__, contract
from kubemaas.api.core import DEFAULT_GPU_RESOURCE
from kubemaas.api.modelservice import (
    Batching,
    Runtime,
)
from kubemaas.api.storage import S3Storage
from kubemaas.contract.serving import ServingSettings
from kubemaas.contract.store import StoreUri

# The model-loader image of this operator release (images/model-loader); the chart may override it.
DEFAULT_LOADER_IMAGE = f"kubemaas/model-loader:{__version__}"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

LOADER_CONTAINER = "model-loader"
TRITON_CONTAINER = "tritonserver"

# Where the pod sees things. The repository path is shared by loader (read-write) and Triton (read-only).
REPOSITORY_PATH = "/models"
KEY_PATH = str(contract.DEFAULT_KEY_DIR)
TERMINATION_LOG = str(contract.DEFAULT_TERMINATION_LOG)

# Labels/annotations the controller reads back from the pod template and pods.
VERSION_LABEL = "kubemaas.io/model-version"
VERSION_ANNOTATION = "kubemaas.io/model-version"
TRACK_LABEL = "kubemaas.io/track"
# The source the version was resolved from: a changed source invalidates a pin taken from ``Latest``.
SOURCE_ANNOTATION = "kubemaas.io/model-source"

# A pod serves only after a probe passes, so the probe period adds to every pod's time to serve (measured
# with e2e/bench/bench_lifecycle.py: 10 s startup / 5 s readiness periods left a ready tritonserver unused
# for ~3 s). A GET on the pod's own port each second or two costs Triton nothing measurable.
STARTUP_PROBE_PERIOD_SECONDS = 1
READINESS_PROBE_PERIOD_SECONDS = 2
# How long a replaced pod keeps serving after it leaves the endpoints, before Triton gets SIGTERM.
PRE_STOP_SECONDS = 5
# Triton's Python backend and PyTorch DataLoader-style workers use /dev/shm; the runtime's 64 MiB is too small.
DEFAULT_SHM_SIZE = "1Gi"
# The emptyDir the loader decrypts the model into: bounded so that a serving pod cannot fill its node's disk
# (the kubelet evicts a pod past it). The operator does not read the store, so it cannot size it from the
# model; 32Gi holds a model of about 15B parameters in fp16. Operator configuration (ServingOptions).
DEFAULT_REPOSITORY_SIZE = "32Gi"
# Triton's /tmp: backends' caches and temporary files, never the model.
TRITON_TMP_SIZE = "4Gi"
DEFAULT_PDB_MAX_UNAVAILABLE = 1


class Track(StrEnum):
    """Which Deployment of a ModelService: the stable one, or the canary of a new version."""

    STABLE = "stable"
    CANARY = "canary"


@dataclass(frozen=True)
class ModelRef:
    """Exactly what the loader loads: a store, a model name, a version (pinned, or Latest), a key Secret, and how
    to reach an s3:// store."""

    store_uri: str
    model: str
    version: str
    key_secret: str
    # The spec's source, recorded on the pod template (see SOURCE_ANNOTATION).
    source: str
    s3: S3Storage | None = None

    @property
    def claim(self) -> str | None:
        """The claim a pvc:// store is on; None for a bucket (nothing to mount)."""
        return StoreUri.parse(self.store_uri).claim

    @property
    def credentials_secret(self) -> str:
        """The Secret with the s3:// store's keys; "" when the SDK's default chain applies."""
        ref = self.s3.credentials_secret_ref if self.s3 is not None else None
        return ref.name if ref is not None else ""


@dataclass(frozen=True)
class ServingOptions:
    """Serving settings with the operator's defaults applied (some are operator configuration)."""

    triton_image: str
    progress_deadline_seconds: int
    # Triton loads the model into (GPU) memory before /v2/health/ready answers: several GB take minutes.
    startup_timeout_seconds: int
    loader_image: str = DEFAULT_LOADER_IMAGE
    shm_size: str = DEFAULT_SHM_SIZE
    repository_size: str = DEFAULT_REPOSITORY_SIZE
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    triton_args: tuple[str, ...] = ()
    # Extra environment of the Triton container, as core/v1 EnvVar / EnvFromSource dicts.
    triton_env: tuple[Mapping[str, Any], ...] = ()
    triton_env_from: tuple[Mapping[str, Any], ...] = ()
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    pdb_min_available: int | str | None = None
    pdb_max_unavailable: int | str | None = None


@dataclass(frozen=True)
class Parent:
    """The owning ModelService as its children see it: names, labels, owner reference."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    # Every serving pod of this ModelService (stable and canary): the Service's selector.
    selector: Mapping[str, str]
    owner_reference: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)


def deployment_name(parent_name: str, track: Track) -> str:
    return parent_name if track is Track.STABLE else f"{parent_name}-{track.value}"


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc"


def serving_settings(runtime: Runtime, batching: Batching) -> ServingSettings:
    return ServingSettings(
        backend=runtime.backend,
        max_batch_size=batching.max_batch_size,
        dynamic_batching=batching.dynamic_batching,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes or ()),
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        instance_count=runtime.instance_group.count,
        instance_kind=runtime.instance_group.kind,
    )


def child_meta(parent: Parent, name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": parent.namespace,
        "labels": {**parent.labels, **(extra_labels or {})},
        "ownerReferences": [dict(parent.owner_reference)],
    }


def track_selector(parent: Parent, track: Track) -> dict[str, str]:
    # Stable and canary select disjoint pods (two Deployments must never share pods); the Service
    # selects both through the parent's selector.
    return {**parent.selector, TRACK_LABEL: track.value}
