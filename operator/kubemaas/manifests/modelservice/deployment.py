"""The serving Deployment and its pod template (model-loader init container, tritonserver), and the
inverse: the model a pod template was built from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubemaas.api.modelservice import (
    ModelServiceSpec,
)
from kubemaas.contract.serving import settings_to_args
from kubemaas.contract.store import DEFAULT_MOUNT_ROOT, ArtifactStoreError
from kubemaas.manifests.modelservice.inputs import (
    GRPC_PORT,
    HTTP_PORT,
    KEY_PATH,
    LOADER_CONTAINER,
    METRICS_PORT,
    PRE_STOP_SECONDS,
    READINESS_PROBE_PERIOD_SECONDS,
    REPOSITORY_PATH,
    SOURCE_ANNOTATION,
    STARTUP_PROBE_PERIOD_SECONDS,
    TERMINATION_LOG,
    TRACK_LABEL,
    TRITON_CONTAINER,
    TRITON_TMP_SIZE,
    VERSION_ANNOTATION,
    VERSION_LABEL,
    ModelRef,
    Parent,
    ServingOptions,
    Track,
    child_meta,
    deployment_name,
    serving_settings,
    track_selector,
)
from kubemaas.manifests.pods import (
    QUEUE_LABEL,
    WORKLOAD_DEFAULTS,
    container_resources,
    place,
    restricted_container_security_context,
    restricted_pod_security_context,
)
from kubemaas.manifests.storage import StoreAccess, s3_access, s3_storage_from

# The loader streams: its memory is the interpreter and a fixed number of chunks in flight (at most 48 MiB,
# kubemaas.runtime.crypto), whatever the model's size, and its crypto pipeline uses at most four cores. The
# API has no field for it: it is the operator's, like its image.
LOADER_RESOURCES: dict[str, Any] = {
    "limits": {"cpu": "4", "memory": "512Mi"},
    "requests": {"cpu": "100m", "memory": "128Mi"},
}


def _loader_container(
    spec: ModelServiceSpec, model: ModelRef, store: StoreAccess, options: ServingOptions
) -> dict[str, Any]:
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
        "resources": LOADER_RESOURCES,
        "securityContext": restricted_container_security_context(),
        "volumeMounts": [
            *store.mounts,
            {"name": "model-key", "mountPath": KEY_PATH, "readOnly": True},
            {"name": "model-repository", "mountPath": REPOSITORY_PATH},
        ],
        **({"env": store.env} if store.env else {}),
    }


def _store_access(model: ModelRef) -> StoreAccess:
    """The claim of a pvc:// store, mounted read-only; or how an s3:// store is reached."""
    if model.claim is None:
        return s3_access(model.s3)
    return StoreAccess(
        volumes=[{"name": "model-store", "persistentVolumeClaim": {"claimName": model.claim, "readOnly": True}}],
        mounts=[{"name": "model-store", "mountPath": f"{DEFAULT_MOUNT_ROOT}/{model.claim}", "readOnly": True}],
    )


TRITON_COMMAND = ["/bin/sh", "-c", 'ulimit -c 0 && exec tritonserver "$@"', "tritonserver"]


def _triton_container(spec: ModelServiceSpec, options: ServingOptions) -> dict[str, Any]:
    def live() -> dict[str, Any]:
        return {"path": "/v2/health/live", "port": "http"}

    container: dict[str, Any] = {
        "name": TRITON_CONTAINER,
        "image": options.triton_image,
        # Triton holds the decrypted model in memory: no core dump of it (RLIMIT_CORE 0, as the loader and the
        # trainer set for themselves); the args follow as "$@".
        "command": TRITON_COMMAND,
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
    container["resources"] = container_resources(spec.resources, options.gpu_resource, WORKLOAD_DEFAULTS)
    return container


def pod_template(
    spec: ModelServiceSpec, parent: Parent, model: ModelRef, options: ServingOptions, track: Track
) -> dict[str, Any]:
    labels = {**parent.labels, **track_selector(parent, track), VERSION_LABEL: model.version}
    store = _store_access(model)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security_context(),
        "initContainers": [_loader_container(spec, model, store, options)],
        "containers": [_triton_container(spec, options)],
        "volumes": [
            *store.volumes,
            {"name": "model-key", "secret": {"secretName": model.key_secret, "defaultMode": 0o400}},
            {"name": "model-repository", "emptyDir": {"sizeLimit": options.repository_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TRITON_TMP_SIZE}},
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
        "metadata": child_meta(parent, deployment_name(parent.name, track), {TRACK_LABEL: track.value}),
        "spec": dep_spec,
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
        ref = ModelRef(
            store_uri=flags["store-uri"],
            model=flags["model"],
            version=flags["version"],
            key_secret=key["secret"]["secretName"],
            source=annotations.get(SOURCE_ANNOTATION, ""),
        )
        if ref.claim is None:  # a bucket: how it is reached is part of what the template serves
            ref = replace(ref, s3=s3_storage_from(loader.get("env") or [], spec.get("volumes") or []))
    except (KeyError, TypeError, ValueError, ArtifactStoreError):  # a template this module did not build
        return None
    return ref
