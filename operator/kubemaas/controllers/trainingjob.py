"""kopf handlers of the TrainingJob controller: thin wiring around `trainingjob_core.reconcile`.

Every trigger ends in `reconcile(key)`: the TrainingJob's own events (and the initial listing at start),
the events of what it owns (PyTorchJob, Job, Service, pods), and a requeue the reconcile itself asks for
(a blocked job's re-check, ttlSecondsAfterFinished, a late pod) or a failed attempt's re-run. The parent
and its children are read from kopf indexes (filled by the watches, which the settings
restrict server-side to objects labelled managed-by kubemaas: children.watched()), never by listing.

Why a requeue and not `@kopf.timer`: kopf puts a finalizer on every object a timer serves (kopf 1.45
hard-codes it), so each TrainingJob would need a running operator to be deleted, and Kubemaas uses none
(README.md, TrainingJob controller). The requeue is in memory; after a restart kopf's initial listing
reconciles every object again.

API reads happen only where the watches cannot help, and only before the workload exists: the
claims, the key Secret and (with scheduling.queueName) the LocalQueue of the pre-flight check (one GET
each); and, while Kueue holds a queued job, Kueue's Workload for it (controllers/trainingjob_queue.py).
A user's key Secret (generateKey: Never) and claims carry no Kubemaas label, and watching them would
stream every Secret and claim of the namespace into the operator; so a blocked job is re-checked every
`core.RECHECK_SECONDS` instead.
A generated key Secret is created in the same pass that creates the workload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from kubemaas.api.base import Condition
from kubemaas.api.errors import summary
from kubemaas.api.trainingjob import TrainingJob, TrainingJobStatus
from kubemaas.controllers import trainingjob_core as core
from kubemaas.controllers import trainingjob_queue as queue
from kubemaas.controllers import workloads
from kubemaas.controllers.apply import Kube
from kubemaas.controllers.children import (
    KUEUE_WORKLOAD,
    LOCAL_QUEUE,
    TRAININGJOB_CHILDREN,
    child_indexer,
    pack,
    parent_projection,
    stored,
)
from kubemaas.controllers.conditions import is_true, true_condition, utc_now
from kubemaas.controllers.metrics import CHILDREN_APPLIED
from kubemaas.controllers.object_metrics import TRAININGJOBS, trainingjob_snapshot
from kubemaas.controllers.progress_reader import PROGRESS, Reading, Wake
from kubemaas.controllers.reconciler import ObjectKey, ReconcileLoop, sync
from kubemaas.controllers.trainingjob_reports import pod_rank
from kubemaas.controllers.workloads.owners import owned_by
from kubemaas.manifests import trainingjob as manifests
from kubemaas.manifests import trainingjob_mounts as mounts
from kubemaas.manifests.labels import MANAGED_BY, MANAGED_BY_KEY, parent_of

log = logging.getLogger(__name__)

KIND = "TrainingJob"
GROUP, VERSION, PLURAL = "kubemaas.io", "v1alpha1", "trainingjobs"
# After a conflicting status write: by then the watch has delivered the newer TrainingJob to the index.
CONFLICT_REQUEUE_SECONDS = 1.0
# How long the answer "is this CRD served?" is trusted before it is asked again.
DISCOVERY_SECONDS = 60.0
# The CRDs the backends and Kueue need, each with the version the operator speaks.
PYTORCHJOB_CRD = ("pytorchjobs.kubeflow.org", "v1")
TRAINJOB_CRD = ("trainjobs.trainer.kubeflow.org", "v1alpha1")
LOCAL_QUEUE_CRD = ("localqueues.kueue.x-k8s.io", "v1beta2")
MANAGED = {MANAGED_BY_KEY: MANAGED_BY}

LOOP = ReconcileLoop(KIND, TRAININGJOBS)


class Discovery:
    """Whether the cluster serves a CRD at a version: asked once, refreshed every DISCOVERY_SECONDS."""

    def __init__(self) -> None:
        self._served: dict[tuple[str, str], tuple[bool, float]] = {}

    async def served(self, kube: Kube, crd_version: tuple[str, str]) -> bool:
        known = self._served.get(crd_version)
        if known is None or time.monotonic() - known[1] > DISCOVERY_SECONDS:
            crd = await kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, crd_version[0])
            known = (crd is not None and _serves(crd, crd_version[1]), time.monotonic())
            self._served[crd_version] = known
        return known[0]


def _serves(crd: Mapping[str, Any], version: str) -> bool:
    established = true_condition(crd, "Established") is not None
    versions = crd["spec"].get("versions") or ()
    return established and any(v.get("name") == version and v.get("served") for v in versions)


DISCOVERY = Discovery()


# --- indexes: the parent and its children, keyed by (namespace, TrainingJob name) -------------------


@kopf.index(GROUP, VERSION, PLURAL)
async def trainingjobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[ObjectKey, str] | None:
    return {(namespace, name): pack(parent_projection(body))} if namespace else None


# The children whose events re-run the parent's reconcile.
INDEXERS = {child.index: child_indexer(KIND, child) for child in TRAININGJOB_CHILDREN}


# --- gathering Observed ---------------------------------------------------------------------------


def _one(candidates: Iterable[Mapping[str, Any]], name: str, owner_uid: str | None) -> Mapping[str, Any] | None:
    for obj in candidates:
        if obj["metadata"]["name"] == name and owned_by(obj, owner_uid):
            return obj
    return None


async def _observe(
    job: TrainingJob, key: ObjectKey, kube: Kube, indexes: Mapping[str, kopf.Index[Any, Any]]
) -> core.Observed:
    uid, name = job.metadata.uid, job.metadata.name
    workload = (
        _one(stored(indexes["trainingjob_trainjobs"], key), manifests.workers_name(job), uid)
        or _one(stored(indexes["trainingjob_pytorchjobs"], key), name, uid)
        or _one(stored(indexes["trainingjob_jobs"], key), manifests.workers_name(job), uid)
    )
    service = _one(stored(indexes["trainingjob_services"], key), manifests.workers_name(job), uid)
    runtime = _one(stored(indexes["trainingjob_runtimes"], key), name, uid)
    policy = _one(stored(indexes["trainingjob_network_policies"], key), name, uid)
    # The workload's own backend says which pods are its ranks (its kind is the backend's name).
    backend = workloads.BACKENDS.get(workload["kind"]) if workload is not None else None
    pods = [p for p in stored(indexes["trainingjob_pods"], key) if backend and backend.owns_pod(job, workload or {}, p)]
    finished = job.status is not None and any(
        c.type in (core.SUCCEEDED, core.FAILED) and c.status.value == "True" for c in job.status.conditions or ()
    )
    served, trainjob_served = await asyncio.gather(
        DISCOVERY.served(kube, PYTORCHJOB_CRD), DISCOVERY.served(kube, TRAINJOB_CRD)
    )
    queued = await _queue(job, workload, finished, kube)
    if workload is not None or finished:
        # The pre-flight answers are not consulted once the workload exists: no reads in steady state.
        # A read of rank 0's progress ends by running the reconcile again (at once with a report).
        again = lambda: reconcile(key, kube, indexes)  # noqa: E731 - the closure is the point
        reading = None if finished else _progress(key, pods, lambda delay: LOOP.run_later(key, delay, again))
        return core.Observed(
            pytorchjob_served=served,
            trainjob_served=trainjob_served,
            workload=workload,
            service=service,
            runtime=runtime,
            queue=queued,
            network_policy=policy,
            pods=pods,
            progress=reading.report if reading is not None else None,
            progress_read_in=reading.next_read_in if reading is not None else None,
        )
    namespace = key[0]
    teacher_job = _teacher_job(job, namespace, indexes)
    try:
        wanted = mounts.required_claims(job.model_copy(update={"status": _with_teacher(job, teacher_job)}))
    except mounts.TeacherNotResolved:
        wanted = []  # the core blocks the job until its teacher TrainingJob has succeeded
    secrets = sorted({*mounts.secret_names(job), *mounts.credentials_secret_names(job)})
    # One round trip, not one per object: these reads sit between a create and its first child.
    # Existence only: the claim's metadata, the key Secrets by a dry-run create (the operator never reads one).
    *found, secret_exists = await asyncio.gather(
        *(kube.exists("v1", "PersistentVolumeClaim", namespace, c) for c in wanted),
        *(kube.exists("v1", "Secret", namespace, s) for s in secrets),
        kube.exists("v1", "Secret", namespace, job.spec.encryption.key_secret_ref.name),
    )
    claims = frozenset(c for c, exists in zip(wanted, found[: len(wanted)], strict=True) if exists)
    existing = frozenset(s for s, exists in zip(secrets, found[len(wanted) :], strict=True) if exists)
    return core.Observed(
        pytorchjob_served=served,
        trainjob_served=trainjob_served,
        service=service,
        runtime=runtime,
        queue=queued,
        network_policy=policy,
        claims=claims,
        key_secret_exists=secret_exists,
        secrets=existing,
        teacher_job=teacher_job,
    )


async def _queue(
    job: TrainingJob, workload: Mapping[str, Any] | None, finished: bool, kube: Kube
) -> queue.QueueObserved | None:
    """Kueue's view of a job with scheduling.queueName (None: nothing to read this pass). Before the workload
    exists: whether its LocalQueue does. After: Kueue's Workload, while Kueue holds the workload or has not
    admitted it yet; an admitted, running job costs no read."""
    name, namespace = queue.queue_name(job), job.metadata.namespace
    if name is None or finished or not namespace:
        return None
    kueue = await DISCOVERY.served(kube, LOCAL_QUEUE_CRD)
    if workload is None:
        exists = await kube.exists(LOCAL_QUEUE.api_version, LOCAL_QUEUE.kind, namespace, name) if kueue else None
        return queue.QueueObserved(kueue_served=kueue, local_queue_exists=exists)
    admitted = job.status is not None and is_true(job.status.conditions, queue.ADMITTED)
    if admitted and true_condition(workload, "Suspended") is None:
        return None
    selector = f"kueue.x-k8s.io/job-uid={workload['metadata'].get('uid')}"
    found = await kube.list(KUEUE_WORKLOAD.api_version, KUEUE_WORKLOAD.kind, namespace, selector) if kueue else []
    return queue.QueueObserved(kueue_served=kueue, workload=found[0] if found else None)


def _progress(key: ObjectKey, pods: Iterable[Mapping[str, Any]], wake: Wake) -> Reading | None:
    """Rank 0's progress report, from the running rank-0 pod of the job's own workload (owner chain by uid);
    a read in the background ends with ``wake``."""
    for pod in pods:
        status = pod.get("status") or {}
        if pod_rank(pod) == 0 and status.get("phase") == "Running" and status.get("podIP"):
            return PROGRESS.read(key, str(status["podIP"]), manifests.PROGRESS_PORT, wake)
    return None


def _teacher_job(
    job: TrainingJob, namespace: str, indexes: Mapping[str, kopf.Index[Any, Any]]
) -> Mapping[str, Any] | None:
    """The TrainingJob a distillation names as its teacher, from the operator's own index of TrainingJobs."""
    distillation = job.spec.distillation
    ref = distillation.teacher.training_job_ref if distillation is not None else None
    if ref is None:
        return None
    found = stored(indexes["trainingjobs"], (namespace, ref.name))
    return found[0] if found else None


def _with_teacher(job: TrainingJob, teacher_job: Mapping[str, Any] | None) -> TrainingJobStatus:
    """The job's status with the teacher the core will record, so the pre-flight checks the teacher's claim."""
    status = job.status.model_copy() if job.status is not None else TrainingJobStatus()
    if job.spec.distillation is not None and status.teacher is None:
        resolved = core.resolve_teacher(job, teacher_job)
        status.teacher = None if isinstance(resolved, tuple) else resolved
    return status


# --- the reconcile ----------------------------------------------------------------------------------


async def reconcile(key: ObjectKey, kube: Kube, indexes: Mapping[str, kopf.Index[Any, Any]]) -> float | None:
    """One level-triggered pass; returns the seconds until the next one is due (a re-check, a TTL), or None."""
    bodies = stored(indexes["trainingjobs"], key)
    if not bodies:
        return None  # deleted (the parent's DELETED event drops the bookkeeping)
    body, version = LOOP.status.current(key, bodies[0])
    if body["metadata"].get("deletionTimestamp"):
        return None
    try:
        job = TrainingJob.parse(body)
    except ValidationError as error:
        return await _report_invalid(key, body, version, summary(error), kube)
    observed = await _observe(job, key, kube, indexes)
    desired = core.reconcile(job, observed, utc_now())

    if desired.create_key_secret:
        secret = manifests.key_secret(job, manifests.new_key())
        if secret is not None:
            if await kube.create(secret) is None:
                # Someone created a Secret of that name since it was probed: not generated for this job, so
                # nothing is applied and the recorded intent goes (KeySecretNotOwned).
                log.info(
                    "%s %s/%s: key Secret %s appeared before it was created", KIND, *key, secret["metadata"]["name"]
                )
                desired = core.key_secret_taken(job, utc_now())
            else:
                log.info("%s %s/%s: created key Secret %s", KIND, *key, secret["metadata"]["name"])
                CHILDREN_APPLIED.labels(KIND, "Secret").inc()
    unwanted = desired.delete
    if unwanted:
        log.info("%s %s/%s: ttlSecondsAfterFinished passed", KIND, *key)
    await sync(kube, KIND, desired.apply, observed.children, unwanted)

    written = await LOOP.report(
        kube, key, body, version, desired.status.to_wire(),
        old=job.status.conditions if job.status is not None else None,
        new=desired.status.conditions or [],
        warnings=core.WARNINGS,
        snapshot=trainingjob_snapshot(desired.status),
    )  # fmt: skip
    if written is None:
        # Another writer changed the TrainingJob since this copy was read; its change is on the way
        # through the watch. Compute again from it instead of overwriting it.
        log.debug("%s %s/%s: changed since read, reconciling again", KIND, *key)
        return CONFLICT_REQUEUE_SECONDS
    return desired.requeue_after


async def _report_invalid(
    key: ObjectKey, body: Mapping[str, Any], version: str | None, error: str, kube: Kube
) -> float | None:
    generation = body["metadata"].get("generation")
    status = core.invalid_spec(body.get("status"), generation, error, utc_now())
    written = await LOOP.report(
        kube, key, body, version, status.to_wire(),
        old=[Condition.model_validate(c) for c in (body.get("status") or {}).get("conditions") or ()],
        new=status.conditions or [],
        warnings=core.WARNINGS,
        snapshot=trainingjob_snapshot(status),
    )  # fmt: skip
    return CONFLICT_REQUEUE_SECONDS if written is None else None


# --- handlers ---------------------------------------------------------------------------------------


async def _run(key: ObjectKey, memo: kopf.Memo, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    kube: Kube = memo["kube"]
    await LOOP.run(key, lambda: reconcile(key, kube, indexes))


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, kopf.Index[Any, Any]]:
    return {n: kwargs[n] for n in ("trainingjobs", *INDEXERS)}


@kopf.on.cleanup()
async def close_progress_reader(**_: Any) -> None:
    await PROGRESS.close()


# Every event of a TrainingJob, including the initial listing (type None) after a start: no kopf
# create/update/resume handler, so kopf writes no annotations on the object (reconciler.py).
@kopf.on.event(GROUP, VERSION, PLURAL)
async def trainingjob_event(type: str | None, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    if not namespace:
        return
    key = (namespace, name)
    if type == "DELETED":
        LOOP.forget(key)
        PROGRESS.forget(key)
        return
    await _run(key, memo, _indexes(kwargs))


async def _child_event(namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **kwargs: Any) -> None:
    parent = parent_of(KIND, labels)
    if parent is not None and namespace:
        await _run((namespace, parent), memo, _indexes(kwargs))


for _child in TRAININGJOB_CHILDREN:
    _r = _child.resource
    kopf.index(_r.group, _r.version, _r.plural, labels=MANAGED, id=_child.index)(INDEXERS[_child.index])
    kopf.on.event(_r.group, _r.version, _r.plural, labels=MANAGED, id=f"{_child.index}_event")(_child_event)
