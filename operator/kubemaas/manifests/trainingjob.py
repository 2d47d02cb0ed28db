"""Pure builders for a TrainingJob's children: typed spec in, Kubernetes objects (plain dicts) out.

Three backends run the same pods (docs/runtime-contract.md); the TrainJob backend's builders are in
`manifests/trainjob.py` and reuse `pod_spec` from here:

- `pytorchjob`: a Kubeflow `kubeflow.org/v1` PyTorchJob, Master (rank 0) + Worker (ranks 1..n-1);
  Kubeflow sets the rendezvous environment itself.
- `indexed_job` + `headless_service`: a `batch/v1` Indexed Job for clusters without Kubeflow. The
  pods get the environment Kubeflow would set: rank 0 is addressable as `<job>-0.<service>` through
  the headless Service, and RANK comes from the completion index.

One pod template of an Indexed Job serves every index, so under the Job backend every rank mounts
what rank 0 needs (the key Secret, the output claim read-write); under PyTorchJob only the Master
does. The environment and the container command come from `kubemaas.contract`, the one definition
the code inside the pods parses. Nothing here does I/O; the controller applies what these functions return.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from kubemaas import contract
from kubemaas.api.core import DEFAULT_GPU_RESOURCE
from kubemaas.api.trainingjob import KeyGeneration, Quantization, TrainingJob
from kubemaas.contract.keys import ACTIVE_FILE, KEY_BYTES, KEY_FILE_PREFIX
from kubemaas.contract.published import published_model_name
from kubemaas.contract.termination import ExitCode
from kubemaas.manifests.labels import MANAGED_BY, MANAGED_BY_KEY, PART_OF_KEY, child_labels, parent_label
from kubemaas.manifests.labels import owner_reference as _owner_reference
from kubemaas.manifests.pods import (
    OMP_NUM_THREADS,
    QUEUE_LABEL,
    WORKLOAD_DEFAULTS,
    WORKLOAD_UID,
    as_served,
    container_resources,
    place,
    restricted_container_security_context,
    restricted_pod_security_context,
    threads_per_process,
)
from kubemaas.manifests.trainingjob_mounts import key_volumes_and_mounts, store_accesses, teacher, volumes_and_mounts
from kubemaas.manifests.trainingjob_mounts import volume_name as _volume

KIND = "TrainingJob"
KIND_LABEL = parent_label(KIND)

# Kubeflow finds the training container by this name.
PYTORCH_CONTAINER = "pytorch"
# The contract's podFailurePolicy names this container (docs/runtime-contract.md §6).
JOB_CONTAINER = "trainer"
# Kubeflow reads MASTER_PORT from the container port with this name; naming it keeps both backends on one port.
PYTORCH_PORT_NAME = "pytorchjob-port"
MASTER_PORT = contract.DEFAULT_MASTER_PORT
# Rank 0's progress endpoint (kubemaas.runtime.progress), which the operator reads.
PROGRESS_PORT = contract.DEFAULT_PROGRESS_PORT
# The operator's pods carry this `app.kubernetes.io/name` (the chart's name).
OPERATOR_NAME = "kubemaas"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

# Exit codes no retry can fix (docs/runtime-contract.md §6): the Job backend fails at once on them.
PERMANENT_EXIT_CODES = sorted(int(code) for code in ExitCode if code != ExitCode.OK and not code.retryable)


# The scratch emptyDir (/tmp): the plaintext export and checkpoint (model + optimizer state) and torch's
# caches. Bounded so that a job cannot fill its node's disk; the kubelet evicts a pod past it
# (docs/runtime-contract.md §2).
TMP_SIZE_LIMIT = "32Gi"


def model_name(job: TrainingJob) -> str:
    return published_model_name(job.spec.output.model_name, job.metadata.name)


def workers_name(job: TrainingJob) -> str:
    """Name of the Job backend's Job and headless Service (`<job>-workers`, docs/runtime-contract.md §1)."""
    return f"{job.metadata.name}-workers"


def master_addr(job: TrainingJob) -> str:
    """Rank 0 under the Job backend: an Indexed Job names pod i's host `<job>-<i>`, the Service its subdomain."""
    return f"{workers_name(job)}-0.{workers_name(job)}"


def labels(job: TrainingJob, component: str) -> dict[str, str]:
    return child_labels(KIND, job.metadata.name, component)


def owner_reference(job: TrainingJob) -> dict[str, Any]:
    return _owner_reference(
        {
            "apiVersion": job.api_version,
            "kind": job.kind,
            "metadata": {"name": job.metadata.name, "uid": job.metadata.uid},
        }
    )


def child_metadata(job: TrainingJob, name: str, component: str, *, queue: bool = False) -> dict[str, Any]:
    meta_labels = labels(job, component)
    scheduling = job.spec.scheduling
    if queue and scheduling is not None and scheduling.queue_name:
        meta_labels[QUEUE_LABEL] = scheduling.queue_name
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": meta_labels,
        "ownerReferences": [owner_reference(job)],
    }


def settings(job: TrainingJob, version: str, *, rank0: bool) -> contract.Settings:
    """The KUBEMAAS_* settings a rank gets (docs/runtime-contract.md §1); only these are rendered."""
    spec = job.spec
    values: dict[str, Any] = {"model_name": model_name(job), "model_version": version, "output_uri": spec.output.uri}
    if spec.data is not None:
        values["data_uri"] = spec.data.uri
    if rank0:
        values["key_dir"] = contract.DEFAULT_KEY_DIR
    if spec.output.quantization != Quantization.NONE:
        values["quantization"] = spec.output.quantization
    compression = spec.output.compression
    if compression is not None and compression.pruning is not None:
        values["pruning"] = compression.pruning.method
        values["pruning_percent"] = compression.pruning.amount_percent
    distilled_from = teacher(job)
    if spec.distillation is not None and distilled_from is not None:
        values["teacher_uri"] = distilled_from.uri
        values["teacher_version"] = distilled_from.version
        values["distill_temperature"] = spec.distillation.temperature
        values["distill_soft_percent"] = spec.distillation.soft_loss_percent
        if rank0:
            values["teacher_key_dir"] = contract.DEFAULT_TEACHER_KEY_DIR
    if spec.data is not None and spec.data.encryption is not None:
        values["data_key_dir"] = contract.DEFAULT_DATA_KEY_DIR
    return contract.Settings(**values)


def rendezvous(job: TrainingJob) -> contract.Rendezvous:
    """What Kubeflow sets on PyTorchJob pods, for the Indexed Job: pod 0 reached through the headless Service."""
    return contract.Rendezvous(
        master_addr=master_addr(job),
        master_port=MASTER_PORT,
        nnodes=job.spec.replicas,
        nproc_per_node=job.spec.nproc_per_node,
    )


def container_security_context() -> dict[str, Any]:
    """Pod Security `restricted`, plus a read-only root filesystem (the trainer writes only to /tmp and mounts)."""
    return {
        **restricted_container_security_context(),
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _command(job: TrainingJob) -> dict[str, Any]:
    """The user's program under torchrun's launcher (docs/runtime-contract.md §1a); without a command the
    image's entrypoint (the trainer image's is the launcher) gets the args."""
    spec = job.spec
    if spec.command:
        return {"command": contract.launch_command(spec.command, spec.args or [], spec.nproc_per_node)}
    return {"args": list(spec.args)} if spec.args else {}


def pod_spec(
    job: TrainingJob,
    version: str,
    *,
    container: str,
    rank0: bool,
    restart_policy: str | None,
    rendezvous: contract.Rendezvous | None,
) -> dict[str, Any]:
    """The training pod of one replica type; `rank0` decides who gets the key and the output claim."""
    spec = job.spec
    volumes, mounts = volumes_and_mounts(job, rank0=rank0)
    volumes.append({"name": _volume("tmp"), "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}})
    mounts.append({"name": _volume("tmp"), "mountPath": "/tmp"})
    if spec.resources.shm_size is not None:
        # NCCL and DataLoader workers share memory through /dev/shm; the runtime's default is 64Mi.
        shm = {"medium": "Memory", "sizeLimit": str(spec.resources.shm_size)}
        volumes.append({"name": _volume("shm"), "emptyDir": shm})
        mounts.append({"name": _volume("shm"), "mountPath": "/dev/shm"})
    key_volumes, key_mounts = key_volumes_and_mounts(job, rank0=rank0)
    volumes += key_volumes
    mounts += key_mounts
    stores = store_accesses(job, rank0=rank0)
    for store in stores:
        volumes += store.volumes
        mounts += store.mounts
    volumes += [as_served(v) for v in spec.volumes or ()]
    mounts += [as_served(m) for m in spec.volume_mounts or ()]

    # HOME=/tmp: torch and pip caches need a writable home under a read-only root filesystem. The user's
    # env comes before the contract's, so Kubemaas' values win (the API refuses the names anyway).
    env = [{"name": "HOME", "value": "/tmp"}]
    threads = threads_per_process(spec.resources, spec.nproc_per_node)
    if threads is not None and not any(e.name == OMP_NUM_THREADS for e in spec.env or ()):
        env.append({"name": OMP_NUM_THREADS, "value": str(threads)})  # a value of the user's env wins
    env += [as_served(e) for e in spec.env or ()]
    env += contract.render(settings(job, version, rank0=rank0), rendezvous)
    env += [entry for store in stores for entry in store.env]

    main: dict[str, Any] = {"name": container, "image": spec.image, **_command(job), "env": env}
    if spec.env_from:
        main["envFrom"] = [as_served(e) for e in spec.env_from]
    main["ports"] = [{"name": PYTORCH_PORT_NAME, "containerPort": MASTER_PORT, "protocol": "TCP"}]
    main["resources"] = container_resources(
        spec.resources, spec.resources.gpu_resource or DEFAULT_GPU_RESOURCE, WORKLOAD_DEFAULTS
    )
    main["volumeMounts"] = mounts
    main["terminationMessagePath"] = str(contract.DEFAULT_TERMINATION_LOG)
    main["terminationMessagePolicy"] = "File"
    main["securityContext"] = container_security_context()

    pod: dict[str, Any] = {}
    if restart_policy is not None:
        pod["restartPolicy"] = restart_policy
    if spec.service_account_name:
        # A named service account is there to be used (workload identity, API access): its token is mounted.
        pod["serviceAccountName"] = spec.service_account_name
    else:
        pod["automountServiceAccountToken"] = False
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [r.to_wire() for r in spec.image_pull_secrets]
    # Service links would add one variable per Service in the namespace to the training environment.
    pod["enableServiceLinks"] = False
    pod["securityContext"] = restricted_pod_security_context()
    pod["containers"] = [main]
    pod["volumes"] = volumes
    place(pod, spec.scheduling)
    return pod


def workload_suspend(job: TrainingJob) -> bool | None:
    """The workload's `suspend`, or None to leave the field to Kueue.

    Kueue creates queued workloads suspended and unsuspends them on admission; applying
    `suspend: false` would take the field away from it. So under a queue only a user's suspend is sent.
    """
    scheduling = job.spec.scheduling
    queued = scheduling is not None and bool(scheduling.queue_name)
    if queued and not job.spec.run_policy.suspend:
        return None
    return job.spec.run_policy.suspend


def _retries_and_suspension(job: TrainingJob) -> dict[str, Any]:
    """backoffLimit, activeDeadlineSeconds and suspend: the same fields in Kubeflow's runPolicy and a batch Job."""
    policy = job.spec.run_policy
    out: dict[str, Any] = {"backoffLimit": policy.backoff_limit}
    if policy.active_deadline_seconds is not None:
        out["activeDeadlineSeconds"] = policy.active_deadline_seconds
    suspend = workload_suspend(job)
    if suspend is not None:
        out["suspend"] = suspend
    return out


def _replica_spec(job: TrainingJob, version: str, replicas: int, *, rank0: bool) -> dict[str, Any]:
    component = "master" if rank0 else "worker"
    return {
        "replicas": replicas,
        # Kubeflow's ExitCode policy matches the contract: 1-127 permanent, 128-255 restart (docs §6).
        "restartPolicy": "ExitCode",
        "template": {
            "metadata": {"labels": labels(job, component)},
            # Kubeflow sets the rendezvous variables itself.
            "spec": pod_spec(
                job, version, container=PYTORCH_CONTAINER, rank0=rank0, restart_policy=None, rendezvous=None
            ),
        },
    }


def pytorchjob(job: TrainingJob, version: str) -> dict[str, Any]:
    """A kubeflow.org/v1 PyTorchJob: Master (rank 0) and `replicas - 1` Workers.

    `ttlSecondsAfterFinished` is not passed on: the controller deletes the finished workload itself,
    after it has read rank 0's termination message.
    """
    spec = job.spec
    run_policy: dict[str, Any] = {
        # Finished pods stay (their termination messages fill status.model); stragglers are removed.
        "cleanPodPolicy": "Running",
        **_retries_and_suspension(job),
    }
    scheduling = spec.scheduling
    if scheduling is not None and scheduling.scheduler_name:
        # A gang scheduler starts all pods or none: rendezvous needs every rank.
        gang: dict[str, Any] = {"minAvailable": spec.replicas}
        if scheduling.priority_class_name:
            gang["priorityClass"] = scheduling.priority_class_name
        run_policy["schedulingPolicy"] = gang
    replica_specs = {"Master": _replica_spec(job, version, 1, rank0=True)}
    if spec.replicas > 1:
        replica_specs["Worker"] = _replica_spec(job, version, spec.replicas - 1, rank0=False)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": child_metadata(job, job.metadata.name, "training", queue=True),
        "spec": {
            "nprocPerNode": str(spec.nproc_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def indexed_job(job: TrainingJob, version: str) -> dict[str, Any]:
    """A batch/v1 Indexed Job with one pod per rank and the contract's podFailurePolicy."""
    spec = job.spec
    template_spec = pod_spec(
        job, version, container=JOB_CONTAINER, rank0=True, restart_policy="Never", rendezvous=rendezvous(job)
    )
    template_spec["subdomain"] = workers_name(job)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.replicas,
        "parallelism": spec.replicas,
        **_retries_and_suspension(job),
    }
    job_spec["podFailurePolicy"] = pod_failure_policy(JOB_CONTAINER)
    # Rank 0's success is the job's, as a PyTorchJob's master's is: it publishes only after every rank passed
    # the last step's checkpoint barrier. A rank that fails after that (an abort at exit was seen on a loaded
    # node) can change nothing of the model, and its replacement could never meet rank 0 again, so it would
    # only run the job into its backoff limit.
    job_spec["successPolicy"] = {"rules": [{"succeededIndexes": "0"}]}
    job_spec["template"] = {"metadata": {"labels": labels(job, "worker")}, "spec": template_spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(job, workers_name(job), "training", queue=True),
        "spec": job_spec,
    }


def pod_failure_policy(container: str) -> dict[str, Any]:
    """The contract's exit codes as a batch/v1 podFailurePolicy (docs/runtime-contract.md §6)."""
    permanent = {"containerName": container, "operator": "In", "values": PERMANENT_EXIT_CODES}
    return {
        "rules": [
            {"action": "FailJob", "onExitCodes": permanent},
            # Preemption and node drains do not count against backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def headless_service(job: TrainingJob) -> dict[str, Any]:
    """DNS for the Indexed Job's pods, so `<job>-workers-0.<service>` reaches rank 0."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, workers_name(job), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            # Rank 0 must resolve before it is Ready: the other ranks dial it during start-up.
            "publishNotReadyAddresses": True,
            "selector": {KIND_LABEL: job.metadata.name, "app.kubernetes.io/component": "worker"},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}],
        },
    }


def network_policy(job: TrainingJob) -> dict[str, Any]:
    """The job's pods accept connections only from each other: the rendezvous port and the collectives'
    ports are not open to the rest of the cluster (docs/security.md). Enforced by the cluster's network
    plugin where it implements NetworkPolicy; egress (the store, the image registry) is left as it is.

    One port more is open, to the operator's pods only (the chart's `app.kubernetes.io/name` label, any
    namespace): rank 0's progress endpoint, which the operator reads (docs/runtime-contract.md §10)."""
    own_pods = {"matchLabels": {KIND_LABEL: job.metadata.name}}
    operator = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": OPERATOR_NAME}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(job, job.metadata.name, "network"),
        "spec": {
            "podSelector": own_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": own_pods}]},
                {"from": [operator], "ports": [{"protocol": "TCP", "port": PROGRESS_PORT}]},
            ],
        },
    }


# --- the key Secret ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewKey:
    """A freshly generated AES-256 key; `repr` never shows the bytes."""

    key_id: str
    key: bytes

    def __repr__(self) -> str:
        return f"NewKey(key_id={self.key_id!r})"


def new_key() -> NewKey:
    """32 random bytes and a random id (`[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, docs/runtime-contract.md §3)."""
    return NewKey(key_id=f"k{secrets.token_hex(6)}", key=secrets.token_bytes(KEY_BYTES))


def key_secret(job: TrainingJob, key: NewKey) -> dict[str, Any] | None:
    """The key Secret for `generateKey: IfMissing`, or None when the user must supply it (`Never`).

    Not owned by the job: deleting the TrainingJob must never make the models it published unreadable.
    """
    encryption = job.spec.encryption
    if encryption.generate_key == KeyGeneration.Never:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": encryption.key_secret_ref.name,
            "namespace": job.metadata.namespace,
            # Managed-by, so the operator's Secret watch (filtered server-side by it) sees the Secret appear.
            "labels": {
                "app.kubernetes.io/name": "kubemaas-model-key",
                MANAGED_BY_KEY: MANAGED_BY,
                PART_OF_KEY: "kubemaas",
            },
            # Which job asked for it, for a human; an annotation, so no garbage collector acts on it.
            "annotations": {KIND_LABEL: job.metadata.name},
        },
        "type": "Opaque",
        "data": {
            KEY_FILE_PREFIX + key.key_id: base64.b64encode(key.key).decode("ascii"),
            ACTIVE_FILE: base64.b64encode(key.key_id.encode("ascii")).decode("ascii"),
        },
    }
