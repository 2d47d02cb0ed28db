"""Every kind the operator reads or writes, declared once.

A `Resource` says where the API serves a kind (the apply layer builds its paths from it). A `Child` is a
kind a parent owns: kopf watches it (filtered server-side to what Kubemaas manages: `watched()` feeds the
settings), indexes it by its parent under `index`, and keeps only `slim` of each object in memory. Each
controller registers its children from its tuple here, so adding a kind is one line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubemaas.manifests.labels import parent_of

ObjectKey = tuple[str, str]  # (namespace, name) of a parent
Indexer = Callable[..., Awaitable[dict[ObjectKey, dict[str, Any]] | None]]


@dataclass(frozen=True)
class Resource:
    """Where the API serves one kind."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    # False for a kind the operator may create but never read (its RBAC has no get, list or watch on it):
    # whether one exists is asked with a dry-run create, which a 409 answers.
    readable: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.kind} is namespaced: a namespace is required")
            base += f"/namespaces/{namespace}"
        out = f"{base}/{self.plural}"
        if name is not None:
            out += f"/{name}"
        if subresource is not None:
            out += f"/{subresource}"
        return out


NAMESPACE = Resource("v1", "Namespace", "namespaces", namespaced=False)
EVENT = Resource("v1", "Event", "events")
SERVICE_ACCOUNT = Resource("v1", "ServiceAccount", "serviceaccounts")
CONFIG_MAP = Resource("v1", "ConfigMap", "configmaps")
POD = Resource("v1", "Pod", "pods")
SERVICE = Resource("v1", "Service", "services")
SECRET = Resource("v1", "Secret", "secrets", readable=False)
CLAIM = Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
DEPLOYMENT = Resource("apps/v1", "Deployment", "deployments")
REPLICA_SET = Resource("apps/v1", "ReplicaSet", "replicasets")
JOB = Resource("batch/v1", "Job", "jobs")
HPA = Resource("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
NETWORK_POLICY = Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
PYTORCHJOB = Resource("kubeflow.org/v1", "PyTorchJob", "pytorchjobs")
TRAININGJOB = Resource("kubemaas.io/v1alpha1", "TrainingJob", "trainingjobs")
MODELSERVICE = Resource("kubemaas.io/v1alpha1", "ModelService", "modelservices")
CRD = Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False)

RESOURCES: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (
        NAMESPACE, EVENT, SERVICE_ACCOUNT, CONFIG_MAP, POD, SERVICE, SECRET, CLAIM, DEPLOYMENT, REPLICA_SET, JOB,
        HPA, PDB, NETWORK_POLICY, PYTORCHJOB, TRAININGJOB, MODELSERVICE, CRD,
    )
}  # fmt: skip


# --- what the indexes keep of a child ---------------------------------------------------------------


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """All of an object but `metadata.managedFields`, which no reconcile reads and which repeats the shape
    of every field each manager set (about a third of a Deployment's JSON)."""
    meta = body.get("metadata") or {}
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the TrainingJob reconcile reads of a pod; the rest of a pod body is not worth keeping in memory."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return {
        "metadata": {
            k: meta[k] for k in ("name", "labels", "annotations", "ownerReferences", "deletionTimestamp") if k in meta
        },
        "status": {k: status[k] for k in ("phase", "containerStatuses") if k in status},
    }


def slim_replica_set(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the ModelService reconcile reads of a ReplicaSet (its owner, revision and the template's model
    reference: `manifests.modelservice.model_ref_from_template`); a whole ReplicaSet is as large as its
    Deployment."""
    meta = body.get("metadata") or {}
    template = (body.get("spec") or {}).get("template") or {}
    pod = template.get("spec") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "labels", "annotations", "ownerReferences") if k in meta},
        "spec": {
            "template": {
                "metadata": {"annotations": (template.get("metadata") or {}).get("annotations") or {}},
                "spec": {k: pod[k] for k in ("initContainers", "volumes") if k in pod},
            }
        },
    }


# --- the children of each parent ---------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """A kind a parent owns, watched and indexed by its parent's (namespace, name) under `index`."""

    resource: Resource
    index: str
    slim: Callable[[Mapping[str, Any]], dict[str, Any]] = without_managed_fields


MODELSERVICE_CHILDREN = (
    Child(DEPLOYMENT, "ms_deployments"),
    Child(REPLICA_SET, "ms_replica_sets", slim_replica_set),
    Child(POD, "ms_pods"),
    Child(SERVICE, "ms_services"),
    Child(HPA, "ms_hpas"),
    Child(PDB, "ms_pdbs"),
    Child(NETWORK_POLICY, "ms_network_policies"),
)
TRAININGJOB_CHILDREN = (
    Child(PYTORCHJOB, "trainingjob_pytorchjobs"),
    Child(JOB, "trainingjob_jobs"),
    Child(SERVICE, "trainingjob_services"),
    Child(POD, "trainingjob_pods", slim_pod),
    Child(NETWORK_POLICY, "trainingjob_network_policies"),
)


def child_indexer(parent_kind: str, child: Child) -> Indexer:
    """A kopf indexer keeping `child.slim` of each object under its parent's (namespace, name)."""

    async def indexer(
        namespace: str | None, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any
    ) -> dict[ObjectKey, dict[str, Any]] | None:
        parent = parent_of(parent_kind, labels)
        return {(namespace, parent): child.slim(body)} if parent and namespace else None

    return indexer


def watched() -> list[tuple[str, str]]:
    """(group, plural) of every kind watched only to see Kubemaas' own objects. kopf's handler filters run
    after the watch delivered an object, so without a server-side selector the operator would stream (and
    hold in memory) every Pod, Job and Deployment of the cluster; with it, only what Kubemaas made. Never
    Secrets: the operator may not read them (docs/security.md)."""
    kinds = {c.resource for c in (*MODELSERVICE_CHILDREN, *TRAININGJOB_CHILDREN)}
    return sorted((r.group, r.plural) for r in kinds)
