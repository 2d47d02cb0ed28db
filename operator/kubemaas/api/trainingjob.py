"""TrainingJob (kubemaas.io/v1alpha1): distributed PyTorch training that publishes an encrypted model."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    CONDITIONS_LIST_MARKERS,
    ENV_NAME_PATTERN,
    NAME_RULE,
    PVC_URI_PATTERN,
    ApiModel,
    CelRule,
    Condition,
    Resources,
    Scheduling,
    SecretRef,
    immutable,
)
from kubemaas.api.metadata import ObjectMeta

# Set by the operator for every rank (docs/runtime-contract.md); a user value would silently break rendezvous.
RESERVED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)


# Bounded so the API server's CEL cost estimate for the immutability rules stays within its budget.
Arg = Annotated[str, StringConstraints(max_length=4096)]


class Backend(StrEnum):
    """Which workload runs the training pods."""

    Auto = "Auto"
    PyTorchJob = "PyTorchJob"
    Job = "Job"


class ModelFormat(StrEnum):
    TorchScript = "TorchScript"


class Quantization(StrEnum):
    # "None" the string, not null: an explicit choice shown by `kubectl get -o yaml`.
    NONE = "None"
    DynamicInt8 = "DynamicInt8"


class KeyGeneration(StrEnum):
    IfMissing = "IfMissing"
    Never = "Never"


class EnvVar(ApiModel):
    """An environment variable of the training container."""

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str = Field(
        default="",
        max_length=32768,
        description="Variable value. Never put secrets here; mount a Secret instead.",
    )


class DataSource(ApiModel):
    """Training data, mounted read-only into every rank; each rank reads its own shard."""

    uri: str = Field(
        pattern=PVC_URI_PATTERN,
        description=(
            "Where the data lives: pvc://<claim>/<path>. The claim is mounted read-only at /mnt/kubemaas/<claim> "
            "(docs/runtime-contract.md)."
        ),
    )


class Output(ApiModel):
    """Where and how rank 0 publishes the trained model."""

    uri: str = Field(
        pattern=PVC_URI_PATTERN,
        description="Artifact store root: pvc://<claim>/<path>. Versions land in <root>/<modelName>/<version>/.",
    )
    model_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        max_length=63,
        description="Model name in the store; defaults to the TrainingJob's name.",
    )
    format: ModelFormat = Field(default=ModelFormat.TorchScript, description="Exported model format.")
    quantization: Quantization = Field(
        default=Quantization.NONE, description="Post-training quantization: None or DynamicInt8."
    )


class Encryption(ApiModel):
    """The key that encrypts the published model (AES-256-GCM)."""

    key_secret_ref: SecretRef = Field(
        description="Secret holding key-<id> entries and an `active` entry naming the key to encrypt with."
    )
    generate_key: KeyGeneration = Field(
        default=KeyGeneration.IfMissing,
        description=(
            "IfMissing: the operator creates the Secret with a fresh random key when it does not exist. "
            "Never: the Secret must exist. The Secret is never owned by the TrainingJob, so deleting the "
            "job keeps its models readable."
        ),
    )


class RunPolicy(ApiModel):
    """Retries, deadlines and clean-up, as in batch/v1 Job and Kubeflow's runPolicy."""

    backoff_limit: int = Field(default=3, ge=0, le=100, description="Retries before the job is Failed.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the whole job, in seconds."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished job's pods after this many seconds."
    )
    suspend: bool = Field(default=False, description="Suspend the job: its pods are deleted until resumed.")


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob.

    A training run is a record of what was trained: the fields that define it are immutable. Only
    runPolicy and scheduling may change (to suspend, resume or re-queue the job).
    """

    image: str = Field(
        json_schema_extra=immutable("image"),
        min_length=1,
        description="Training image; it runs the kubemaas trainer harness.",
    )
    command: list[Arg] | None = Field(
        json_schema_extra=immutable("command"),
        default=None,
        max_length=256,
        description="Entrypoint override of the training container.",
    )
    args: list[Arg] | None = Field(
        json_schema_extra=immutable("args"),
        default=None,
        max_length=256,
        description="Arguments of the training container.",
    )
    env: list[EnvVar] | None = Field(
        json_schema_extra=immutable("env"),
        default=None,
        max_length=128,
        description="Extra environment; the distributed variables (MASTER_ADDR, RANK, ...) are set by Kubemaas.",
    )
    replicas: int = Field(
        json_schema_extra=immutable("replicas"),
        default=1,
        ge=1,
        le=1024,
        description="Number of pods (nodes), rank 0 included.",
    )
    nproc_per_node: int = Field(
        json_schema_extra=immutable("nprocPerNode"),
        default=1,
        ge=1,
        le=64,
        description="Processes per pod, as torchrun's --nproc-per-node.",
    )
    resources: Resources = Field(
        json_schema_extra=immutable("resources"),
        default=Resources(),
        description="Resources of each training pod.",
    )
    scheduling: Scheduling | None = Field(default=None, description="Placement of the training pods.")
    data: DataSource | None = Field(
        json_schema_extra=immutable("data"), default=None, description="Training data, sharded by rank."
    )
    output: Output = Field(json_schema_extra=immutable("output"), description="Where the trained model is published.")
    encryption: Encryption = Field(
        json_schema_extra=immutable("encryption"), description="Encryption key of the published model."
    )
    run_policy: RunPolicy = Field(default=RunPolicy(), description="Retries, deadlines and suspension.")
    backend: Backend = Field(
        json_schema_extra=immutable("backend"),
        default=Backend.Auto,
        description=(
            "Auto (a Kubeflow PyTorchJob when that CRD is served, otherwise an Indexed Job), PyTorchJob or Job."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.env) || self.env.all(e, !(e.name in " + repr(list(RESERVED_ENV)) + "))",
            message="env must not set MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK or PET_* variables",
            field_path=".env",
            check=lambda s: not any(e.name in RESERVED_ENV for e in s.env or ()),
        ),
        CelRule(
            rule="!has(self.resources) || self.resources.gpus == 0 || self.nprocPerNode <= self.resources.gpus",
            message="nprocPerNode must not exceed resources.gpus when GPUs are requested",
            field_path=".nprocPerNode",
            check=lambda s: s.resources.gpus == 0 or s.nproc_per_node <= s.resources.gpus,
        ),
    )


class ReplicaStatus(ApiModel):
    """Pod counts of one replica type."""

    active: int = Field(default=0, ge=0, description="Running pods.")
    succeeded: int = Field(default=0, ge=0, description="Pods that exited 0.")
    failed: int = Field(default=0, ge=0, description="Pods that failed.")


class PublishedModel(ApiModel):
    """The model version the job published, read from rank 0's termination message."""

    uri: str = Field(description="Artifact store URI of the version directory.")
    version: str = Field(description="Model version.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the plaintext model file.")
    key_id: str = Field(description="Id of the key the model is encrypted with (never the key itself).")


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob."""

    conditions: list[Condition] | None = Field(
        default=None,
        description="Created, Running, Succeeded, Failed, Suspended.",
        json_schema_extra=CONDITIONS_LIST_MARKERS,
    )
    backend: Literal["PyTorchJob", "Job"] | None = Field(
        default=None, description="The backend chosen for this job (Auto resolved)."
    )
    start_time: datetime | None = Field(default=None, description="When the first pod started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    replica_statuses: dict[str, ReplicaStatus] | None = Field(
        default=None, description="Pod counts per replica type (Master, Worker)."
    )
    model: PublishedModel | None = Field(default=None, description="The published model, once Succeeded.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status was computed from."
    )


class TrainingJob(ApiModel):
    """A TrainingJob resource as stored by the API server."""

    api_version: Literal["kubemaas.io/v1alpha1"] = Field(description="kubemaas.io/v1alpha1")
    kind: Literal["TrainingJob"] = Field(description="TrainingJob")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (NAME_RULE,)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TrainingJob:
        return cls.model_validate(body)
