"""TrainingJob (kubemaas.io/v1alpha1): distributed PyTorch training that publishes an encrypted model."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    CONDITIONS_LIST_MARKERS,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    METRIC_NAME_PATTERN,
    MODEL_NAME_MAX_LENGTH,
    MODEL_NAME_PATTERN,
    NAME_RULES,
    STORE_URI_PATTERN,
    VERSION_PATTERN,
    ApiModel,
    Bool,
    CelRule,
    Condition,
    Int,
    MetricName,
    MetricValue,
    immutable,
)
from kubemaas.api.compression import Compression, Distillation, ResolvedTeacher
from kubemaas.api.core import (
    IMAGE_PULL_SECRETS_DESCRIPTION,
    KUBEMAAS_ENV_PREFIX,
    MOUNTS_NAME_VOLUMES_RULE,
    SERVICE_ACCOUNT_DESCRIPTION,
    EnvFromList,
    EnvList,
    ImagePullSecrets,
    Resources,
    Scheduling,
    SecretRef,
    VolumeList,
    VolumeMountList,
    reserved_env_rules,
)
from kubemaas.api.metadata import ObjectMeta
from kubemaas.api.progress import TrainingProgress
from kubemaas.api.storage import STORAGE_NEEDS_S3_URI, Storage


class RendezvousEnv(StrEnum):
    """The rendezvous variables of every rank (docs/runtime-contract.md §1), set by Kubeflow or the operator."""

    MASTER_ADDR = "MASTER_ADDR"
    MASTER_PORT = "MASTER_PORT"
    WORLD_SIZE = "WORLD_SIZE"
    RANK = "RANK"
    LOCAL_RANK = "LOCAL_RANK"
    JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
    PET_NNODES = "PET_NNODES"
    PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
    PET_NODE_RANK = "PET_NODE_RANK"
    PET_MASTER_ADDR = "PET_MASTER_ADDR"
    PET_MASTER_PORT = "PET_MASTER_PORT"


# A user value for any of these would silently break rendezvous or the harness: spec.env refuses them,
# every KUBEMAAS_* name (the harness' settings) and every PET_* name (torchrun's settings).
RESERVED_ENV: tuple[str, ...] = tuple(v.value for v in RendezvousEnv)
RESERVED_ENV_PREFIXES = (KUBEMAAS_ENV_PREFIX, "PET_")

# Bounded so the API server's CEL cost estimate for the immutability rules stays within its budget.
Arg = Annotated[str, StringConstraints(max_length=4096)]


class Backend(StrEnum):
    """Which workload runs the training pods."""

    Auto = "Auto"
    TrainJob = "TrainJob"
    PyTorchJob = "PyTorchJob"
    Job = "Job"


# The backends a job can run on, as status.backend records them (spec.backend less Auto).
BackendName = Literal["TrainJob", "PyTorchJob", "Job"]


class ModelFormat(StrEnum):
    TorchScript = "TorchScript"


class Quantization(StrEnum):
    # "None" the string, not null: an explicit choice shown by `kubectl get -o yaml`.
    NONE = "None"
    DynamicInt8 = "DynamicInt8"


class KeyGeneration(StrEnum):
    IfMissing = "IfMissing"
    Never = "Never"


class DataEncryption(ApiModel):
    """The key the dataset's files were encrypted with (`kubemaas encrypt-data`)."""

    key_secret_ref: SecretRef = Field(
        description=(
            "Secret holding the data key's key-<id> entry; mounted into every rank, which decrypts its files in "
            "memory as it reads them."
        )
    )


class DataSource(ApiModel):
    """Training data, on a claim mounted read-only into every rank or in a bucket; each rank reads its own shard."""

    uri: str = Field(
        pattern=STORE_URI_PATTERN,
        description=(
            "Where the data lives: pvc://<claim>/<path> (the claim is mounted read-only at /mnt/kubemaas/<claim>), "
            "or s3://<bucket>/<prefix>, one object per file, each rank fetching only its own objects "
            "(docs/runtime-contract.md)."
        ),
    )
    storage: Storage | None = Field(
        default=None,
        description="How every rank reaches an s3:// uri's object store: endpoint, region, credentials.",
    )
    encryption: DataEncryption | None = Field(
        default=None,
        description=(
            "Set when the files under uri are encrypted (kubemaas encrypt-data); a tampered file fails the job."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (STORAGE_NEEDS_S3_URI,)


class Output(ApiModel):
    """Where and how rank 0 publishes the trained model."""

    uri: str = Field(
        pattern=STORE_URI_PATTERN,
        description=(
            "Artifact store root: pvc://<claim>/<path> or s3://<bucket>/<prefix>. Versions land in "
            "<root>/<modelName>/<version>/, checkpoints in <root>/<modelName>/.checkpoints/<version>/."
        ),
    )
    storage: Storage | None = Field(
        default=None,
        description="How rank 0 reaches an s3:// uri's object store: endpoint, region, credentials.",
    )
    model_name: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        max_length=MODEL_NAME_MAX_LENGTH,
        description="Model name in the store; defaults to the TrainingJob's name.",
    )
    format: ModelFormat = Field(default=ModelFormat.TorchScript, description="Exported model format.")
    quantization: Quantization = Field(
        default=Quantization.NONE, description="Post-training quantization: None or DynamicInt8."
    )
    compression: Compression | None = Field(
        default=None, description="Compression at export (pruning), applied before quantization."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (STORAGE_NEEDS_S3_URI,)


class Encryption(ApiModel):
    """The key that encrypts the published model (AES-256-GCM)."""

    key_secret_ref: SecretRef = Field(
        description="Secret holding key-<id> entries and an `active` entry naming the key to encrypt with."
    )
    generate_key: KeyGeneration = Field(
        default=KeyGeneration.IfMissing,
        description=(
            "IfMissing: the operator creates the Secret with a fresh random key for this job; a Secret of that "
            "name that the operator did not create for this job is never used (condition KeySecretNotOwned). "
            "Never: the Secret must exist; this is how a job uses an existing key, e.g. one generated for an "
            "earlier job. The Secret is never owned by the TrainingJob, so deleting the job keeps its models "
            "readable."
        ),
    )


class RunPolicy(ApiModel):
    """Retries, deadlines and clean-up, as in batch/v1 Job and Kubeflow's runPolicy."""

    backoff_limit: Int = Field(default=3, ge=0, le=100, description="Retries before the job is Failed.")
    active_deadline_seconds: Int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the whole job, in seconds."
    )
    ttl_seconds_after_finished: Int | None = Field(
        default=None, ge=0, description="Delete the finished job's pods after this many seconds."
    )
    suspend: Bool = Field(default=False, description="Suspend the job: its pods are deleted until resumed.")
    stall_timeout_seconds: Int | None = Field(
        default=1800,
        ge=30,
        description=(
            "A running job whose rank 0 reported no new step for this long is Stalled (a condition, and an Event). "
            "Only jobs that report progress (harness.report_progress) can stall."
        ),
    )


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob.

    A training run is a record of what was trained: the fields that define it are immutable. Only
    runPolicy and scheduling may change (to suspend, resume or re-queue the job).
    """

    image: str = Field(
        json_schema_extra=immutable(),
        min_length=1,
        max_length=1024,
        pattern=IMAGE_PATTERN,
        description="Training image; it runs the kubemaas trainer harness.",
    )
    command: list[Arg] | None = Field(
        json_schema_extra=immutable(),
        default=None,
        max_length=256,
        description="Entrypoint override of the training container.",
    )
    args: list[Arg] | None = Field(
        json_schema_extra=immutable(),
        default=None,
        max_length=256,
        description="Arguments of the training container.",
    )
    env: EnvList | None = Field(
        json_schema_extra=immutable(),
        default=None,
        description=(
            "Extra environment, unique by name. The rendezvous variables (MASTER_ADDR, RANK, ...), "
            "JOB_COMPLETION_INDEX and every KUBEMAAS_* and PET_* name are set by Kubemaas and refused here."
        ),
    )
    env_from: EnvFromList | None = Field(
        json_schema_extra=immutable(),
        default=None,
        description="Secrets and ConfigMaps whose keys become variables; env and Kubemaas' variables win.",
    )
    replicas: Int = Field(
        json_schema_extra=immutable(),
        default=1,
        ge=1,
        le=1024,
        description="Number of pods (nodes), rank 0 included.",
    )
    nproc_per_node: Int = Field(
        json_schema_extra=immutable(),
        default=1,
        ge=1,
        le=64,
        description="Processes per pod, as torchrun's --nproc-per-node.",
    )
    resources: Resources = Field(
        json_schema_extra=immutable(),
        default=Resources(),
        description="Resources of each training pod.",
    )
    scheduling: Scheduling | None = Field(default=None, description="Placement of the training pods.")
    data: DataSource | None = Field(
        json_schema_extra=immutable(), default=None, description="Training data, sharded by rank."
    )
    output: Output = Field(json_schema_extra=immutable(), description="Where the trained model is published.")
    encryption: Encryption = Field(json_schema_extra=immutable(), description="Encryption key of the published model.")
    distillation: Distillation | None = Field(
        json_schema_extra=immutable(),
        default=None,
        description="Train against a teacher model's outputs as well as the labels (knowledge distillation).",
    )
    run_policy: RunPolicy = Field(default=RunPolicy(), description="Retries, deadlines and suspension.")
    backend: Backend = Field(
        json_schema_extra=immutable(),
        default=Backend.Auto,
        description=(
            "Auto (a Kubeflow Trainer v2 TrainJob when trainer.kubeflow.org is served, else a Kubeflow PyTorchJob "
            "when that CRD is served, else an Indexed Job; the choice is recorded in status.backend), TrainJob, "
            "PyTorchJob (Kubeflow's legacy API) or Job."
        ),
    )
    service_account_name: str | None = Field(
        json_schema_extra=immutable(),
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description=SERVICE_ACCOUNT_DESCRIPTION,
    )
    image_pull_secrets: ImagePullSecrets | None = Field(
        json_schema_extra=immutable(), default=None, description=IMAGE_PULL_SECRETS_DESCRIPTION
    )
    volumes: VolumeList | None = Field(
        json_schema_extra=immutable(),
        default=None,
        description="Extra volumes of the training pods: configMap, secret, persistentVolumeClaim or emptyDir.",
    )
    volume_mounts: VolumeMountList | None = Field(
        json_schema_extra=immutable(),
        default=None,
        description="Where the extra volumes appear in the training container, unique by mountPath.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        *reserved_env_rules(RESERVED_ENV, RESERVED_ENV_PREFIXES),
        CelRule(
            rule="!has(self.resources) || self.resources.gpus == 0 || self.nprocPerNode <= self.resources.gpus",
            message="nprocPerNode must not exceed resources.gpus when GPUs are requested",
            field_path=".nprocPerNode",
            check=lambda s: s.resources.gpus == 0 or s.nproc_per_node <= s.resources.gpus,
        ),
        MOUNTS_NAME_VOLUMES_RULE,
    )


class ReplicaStatus(ApiModel):
    """Pod counts of one replica type."""

    active: Int = Field(default=0, ge=0, description="Running pods.")
    succeeded: Int = Field(default=0, ge=0, description="Pods that exited 0.")
    failed: Int = Field(default=0, ge=0, description="Pods that failed.")


MAX_METRICS = 64
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


class PublishedModel(ApiModel):
    """The model version the job published, read from rank 0's termination message."""

    uri: str = Field(description="Artifact store URI of the version directory.")
    version: str = Field(pattern=VERSION_PATTERN, description="Model version.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the plaintext model file.")
    key_id: str = Field(description="Id of the key the model is encrypted with (never the key itself).")
    metrics: dict[MetricName, MetricValue] | None = Field(
        default=None,
        max_length=MAX_METRICS,
        description=(
            "Metrics the training program reported for this version (e.g. heldOutAccuracy), as decimal "
            "strings; ModelService promotion.requireMetrics is checked against them."
        ),
    )

    @staticmethod
    def metrics_from(reported: Mapping[str, float]) -> dict[str, str]:
        """The runtime's float metrics as status values: decimal strings (the shortest that round-trips).

        What the status cannot hold is left out rather than failing the status write: NaN and infinite
        values, names that are not metric names, and anything past the first 64 names in sorted order.
        """
        out: dict[str, str] = {}
        for name in sorted(reported):
            value = reported[name]
            if len(out) < MAX_METRICS and _METRIC_NAME.fullmatch(name) and len(name) <= 63 and math.isfinite(value):
                out[name] = repr(float(value))
        return out


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob."""

    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "Created, Running, Restarting (pods are being recreated after a retriable failure), Succeeded, "
            "Failed, Suspended; with scheduling.queueName also Queued (Kueue holds the workload, with Kueue's "
            "reason) and Admitted (Kueue reserved its quota)."
        ),
        json_schema_extra=CONDITIONS_LIST_MARKERS,
    )
    backend: BackendName | None = Field(default=None, description="The backend chosen for this job (Auto resolved).")
    start_time: datetime | None = Field(default=None, description="When the first pod started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    replica_statuses: dict[str, ReplicaStatus] | None = Field(
        default=None, description="Pod counts per replica type (Master: rank 0, Worker: the other ranks)."
    )
    restart_count: Int | None = Field(
        default=None,
        ge=0,
        description=(
            "Times the pods were recreated: after a retriable failure (past runPolicy.backoffLimit the job fails) "
            "and after each of Kueue's evictions (status.evictions)."
        ),
    )
    evictions: Int | None = Field(
        default=None,
        ge=0,
        description=(
            "Times Kueue evicted the workload (its Workload's schedulingStats), e.g. preempted by a job of higher "
            "priority: the pods were deleted (rank 0 checkpoints on SIGTERM) and, once admitted again, the job "
            "resumed from its last checkpoint. Not counted against runPolicy.backoffLimit."
        ),
    )
    model: PublishedModel | None = Field(default=None, description="The published model, once Succeeded.")
    progress: TrainingProgress | None = Field(
        default=None, description="The training's progress, read from rank 0 at most every 10 seconds."
    )
    generated_key_secret: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "The key Secret the operator generates for this job (encryption.generateKey: IfMissing), recorded "
            "before it is created. The operator never reads Secrets, so this record is how it knows an existing "
            "Secret of that name is its own."
        ),
    )
    teacher: ResolvedTeacher | None = Field(
        default=None,
        description="With distillation: the teacher model version, fixed when the workload was created.",
    )
    observed_generation: Int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )


class TrainingJob(ApiModel):
    """A TrainingJob resource as stored by the API server."""

    api_version: Literal["kubemaas.io/v1alpha1"] = Field(description="kubemaas.io/v1alpha1")
    kind: Literal["TrainingJob"] = Field(description="TrainingJob")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = NAME_RULES

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TrainingJob:
        return cls.model_validate(body)
