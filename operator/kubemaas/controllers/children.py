"""Every kind the operator reads or writes, declared once.

A `Resource` says where the API serves a kind (the apply layer builds its paths from it). A `Child` is a
kind a parent owns: kopf watches it (filtered server-side to what Kubemaas manages: `watched()` feeds the
settings), indexes it by its parent under `index`, and keeps only `slim` of each object in memory. Each
controller registers its children from its tuple here, so adding a kind is one line.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kubemaas.manifests.labels import parent_of

ObjectKey = tuple[str, str]  # (namespace, name) of a parent
Indexer = Callable[..., Awaitable[dict[ObjectKey, str] | None]]


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
TRAINJOB = Resource("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs")
TRAINING_RUNTIME = Resource("trainer.kubeflow.org/v1alpha1", "TrainingRuntime", "trainingruntimes")
# Kueue's, read only: whether a LocalQueue exists, and the Workload that says why a job waits.
LOCAL_QUEUE = Resource("kueue.x-k8s.io/v1beta2", "LocalQueue", "localqueues")
KUEUE_WORKLOAD = Resource("kueue.x-k8s.io/v1beta2", "Workload", "workloads")
TRAININGJOB = Resource("kubemaas.io/v1alpha1", "TrainingJob", "trainingjobs")
MODELSERVICE = Resource("kubemaas.io/v1alpha1", "ModelService", "modelservices")
CRD = Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False)

RESOURCES: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (
        NAMESPACE, EVENT, SERVICE_ACCOUNT, CONFIG_MAP, POD, SERVICE, SECRET, CLAIM, DEPLOYMENT, REPLICA_SET, JOB,
        HPA, PDB, NETWORK_POLICY, PYTORCHJOB, TRAINJOB, TRAINING_RUNTIME, LOCAL_QUEUE, KUEUE_WORKLOAD, TRAININGJOB,
        MODELSERVICE, CRD,
    )
}  # fmt: skip


# --- what the indexes keep of an object ------------------------------------------------------------
#
# kopf's indexes hold their values for as long as the object exists, so what an indexer returns is the
# operator's memory at rest: a decoded JSON body costs about ten times its bytes in Python objects, and
# 1,000 ModelServices with their children as whole bodies were most of a 360 MB operator. Each index keeps a
# projection: the fields some reconcile, the apply diff (`apply.is_subset`) or an ownership check reads.

# Which fields the operator's server-side applies own: managedFields entries of this manager.
FIELD_MANAGER = "kubemaas"  # apply.FIELD_MANAGER (apply imports this module; a test holds them equal)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"  # a second copy of the spec, as text
KEPT_METADATA = (
    "name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp",
    "labels", "annotations", "ownerReferences",
)  # fmt: skip


def kept_metadata(meta: Mapping[str, Any], keys: tuple[str, ...] = KEPT_METADATA) -> dict[str, Any]:
    """An object's identity, labels, annotations and owners (those of `keys`): no managedFields (a third of a
    Deployment's JSON) and no `kubectl apply` copy of the spec."""
    out = {k: meta[k] for k in keys if k in meta}
    annotations = out.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        rest = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if rest:
            out["annotations"] = rest
        else:
            del out["annotations"]
    return out


def _applied_fields(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The union of the fieldsV1 sets this operator's applies own, or None when it never applied the object."""
    found: dict[str, Any] | None = None
    for entry in meta.get("managedFields") or ():
        if entry.get("manager") == FIELD_MANAGER and not entry.get("subresource"):
            found = _union(found or {}, entry.get("fieldsV1") or {})
    return found


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, sub in b.items():
        out[key] = _union(out[key], sub) if key in out else sub
    return out


def owned(value: Any, fields: Mapping[str, Any]) -> Any:
    """The part of `value` that the field set `fields` (managedFields' fieldsV1 format) names: `f:<name>`
    members of a map, `k:{merge keys}`, `v:<value>` or `i:<index>` items of a list. A field named with no
    members is kept whole (a scalar, or a map or list set atomically)."""
    members = [k for k in fields if k != "."]
    if not members:
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in members:
            if key.startswith("f:") and key[2:] in value:
                out[key[2:]] = owned(value[key[2:]], fields[key])
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for i, item in enumerate(value):
            sub = _item_fields(fields, i, item)
            if sub is None:
                continue
            items.append(owned(item, sub))
        return items
    return value


def _item_fields(fields: Mapping[str, Any], index: int, item: Any) -> Mapping[str, Any] | None:
    for key, sub in fields.items():
        kind, _, raw = key.partition(":")
        if kind == "i" and raw == str(index):
            return cast(Mapping[str, Any], sub)
        if kind not in ("k", "v"):
            continue
        try:
            wanted = json.loads(raw)
        except ValueError:
            continue
        if kind == "v" and wanted == item:
            return cast(Mapping[str, Any], sub)
        matched = isinstance(item, Mapping) and isinstance(wanted, Mapping)
        if kind == "k" and matched and all(item.get(k) == v for k, v in wanted.items()):
            return cast(Mapping[str, Any], sub)
    return None


def applied_projection(body: Mapping[str, Any], also: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """A child as the operator needs it: its identity and owners, the fields the operator's own applies set
    (what the apply diff compares; not the server's defaults, not other managers' fields), the paths in
    `also` that a reconcile reads but another manager may own, and the status. A child whose managedFields
    name no apply of the operator keeps no spec: the diff then applies it, which is right, and a large
    foreign object labelled as ours costs its metadata only."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {k: body[k] for k in ("apiVersion", "kind") if k in body}
    out["metadata"] = kept_metadata(meta)
    # No managedFields at all (an API server that does not track them, or a test's object): what is ours is
    # unknown, so every top-level field is.
    fields = _applied_fields(meta) if meta.get("managedFields") else {f"f:{k}": {} for k in body}
    for key, sub in (fields or {}).items():
        name = key[2:]
        if key.startswith("f:") and name not in ("apiVersion", "kind", "metadata", "status") and name in body:
            out[name] = owned(body[name], sub)
    for path in also:
        value: Any = body
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            target = out
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
    if "status" in body:
        out["status"] = body["status"]
    return out


def slim_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the ModelService reconcile reads of a Deployment: the applied fields, and `spec.replicas`, which
    an HPA owns when autoscaling is on (the rollout state compares it with the status)."""
    return applied_projection(body, (("spec", "replicas"),))


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """A batch Job as the TrainingJob reconcile compares it: the applied fields, and the pod template's node
    selector and tolerations whole. Kueue admits a queued Job by merging its flavor's into them with an update,
    which takes these atomic fields from the operator's apply; the merge holds the operator's values, so the Job
    needs no apply (its template is immutable once it runs: an apply would be refused)."""
    template = ("spec", "template", "spec")
    return applied_projection(body, ((*template, "nodeSelector"), (*template, "tolerations")))


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconciles read of a pod: its identity, labels, annotations and owners (the owner chain), and
    the containers' states (phase, restarts, termination messages); not its spec or the rest of its status."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    kept = ("phase", "initContainerStatuses", "containerStatuses")
    return {
        "metadata": kept_metadata(
            meta, ("name", "uid", "labels", "annotations", "ownerReferences", "deletionTimestamp")
        ),
        "status": {k: status[k] for k in kept if k in status},
    }


def slim_serving_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A serving pod as `slim_pod` keeps it, with its IP and whether it is Ready: a Canary analysis reads the
    metrics of the ready serving pods (those behind the Service)."""
    out = slim_pod(body)
    status = body.get("status") or {}
    if "podIP" in status:
        out["status"]["podIP"] = status["podIP"]
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    if ready is not None:
        out["status"]["conditions"] = [{"type": "Ready", "status": ready.get("status")}]
    return out


def slim_training_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A training pod as `slim_pod` keeps it, with its IP: the TrainingJob reconcile reads rank 0's progress."""
    out = slim_pod(body)
    ip = (body.get("status") or {}).get("podIP")
    if ip:
        out["status"]["podIP"] = ip
    return out


def slim_replica_set(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the ModelService reconcile reads of a ReplicaSet (its owner, revision and the template's model
    reference: `manifests.modelservice.model_ref_from_template`); a whole ReplicaSet is as large as its
    Deployment."""
    meta = body.get("metadata") or {}
    template = (body.get("spec") or {}).get("template") or {}
    pod = template.get("spec") or {}
    return {
        "metadata": kept_metadata(meta, ("name", "uid", "labels", "annotations", "ownerReferences")),
        "spec": {
            "template": {
                "metadata": {"annotations": (template.get("metadata") or {}).get("annotations") or {}},
                "spec": {k: pod[k] for k in ("initContainers", "volumes") if k in pod},
            }
        },
    }


def pack(projection: Mapping[str, Any]) -> str:
    """A projection as compact JSON text, which is how the indexes of whole objects hold it: one allocation of
    its size instead of a tree of dicts, lists and strings about five times larger, none of which pins a
    half-empty allocator arena. kopf compares a new value with the stored one (`!=`): for text, one memcmp.
    A reconcile decodes the few objects it reads (`stored`): tens of microseconds each."""
    return json.dumps(projection, separators=(",", ":"))


def unpack(value: Any) -> dict[str, Any]:
    """A stored projection as a new dict (a value that is not packed, as tests build indexes, as it is)."""
    return cast(dict[str, Any], json.loads(value)) if isinstance(value, str) else cast(dict[str, Any], value)


def stored(index: Mapping[Any, Any], key: Any) -> list[dict[str, Any]]:
    """The objects an index holds under `key`, decoded."""
    return [unpack(v) for v in index.get(key) or ()]


def parent_projection(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelService or TrainingJob for its own reconcile: spec and status whole (the reconcile parses
    them), the metadata without managedFields or a `kubectl apply` copy of the spec."""
    out: dict[str, Any] = {k: body[k] for k in ("apiVersion", "kind", "spec", "status") if k in body}
    out["metadata"] = kept_metadata(body.get("metadata") or {})
    return out


# --- the children of each parent ---------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """A kind a parent owns, watched and indexed by its parent's (namespace, name) under `index`."""

    resource: Resource
    index: str
    slim: Callable[[Mapping[str, Any]], dict[str, Any]] = applied_projection


MODELSERVICE_CHILDREN = (
    Child(DEPLOYMENT, "ms_deployments", slim_deployment),
    Child(REPLICA_SET, "ms_replica_sets", slim_replica_set),
    Child(POD, "ms_pods", slim_serving_pod),
    Child(SERVICE, "ms_services"),
    Child(HPA, "ms_hpas"),
    Child(PDB, "ms_pdbs"),
    Child(NETWORK_POLICY, "ms_network_policies"),
)
TRAININGJOB_CHILDREN = (
    Child(TRAINJOB, "trainingjob_trainjobs"),
    Child(TRAINING_RUNTIME, "trainingjob_runtimes"),
    Child(PYTORCHJOB, "trainingjob_pytorchjobs"),
    Child(JOB, "trainingjob_jobs", slim_job),
    Child(SERVICE, "trainingjob_services"),
    Child(POD, "trainingjob_pods", slim_training_pod),
    Child(NETWORK_POLICY, "trainingjob_network_policies"),
)


def child_indexer(parent_kind: str, child: Child) -> Indexer:
    """A kopf indexer keeping `child.slim` of each object, packed, under its parent's (namespace, name)."""

    async def indexer(
        namespace: str | None, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any
    ) -> dict[ObjectKey, str] | None:
        parent = parent_of(parent_kind, labels)
        return {(namespace, parent): pack(child.slim(body))} if parent and namespace else None

    return indexer


def watched() -> list[tuple[str, str]]:
    """(group, plural) of every kind watched only to see Kubemaas' own objects. kopf's handler filters run
    after the watch delivered an object, so without a server-side selector the operator would stream (and
    hold in memory) every Pod, Job and Deployment of the cluster; with it, only what Kubemaas made. Never
    Secrets: the operator may not read them (docs/security.md)."""
    kinds = {c.resource for c in (*MODELSERVICE_CHILDREN, *TRAININGJOB_CHILDREN)}
    return sorted((r.group, r.plural) for r in kinds)
