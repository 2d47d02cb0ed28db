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

One idea a module: ``inputs`` (the typed inputs and shared names), ``deployment`` (the Deployment and
its pod template), ``service`` (the Service and its addresses), ``scaling`` (HPA and PDB), ``network`` (the
NetworkPolicy). Every name
is importable from this package.
"""

from kubemaas.manifests.modelservice.deployment import deployment, model_ref_from_template, pod_template
from kubemaas.manifests.modelservice.inputs import (
    DEFAULT_LOADER_IMAGE,
    DEFAULT_PDB_MAX_UNAVAILABLE,
    DEFAULT_SHM_SIZE,
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
    VERSION_ANNOTATION,
    VERSION_LABEL,
    ModelRef,
    Parent,
    ServingOptions,
    Track,
    child_meta,
    deployment_name,
    service_host,
    serving_settings,
    track_selector,
)
from kubemaas.manifests.modelservice.network import network_policy
from kubemaas.manifests.modelservice.scaling import canonical_quantity, horizontal_pod_autoscaler, pod_disruption_budget
from kubemaas.manifests.modelservice.service import endpoints, service, url

__all__ = [
    "DEFAULT_LOADER_IMAGE",
    "DEFAULT_PDB_MAX_UNAVAILABLE",
    "DEFAULT_SHM_SIZE",
    "GRPC_PORT",
    "HTTP_PORT",
    "KEY_PATH",
    "LOADER_CONTAINER",
    "METRICS_PORT",
    "PRE_STOP_SECONDS",
    "READINESS_PROBE_PERIOD_SECONDS",
    "REPOSITORY_PATH",
    "SOURCE_ANNOTATION",
    "STARTUP_PROBE_PERIOD_SECONDS",
    "TERMINATION_LOG",
    "TRACK_LABEL",
    "TRITON_CONTAINER",
    "VERSION_ANNOTATION",
    "VERSION_LABEL",
    "ModelRef",
    "Parent",
    "ServingOptions",
    "Track",
    "canonical_quantity",
    "child_meta",
    "deployment",
    "deployment_name",
    "endpoints",
    "horizontal_pod_autoscaler",
    "model_ref_from_template",
    "network_policy",
    "pod_disruption_budget",
    "pod_template",
    "service",
    "service_host",
    "serving_settings",
    "track_selector",
    "url",
]
