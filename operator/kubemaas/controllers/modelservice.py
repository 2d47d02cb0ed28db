"""kopf handlers of the ModelService controller: thin wiring around ``modelservice_core.reconcile``.

Every trigger (an event of the ModelService itself or the initial listing at start, an event of an owned
Deployment, ReplicaSet, HPA, PDB, Service or pod, an event of a TrainingJob in the namespace) runs the
same level-triggered reconcile for the affected ModelService. It reads the ModelService and its
children from kopf's in-memory indexes (filled by watches that the settings restrict server-side to
objects Kubemaas manages), never by listing, calls the pure core, applies what differs, deletes what is no longer
wanted and patches the status when it changed. No finalizer: children go with their owner through
the garbage collector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, cast

import kopf
from pydantic import ValidationError

from kubemaas.api import ModelService
from kubemaas.api.base import Condition, ConditionStatus
from kubemaas.api.core import DEFAULT_GPU_RESOURCE, LabelSelector
from kubemaas.api.core.labels import SelectorOperator
from kubemaas.api.errors import summary
from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE, ModelServiceStatus
from kubemaas.controllers import modelservice_core as core
from kubemaas.controllers.apply import Kube
from kubemaas.controllers.children import (
    MODELSERVICE_CHILDREN,
    child_indexer,
    kept_metadata,
    pack,
    parent_projection,
    stored,
)
from kubemaas.controllers.conditions import set_condition, utc_now
from kubemaas.controllers.object_metrics import MODELSERVICES, modelservice_snapshot
from kubemaas.controllers.reconciler import ReconcileLoop, sync
from kubemaas.controllers.serving_scrape import scrape
from kubemaas.manifests import modelservice as m
from kubemaas.manifests.labels import child_labels, owner_reference, parent_label, parent_of

KIND = "ModelService"
GROUP, VERSION, PLURAL = "kubemaas.io", "v1alpha1", "modelservices"
PARENT_LABEL = parent_label(KIND)
COMPONENT = "server"
# No kopf timer or daemon: kopf puts a finalizer on every object that has one (a timer needs it to stop
# cleanly), and a ModelService needs none. What a watch might miss is re-listed when kopf reconnects, which
# triggers the same handlers, and waits that no event ends (a canary's analysis window) are requeued in memory.

# After a conflicting status write: by then the watch has delivered the newer ModelService to the index.
CONFLICT_REQUEUE_SECONDS = 1.0

LOOP = ReconcileLoop(KIND, MODELSERVICES)
log = logging.getLogger(__name__)

Key = tuple[str, str]
SourceKey = tuple[str, ...]  # (namespace, "ref", job name) | (namespace, "selector")
JobKey = tuple[str, ...]  # (namespace,) | (namespace, "name", name) | (ns, "label", key, value) | (ns, "key", key)


# --------------------------------------------------------------------------- indexes


def _owner(namespace: str | None, labels: Mapping[str, str] | None) -> Key | None:
    name = parent_of(KIND, labels)
    return (namespace, name) if namespace and name else None


@kopf.index(GROUP, VERSION, PLURAL)
async def ms_bodies(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str] | None:
    return {(namespace, name): pack(parent_projection(body))} if namespace else None


@kopf.index(GROUP, VERSION, PLURAL)
async def ms_by_source(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[SourceKey, tuple[Key, Any]] | None:
    """Which ModelServices a TrainingJob's event concerns: those naming it, and those with a selector in its
    namespace (each with its selector), so that an event of one job does not visit every ModelService."""
    if not namespace:
        return None
    model = spec.get("model") or {}
    ref = (model.get("trainingJobRef") or {}).get("name")
    if ref:
        return {(namespace, "ref", str(ref)): ((namespace, name), None)}
    selector = model.get("trainingJobSelector")
    return {(namespace, "selector"): ((namespace, name), selector)} if selector is not None else None


def job_projection(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a ModelService reads of a TrainingJob (modelservice_core.source): its name and labels, where it
    publishes (spec.output) with which key (spec.encryption), and its status; not the rest of its spec
    (pod templates, env, volumes: up to about 1.5 MB by the schema)."""
    spec = body.get("spec") or {}
    out: dict[str, Any] = {k: body[k] for k in ("apiVersion", "kind", "status") if k in body}
    out["metadata"] = {k: v for k, v in kept_metadata(body.get("metadata") or {}).items() if k != "annotations"}
    out["spec"] = {k: spec[k] for k in ("output", "encryption") if k in spec}
    return out


@kopf.index(GROUP, VERSION, "trainingjobs")
async def ms_training_jobs(
    namespace: str | None, name: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[JobKey, dict[str, Any]] | None:
    """Each TrainingJob (a projection) under its name, under each of its labels (key and value) and each label
    key, and under its namespace: a selector is resolved from the narrowest of these, not by a scan."""
    if not namespace:
        return None
    job = job_projection(body)
    keys: list[JobKey] = [(namespace,), (namespace, "name", name)]
    for k, v in labels.items():
        keys += [(namespace, "label", k, v), (namespace, "key", k)]
    return dict.fromkeys(keys, job)


def training_jobs_for(index: Mapping[Any, Any], namespace: str, ms: ModelService) -> list[dict[str, Any]]:
    """The TrainingJobs `ms` can take a model from, found by name or label in the index: the one its
    `trainingJobRef` names, or for a selector the jobs under its narrowest positive requirement (a
    matchLabels pair, an In list, an Exists key), which `modelservice_core.source` then matches whole. Only a
    selector of NotIn/DoesNotExist alone needs the namespace's list."""
    model = ms.spec.model
    if model.training_job_ref is not None:
        return _values(index, (namespace, "name", model.training_job_ref.name))
    selector = model.training_job_selector
    if selector is None:
        return []
    options: list[list[dict[str, Any]]] = [
        _values(index, (namespace, "label", k, v)) for k, v in (selector.match_labels or {}).items()
    ]
    for e in selector.match_expressions or ():
        if e.operator is SelectorOperator.In:
            found = {id(j): j for v in e.values or () for j in _values(index, (namespace, "label", e.key, v))}
            options.append(list(found.values()))
        elif e.operator is SelectorOperator.Exists:
            options.append(_values(index, (namespace, "key", e.key)))
    if not options:
        return _values(index, (namespace,))
    return min(options, key=len)


# Owned children, indexed by their ModelService (namespace, name).
INDEXERS = {child.index: child_indexer(KIND, child) for child in MODELSERVICE_CHILDREN}
for _child in MODELSERVICE_CHILDREN:
    _r = _child.resource
    kopf.index(_r.group, _r.version, _r.plural, id=_child.index, labels={PARENT_LABEL: kopf.PRESENT})(
        INDEXERS[_child.index]
    )


def _values(index: Mapping[Any, Any], key: Any) -> list[dict[str, Any]]:
    return stored(index, key)


def _named(objects: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((o for o in objects if o.get("metadata", {}).get("name") == name), None)


# --------------------------------------------------------------------------- reconcile


def serving_options(ms: ModelService, default_triton_image: str = DEFAULT_TRITON_IMAGE) -> m.ServingOptions:
    """The spec's serving settings with the operator's defaults applied (`kubemaas run --triton-image`)."""
    spec = ms.spec
    runtime, resources, budget = spec.runtime, spec.resources, spec.disruption_budget
    return m.ServingOptions(
        triton_image=runtime.image or default_triton_image,
        progress_deadline_seconds=spec.rollout.progress_deadline_seconds,
        startup_timeout_seconds=runtime.startup_timeout_seconds,
        shm_size=str(resources.shm_size or m.DEFAULT_SHM_SIZE),
        service_account_name=spec.service_account_name,
        image_pull_secrets=tuple(r.name for r in spec.image_pull_secrets or ()),
        triton_args=tuple(runtime.args or ()),
        triton_env=tuple(e.to_wire() for e in runtime.env or ()),
        triton_env_from=tuple(e.to_wire() for e in runtime.env_from or ()),
        gpu_resource=resources.gpu_resource or DEFAULT_GPU_RESOURCE,
        pdb_min_available=budget.min_available if budget is not None else None,
        pdb_max_unavailable=budget.max_unavailable if budget is not None else None,
    )


def parent_for(body: Mapping[str, Any]) -> m.Parent:
    meta = body["metadata"]
    return m.Parent(
        name=meta["name"],
        namespace=meta["namespace"],
        labels=child_labels(KIND, meta["name"], COMPONENT),
        selector={PARENT_LABEL: meta["name"]},
        owner_reference=owner_reference(body),
    )


def new_status(
    body: Mapping[str, Any], outcome: core.Outcome, generation: int | None
) -> tuple[dict[str, Any], list[Condition], list[Condition]]:
    """The status to write, the conditions it replaces and its own (for e2e/bench/bench_reconcile.py, which
    writes what the reconcile writes without the operator)."""
    old = _conditions_of(body.get("status"))
    return outcome.status.to_wire(), old, list(outcome.status.conditions or ())


def _conditions_of(status: Mapping[str, Any] | None) -> list[Condition]:
    out = []
    for raw in (status or {}).get("conditions") or ():
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue  # a condition someone else wrote badly is replaced, not fatal
    return out


async def reconcile(key: Key, memo: Any, indexes: Mapping[str, kopf.Index[Any, Any]]) -> float | None:
    """`memo` is kopf's: the operator's `Kube` client and the `--triton-image` default."""
    kube: Kube = memo["kube"]
    namespace, name = key
    bodies = _values(indexes["ms_bodies"], key)
    if not bodies:
        return None  # deleted: the garbage collector takes the children
    body, version = LOOP.status.current(key, bodies[0])
    if body.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        ms = ModelService.parse(body)
    except ValidationError as error:
        return await _invalid(kube, key, body, version, summary(error)[:1024])
    jobs = training_jobs_for(indexes["ms_training_jobs"], namespace, ms)
    # Children are trusted by their owner chain (ModelService uid -> Deployment -> ReplicaSet -> Pod), never by
    # labels alone: a pod anyone labelled as this ModelService's could otherwise feed it a loader report.
    deployments = controlled_by(_values(indexes["ms_deployments"], key), {str(body["metadata"].get("uid"))})
    replica_sets = controlled_by(_values(indexes["ms_replica_sets"], key), uids(deployments))
    stable = _named(deployments, m.deployment_name(name, m.Track.STABLE))
    observed = core.Observed(
        training_jobs=jobs,
        secrets={n: await _exists(kube, namespace, n) for n in core.required_secrets(ms, jobs)},
        stable=stable,
        canary=_named(deployments, m.deployment_name(name, m.Track.CANARY)),
        # Only the stable Deployment's ReplicaSets hold versions to roll back to.
        replica_sets=controlled_by(replica_sets, uids([stable] if stable is not None else [])),
        pods=controlled_by(_values(indexes["ms_pods"], key), uids(replica_sets)),
        hpa=_named(_values(indexes["ms_hpas"], key), name),
        pdb=_named(_values(indexes["ms_pdbs"], key), name),
    )
    previous, parent, options, now = (
        core.Previous.from_status(body.get("status")), parent_for(body), serving_options(ms, memo["triton_image"]),
        utc_now(),
    )  # fmt: skip
    outcome = core.reconcile(ms, previous, observed, parent, options, now)
    if outcome.scrape:
        # A Canary analysis window starts or ends now: the same decision again, with the pods' metrics.
        observed = replace(observed, metrics=await scrape(outcome.scrape))
        outcome = core.reconcile(ms, previous, observed, parent, options, now)
    children = [
        *deployments,
        *_values(indexes["ms_services"], key),
        *_values(indexes["ms_network_policies"], key),
        *(c for c in (observed.hpa, observed.pdb) if c),
    ]
    unwanted = [
        {"apiVersion": c.api_version, "kind": c.kind, "metadata": {"name": c.name, "namespace": namespace}}
        for c in outcome.delete
    ]
    await sync(kube, KIND, outcome.apply, children, unwanted)
    written = await LOOP.report(
        kube, key, body, version, outcome.status.to_wire(),
        old=ms.status.conditions if ms.status is not None else None,
        new=outcome.status.conditions or [],
        warnings=core.WARNINGS,
        snapshot=modelservice_snapshot(outcome.status),
    )  # fmt: skip
    if written is None:
        # Another writer changed the ModelService since this copy was read; its change is on the way
        # through the watch. Compute again from it instead of overwriting it (and post no Event twice).
        return CONFLICT_REQUEUE_SECONDS
    if written:
        # Counted once: the next reconcile computes them from the status just written.
        for counter, decided in (("rollbacks", outcome.rolled_back), ("promotion_refusals", outcome.promotion_refused)):
            if decided:
                LOOP.states.count(key, counter)
    for event in outcome.events:
        kopf.event(_kopf_body(body), type=event.type, reason=event.reason, message=event.message[:1024])
    # Nothing in the cluster changes when a canary's analysis window ends: wake up for it.
    return max(outcome.requeue_after, 1.0) if outcome.requeue_after is not None else None


def uids(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(o["metadata"]["uid"]) for o in objects if o.get("metadata", {}).get("uid")}


def controlled_by(objects: Iterable[Mapping[str, Any]], owners: set[str]) -> list[Mapping[str, Any]]:
    """The objects whose controller (the ownerReference with controller: true) is one of `owners` (uids)."""
    return [
        o
        for o in objects
        if any(
            r.get("controller") and r.get("uid") in owners for r in o.get("metadata", {}).get("ownerReferences") or ()
        )
    ]


async def _exists(kube: Kube, namespace: str, name: str) -> bool:
    return await kube.exists("v1", "Secret", namespace, name)


async def _invalid(kube: Kube, key: Key, body: Mapping[str, Any], version: str | None, message: str) -> float | None:
    # The CRD's schema and CEL rules reject almost everything at admission; what slips through (an
    # object stored by an older CRD) is a condition, not a crash or a retry loop.
    generation = body["metadata"].get("generation")
    old = _conditions_of(body.get("status"))
    conditions = set_condition(
        old, core.Cond.READY, ConditionStatus.FALSE, "InvalidSpec", message, generation, utc_now()
    )
    status = {"conditions": [c.to_wire() for c in conditions], "observedGeneration": generation}
    written = await LOOP.report(
        kube, key, body, version, status,
        old=old, new=conditions, warnings=core.WARNINGS,
        snapshot=modelservice_snapshot(ModelServiceStatus(conditions=conditions)),
    )  # fmt: skip
    return CONFLICT_REQUEUE_SECONDS if written is None else None


def _kopf_body(body: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, dict(body)))


async def _run(key: Key, memo: Any, kwargs: Mapping[str, Any]) -> None:
    await LOOP.run(key, lambda: reconcile(key, memo, kwargs))


# --------------------------------------------------------------------------- handlers


# Every event of a ModelService, including the initial listing (type None) after a start: no kopf
# create/update/resume handler, so kopf writes no annotations on the object (reconciler.py).
@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_modelservice(type: str | None, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    if not namespace:
        return
    if type == "DELETED":
        LOOP.forget((namespace, name))
        return
    await _run((namespace, name), memo, kwargs)


async def _child_event(namespace: str | None, labels: Mapping[str, str], memo: Any, kwargs: Mapping[str, Any]) -> None:
    key = _owner(namespace, labels)
    if key is not None and key in kwargs["ms_bodies"]:
        await _run(key, memo, kwargs)


async def ms_child_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any) -> None:
    await _child_event(namespace, labels, memo, kwargs)


for _child in MODELSERVICE_CHILDREN:
    _r = _child.resource
    kopf.on.event(_r.group, _r.version, _r.plural, id=f"ms-{_r.plural}", labels={PARENT_LABEL: kopf.PRESENT})(
        ms_child_changed
    )


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def ms_training_job_changed(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    if not namespace:
        return
    sources: kopf.Index[SourceKey, tuple[Key, Any]] = kwargs["ms_by_source"]
    concerned = [key for key, _ in sources.get((namespace, "ref", name)) or ()]
    selecting = list(sources.get((namespace, "selector")) or ())
    if selecting:
        job = next(iter(_values(kwargs["ms_training_jobs"], (namespace, "name", name))), None)
        labels = (job or {}).get("metadata", {}).get("labels") or {}
        # A deleted job is gone from the index: reconcile anyway, the newest match may have changed.
        concerned += [key for key, selector in selecting if job is None or _selects(selector, labels)]
    for key in concerned:
        if key in kwargs["ms_bodies"]:
            await _run(key, memo, kwargs)


def _selects(raw_selector: Any, labels: Mapping[str, str]) -> bool:
    try:
        selector = LabelSelector.model_validate(raw_selector)
    except ValidationError:
        return True  # the reconcile reports the invalid spec
    return selector.matches(labels)
