"""The TrainingJob's level-triggered core: (job, what the cluster shows, now) -> (desired children, status).

Pure: no API calls, no clock, no randomness. The kopf handlers (controllers/trainingjob.py) gather
`Observed` from their indexes, call `reconcile`, apply what it returns and patch the status. Calling it
again with the same inputs gives the same answer, so a restarted operator converges to the same state.

Rules:
- The model version is derived from the job's creation time and uid: stable across operator restarts
  and pod restarts, known before any pod starts, sortable by creation.
- The backend is resolved once (Auto -> PyTorchJob when the CRD is served, else Job), recorded in
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
from kubemaas.api.trainingjob import (
    KeyGeneration,
    PublishedModel,
    ReplicaStatus,
    TrainingJob,
    TrainingJobStatus,
)
from kubemaas.contract import termination
from kubemaas.contract.published import version_uri
from kubemaas.controllers import workloads
from kubemaas.controllers.conditions import WarningPolicy, find_condition, is_true, set_condition, true_condition
from kubemaas.controllers.workloads import WorkloadBackend
from kubemaas.manifests import trainingjob as manifests

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
WARNINGS = WarningPolicy(when_true=frozenset({FAILED}), when_false=frozenset({READY, CREATED}))

# A condition message stays readable in `kubectl describe` and small in etcd.
MESSAGE_LIMIT = 1024
# How long a finished workload's rank-0 pod may lag behind the workload in the watch streams before
# its absence counts as a lost termination message.
POD_LAG_GRACE = timedelta(seconds=30)
# How often a blocked job (missing claim, key Secret or backend) looks again: neither claims nor a user's
# Secret carry a Kubemaas label, so no watch of the operator reports their arrival.
RECHECK_SECONDS = 10.0

KUBEFLOW_REPLICA_TYPE = "training.kubeflow.org/replica-type"
KUBEFLOW_REPLICA_INDEX = "training.kubeflow.org/replica-index"


@dataclass(frozen=True)
class Observed:
    """What the cluster shows about one TrainingJob, gathered by the handlers (never by this module)."""

    pytorchjob_served: bool
    workload: Mapping[str, Any] | None = None  # the owned PyTorchJob or Job
    service: Mapping[str, Any] | None = None  # the owned headless Service (Job backend)
    network_policy: Mapping[str, Any] | None = None  # the owned NetworkPolicy
    pods: Sequence[Mapping[str, Any]] = ()  # pods labelled kubemaas.io/trainingjob=<name>
    claims: frozenset[str] = frozenset()  # which of the job's claims exist
    key_secret_exists: bool = False


@dataclass(frozen=True)
class Desired:
    """What the handlers do next: apply, delete, create the key Secret, write status, look again later."""

    status: TrainingJobStatus
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Mapping[str, Any]] = field(default_factory=list)
    create_key_secret: bool = False
    requeue_after: float | None = None


class BadTerminationMessage(ValueError):
    """Rank 0's termination message is not what the contract promises."""


def model_version(job: TrainingJob) -> str:
    """`v<created:%Y%m%d-%H%M%S>-<uid[:8]>`: fixed for the job's lifetime, unique, sortable by creation."""
    extra = job.metadata.model_extra or {}
    created = datetime.fromisoformat(str(extra["creationTimestamp"]))
    return f"v{created:%Y%m%d-%H%M%S}-{(job.metadata.uid or '')[:8]}"


def served_backends(observed: Observed) -> frozenset[str]:
    """Backends whose API the cluster serves, among those that need one."""
    return frozenset({"PyTorchJob"}) if observed.pytorchjob_served else frozenset()


def desired_children(job: TrainingJob, backend: WorkloadBackend) -> list[dict[str, Any]]:
    """The backend's workload, and whatever backend: the NetworkPolicy that closes the ranks' ports."""
    return [*backend.children(job, model_version(job)), manifests.network_policy(job)]


# --- reading what the workload and its pods report ------------------------------------------------


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def _shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    replica_type = pod_labels.get(KUBEFLOW_REPLICA_TYPE)
    if replica_type is not None:
        # Kubeflow: the Master is rank 0, Worker i is rank i + 1.
        index = int(pod_labels.get(KUBEFLOW_REPLICA_INDEX, "0"))
        return 0 if replica_type.lower() == "master" else index + 1
    index_value = (meta.get("annotations") or {}).get(manifests.COMPLETION_INDEX_ANNOTATION)
    return int(index_value) if index_value is not None and str(index_value).isdigit() else None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The training container's terminated state (the pod has exactly one container)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") in (manifests.PYTORCH_CONTAINER, manifests.JOB_CONTAINER):
            terminated: Mapping[str, Any] | None = (status.get("state") or {}).get("terminated")
            return terminated
    return None


def replica_statuses(pods: Sequence[Mapping[str, Any]]) -> dict[str, ReplicaStatus]:
    counts: dict[str, dict[str, int]] = {}
    for pod in pods:
        rank = pod_rank(pod)
        if rank is None:
            continue
        kind = "Master" if rank == 0 else "Worker"
        bucket = counts.setdefault(kind, {"active": 0, "succeeded": 0, "failed": 0})
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded":
            bucket["succeeded"] += 1
        elif phase == "Failed":
            bucket["failed"] += 1
        elif not (pod.get("metadata") or {}).get("deletionTimestamp"):
            bucket["active"] += 1
    return {kind: ReplicaStatus(**c) for kind, c in sorted(counts.items())}


def parse_published_model(message: str, job: TrainingJob) -> PublishedModel:
    """Rank 0's success message -> status.model; anything else is BadTerminationMessage.

    Rank 0 is trusted only for what it alone knows (the digest, the key id, the metrics). Where the version
    lives follows from the spec: a message that names another model, version or URI is refused, so no pod
    can point a ModelService at another store or model (docs/security.md)."""
    if not message.strip():
        raise BadTerminationMessage("rank 0 exited 0 without a termination message")
    try:
        parsed = termination.parse_termination(message)
    except termination.InvalidTerminationMessage as error:
        raise BadTerminationMessage(f"rank 0's termination message: {error}") from None
    if not isinstance(parsed, termination.SuccessMessage):
        raise BadTerminationMessage(f"rank 0 exited 0 but reported a failure ({parsed.reason})")
    version, model = model_version(job), manifests.model_name(job)
    uri = version_uri(job.spec.output.uri, model, version)
    for field_name, reported, expected in (("version", parsed.version, version), ("model", parsed.model, model)):
        if reported != expected:
            raise BadTerminationMessage(
                f"rank 0 published {field_name} {_shorten(reported, 80)!r}, expected {expected!r}"
            )
    if parsed.uri != uri:
        raise BadTerminationMessage(f"rank 0 reported the URI {_shorten(parsed.uri, 200)!r}, expected {uri!r}")
    metrics = PublishedModel.metrics_from(parsed.metrics)
    try:
        return PublishedModel(
            uri=uri, version=version, sha256=parsed.sha256, key_id=parsed.key_id, metrics=metrics or None
        )
    except ValidationError as error:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in error.errors())
        raise BadTerminationMessage(f"rank 0's termination message has invalid {fields}") from None


@dataclass(frozen=True)
class PodFailure:
    rank: int | None
    exit_code: int
    reason: str
    message: str

    def describe(self) -> str:
        who = f"rank {self.rank}" if self.rank is not None else "a pod"
        text = f"{who} exited {self.exit_code} ({self.reason})"
        return f"{text}: {self.message}" if self.message else text


def pod_failure(pods: Sequence[Mapping[str, Any]]) -> PodFailure | None:
    """The failure that explains a failed job: the first permanent exit, else the first failure.

    The reason and message come from the pod's termination message when it is a valid failure
    report (docs/runtime-contract.md §5), else from the kubelet (OOMKilled, Error -> PodFailed).
    """
    failures: list[tuple[str, PodFailure]] = []
    for pod in pods:
        terminated = _terminated(pod)
        if terminated is None or not terminated.get("exitCode"):
            continue
        code = int(terminated["exitCode"])
        kubelet_reason = str(terminated.get("reason") or "Error")
        reason, text, rank = ("PodFailed" if kubelet_reason == "Error" else kubelet_reason), "", pod_rank(pod)
        raw = str(terminated.get("message") or "")
        try:
            report = termination.parse_termination(raw) if raw else None
        except termination.InvalidTerminationMessage:
            report, text = None, raw
        if isinstance(report, termination.FailureMessage):
            reason, text = report.reason, report.message
            rank = report.rank if report.rank is not None else rank
        failure = PodFailure(rank, code, reason, _shorten(text, MESSAGE_LIMIT // 2))
        failures.append((str(terminated.get("finishedAt") or ""), failure))
    if not failures:
        return None
    failures.sort(key=lambda item: (item[1].exit_code >= 128, item[0]))
    return failures[0][1]


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
            _shorten(message),
            self.job.metadata.generation,
            self.now,
        )

    def blocked(self, reason: str, message: str) -> None:
        self.set(READY, FALSE, reason, message)
        self.set(CREATED, FALSE, reason, message)


def _initial_status(job: TrainingJob, now: datetime) -> _Status:
    base = job.status.model_copy(deep=True) if job.status is not None else TrainingJobStatus()
    out = _Status(job, now, base)
    for type in CONDITION_TYPES:
        if find_condition(base.conditions, type) is None:
            out.set(type, UNKNOWN, "Reconciling", "")
    base.observed_generation = job.metadata.generation
    return out


def _finished(job: TrainingJob, observed: Observed, out: _Status) -> Desired:
    """Terminal: keep the status, delete the children once ttlSecondsAfterFinished has passed."""
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    completed = out.status.completion_time
    children = [c for c in (observed.workload, observed.service, observed.network_policy) if c is not None]
    if ttl is None or completed is None or not children:
        return Desired(status=out.status)
    due = completed + timedelta(seconds=ttl)
    if out.now >= due:
        return Desired(status=out.status, delete=children)
    return Desired(status=out.status, requeue_after=(due - out.now).total_seconds())


def _preflight(job: TrainingJob, observed: Observed, out: _Status) -> bool:
    """Before the workload exists: every claim and (with Never) the key Secret must be there."""
    missing = [c for c in manifests.required_claims(job) if c not in observed.claims]
    if missing:
        names = ", ".join(missing)
        out.blocked(
            "ClaimNotFound",
            f"PersistentVolumeClaim {names} not found in namespace {job.metadata.namespace}; "
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
    generated = out.status.generated_key_secret == name
    if observed.key_secret_exists and encryption.generate_key == KeyGeneration.IfMissing and not generated:
        # Whoever could create that Secret would choose the key this job's models are encrypted with, or
        # make the job mount a key its author may not read: only a key generated for this job is used.
        out.blocked(
            "KeySecretNotOwned",
            f"Secret {name} exists but was not generated by Kubemaas for this job, and encryption.generateKey is "
            "IfMissing; to encrypt with an existing key, set generateKey: Never",
        )
        return False
    return True


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
        terminated = _terminated(rank0[0]) or {}
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
    if workload is None and not _preflight(job, observed, out):
        return Desired(status=out.status, requeue_after=RECHECK_SECONDS)
    out.status.backend = backend.name
    children = desired_children(job, backend)
    out.set(READY, TRUE, "WorkloadCreated" if workload is not None else "Creating", "")

    if workload is None:
        # Only before the workload exists: the handlers look the Secret up only then (no reads in steady state).
        create_key = not observed.key_secret_exists and job.spec.encryption.generate_key == KeyGeneration.IfMissing
        if create_key:
            # Written only once the create succeeded (the handler); the record outlives a restart.
            out.status.generated_key_secret = job.spec.encryption.key_secret_ref.name
        out.set(CREATED, UNKNOWN, "Creating", f"creating the {backend.name}")
        _mirror_suspend(job, None, out)
        out.set(RUNNING, FALSE, "Pending", "")
        return Desired(status=out.status, apply=children, create_key_secret=create_key)

    out.set(CREATED, TRUE, f"{backend.name}Created", f"{backend.name} {workload['metadata']['name']} created")
    wl_status = workload.get("status") or {}
    out.status.start_time = _time(wl_status.get("startTime")) or out.status.start_time
    out.status.replica_statuses = replica_statuses(observed.pods) or None
    suspended = _mirror_suspend(job, workload, out)

    succeeded = backend.succeeded(workload)
    failed = true_condition(workload, "Failed")
    if succeeded is not None or failed is not None:
        decided = succeeded if succeeded is not None else failed
        assert decided is not None
        finished = _time(wl_status.get("completionTime")) or _time(decided.get("lastTransitionTime")) or now
        out.set(RUNNING, FALSE, "Finished", "")
        out.set(RESTARTING, FALSE, "Finished", "")
        out.status.restart_count = backend.restarts(workload)
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
    restarts = backend.restarts(workload)
    out.status.restart_count = restarts
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
    else:
        out.set(RUNNING, FALSE, "Pending", "waiting for the pods to start")
    return Desired(status=out.status, apply=children)


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
    current.conditions = set_condition(
        current.conditions, READY, FALSE, "InvalidSpec", _shorten(error), generation, now
    )
    current.observed_generation = generation
    return current
