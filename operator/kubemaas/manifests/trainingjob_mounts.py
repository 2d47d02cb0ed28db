"""What a TrainingJob's pods mount, each thing only on the ranks that need it (docs/runtime-contract.md §2-3):

- claims named by pvc:// URIs: the output claim read-write on rank 0 (it alone writes the model and the
  checkpoints), the teacher's claim read-only on rank 0 (it alone decrypts the teacher and sends it to the
  others), the data claim read-only on every rank; each distinct claim once, read-write winning;
- buckets named by s3:// URIs: nothing to mount but their credentials Secret and CA bundle (manifests/storage.py),
  the output store's on rank 0, the dataset's on every rank;
- key Secrets: the model key and the teacher's key on rank 0, the data key on every rank (each rank decrypts
  its own shard).

Pure, like the other builders: a uri teacher comes from the spec, a TrainingJob teacher from
`status.teacher`, which the controller records before the workload exists and keeps from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubemaas import contract
from kubemaas.api.base import LATEST
from kubemaas.api.compression import ResolvedTeacher
from kubemaas.api.core import RESERVED_VOLUME_PREFIX
from kubemaas.api.storage import S3Storage
from kubemaas.api.trainingjob import DataSource, Output, TrainingJob
from kubemaas.contract.store import DATA_STORE, DEFAULT_MOUNT_ROOT, MODEL_STORE, S3Wiring, StoreUri, claim_of
from kubemaas.manifests.storage import StoreAccess, s3_access

# Only the trainer's user reads a key (fsGroup adds group read for that same user's group).
KEY_MODE = 0o400


def volume_name(name: str) -> str:
    """Kubemaas' own volumes carry a prefix the API refuses in spec.volumes, so the two never collide."""
    return f"{RESERVED_VOLUME_PREFIX}{name}"


class TeacherNotResolved(ValueError):
    """A TrainingJob teacher whose version is not recorded in status.teacher yet: no pod can be built."""


def teacher(job: TrainingJob) -> ResolvedTeacher | None:
    """The teacher model version the pods load, or None without distillation."""
    distillation = job.spec.distillation
    if distillation is None:
        return None
    spec = distillation.teacher
    if spec.uri is not None:
        return ResolvedTeacher(uri=spec.uri, version=spec.version or LATEST)
    recorded = job.status.teacher if job.status is not None else None
    if recorded is None:
        raise TeacherNotResolved(f"the teacher TrainingJob of {job.metadata.name} is not resolved yet")
    return recorded


@dataclass(frozen=True)
class Claim:
    """A PersistentVolumeClaim named by a pvc:// URI, and how a pod mounts it."""

    name: str
    volume: str
    writable: bool

    @property
    def mount_path(self) -> str:
        return f"{DEFAULT_MOUNT_ROOT}/{self.name}"


def _on_claim(uri: str) -> bool:
    return StoreUri.parse(uri).claim is not None


def claims(job: TrainingJob, *, rank0: bool) -> list[Claim]:
    spec = job.spec
    wanted: list[Claim] = []
    if rank0:
        if _on_claim(spec.output.uri):
            wanted.append(Claim(claim_of(spec.output.uri), volume_name("output"), writable=True))
        resolved = teacher(job)
        if resolved is not None:
            wanted.append(Claim(claim_of(resolved.uri), volume_name("teacher"), writable=False))
    if spec.data is not None and _on_claim(spec.data.uri):
        wanted.append(Claim(claim_of(spec.data.uri), volume_name("data"), writable=False))
    out: list[Claim] = []
    for claim in wanted:
        if claim.name not in {c.name for c in out}:
            out.append(claim)
    return out


def required_claims(job: TrainingJob) -> list[str]:
    """The claims that must exist before the workload is created (the pre-flight check)."""
    return [c.name for c in claims(job, rank0=True)]


@dataclass(frozen=True)
class KeyMount:
    """A key Secret mounted as a directory (docs/runtime-contract.md §3)."""

    volume: str
    secret: str
    path: Path


def key_mounts(job: TrainingJob, *, rank0: bool) -> list[KeyMount]:
    spec = job.spec
    out: list[KeyMount] = []
    if rank0:
        out.append(KeyMount(volume_name("keys"), spec.encryption.key_secret_ref.name, contract.DEFAULT_KEY_DIR))
        if spec.distillation is not None:
            secret = spec.distillation.teacher.key_secret_ref.name
            out.append(KeyMount(volume_name("teacher-keys"), secret, contract.DEFAULT_TEACHER_KEY_DIR))
    if spec.data is not None and spec.data.encryption is not None:
        secret = spec.data.encryption.key_secret_ref.name
        out.append(KeyMount(volume_name("data-keys"), secret, contract.DEFAULT_DATA_KEY_DIR))
    return out


def secret_names(job: TrainingJob) -> list[str]:
    """The key Secrets a user supplies (the model key aside): they must exist before the workload is created."""
    return [k.secret for k in key_mounts(job, rank0=True) if k.path != contract.DEFAULT_KEY_DIR]


def _buckets(job: TrainingJob, *, rank0: bool) -> list[tuple[S3Storage | None, S3Wiring]]:
    """The s3:// stores a pod reaches, each with its settings and role: the output store on rank 0, the dataset's
    everywhere."""
    spec = job.spec
    stores: list[tuple[Output | DataSource, S3Wiring]] = [(spec.output, MODEL_STORE)] if rank0 else []
    if spec.data is not None:
        stores.append((spec.data, DATA_STORE))
    return [(s.storage.s3 if s.storage else None, wiring) for s, wiring in stores if not _on_claim(s.uri)]


def store_accesses(job: TrainingJob, *, rank0: bool) -> list[StoreAccess]:
    """How a pod reaches the buckets its s3:// URIs name."""
    return [s3_access(s3, wiring, volume_prefix=volume_name("")) for s3, wiring in _buckets(job, rank0=rank0)]


def credentials_secret_names(job: TrainingJob) -> list[str]:
    """The store-credentials Secrets the job names: they must exist before the workload is created."""
    refs = [s3.credentials_secret_ref for s3, _ in _buckets(job, rank0=True) if s3 is not None]
    return sorted({ref.name for ref in refs if ref is not None})


def volumes_and_mounts(job: TrainingJob, *, rank0: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The claims' and key Secrets' volumes of one pod and the training container's mounts of them."""
    pod_claims = claims(job, rank0=rank0)
    volumes: list[dict[str, Any]] = [
        {"name": c.volume, "persistentVolumeClaim": {"claimName": c.name}} for c in pod_claims
    ]
    mounts: list[dict[str, Any]] = [
        # No `readOnly: false`: the API server drops it, and the apply helper compares against what it stores.
        {"name": c.volume, "mountPath": c.mount_path, **({} if c.writable else {"readOnly": True})}
        for c in pod_claims
    ]
    return volumes, mounts


def key_volumes_and_mounts(job: TrainingJob, *, rank0: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    keys = key_mounts(job, rank0=rank0)
    volumes = [{"name": k.volume, "secret": {"secretName": k.secret, "defaultMode": KEY_MODE}} for k in keys]
    mounts = [{"name": k.volume, "mountPath": str(k.path), "readOnly": True} for k in keys]
    return volumes, mounts
