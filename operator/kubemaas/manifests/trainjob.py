"""Pure builders for the TrainJob backend: a Kubeflow Trainer v2 `trainer.kubeflow.org/v1alpha1` TrainJob and the
TrainingRuntime it references, both children of the TrainingJob (docs/training.md, "Backends").

Why a TrainingRuntime per job, not upstream's `torch-distributed` ClusterTrainingRuntime patched per job:
Trainer v2.3's `runtimePatches` may set a pod's volumes, mounts, security contexts, node selector, tolerations,
affinity, image pull secrets and service account, but not what the runtime contract needs beside them
(docs/runtime-contract.md): `automountServiceAccountToken: false`, `enableServiceLinks: false`, the
termination message's path and policy, the contract's podFailurePolicy (exit 78 fails at once, 128+ retries),
`backoffLimit` from runPolicy, priorityClassName and schedulerName. A runtime of the job's own carries the very
pod the other backends run (`trainingjob.pod_spec`), so one image runs under any backend; it is owned by the
TrainingJob and goes with it. `torch-distributed` need not be installed.

Rank 0 alone cannot hold the key and the output claim here, for the reason the Job backend cannot: a Trainer
torch runtime has one replicated job, `node`, whose one Job runs every rank from one pod template (Kubernetes
has no per-index template); JobSet templates are per replicated job, and `runtimePatches` are keyed by
replicated job name, not by index. A second replicated job for ranks 1..n-1 would not do: Trainer's torch
plugin gives `numNodes` and the `PET_*` variables only to the first `trainer` replicated job, and its
`PET_NODE_RANK` is the Job's completion index, which starts at 0 again in a second Job. So every rank mounts
both (docs/runtime-contract.md §2); only rank 0 reads or writes them.

Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT
itself, upserting by name: the runtime carries the same values (`contract.render`), plus MASTER_ADDR, MASTER_PORT,
WORLD_SIZE and RANK, which Trainer v2 does not set and Kubeflow v1 did.
"""

from __future__ import annotations

from typing import Any

from kubemaas import contract
from kubemaas.api.trainingjob import TrainingJob
from kubemaas.manifests.trainingjob import (
    MASTER_PORT,
    child_metadata,
    labels,
    pod_failure_policy,
    pod_spec,
    workers_name,
    workload_suspend,
)

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_API_VERSION = f"{TRAINER_GROUP}/v1alpha1"
# Trainer's names: the replicated job of the training ranks, its container, and the label that marks it.
NODE = "node"
ANCESTOR_LABEL = f"{TRAINER_GROUP}/trainjob-ancestor-step"
ANCESTOR_TRAINER = "trainer"
# The TrainingJob's uid on every pod: the pods' owner is a Job of the TrainJob's JobSet, not the TrainJob, so this
# is how the controller tells this job's pods from those of an earlier TrainingJob of the same name.
OWNER_UID_LABEL = "kubemaas.io/trainingjob-uid"


def runtime_name(job: TrainingJob) -> str:
    return job.metadata.name


def train_job_name(job: TrainingJob) -> str:
    """`<job>-workers`, as the Job backend's Job: the TrainJob's JobSet makes a headless Service of the TrainJob's
    name, which must not take the name a ModelService of the TrainingJob's name gives its own Service."""
    return workers_name(job)


def master_addr(job: TrainingJob) -> str:
    """Rank 0 as Trainer names it: JobSet's pod hostname `<jobset>-<replicated job>-<job index>-<pod index>`
    under the JobSet's headless Service, both named after the TrainJob (at most 62 characters: names are <= 45)."""
    name = train_job_name(job)
    return f"{name}-{NODE}-0-0.{name}"


def rendezvous(job: TrainingJob) -> contract.Rendezvous:
    return contract.Rendezvous(
        master_addr=master_addr(job),
        master_port=MASTER_PORT,  # Trainer's ContainerTrainerPort is 29500 too
        nnodes=job.spec.replicas,
        nproc_per_node=job.spec.nproc_per_node,
    )


def training_runtime(job: TrainingJob, version: str) -> dict[str, Any]:
    """A namespaced torch TrainingRuntime whose `node` pods are the contract's pods, for this job alone."""
    spec = job.spec
    pod = pod_spec(job, version, container=NODE, rank0=True, restart_policy="Never", rendezvous=rendezvous(job))
    pod_labels = {**labels(job, "worker"), OWNER_UID_LABEL: str(job.metadata.uid)}
    job_spec: dict[str, Any] = {
        # JobSet's default too; explicit, since the completion index is every rank's RANK and successPolicy needs it.
        "completionMode": "Indexed",
        "backoffLimit": spec.run_policy.backoff_limit,
        "podFailurePolicy": pod_failure_policy(NODE),
        # Rank 0's success is the job's, as under the Job backend (docs/runtime-contract.md §6).
        "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod},
    }
    return {
        "apiVersion": TRAINER_API_VERSION,
        "kind": "TrainingRuntime",
        "metadata": child_metadata(job, runtime_name(job), "runtime"),
        "spec": {
            "mlPolicy": {"numNodes": spec.replicas, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": NODE,
                            # Trainer's webhook: a trainer replicated job has exactly one replica (one Job).
                            "replicas": 1,
                            "template": {"metadata": {"labels": {ANCESTOR_LABEL: ANCESTOR_TRAINER}}, "spec": job_spec},
                        }
                    ]
                }
            },
        },
    }


def train_job(job: TrainingJob) -> dict[str, Any]:
    """The TrainJob: the job's runtime, its node count and processes per node, suspension and deadline.

    `trainer` must be set for Trainer's torch plugin to inject the PET_* variables at all; numProcPerNode is
    explicit so PET_NPROC_PER_NODE is the contract's number, not torchrun's `auto`.
    """
    spec = job.spec
    body: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime", "name": runtime_name(job)},
        "trainer": {"numNodes": spec.replicas, "numProcPerNode": spec.nproc_per_node},
    }
    suspend = workload_suspend(job)
    if suspend is not None:
        body["suspend"] = suspend
    if spec.run_policy.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    return {
        "apiVersion": TRAINER_API_VERSION,
        "kind": "TrainJob",
        "metadata": child_metadata(job, train_job_name(job), "training", queue=True),
        "spec": body,
    }
