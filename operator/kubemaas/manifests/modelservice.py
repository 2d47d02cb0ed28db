"""Pure builders for a ModelService's children: Deployment(s), Service, HPA, PodDisruptionBudget.

Typed input (:class:`ServingPlan`), plain dicts out; no API calls, no clock, no environment. The
controller decides *what* to serve (which model version, how many replicas, which track) and these
functions render it.

Serving pod (one model version per pod, never ``Latest`` once the controller pinned it):

* init container ``model-loader`` runs ``kubemaas load-model`` (docs/runtime-contract.md): it reads
  the artifact store (the claim mounted read-only), decrypts with the key Secret (files, mode 0400,
  mounted into this container only) and writes the Triton model repository, an ``emptyDir``;
* container ``tritonserver`` serves that repository, mounted read-only. It never sees the key and
  the pod mounts no service-account token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kubemaas import __version__, contract
from kubemaas.api.core import DEFAULT_GPU_RESOURCE
from kubemaas.api.modelservice import (
    Autoscaling,
    Batching,
    ModelServiceSpec,
    Runtime,
    ScalingMetric,
)
from kubemaas.contract.serving import ServingSettings, settings_to_args
from kubemaas.contract.store import DEFAULT_MOUNT_ROOT, claim_of
from kubemaas.manifests.pods import (
    QUEUE_LABEL,
    container_resources,
    place,
    restricted_container_security_context,
    restricted_pod_security_context,
)
from kubemaas.serving_metrics import QUEUE_TIME_METRIC

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
DEFAULT_PDB_MAX_UNAVAILABLE = 1


class Track(StrEnum):
    """Which Deployment of a ModelService: the stable one, or the canary of a new version."""

    STABLE = "stable"
    CANARY = "canary"


@dataclass(frozen=True)
class ModelRef:
    """Exactly what the loader loads: a store, a model name, a version (pinned, or Latest), a key Secret."""

    store_uri: str
    model: str
    version: str
    key_secret: str
    # The spec's source, recorded on the pod template (see SOURCE_ANNOTATION).
    source: str

    @property
    def claim(self) -> str:
        return claim_of(self.store_uri)


@dataclass(frozen=True)
class ServingOptions:
    """Serving settings with the operator's defaults applied (some are operator configuration)."""

    triton_image: str
    progress_deadline_seconds: int
    # Triton loads the model into (GPU) memory before /v2/health/ready answers: several GB take minutes.
    startup_timeout_seconds: int
    loader_image: str = DEFAULT_LOADER_IMAGE
    shm_size: str = DEFAULT_SHM_SIZE
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


# --------------------------------------------------------------------------- metadata


def _meta(parent: Parent, name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- Deployment


def _loader_container(spec: ModelServiceSpec, model: ModelRef, options: ServingOptions) -> dict[str, Any]:
    settings = serving_settings(spec.runtime, spec.batching)
    return {
        "name": LOADER_CONTAINER,
        "image": options.loader_image,
        "args": [
            f"--store-uri={model.store_uri}",
            f"--model={model.model}",
            f"--version={model.version}",
            f"--key-dir={KEY_PATH}",
            f"--repository={REPOSITORY_PATH}",
            f"--termination-log={TERMINATION_LOG}",
            *settings_to_args(settings),
        ],
        # The loader writes one line of JSON there (resolved version on success, reason on failure);
        # the controller reads it from initContainerStatuses[].state.terminated.message.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": restricted_container_security_context(),
        "volumeMounts": [
            {"name": "model-store", "mountPath": f"{DEFAULT_MOUNT_ROOT}/{model.claim}", "readOnly": True},
            {"name": "model-key", "mountPath": KEY_PATH, "readOnly": True},
            {"name": "model-repository", "mountPath": REPOSITORY_PATH},
        ],
    }


def _triton_container(spec: ModelServiceSpec, options: ServingOptions) -> dict[str, Any]:
    def live() -> dict[str, Any]:
        return {"path": "/v2/health/live", "port": "http"}

    container: dict[str, Any] = {
        "name": TRITON_CONTAINER,
        "image": options.triton_image,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={REPOSITORY_PATH}",
            # Ready only when every model in the repository loaded; a model that fails to load stops
            # the server instead of serving without it.
            "--strict-readiness=true",
            "--exit-on-error=true",
            # The repository is read-only and loaded once: no polling, no model control API.
            "--model-control-mode=none",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            # p50/p99 latency summaries for the chart's dashboard (Triton exports only counters otherwise).
            "--metrics-config=summary_latencies=true",
            *options.triton_args,
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": live(),
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": -(-options.startup_timeout_seconds // STARTUP_PROBE_PERIOD_SECONDS),
        },
        "livenessProbe": {"httpGet": live(), "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": READINESS_PROBE_PERIOD_SECONDS,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        # A pod being replaced leaves the Service's endpoints when it is deleted, but kube-proxy (and any
        # mesh or load balancer) takes a moment to stop sending to it: keep serving through that moment
        # before Triton gets SIGTERM, so a rollout drops no request (the kubelet's own sleep, no binary).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": restricted_container_security_context(),
        "volumeMounts": [
            {"name": "model-repository", "mountPath": REPOSITORY_PATH, "readOnly": True},
            # readOnlyRootFilesystem needs these: backends and torch write caches and temporary files
            # under /tmp (HOME=/tmp), and the Python backend's shared-memory regions live in /dev/shm.
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    container["env"] = [{"name": "HOME", "value": "/tmp"}, *(dict(e) for e in options.triton_env)]
    if options.triton_env_from:
        container["envFrom"] = [dict(e) for e in options.triton_env_from]
    resources = container_resources(spec.resources, options.gpu_resource)
    if resources:
        container["resources"] = resources
    return container


def pod_template(
    spec: ModelServiceSpec, parent: Parent, model: ModelRef, options: ServingOptions, track: Track
) -> dict[str, Any]:
    labels = {**parent.labels, **track_selector(parent, track), VERSION_LABEL: model.version}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security_context(),
        "initContainers": [_loader_container(spec, model, options)],
        "containers": [_triton_container(spec, options)],
        "volumes": [
            {
                "name": "model-store",
                "persistentVolumeClaim": {"claimName": model.claim, "readOnly": True},
            },
            {"name": "model-key", "secret": {"secretName": model.key_secret, "defaultMode": 0o400}},
            {"name": "model-repository", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}},
        ],
    }
    if options.service_account_name:
        # A named account is asked for to reach an API (Kubernetes, a cloud's workload identity): mount its token.
        pod_spec["serviceAccountName"] = options.service_account_name
        pod_spec["automountServiceAccountToken"] = True
    if options.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    place(pod_spec, spec.scheduling)
    if spec.scheduling is not None and spec.scheduling.queue_name:
        labels[QUEUE_LABEL] = spec.scheduling.queue_name
    if spec.resources.gpus:
        # GPU nodes carry the NVIDIA taint (GPU operator, managed node pools); serving pods tolerate it.
        pod_spec.setdefault("tolerations", []).append(
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        )
    return {
        "metadata": {
            "labels": labels,
            "annotations": {VERSION_ANNOTATION: model.version, SOURCE_ANNOTATION: model.source},
        },
        "spec": pod_spec,
    }


def deployment(
    spec: ModelServiceSpec,
    parent: Parent,
    model: ModelRef,
    options: ServingOptions,
    *,
    track: Track = Track.STABLE,
    replicas: int | None,
) -> dict[str, Any]:
    """The serving Deployment. ``replicas=None`` leaves the field out: the HPA owns it."""
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": track_selector(parent, track)},
        "strategy": {
            "type": "RollingUpdate",
            # The old version keeps serving until a new pod is ready: never fewer ready pods than desired.
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "progressDeadlineSeconds": options.progress_deadline_seconds,
        "revisionHistoryLimit": 5,
        "template": pod_template(spec, parent, model, options, track),
    }
    if replicas is not None:
        dep_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(parent, deployment_name(parent.name, track), {TRACK_LABEL: track.value}),
        "spec": dep_spec,
    }


# --------------------------------------------------------------------------- Service


def service(parent: Parent) -> dict[str, Any]:
    """ClusterIP Service over every serving pod (stable and canary), ports by name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(parent, parent.name),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(parent.selector),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def endpoints(parent: Parent) -> dict[str, str]:
    host = service_host(parent.name, parent.namespace)
    return {"http": f"{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}"}


def url(parent: Parent) -> str:
    return f"http://{service_host(parent.name, parent.namespace)}:{HTTP_PORT}"


# --------------------------------------------------------------------------- HPA


def _hpa_metric(autoscaling: Autoscaling) -> dict[str, Any]:
    if autoscaling.metric is ScalingMetric.CPU:
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": autoscaling.target}},
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": QUEUE_TIME_METRIC},
            "target": {"type": "AverageValue", "averageValue": canonical_quantity(autoscaling.target)},
        },
    }


_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


def canonical_quantity(value: int) -> str:
    """An integer as the API server writes it back (2000 -> "2k"), so an unchanged HPA compares equal."""
    suffix = 0
    while value and value % 1000 == 0 and suffix < len(_DECIMAL_SUFFIXES) - 1:
        value //= 1000
        suffix += 1
    return f"{value}{_DECIMAL_SUFFIXES[suffix]}"


def horizontal_pod_autoscaler(parent: Parent, autoscaling: Autoscaling) -> dict[str, Any]:
    """autoscaling/v2 HPA on the stable Deployment; it, not the operator, owns ``spec.replicas``."""
    behavior = autoscaling.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(parent, parent.name),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(parent.name, Track.STABLE),
            },
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [_hpa_metric(autoscaling)],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": behavior.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": behavior.scale_down_stabilization_seconds},
            },
        },
    }


# --------------------------------------------------------------------------- PDB


def pod_disruption_budget(parent: Parent, options: ServingOptions) -> dict[str, Any]:
    """Voluntary disruptions (drains) take serving pods one at a time. Only for more than one replica:
    with one, any budget would block every node drain."""
    budget: dict[str, Any]
    if options.pdb_min_available is not None:
        budget = {"minAvailable": options.pdb_min_available}
    else:
        budget = {"maxUnavailable": options.pdb_max_unavailable or DEFAULT_PDB_MAX_UNAVAILABLE}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(parent, parent.name),
        "spec": {
            **budget,
            "selector": {"matchLabels": dict(parent.selector)},
            # A pod that never got ready (a bad version) may be evicted even when the budget is spent.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def model_ref_from_template(template: Mapping[str, Any]) -> ModelRef | None:
    """The :class:`ModelRef` a pod template (of a Deployment or ReplicaSet) was built from.

    The inverse of :func:`pod_template`, so the controller can roll back to exactly the template an
    older ReplicaSet carries. None for a template this module did not build.
    """
    spec = template.get("spec") or {}
    loader = next((c for c in spec.get("initContainers") or () if c.get("name") == LOADER_CONTAINER), None)
    key = next((v for v in spec.get("volumes") or () if v.get("name") == "model-key"), None)
    if loader is None or key is None:
        return None
    flags = dict(
        a.removeprefix("--").split("=", 1) for a in loader.get("args") or () if a.startswith("--") and "=" in a
    )
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    try:
        return ModelRef(
            store_uri=flags["store-uri"],
            model=flags["model"],
            version=flags["version"],
            key_secret=key["secret"]["secretName"],
            source=annotations.get(SOURCE_ANNOTATION, ""),
        )
    except (KeyError, TypeError):
        return None
