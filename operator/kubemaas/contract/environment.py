"""The runtime contract's environment, defined once: what the operator renders into training pods
and what the code inside them parses (docs/runtime-contract.md).

- :class:`Settings` are the ``KUBEMAAS_*`` variables, each with its default and validation.
- :class:`Rendezvous` is what the operator (Job backend) or Kubeflow (PyTorchJob backend) sets per
  pod: ``MASTER_*``, ``WORLD_SIZE``, ``RANK`` and torchrun's ``PET_*``.
- :class:`Process` is what one training process sees once torchrun started it (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_*``, or ``JOB_COMPLETION_INDEX`` as the rank).

The operator's builders call :func:`render` (pod env entries) and :func:`launch_command` (the
container command); the trainer's entry point calls :func:`parse` once and passes the typed values
down. A round-trip test (render -> kubelet -> torchrun -> parse) holds the two sides together.

This module must stay importable without torch and kopf: the builders, the trainer and the model
loader all import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kubemaas.api.base import LATEST, VERSION_PATTERN
from kubemaas.api.compression import PruningMethod
from kubemaas.api.core import KUBEMAAS_ENV_PREFIX
from kubemaas.api.trainingjob import Quantization, RendezvousEnv
from kubemaas.contract.store import (
    DATA_STORE,
    DEFAULT_MOUNT_ROOT,
    MODEL_STORE,
    ArtifactStoreError,
    S3Settings,
    StoreUri,
    resolve_uri,
    validate_name,
)

# ------------------------------------------------------------------ names
# The rendezvous names are the API's (RendezvousEnv: what spec.env refuses), as is the prefix every
# KUBEMAAS_* name shares (spec.env refuses the whole prefix).

PREFIX: Final = KUBEMAAS_ENV_PREFIX
MODEL_NAME: Final = PREFIX + "MODEL_NAME"
MODEL_VERSION: Final = PREFIX + "MODEL_VERSION"
OUTPUT_URI: Final = PREFIX + "OUTPUT_URI"
DATA_URI: Final = PREFIX + "DATA_URI"
MOUNT_ROOT: Final = PREFIX + "MOUNT_ROOT"
KEY_DIR: Final = PREFIX + "KEY_DIR"
QUANTIZATION: Final = PREFIX + "QUANTIZATION"
PRUNING: Final = PREFIX + "PRUNING"
PRUNING_PERCENT: Final = PREFIX + "PRUNING_PERCENT"
TEACHER_URI: Final = PREFIX + "TEACHER_URI"
TEACHER_VERSION: Final = PREFIX + "TEACHER_VERSION"
TEACHER_KEY_DIR: Final = PREFIX + "TEACHER_KEY_DIR"
DISTILL_TEMPERATURE: Final = PREFIX + "DISTILL_TEMPERATURE"
DISTILL_SOFT_PERCENT: Final = PREFIX + "DISTILL_SOFT_PERCENT"
DATA_KEY_DIR: Final = PREFIX + "DATA_KEY_DIR"
PROGRESS_PORT: Final = PREFIX + "PROGRESS_PORT"
CHECKPOINT_EVERY: Final = PREFIX + "CHECKPOINT_EVERY"
CHECKPOINT_KEEP: Final = PREFIX + "CHECKPOINT_KEEP"
CHECKPOINT_DIR: Final = PREFIX + "CHECKPOINT_DIR"
DIST_TIMEOUT_SECONDS: Final = PREFIX + "DIST_TIMEOUT_SECONDS"
TERMINATION_LOG: Final = PREFIX + "TERMINATION_LOG"
LOG_LEVEL: Final = PREFIX + "LOG_LEVEL"

MASTER_ADDR: Final = RendezvousEnv.MASTER_ADDR.value
MASTER_PORT: Final = RendezvousEnv.MASTER_PORT.value
WORLD_SIZE: Final = RendezvousEnv.WORLD_SIZE.value
RANK: Final = RendezvousEnv.RANK.value
LOCAL_RANK: Final = RendezvousEnv.LOCAL_RANK.value
PET_NNODES: Final = RendezvousEnv.PET_NNODES.value
PET_NPROC_PER_NODE: Final = RendezvousEnv.PET_NPROC_PER_NODE.value
PET_NODE_RANK: Final = RendezvousEnv.PET_NODE_RANK.value
PET_MASTER_ADDR: Final = RendezvousEnv.PET_MASTER_ADDR.value
PET_MASTER_PORT: Final = RendezvousEnv.PET_MASTER_PORT.value
# Set by Kubernetes in every pod of an Indexed Job (the rank when RANK is not set).
JOB_COMPLETION_INDEX: Final = RendezvousEnv.JOB_COMPLETION_INDEX.value
# Where the Job controller writes the completion index; the Job backend's pods read their node rank from it.
COMPLETION_INDEX_FIELD: Final = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

# ------------------------------------------------------------------ defaults

DEFAULT_MASTER_ADDR: Final = "127.0.0.1"
DEFAULT_MASTER_PORT: Final = 29500
DEFAULT_KEY_DIR: Final = Path("/var/run/kubemaas/keys")
DEFAULT_TEACHER_KEY_DIR: Final = Path("/var/run/kubemaas/teacher-keys")
DEFAULT_DATA_KEY_DIR: Final = Path("/var/run/kubemaas/data-keys")
DEFAULT_DISTILL_TEMPERATURE: Final = 4
DEFAULT_DISTILL_SOFT_PERCENT: Final = 70
# Rank 0 serves its progress here (kubemaas.runtime.progress); the operator reads it.
DEFAULT_PROGRESS_PORT: Final = 9400
DEFAULT_TERMINATION_LOG: Final = Path("/dev/termination-log")
DEFAULT_CHECKPOINT_EVERY: Final = 100
DEFAULT_CHECKPOINT_KEEP: Final = 2
DEFAULT_DIST_TIMEOUT_SECONDS: Final = 1800


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class ContractError(ValueError):
    """Missing or invalid contract variables; the message names every offending variable.

    ``termination_log`` and ``rank`` are what could still be read, so the entry point can write a
    failure message to the right file and name the rank (or say it is unknown: None).
    """

    def __init__(self, problems: Sequence[str], *, termination_log: Path, rank: int | None) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)
        self.termination_log = termination_log
        self.rank = rank


class _EnvModel(BaseModel):
    # Field aliases are the variable names; values arrive as strings (lax mode converts "100" -> 100).
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")


def _store_name(value: str, what: Literal["model name", "version"]) -> str:
    try:
        return validate_name(value, what)
    except ArtifactStoreError as error:
        raise ValueError(str(error)) from None


def _check_uri(value: str) -> str:
    try:
        StoreUri.parse(value)
    except ArtifactStoreError as error:
        raise ValueError(str(error)) from None
    return value


Positive = Annotated[int, Field(ge=1)]
Percent = Annotated[int, Field(ge=0, le=100)]


class Settings(_EnvModel):
    """The ``KUBEMAAS_*`` variables of a training pod."""

    model_name: str = Field(alias=MODEL_NAME)
    model_version: str = Field(alias=MODEL_VERSION)
    output_uri: str = Field(alias=OUTPUT_URI)
    data_uri: str | None = Field(default=None, alias=DATA_URI)
    mount_root: Path = Field(default=DEFAULT_MOUNT_ROOT, alias=MOUNT_ROOT)
    key_dir: Path = Field(default=DEFAULT_KEY_DIR, alias=KEY_DIR)
    quantization: Quantization = Field(default=Quantization.NONE, alias=QUANTIZATION)
    pruning: PruningMethod | None = Field(default=None, alias=PRUNING)
    pruning_percent: Annotated[int, Field(ge=1, le=99)] | None = Field(default=None, alias=PRUNING_PERCENT)
    # Distillation: the teacher's model directory in a store; set means distil.
    teacher_uri: str | None = Field(default=None, alias=TEACHER_URI)
    teacher_version: str = Field(default=LATEST, alias=TEACHER_VERSION, pattern=VERSION_PATTERN, max_length=63)
    teacher_key_dir: Path = Field(default=DEFAULT_TEACHER_KEY_DIR, alias=TEACHER_KEY_DIR)
    distill_temperature: Annotated[int, Field(ge=1, le=100)] = Field(
        default=DEFAULT_DISTILL_TEMPERATURE, alias=DISTILL_TEMPERATURE
    )
    distill_soft_percent: Percent = Field(default=DEFAULT_DISTILL_SOFT_PERCENT, alias=DISTILL_SOFT_PERCENT)
    # Set: the data files are encrypted (kubemaas encrypt-data) with a key of this directory.
    data_key_dir: Path | None = Field(default=None, alias=DATA_KEY_DIR)
    # 0: no progress endpoint (several harnesses in one network namespace, e.g. tests).
    progress_port: Annotated[int, Field(ge=0, le=65535)] = Field(default=DEFAULT_PROGRESS_PORT, alias=PROGRESS_PORT)
    checkpoint_every: Positive = Field(default=DEFAULT_CHECKPOINT_EVERY, alias=CHECKPOINT_EVERY)
    checkpoint_keep: Positive = Field(default=DEFAULT_CHECKPOINT_KEEP, alias=CHECKPOINT_KEEP)
    checkpoint_dir: Path | None = Field(default=None, alias=CHECKPOINT_DIR)
    dist_timeout_seconds: Positive = Field(default=DEFAULT_DIST_TIMEOUT_SECONDS, alias=DIST_TIMEOUT_SECONDS)
    termination_log: Path = Field(default=DEFAULT_TERMINATION_LOG, alias=TERMINATION_LOG)
    log_level: LogLevel = Field(default=LogLevel.INFO, alias=LOG_LEVEL)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return _store_name(value, "model name")

    @field_validator("model_version")
    @classmethod
    def _model_version(cls, value: str) -> str:
        return _store_name(value, "version")

    @field_validator("output_uri", "data_uri", "teacher_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value).rstrip("/")

    @model_validator(mode="after")
    def _pruning_amount(self) -> Settings:
        if (self.pruning is None) != (self.pruning_percent is None):
            raise ValueError(f"{PRUNING} and {PRUNING_PERCENT} are set together or not at all")
        return self

    @property
    def output_in_bucket(self) -> bool:
        """The output store is an ``s3://`` bucket (rank 0 reaches it as ``Environment.output_s3`` says): it has
        no :attr:`output_root` nor :attr:`output_mount`."""
        return StoreUri.parse(self.output_uri).scheme == "s3"

    @property
    def output_root(self) -> Path:
        """The store root inside this pod (``pvc://`` resolved under the mount root)."""
        return resolve_uri(self.output_uri, mount_root=self.mount_root)

    @property
    def output_mount(self) -> Path:
        """What must exist before rank 0 writes: the claim's mount for ``pvc://`` (the store directory under it
        is created, as a fresh claim is empty), the store directory itself for ``file://``."""
        return StoreUri.parse(self.output_uri).mount(self.mount_root)

    @property
    def teacher_path(self) -> Path | None:
        """The teacher model's directory in this pod (its store root is the parent)."""
        return None if self.teacher_uri is None else resolve_uri(self.teacher_uri, mount_root=self.mount_root)

    @property
    def teacher_mount(self) -> Path | None:
        return None if self.teacher_uri is None else StoreUri.parse(self.teacher_uri).mount(self.mount_root)

    @property
    def data_mount(self) -> Path | None:
        return None if self.data_uri is None else StoreUri.parse(self.data_uri).mount(self.mount_root)

    @property
    def data_path(self) -> Path | None:
        return None if self.data_uri is None else resolve_uri(self.data_uri, mount_root=self.mount_root)

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir or self.output_root / self.model_name / ".checkpoints" / self.model_version

    @property
    def dist_timeout(self) -> timedelta:
        return timedelta(seconds=self.dist_timeout_seconds)


Port = Annotated[int, Field(ge=1, le=65535)]
NonNegative = Annotated[int, Field(ge=0)]


class Rendezvous(_EnvModel):
    """Per-pod rendezvous as both backends set it (Kubeflow v1.8 PyTorchJob and the Job backend).

    ``RANK`` and ``PET_NODE_RANK`` are the pod's index; ``WORLD_SIZE`` counts processes
    (nnodes x nproc_per_node). torchrun reads the ``PET_*`` variables.
    """

    master_addr: str = Field(min_length=1, alias=MASTER_ADDR)
    master_port: Port = Field(alias=MASTER_PORT)
    nnodes: Positive = Field(alias=PET_NNODES)
    nproc_per_node: Positive = Field(alias=PET_NPROC_PER_NODE)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


class Process(_EnvModel):
    """One training process's place in the job, as torchrun (or a single-process pod) sets it."""

    master_addr: str = Field(default=DEFAULT_MASTER_ADDR, min_length=1, alias=MASTER_ADDR)
    master_port: Port = Field(default=DEFAULT_MASTER_PORT, alias=MASTER_PORT)
    world_size: Positive = Field(default=1, alias=WORLD_SIZE)
    rank: NonNegative = Field(default=0, alias=RANK)
    local_rank: NonNegative = Field(default=0, alias=LOCAL_RANK)

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


_M = TypeVar("_M", bound=_EnvModel)


@dataclass(frozen=True)
class Environment:
    """Everything the harness needs, parsed and validated once."""

    settings: Settings
    process: Process
    # How this pod reaches the s3:// stores its URIs may name (the KUBEMAAS_S3_* and KUBEMAAS_DATA_S3_* variables).
    output_s3: S3Settings = field(default_factory=S3Settings)
    data_s3: S3Settings = field(default_factory=S3Settings)


# ------------------------------------------------------------------ parse


def parse(environ: Mapping[str, str]) -> Environment:
    """Parse a training process's environment; raises :class:`ContractError` naming every bad variable.

    An empty value counts as unset (Kubernetes renders ``value: ""`` for an empty string).
    """
    problems: list[str] = []
    settings = _validate(Settings, _subset(Settings, environ), problems)
    process_values = _subset(Process, environ)
    rank = _rank(environ, process_values, problems)
    if rank is not None:
        process_values[RANK] = str(rank)
    process = _validate(Process, process_values, problems)
    if process is not None and not process.rank < process.world_size:
        problems.append(f"{RANK}={process.rank} is outside {WORLD_SIZE}={process.world_size}")
    stores: list[S3Settings] = []
    for wiring in (MODEL_STORE, DATA_STORE):
        try:
            stores.append(S3Settings.from_env(environ, wiring))
        except ArtifactStoreError as error:
            problems.append(str(error))
    if problems or settings is None or process is None:
        raise ContractError(problems, termination_log=termination_log(environ), rank=rank)
    return Environment(settings=settings, process=process, output_s3=stores[0], data_s3=stores[1])


def mount_root(environ: Mapping[str, str]) -> Path:
    """Where ``pvc://<claim>`` is mounted in this pod: the rule for every ``pvc://`` URI, the trainer's and
    the model loader's alike."""
    return Path(environ.get(MOUNT_ROOT) or DEFAULT_MOUNT_ROOT)


def termination_log(environ: Mapping[str, str]) -> Path:
    """Where the termination message goes, readable even when the rest of the environment is invalid."""
    return Path(environ.get(TERMINATION_LOG) or DEFAULT_TERMINATION_LOG)


def _subset(model: type[_EnvModel], environ: Mapping[str, str]) -> dict[str, str]:
    names = [field.alias for field in model.model_fields.values() if field.alias]
    return {name: environ[name] for name in names if environ.get(name)}


def _rank(environ: Mapping[str, str], values: dict[str, str], problems: list[str]) -> int | None:
    """RANK (set by torchrun and Kubeflow), else the Indexed Job's JOB_COMPLETION_INDEX; None if unknown."""
    for name in (RANK, JOB_COMPLETION_INDEX):
        raw = environ.get(name)
        if raw:
            if raw.isdecimal():
                return int(raw)
            problems.append(f"{name}={raw!r} is not a non-negative integer")
            return None
    world_size = values.get(WORLD_SIZE, "1")
    if world_size.strip() == "1":
        return 0  # a single process is rank 0
    problems.append(
        f"the rank is unknown: neither {RANK} nor {JOB_COMPLETION_INDEX} is set ({WORLD_SIZE}={world_size})"
    )
    return None


def _validate(model: type[_M], values: Mapping[str, str], problems: list[str]) -> _M | None:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        for item in error.errors():
            if not item["loc"]:  # a rule across variables: its message names them
                problems.append(str(item["msg"]).removeprefix("Value error, "))
                continue
            name = str(item["loc"][0])
            if item["type"] == "missing":
                problems.append(f"{name} is required")
            else:
                problems.append(f"{name}={values.get(name)!r}: {item['msg']}")
        return None


# ------------------------------------------------------------------ render


def render(settings: Settings, rendezvous: Rendezvous | None = None) -> list[dict[str, Any]]:
    """Pod env entries (``{"name", "value"}`` / ``{"name", "valueFrom"}``) for a training container.

    ``rendezvous`` is for the Job backend, where the operator sets what Kubeflow sets for a
    PyTorchJob: the pod's index (``RANK``, ``PET_NODE_RANK``) comes from the Job's completion index
    annotation. Under a PyTorchJob pass None: Kubeflow injects the rendezvous variables itself.
    Only the settings that were given explicitly are rendered; the rest keep the runtime's defaults.
    """
    entries: list[dict[str, Any]] = [
        {"name": name, "value": _env_value(value)}
        for name, value in settings.model_dump(by_alias=True, exclude_unset=True, exclude_none=True).items()
    ]
    if rendezvous is not None:
        index: dict[str, Any] = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}}
        entries += [
            {"name": MASTER_ADDR, "value": rendezvous.master_addr},
            {"name": MASTER_PORT, "value": str(rendezvous.master_port)},
            {"name": WORLD_SIZE, "value": str(rendezvous.world_size)},
            {"name": RANK, **index},
            {"name": PET_NNODES, "value": str(rendezvous.nnodes)},
            {"name": PET_NPROC_PER_NODE, "value": str(rendezvous.nproc_per_node)},
            {"name": PET_NODE_RANK, **index},
            {"name": PET_MASTER_ADDR, "value": rendezvous.master_addr},
            {"name": PET_MASTER_PORT, "value": str(rendezvous.master_port)},
        ]
    return entries


def _env_value(value: object) -> str:
    return str(value.value) if isinstance(value, StrEnum) else str(value)


# ------------------------------------------------------------------ container command

# torchrun's launcher with exit codes kept (kubemaas.runtime.launch); `python` is on every trainer image.
LAUNCHER: Final = ("python", "-m", "kubemaas.runtime.launch")


def launch_command(command: Sequence[str], args: Sequence[str], nproc_per_node: int) -> list[str]:
    """The training container's full ``command`` (set ``args`` to none): the user's program under torchrun.

    ``$(VAR)`` is Kubernetes' own expansion of the container's env, so the node count, this pod's
    node rank and rank 0's address come from the ``PET_*`` variables that Kubeflow or the operator
    set; ``--no-python`` runs ``command`` as given (e.g. ``["python", "train.py"]``).
    """
    if not command:
        raise ValueError("launch_command needs the program to run: the image's entrypoint cannot be wrapped")
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [
        *LAUNCHER,
        f"--nnodes=$({PET_NNODES})",
        f"--nproc-per-node={nproc_per_node}",
        f"--node-rank=$({PET_NODE_RANK})",
        f"--master-addr=$({PET_MASTER_ADDR})",
        f"--master-port=$({PET_MASTER_PORT})",
        "--no-python",
        *command,
        *args,
    ]
