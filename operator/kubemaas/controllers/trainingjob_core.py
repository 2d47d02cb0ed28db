"""The TrainingJob's level-triggered core: (job, what the cluster shows, now) -> (desired children, status).

Pure: no API calls, no clock, no randomness. The kopf handlers (controllers/trainingjob.py) gather
`Observed` from their indexes, call `reconcile`, apply what it returns and patch the status. Calling it
again with the same inputs gives the same answer, so a restarted operator converges to the same state.

Rules:
- The model version is derived from the job's creation time and uid: stable across operator restarts
  and pod restarts, known before any pod starts, sortable by creation.
- The backend is resolved once (Auto -> TrainJob, else PyTorchJob, whichever is served first, else Job), recorded in
  status.backend and kept from then on. What differs between backends (the children, how the workload
  reports success, restarts and progress) is behind `workloads.WorkloadBackend`: no branch here.
- Pre-flight, before the workload exists: the claims and (with generateKey: Never) the key Secret
  must exist; otherwise Ready=False with the reason, and nothing is created.
- Succeeded/Failed are terminal and sticky: the workload is never re-created after it, and with
  runPolicy.ttlSecondsAfterFinished the children are deleted once the time has passed, while the
  TrainingJob and its status stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubemaas.api.base import ConditionStatus
from kubemaas.api.compression import ResolvedTeacher
from kubemaas.api.trainingjob import (
    KeyGeneration,
    TrainingJob,
    TrainingJobStatus,
)
from kubemaas.controllers import trainingjob_queue as queue
from kubemaas.controllers import workloads
from kubemaas.controllers.conditions import WarningPolicy, find_condition, is_true, set_condition, true_condition
from kubemaas.controllers.trainingjob_progress import STALLED, progress_from, stalled
from kubemaas.controllers.trainingjob_reports import (
    BadTerminationMessage,
    model_version,
    parse_published_model,
    pod_failure,
    pod_rank,
    replica_statuses,
    shorten,
    terminated_state,
    timestamp,
)
from kubemaas.controllers.workloads import WorkloadBackend
from kubemaas.manifests import trainingjob as manifests
from kubemaas.manifests import trainingjob_mounts as mounts

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN

READY, CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED = (
    "Ready",
    "Created",
    "Running",
    "Restarting",
    "Succeeded",
    "Failed",
    "Suspended",
)
CONDITION_TYPES = (READY, CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)
# Which conditions are Warnings (a failed job, a job blocked before its workload); everything else posts an
# Event only when its status flips from a known one.
WARNINGS = WarningPolicy(when_true=frozenset({FAILED, STALLED}), when_false=frozenset({READY, CREATED}))

# How long a finished workload's rank-0 pod may lag behind the workload in the watch streams before
# its absence counts as a lost termination message.
POD_LAG_GRACE = timedelta(seconds=30)
# How often a blocked job (missing claim, key Secret or backend) looks again: neither claims nor a user's
# Secret carry a Kubemaas label, so no watch of the operator reports their arrival.
RECHECK_SECONDS = 10.0
# After recording the intent to generate a key: the status write's own echo runs the next pass at once; this
# is the fallback.
KEY_INTENT_REQUEUE_SECONDS = 1.0


@dataclass(frozen=True)
class Observed:
    """What the cluster shows about one TrainingJob, gathered by the handlers (never by this module)."""

    pytorchjob_served: bool
    trainjob_served: bool = False
    workload: Mapping[str, Any] | None = None  # the owned TrainJob, PyTorchJob or Job
    service: Mapping[str, Any] | None = None  # the owned headless Service (Job backend)
    runtime: Mapping[str, Any] | None = None  # the owned TrainingRuntime (TrainJob backend)
    queue: queue.QueueObserved | None = None  # Kueue's view, with scheduling.queueName (trainingjob_queue)
    network_policy: Mapping[str, Any] | None = None  # the owned NetworkPolicy
    pods: Sequence[Mapping[str, Any]] = ()  # pods labelled kubemaas.io/trainingjob=<name>
    claims: frozenset[str] = frozenset()  # which of the job's claims exist
    key_secret_exists: bool = False
    secrets: frozenset[str] = frozenset()  # which of the other key Secrets (teacher, data) and credentials exist
    teacher_job: Mapping[str, Any] | None = None  # distillation.teacher.trainingJobRef's TrainingJob
    progress: Mapping[str, Any] | None = None  # rank 0's progress report, read at most every PROGRESS_INTERVAL
    # Seconds until rank 0 is asked again; None: a read is under way (it wakes the job) or there is no rank 0.
    progress_read_in: float | None = None

    @property
    def children(self) -> list[Mapping[str, Any]]:
        """The owned children that exist: what an apply is compared with, and what a TTL deletes."""
        return [c for c in (self.runtime, self.workload, self.service, self.network_policy) if c is not None]


@dataclass(frozen=True)
class Desired:
    """What the handlers do next: apply, delete, create the key Secret, write status, look again later."""

    status: TrainingJobStatus
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Mapping[str, Any]] = field(default_factory=list)
    create_key_secret: bool = False
    requeue_after: float | None = None


def served_backends(observed: Observed) -> frozenset[str]:
    """Backends whose API the cluster serves, among those that need one."""
    served = {"PyTorchJob": observed.pytorchjob_served, "TrainJob": observed.trainjob_served}
    return frozenset(name for name, yes in served.items() if yes)


def desired_children(job: TrainingJob, backend: WorkloadBackend) -> list[dict[str, Any]]:
    """The backend's workload, and whatever backend: the NetworkPolicy that closes the ranks' ports."""
    return [*backend.children(job, model_version(job)), manifests.network_policy(job)]


def resolve_teacher(job: TrainingJob, teacher_job: Mapping[str, Any] | None) -> ResolvedTeacher | tuple[str, str]:
    """The teacher version a distillation uses, or why it cannot be used yet (reason, message).

    A uri teacher is the spec's. A TrainingJob teacher is the version it published, once it Succeeded, and only
    with the teacher job's own key Secret: the admission policy checked the author's access to the Secret the
    spec names, so that must be the Secret the pods mount.
    """
    distillation = job.spec.distillation
    assert distillation is not None
    spec = distillation.teacher
    if spec.training_job_ref is None:
        from_uri = mounts.teacher(job)
        assert from_uri is not None
        return from_uri
    name = spec.training_job_ref.name
    not_ready = "TeacherNotReady"
    if teacher_job is None:
        return not_ready, f"teacher TrainingJob {name} not found; the workload is created once it has succeeded"
    try:
        parsed = TrainingJob.parse(dict(teacher_job))
    except ValidationError:
        return not_ready, f"teacher TrainingJob {name} has an invalid spec or status"
    status = parsed.status
    if status is None or status.model is None or not is_true(status.conditions, SUCCEEDED):
        return not_ready, f"teacher TrainingJob {name} has not succeeded yet; the workload is created once it has"
    if parsed.spec.encryption.key_secret_ref.name != spec.key_secret_ref.name:
        return "TeacherKeyMismatch", (
            f"distillation.teacher.keySecretRef is {spec.key_secret_ref.name}, but TrainingJob {name}'s model is "
            f"encrypted with Secret {parsed.spec.encryption.key_secret_ref.name}"
        )
    directory, _, version = status.model.uri.rpartition("/")
    if version != status.model.version:
        return not_ready, f"teacher TrainingJob {name}'s status.model.uri does not end in its version"
    return ResolvedTeacher(uri=directory, version=version)


# --- the reconcile --------------------------------------------------------------------------------


@dataclass
class _Status:
    """The status being computed: conditions set through one helper so generation and clock are uniform."""

    job: TrainingJob
    now: datetime
    status: TrainingJobStatus

    def set(self, type: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            type,
            status,
            reason,
            shorten(message),
            self.job.metadata.generation,
            self.now,
        )

    def blocked(self, reason: str, message: str) -> None:
        self.set(READY, FALSE, reason, message)
        self.set(CREATED, FALSE, reason, message)


def _initial_status(job: TrainingJob, now: datetime) -> _Status:
    base = job.status.model_copy(deep=True) if job.status is not None else TrainingJobStatus()
    out = _Status(job, now, base)
    queued = queue.queue_name(job) is not None
    if not queued:  # Kueue's conditions go with the queue
        base.conditions = [c for c in base.conditions or () if c.type not in queue.QUEUE_CONDITIONS] or None
    for type in (*CONDITION_TYPES, *(queue.QUEUE_CONDITIONS if queued else ())):
        if find_condition(base.conditions, type) is None:
            out.set(type, UNKNOWN, "Reconciling", "")
    base.observed_generation = job.metadata.generation
    return out


def _finished(job: TrainingJob, observed: Observed, out: _Status) -> Desired:
    """Terminal: keep the status, delete the children once ttlSecondsAfterFinished has passed."""
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    completed = out.status.completion_time
    children = observed.children
    if ttl is None or completed is None or not children:
        return Desired(status=out.status)
    due = completed + timedelta(seconds=ttl)
    if out.now >= due:
        return Desired(status=out.status, delete=children)
    return Desired(status=out.status, requeue_after=(due - out.now).total_seconds())


def _preflight(job: TrainingJob, observed: Observed, out: _Status) -> bool:
    """Before the workload exists: every claim and (with Never) the key Secret must be there."""
    needed: list[tuple[str, str, list[str], frozenset[str]]] = [
        ("ClaimNotFound", "PersistentVolumeClaim", mounts.required_claims(job), observed.claims),
        ("KeySecretNotFound", "Secret", mounts.secret_names(job), observed.secrets),
        ("CredentialsSecretNotFound", "Secret", mounts.credentials_secret_names(job), observed.secrets),
    ]
    for reason, kind, names, present in needed:
        missing = [n for n in names if n not in present]
        if missing:
            out.blocked(
                reason,
                f"{kind} {', '.join(missing)} not found in namespace {job.metadata.namespace}; "
                "the workload is created once it exists",
            )
            return False
    encryption = job.spec.encryption
    name = encryption.key_secret_ref.name
    if not observed.key_secret_exists and encryption.generate_key == KeyGeneration.Never:
        out.blocked(
            "KeySecretNotFound",
            f"Secret {name} not found and encryption.generateKey is Never; the workload is created once it exists",
        )
        return False
    no_queue = queue.preflight(job, observed.queue)
    if no_queue is not None:
        out.blocked(*no_queue)
        return False
    generated = out.status.generated_key_secret == name
    if observed.key_secret_exists and encryption.generate_key == KeyGeneration.IfMissing and not generated:
        # Whoever could create that Secret would choose the key this job's models are encrypted with, or
        # make the job mount a key its author may not read: only a key generated for this job is used.
        key_secret_not_owned(job, out)
        return False
    return True


def key_secret_not_owned(job: TrainingJob, out: _Status) -> None:
    name = job.spec.encryption.key_secret_ref.name
    out.status.generated_key_secret = None
    out.blocked(
        "KeySecretNotOwned",
        f"Secret {name} exists but was not generated by Kubemaas for this job, and encryption.generateKey is "
        "IfMissing; to encrypt with an existing key, set generateKey: Never",
    )


def key_secret_taken(job: TrainingJob, now: datetime) -> Desired:
    """The status when the key Secret's create was answered 409: someone made a Secret of that name since it
    was found missing. Not generated for this job, so not used, and the record of the intent goes."""
    out = _initial_status(job, now)
    key_secret_not_owned(job, out)
    return Desired(status=out.status, requeue_after=RECHECK_SECONDS)


def _mirror_suspend(job: TrainingJob, workload: Mapping[str, Any] | None, out: _Status) -> bool:
    workload_suspended = true_condition(workload, "Suspended")
    if job.spec.run_policy.suspend:
        out.set(SUSPENDED, TRUE, "Suspended", "runPolicy.suspend is true: the pods are deleted until it is false")
        return True
    if workload_suspended is not None:
        # Suspended by someone else, e.g. Kueue holding the workload until its queue admits it.
        out.set(SUSPENDED, TRUE, str(workload_suspended.get("reason") or "Suspended"), "")
        return True
    was = find_condition(out.status.conditions, SUSPENDED)
    out.set(SUSPENDED, FALSE, "Resumed" if was is not None and was.status == TRUE else "NotSuspended", "")
    return False


def _succeeded(job: TrainingJob, observed: Observed, out: _Status, reason: str, finished: datetime) -> Desired | None:
    """Fill status.model from rank 0, or decide that the message is bad; None means: wait for the pod."""
    rank0 = [p for p in observed.pods if pod_rank(p) == 0 and (p.get("status") or {}).get("phase") == "Succeeded"]
    if not rank0:
        if out.now - finished < POD_LAG_GRACE:
            return None
        error = "rank 0's pod is gone: no termination message to read the published model from"
    else:
        terminated = terminated_state(rank0[0]) or {}
        try:
            out.status.model = parse_published_model(str(terminated.get("message") or ""), job)
        except BadTerminationMessage as bad:
            error = str(bad)
        else:
            out.set(SUCCEEDED, TRUE, reason, f"published {out.status.model.uri} (key id {out.status.model.key_id})")
            out.set(FAILED, FALSE, reason, "")
            return Desired(status=out.status)
    out.set(FAILED, TRUE, "BadTerminationMessage", error)
    out.set(SUCCEEDED, FALSE, "Failed", "")
    return Desired(status=out.status)


def reconcile(job: TrainingJob, observed: Observed, now: datetime) -> Desired:
    out = _initial_status(job, now)
    if is_true(out.status.conditions, SUCCEEDED) or is_true(out.status.conditions, FAILED):
        return _finished(job, observed, out)

    served = served_backends(observed)
    backend = workloads.resolve(job, served)
    if backend.unavailable is not None and backend.name not in served:
        out.blocked("BackendUnavailable", backend.unavailable)
        return Desired(status=out.status, requeue_after=RECHECK_SECONDS)

    workload = observed.workload
    if job.spec.distillation is not None and out.status.teacher is None:
        teacher = resolve_teacher(job, observed.teacher_job)
        if isinstance(teacher, tuple):
            out.blocked(*teacher)
            return Desired(status=out.status, requeue_after=RECHECK_SECONDS)
        out.status.teacher = teacher  # fixed from now on: a restart of the job learns from the same teacher
        # The pre-flight and the builders read the teacher this status records.
        job = job.model_copy(update={"status": out.status})
    if workload is None and not _preflight(job, observed, out):
        return Desired(status=out.status, requeue_after=RECHECK_SECONDS)
    out.status.backend = backend.name
    children = desired_children(job, backend)
    out.set(READY, TRUE, "WorkloadCreated" if workload is not None else "Creating", "")

    if workload is None:
        # Only before the workload exists: the handlers look the Secret up only then (no reads in steady state).
        out.set(CREATED, UNKNOWN, "Creating", f"creating the {backend.name}")
        _mirror_suspend(job, None, out)
        out.set(RUNNING, FALSE, "Pending", "")
        name = job.spec.encryption.key_secret_ref.name
        create_key = not observed.key_secret_exists and job.spec.encryption.generate_key == KeyGeneration.IfMissing
        if create_key and out.status.generated_key_secret != name:
            # The intent is recorded first (status.generatedKeySecret), the Secret created by the next pass: an
            # operator killed between the create and any later write still knows the Secret is its own.
            out.status.generated_key_secret = name
            return Desired(status=out.status, requeue_after=KEY_INTENT_REQUEUE_SECONDS)
        if not backend.prerequisites <= {c.get("kind") for c in observed.children}:
            # The workload waits for the children its API's webhook looks up: their watch event comes next.
            children = [c for c in children if c["kind"] != backend.name]
        return Desired(status=out.status, apply=children, create_key_secret=create_key)

    out.set(CREATED, TRUE, f"{backend.name}Created", f"{backend.name} {workload['metadata']['name']} created")
    wl_status = workload.get("status") or {}
    out.status.start_time = timestamp(wl_status.get("startTime")) or out.status.start_time
    out.status.replica_statuses = replica_statuses(observed.pods) or None
    suspended = _mirror_suspend(job, workload, out)
    recheck = queue.mirror(job, observed.queue, suspended, out.set)
    evicted = queue.evictions(observed.queue)
    if evicted is not None:
        out.status.evictions = evicted or None

    succeeded = backend.succeeded(workload)
    failed = true_condition(workload, "Failed")
    if succeeded is not None or failed is not None:
        decided = succeeded if succeeded is not None else failed
        assert decided is not None
        finished = timestamp(wl_status.get("completionTime")) or timestamp(decided.get("lastTransitionTime")) or now
        out.set(RUNNING, FALSE, "Finished", "")
        out.set(RESTARTING, FALSE, "Finished", "")
        out.status.restart_count = _restarts(backend.restarts(workload, observed.pods), out)
        if succeeded is not None:
            reason = str(succeeded.get("reason") or "Succeeded")
            result = _succeeded(job, observed, out, reason, finished)
            if result is None:
                out.set(RUNNING, FALSE, "Finishing", "waiting for rank 0's termination message")
                return Desired(status=out.status, apply=children, requeue_after=POD_LAG_GRACE.total_seconds())
        else:
            failure = pod_failure(observed.pods)
            reason = failure.reason if failure is not None else str(decided.get("reason") or "Failed")
            message = str(decided.get("message") or "")
            if failure is not None:
                message = f"{failure.describe()}; {message}" if message else failure.describe()
            out.set(FAILED, TRUE, reason, message)
            # Not the failure's reason: one Event (the Failed one, a Warning) names the cause.
            out.set(SUCCEEDED, FALSE, "Failed", "")
        out.status.completion_time = finished
        return _finished(job, observed, out)

    out.set(SUCCEEDED, FALSE, "NotFinished", "")
    out.set(FAILED, FALSE, "NotFinished", "")
    restarts = backend.restarts(workload, observed.pods)
    out.status.restart_count = _restarts(restarts, out)
    restarting = backend.restarting(job, workload, restarts) if not suspended else None
    if restarting is not None:
        out.set(RESTARTING, TRUE, *restarting)
    else:
        out.set(RESTARTING, FALSE, "NotRestarting", "")
    running = backend.running(job, workload)
    if suspended:
        out.set(RUNNING, FALSE, "Suspended", "")
    elif restarting is not None:
        out.set(RUNNING, FALSE, "Restarting", "")
    elif running is not None:
        out.set(RUNNING, TRUE, *running)
        return Desired(status=out.status, apply=children, requeue_after=_progress(job, observed, out))
    else:
        out.set(RUNNING, FALSE, "Pending", "waiting for the pods to start")
    return Desired(status=out.status, apply=children, requeue_after=recheck)


def _restarts(pod_restarts: int, out: _Status) -> int:
    """status.restartCount: the backend's own pod restarts, and a restart of every pod per Kueue eviction."""
    return pod_restarts + (out.status.evictions or 0)


def _progress(job: TrainingJob, observed: Observed, out: _Status) -> float | None:
    """status.progress from rank 0's report and, once there is one, Stalled; the next pass is due when the
    next read is (finished jobs are never read again)."""
    reported = progress_from(observed.progress) if observed.progress is not None else None
    if reported is not None:
        out.status.progress = reported
    timeout = job.spec.run_policy.stall_timeout_seconds
    if out.status.progress is not None and timeout is not None:
        is_stalled, reason, message = stalled(out.status.progress, timeout, out.now)
        out.set(STALLED, TRUE if is_stalled else FALSE, reason, message if is_stalled else "")
    return None if observed.progress_read_in is None else max(observed.progress_read_in, 1.0)


def invalid_spec(
    status: Mapping[str, Any] | None, generation: int | None, error: str, now: datetime
) -> TrainingJobStatus:
    """The status of a TrainingJob the operator cannot parse (the CRD accepted what the models refuse).

    Ready=False/InvalidSpec with the validation message; nothing is created or retried until the spec changes.
    """
    try:
        current = TrainingJobStatus.model_validate(status or {})
    except ValidationError:
        current = TrainingJobStatus()
    current.conditions = set_condition(current.conditions, READY, FALSE, "InvalidSpec", shorten(error), generation, now)
    current.observed_generation = generation
    return current
