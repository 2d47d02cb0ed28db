"""Artifact-store URIs, parsed in one place: ``pvc://<claim>/<path>``, ``s3://<bucket>/<prefix>`` and
``file:///<path>``.

A ``pvc://`` URI names a path on a PersistentVolumeClaim; inside a pod the claim is mounted at
``<mount root>/<claim>`` (``KUBEMAAS_MOUNT_ROOT``, default ``/mnt/kubemaas``), for the trainer and the
model loader alike. The operator reads the claim to mount it; the runtime resolves the URI to a path.
An ``s3://`` URI names a key prefix in a bucket of an S3-compatible object store: nothing is mounted,
the runtime reads and writes objects (kubemaas.runtime.object_store). ``file://`` is a local absolute
path (tests, a developer's machine).

Model and version names are directory names of the store, checked here with the API's patterns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from kubemaas.api.base import LATEST, MODEL_NAME_PATTERN, S3_BUCKET_PATTERN, VERSION_PATTERN

DEFAULT_MOUNT_ROOT: Final = Path("/mnt/kubemaas")

_PVC_URI = re.compile(r"pvc://(?P<claim>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(?P<path>(/[^/]+)*)/?")
_S3_URI = re.compile(rf"s3://(?P<bucket>{S3_BUCKET_PATTERN})(?P<path>(/[^/]+)*)/?")
# Names become directory names: the API's rules (no separators, no leading dot: hidden = staging, bounded).
_NAME_RULES = {"model name": re.compile(MODEL_NAME_PATTERN), "version": re.compile(VERSION_PATTERN)}


# How a pod reaches an s3:// store: set by the operator from the spec, read by the trainer and the loader.
S3_ENDPOINT: Final = "KUBEMAAS_S3_ENDPOINT"  # a private endpoint's URL; unset: AWS's own
S3_REGION: Final = "KUBEMAAS_S3_REGION"
S3_PATH_STYLE: Final = "KUBEMAAS_S3_PATH_STYLE"  # "true": the bucket in the path, not the host name
S3_CA_BUNDLE: Final = "KUBEMAAS_S3_CA_BUNDLE"  # a PEM file that signs the endpoint's certificate
S3_CREDENTIALS_DIR: Final = "KUBEMAAS_S3_CREDENTIALS_DIR"  # a mounted Secret; unset: the SDK's default chain
S3_ACCESS_KEY_FILE: Final = "AWS_ACCESS_KEY_ID"  # the Secret's keys: KServe's names for the same values
S3_SECRET_KEY_FILE: Final = "AWS_SECRET_ACCESS_KEY"
# Where the operator mounts them in a pod.
S3_CREDENTIALS_MOUNT: Final = Path("/var/run/kubemaas/s3-credentials")
S3_CA_BUNDLE_MOUNT: Final = Path("/var/run/kubemaas/s3-ca")
S3_CA_BUNDLE_FILE: Final = "ca.crt"


@dataclass(frozen=True)
class S3Wiring:
    """Which variables and mounts carry one store's settings into a pod. A training pod may reach two stores
    (its dataset's and its output's, each with its own endpoint and credentials), so each role has its own
    variable prefix and mount paths; the model store's are the plain ``KUBEMAAS_S3_*`` ones."""

    role: str  # "" for the model store, "data" for a TrainingJob's dataset
    credentials_mount: Path
    ca_bundle_mount: Path

    def variable(self, name: str) -> str:
        """``name`` (one of the ``KUBEMAAS_S3_*`` constants) for this role: ``KUBEMAAS_DATA_S3_ENDPOINT``."""
        return name if not self.role else name.replace("KUBEMAAS_", f"KUBEMAAS_{self.role.upper()}_", 1)


MODEL_STORE: Final = S3Wiring("", S3_CREDENTIALS_MOUNT, S3_CA_BUNDLE_MOUNT)
DATA_STORE: Final = S3Wiring(
    "data", Path("/var/run/kubemaas/data-s3-credentials"), Path("/var/run/kubemaas/data-s3-ca")
)


class ArtifactStoreError(Exception):
    """The store cannot satisfy a request (unknown model or version, bad URI, version exists)."""


@dataclass(frozen=True)
class StoreUri:
    """A parsed store URI: the claim and the path on it (``pvc``), the bucket and the key prefix in it (``s3``),
    or an absolute local path (``file``)."""

    scheme: Literal["pvc", "s3", "file"]
    path: str  # relative to the claim's root for pvc and to the bucket for s3 (no leading "/"), absolute for file
    claim: str | None = None
    bucket: str | None = None

    @classmethod
    def parse(cls, uri: str) -> StoreUri:
        """Raises :class:`ArtifactStoreError` for anything but a valid ``pvc://``, ``s3://`` or absolute
        ``file://`` URI."""
        if uri.startswith("file://"):
            path = uri.removeprefix("file://")
            if not PurePosixPath(path).is_absolute():
                raise ArtifactStoreError(f"file URI must be absolute: {uri!r}")
            return cls("file", path)
        pvc, s3 = _PVC_URI.fullmatch(uri), _S3_URI.fullmatch(uri)
        match = pvc or s3
        if not match:
            raise ArtifactStoreError(
                f"unsupported artifact URI {uri!r}: use pvc://<claim>/<path>, s3://<bucket>/<prefix> or file:///<path>"
            )
        if {".", ".."} & set(match["path"].split("/")):
            raise ArtifactStoreError(f"artifact URI must not contain '.' or '..' segments: {uri!r}")
        if s3 is not None:
            return cls("s3", s3["path"].lstrip("/"), bucket=s3["bucket"])
        return cls("pvc", match["path"].lstrip("/"), match["claim"])

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` below an ``s3://`` URI's prefix."""
        if self.bucket is None:
            raise ArtifactStoreError(f"not an s3:// URI: {self}")
        return "/".join(p for p in (self.path, *parts) if p)

    def key_prefix(self) -> str:
        """What every key below an ``s3://`` URI starts with: ``<prefix>/``, or nothing at the bucket's root."""
        return f"{self.key()}/" if self.key() else ""

    def resolve(self, mount_root: Path) -> Path:
        """The path inside a pod that mounts the claim under ``mount_root``."""
        if self.scheme == "s3":
            raise ArtifactStoreError(f"s3://{self.bucket}/{self.path} is an object store: it has no local path")
        if self.claim is None:
            return Path(self.path)
        return mount_root / self.claim / self.path

    def mount(self, mount_root: Path) -> Path:
        """What must exist before anything is written: the claim's mount (a fresh claim is empty), or the
        directory itself for ``file://``."""
        return mount_root / self.claim if self.claim is not None else self.resolve(mount_root)


@dataclass(frozen=True)
class S3Settings:
    """How to reach an s3:// store. Every field is optional: AWS itself needs none of them, and without a
    credentials directory the SDK's default chain applies (a ServiceAccount's web-identity token included)."""

    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    ca_bundle: Path | None = None
    credentials_dir: Path | None = None  # files AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY

    @classmethod
    def from_env(cls, environ: Mapping[str, str], wiring: S3Wiring = MODEL_STORE) -> S3Settings:
        """The settings of the store ``wiring`` names, from a pod's environment."""
        name = wiring.variable
        path_style = environ.get(name(S3_PATH_STYLE), "false").lower()
        if path_style not in ("true", "false"):
            raise ArtifactStoreError(f"{name(S3_PATH_STYLE)} must be true or false, not {path_style!r}")
        ca_bundle, credentials = environ.get(name(S3_CA_BUNDLE)), environ.get(name(S3_CREDENTIALS_DIR))
        return cls(
            endpoint_url=environ.get(name(S3_ENDPOINT)) or None,
            region=environ.get(name(S3_REGION)) or None,
            path_style=path_style == "true",
            ca_bundle=Path(ca_bundle) if ca_bundle else None,
            credentials_dir=Path(credentials) if credentials else None,
        )

    def to_env(self, wiring: S3Wiring = MODEL_STORE) -> dict[str, str]:
        """The variables :meth:`from_env` reads back (what the operator renders into a pod)."""
        values = {
            S3_ENDPOINT: self.endpoint_url,
            S3_REGION: self.region,
            S3_PATH_STYLE: "true" if self.path_style else None,
            S3_CA_BUNDLE: str(self.ca_bundle) if self.ca_bundle is not None else None,
            S3_CREDENTIALS_DIR: str(self.credentials_dir) if self.credentials_dir is not None else None,
        }
        return {wiring.variable(name): value for name, value in values.items() if value is not None}


def resolve_uri(uri: str, *, mount_root: Path) -> Path:
    """Map ``pvc://claim/path`` (to the claim's mount) or ``file:///path`` to a local path."""
    return StoreUri.parse(uri).resolve(mount_root)


def claim_of(uri: str) -> str:
    """The claim a ``pvc://`` URI names (the API admits only ``pvc://`` in specs)."""
    parsed = StoreUri.parse(uri)
    if parsed.claim is None:
        raise ArtifactStoreError(f"not a pvc:// URI: {uri!r}")
    return parsed.claim


def bucket_of(uri: str) -> tuple[str, StoreUri]:
    """The bucket an ``s3://`` URI names, and the URI parsed (its ``key()`` joins names below the prefix)."""
    parsed = StoreUri.parse(uri)
    if parsed.bucket is None:
        raise ArtifactStoreError(f"not an s3:// URI: {uri!r}")
    return parsed.bucket, parsed


def validate_name(value: str, what: Literal["model name", "version"]) -> str:
    rule = _NAME_RULES[what]
    if not rule.fullmatch(value) or value == LATEST:
        raise ArtifactStoreError(f"invalid {what} {value!r}: must match {rule.pattern} and not be {LATEST}")
    return value
