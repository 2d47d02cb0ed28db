"""Small helpers the e2e tests share: CRD application, custom-object plurals and bodies, pod drivers."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster.images import BASE_IMAGE
from e2e.typed_client import body_as, json_object, meta

REPO = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO / "crds"
OUTCOME_LABEL = "kwok.kubemaas.io/outcome"
# The securityContext of a real-node container under Pod Security `restricted` (the images' non-root user).
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def client_resources(cpu_limit: str) -> dict[str, Any]:
    """A real-node test client's resources: it asks the scheduler for little, so it never keeps the other group's
    scenario from fitting the node (e2e/conftest.py), and its limit bounds what it takes from Triton."""
    return {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": cpu_limit, "memory": "128Mi"}}


def python_pod(name: str, placement: dict[str, Any], command: list[str], **spec: Any) -> dict[str, Any]:
    """A restricted pod running `command` in the base image (Debian's python3, standard library only), with the
    cluster CA mounted at /ca."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **placement,
            **spec,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": BASE_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "securityContext": RESTRICTED_CONTAINER,
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                    "volumeMounts": [{"name": "ca", "mountPath": "/ca", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "ca", "configMap": {"name": "kube-root-ca.crt"}}],
        },
    }


TERMINATION_MESSAGE_ANNOTATION = "kwok.kubemaas.io/termination-message"
CRD = client.V1CustomResourceDefinition
CRD_APPLY_ATTEMPTS = 5  # xdist workers apply the same CRDs at once: 409s are expected, retried


def skip_unless_served(api: client.ApiClient, crd: str, what: str) -> None:
    """Skip the calling test unless the cluster serves the CustomResourceDefinition `crd` (`what`: whose API it
    is, for the skip's reason); an API error other than 404 fails the test."""
    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(crd)
    except client.ApiException as error:
        if error.status != 404:
            raise
        pytest.skip(f"this cluster does not serve {crd} ({what})")


def load_crds(directory: Path = CRDS_DIR) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


def apply_crd(api: client.ApiClient, crd: dict[str, Any]) -> list[str]:
    """Create or replace a CRD; returns the API server's Warning headers (e.g. pruning warnings).

    The suite's xdist workers apply the same CRDs at once: a create that finds it exists, or a replace that
    lost to another's, reads again and replaces (the content is the same generated file)."""
    ext = client.ApiextensionsV1Api(api)
    name = crd["metadata"]["name"]
    for _ in range(CRD_APPLY_ATTEMPTS - 1):
        try:
            return _create_or_replace_crd(ext, name, crd)
        except client.ApiException as error:
            if error.status != 409:
                raise
    return _create_or_replace_crd(ext, name, crd)


def _create_or_replace_crd(ext: client.ApiextensionsV1Api, name: str, crd: dict[str, Any]) -> list[str]:
    try:
        current = ext.read_custom_resource_definition(name)
    except client.ApiException as error:
        if error.status != 404:
            raise
        _, _, headers = ext.create_custom_resource_definition_with_http_info(body_as(CRD, crd))
    else:
        body = {**crd, "metadata": {**crd["metadata"], "resourceVersion": meta(current).resource_version}}
        _, _, headers = ext.replace_custom_resource_definition_with_http_info(name, body_as(CRD, body))
    return [v for k, v in (headers or {}).items() if k.lower() == "warning"]


def plural_for(api_version: str, kind: str, crds: list[dict[str, Any]]) -> str:
    group = api_version.split("/")[0]
    for crd in crds:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            return str(crd["spec"]["names"]["plural"])
    raise LookupError(f"no CRD in crds/ serves {api_version} {kind}")


def _address(obj: dict[str, Any], crds: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(group, version, plural) of a custom object."""
    group, version = obj["apiVersion"].split("/")
    return group, version, plural_for(obj["apiVersion"], obj["kind"], crds)


def create_custom_object(
    api: client.ApiClient, namespace: str, obj: dict[str, Any], crds: list[dict[str, Any]]
) -> dict[str, Any]:
    group, version, plural = _address(obj, crds)
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, namespace, plural, obj, field_validation="Strict"
    )
    return json_object(created)


def merge_patch_custom_object(
    api: client.ApiClient, namespace: str, obj: dict[str, Any], patch: dict[str, Any], crds: list[dict[str, Any]]
) -> dict[str, Any]:
    """Apply a JSON merge patch (RFC 7386, `kubectl patch --type merge`) to a custom object."""
    group, version, plural = _address(obj, crds)
    patched = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        group,
        version,
        namespace,
        plural,
        obj["metadata"]["name"],
        patch,
        field_validation="Strict",
        _content_type="application/merge-patch+json",
    )
    return json_object(patched)


def get_custom_object(
    api: client.ApiClient, namespace: str, obj: dict[str, Any], crds: list[dict[str, Any]]
) -> dict[str, Any]:
    group, version, plural = _address(obj, crds)
    got = client.CustomObjectsApi(api).get_namespaced_custom_object(
        group, version, namespace, plural, obj["metadata"]["name"]
    )
    return json_object(got)


def drive_pod(api: client.ApiClient, namespace: str, pod: str, outcome: str, termination_message: str = "") -> None:
    """Ask kwok to finish a running pod: outcome `succeed` (exit 0) or `fail` (exit 1)."""
    patch = {
        "metadata": {
            "labels": {OUTCOME_LABEL: outcome},
            "annotations": {TERMINATION_MESSAGE_ANNOTATION: termination_message},
        }
    }
    client.CoreV1Api(api).patch_namespaced_pod(pod, namespace, patch)


GROUP, VERSION = "kubemaas.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
TRAININGJOB_API = (GROUP, VERSION, "trainingjobs")

# The TrainingJob the ModelService track refers to (`training_job(name, **STATUS_ONLY_JOB)`): the trainer
# image, the store and key those tests set up, and none of a kwok run's command, replicas, placement or data.
# The test writes its status itself, as the TrainingJob controller would after a run.
STATUS_ONLY_JOB: dict[str, Any] = {
    "image": "kubemaas/trainer:0.1.0",
    "command": None,
    "replicas": None,
    "resources": {"gpus": 1},
    "scheduling": None,
    "data": None,
    "output": {"uri": "pvc://models/store", "modelName": "digits"},
    "encryption": {"keySecretRef": {"name": "digits-key"}},
}


def training_job(name: str, *, labels: Mapping[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A TrainingJob body; by default one the kwok cluster can run (pause image, 4 GPU pods, a data and an
    output claim, a key of its own). `spec` replaces top-level spec fields; one given as None is left out."""
    defaults: dict[str, Any] = {
        "image": "registry.k8s.io/pause:3.10",
        "command": ["python", "-m", "train"],
        "replicas": 4,
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "scheduling": {"nodeSelector": {"nvidia.com/gpu.present": "true"}},
        "data": {"uri": "pvc://datasets/digits"},
        "output": {"uri": "pvc://models/store"},
        "encryption": {"keySecretRef": {"name": f"{name}-key"}},
    }
    return _custom_object("TrainingJob", name, labels, {**defaults, **spec})


def model_service(name: str, model: Mapping[str, Any], **spec: Any) -> dict[str, Any]:
    """A ModelService body serving `model` (a trainingJobRef, a trainingJobSelector, or a uri and version);
    `spec` adds its other fields (replicas, scheduling, runtime, ...)."""
    return _custom_object("ModelService", name, None, {"model": model, **spec})


def _custom_object(kind: str, name: str, labels: Mapping[str, str] | None, spec: Mapping[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    # A copy: callers share dicts (presets, placements) between bodies and tests edit bodies they were given.
    fields = copy.deepcopy({key: value for key, value in spec.items() if value is not None})
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": fields}


def scrape(url: str, *prefixes: str) -> dict[str, float]:
    """The series of a Prometheus text endpoint whose lines start with one of `prefixes`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


RequestKey = tuple[str, str, str]  # (verb, resource, subresource) as apiserver_request_total labels them


def apiserver_requests(api_port: int, pki: Path) -> Counter[RequestKey]:
    """The API server's own request counts (apiserver_request_total summed over codes and scopes), read from
    its /metrics with the admin client cert of a local control plane's run directory."""
    from e2e.cluster.control_plane import api_tls

    url = f"https://127.0.0.1:{api_port}/metrics"
    with urllib.request.urlopen(url, context=api_tls(pki), timeout=30) as response:
        text = response.read().decode()
    total: Counter[RequestKey] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
            total[key] += int(float(line.rsplit(" ", 1)[1]))
    return total


def requests_between(before: Counter[RequestKey], after: Counter[RequestKey]) -> Counter[RequestKey]:
    return Counter({k: after[k] - before[k] for k in after if after[k] > before[k]})


def bound_claim(
    api: client.ApiClient,
    namespace: str,
    claim: str,
    volume_source: dict[str, Any],
    *,
    access_modes: tuple[str, ...] = ("ReadWriteMany",),
    node: str | None = None,
) -> str:
    """A PersistentVolume reserved for claim `claim` (claimRef, no storage class) and the claim bound to it;
    returns the volume's name (cluster-scoped: the caller deletes it). volume_source: e.g. {"local": {"path":
    ...}}; `node` pins it there (a local volume needs it)."""
    core = client.CoreV1Api(api)
    volume = f"{namespace}-{claim}"
    spec: dict[str, Any] = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        **volume_source,
        "claimRef": {"namespace": namespace, "name": claim},
    }
    if node is not None:
        term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume}, "spec": spec}
    core.create_persistent_volume(body_as(client.V1PersistentVolume, pv))
    create_claim(api, namespace, claim, access_modes=access_modes, volume=volume)
    return volume


def create_claim(
    api: client.ApiClient,
    namespace: str,
    claim: str,
    *,
    access_modes: tuple[str, ...] = ("ReadWriteMany",),
    volume: str | None = None,
) -> None:
    """A 1Gi claim without a storage class: bound to `volume`, or left Pending (what the TrainingJob
    controller's pre-flight needs: that the claim exists)."""
    spec: dict[str, Any] = {
        "accessModes": list(access_modes),
        "storageClassName": "",
        "resources": {"requests": {"storage": "1Gi"}},
    }
    if volume is not None:
        spec["volumeName"] = volume
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}, "spec": spec}
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
        namespace, body_as(client.V1PersistentVolumeClaim, pvc)
    )


# Run inside a client pod (python only, no packages): KServe v2 requests through a Service, one JSON line per
# request with the time it was sent. A new connection each time, so every request goes through kube-proxy's
# rules as they are at that moment. argv: url, the input row as JSON, the pause between requests in seconds.
KSERVE_CLIENT = """
import json, sys, time, urllib.request
url, pixels, pause = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, len(pixels)], "datatype": "FP32", "data": pixels}]})
while True:
    started = time.time()
    try:
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            logits = json.load(response)["outputs"][0]["data"]
        print(json.dumps({"t": started, "out": logits}), flush=True)
    except Exception as error:
        print(json.dumps({"t": started, "error": repr(error)}), flush=True)
    time.sleep(pause)
"""


def client_requests(log: str) -> list[dict[str, Any]]:
    """The requests a traffic client (KSERVE_CLIENT, or e2e/canary.py's) logged, one JSON line each."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def from_first_answer(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A traffic client's requests from its first answered one on. A ModelService is Ready once its Deployment
    reports the pods available, and the Service routes to them only once the EndpointSlice controller and
    kube-proxy have caught up: seconds later on a loaded machine, and until then a new client's requests are
    refused (kube-proxy rejects a Service without endpoints). Those are not requests a rollout lost."""
    first = next((n for n, request in enumerate(requests) if "error" not in request), len(requests))
    return requests[first:]
