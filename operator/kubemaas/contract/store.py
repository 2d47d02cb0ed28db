"""Artifact-store URIs, parsed in one place: ``pvc://<claim>/<path>`` and ``file:///<path>``.

A ``pvc://`` URI names a path on a PersistentVolumeClaim; inside a pod the claim is mounted at
``<mount root>/<claim>`` (``KUBEMAAS_MOUNT_ROOT``, default ``/mnt/kubemaas``), for the trainer and the
model loader alike. The operator reads the claim to mount it; the runtime resolves the URI to a path.
``file://`` is a local absolute path (tests, a developer's machine).

Model and version names are directory names of the store, checked here with the API's patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from kubemaas.api.base import LATEST, MODEL_NAME_PATTERN, VERSION_PATTERN

DEFAULT_MOUNT_ROOT: Final = Path("/mnt/kubemaas")

_PVC_URI = re.compile(r"pvc://(?P<claim>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(?P<path>(/[^/]+)*)/?")
# Names become directory names: the API's rules (no separators, no leading dot: hidden = staging, bounded).
_NAME_RULES = {"model name": re.compile(MODEL_NAME_PATTERN), "version": re.compile(VERSION_PATTERN)}


class ArtifactStoreError(Exception):
    """The store cannot satisfy a request (unknown model or version, bad URI, version exists)."""


@dataclass(frozen=True)
class StoreUri:
    """A parsed store URI: the claim and the path on it (``pvc``), or an absolute local path (``file``)."""

    scheme: Literal["pvc", "file"]
    path: str  # relative to the claim's root for pvc (no leading "/"), absolute for file
    claim: str | None = None

    @classmethod
    def parse(cls, uri: str) -> StoreUri:
        """Raises :class:`ArtifactStoreError` for anything but a valid ``pvc://`` or absolute ``file://`` URI."""
        if uri.startswith("file://"):
            path = uri.removeprefix("file://")
            if not PurePosixPath(path).is_absolute():
                raise ArtifactStoreError(f"file URI must be absolute: {uri!r}")
            return cls("file", path)
        match = _PVC_URI.fullmatch(uri)
        if not match:
            raise ArtifactStoreError(f"unsupported artifact URI {uri!r}: use pvc://<claim>/<path> or file:///<path>")
        if ".." in match["path"].split("/"):
            raise ArtifactStoreError(f"artifact URI must not contain '..': {uri!r}")
        return cls("pvc", match["path"].lstrip("/"), match["claim"])

    def resolve(self, mount_root: Path) -> Path:
        """The path inside a pod that mounts the claim under ``mount_root``."""
        if self.claim is None:
            return Path(self.path)
        return mount_root / self.claim / self.path

    def mount(self, mount_root: Path) -> Path:
        """What must exist before anything is written: the claim's mount (a fresh claim is empty), or the
        directory itself for ``file://``."""
        return mount_root / self.claim if self.claim is not None else Path(self.path)


def resolve_uri(uri: str, *, mount_root: Path) -> Path:
    """Map ``pvc://claim/path`` (to the claim's mount) or ``file:///path`` to a local path."""
    return StoreUri.parse(uri).resolve(mount_root)


def claim_of(uri: str) -> str:
    """The claim a ``pvc://`` URI names (the API admits only ``pvc://`` in specs)."""
    parsed = StoreUri.parse(uri)
    if parsed.claim is None:
        raise ArtifactStoreError(f"not a pvc:// URI: {uri!r}")
    return parsed.claim


def validate_name(value: str, what: Literal["model name", "version"]) -> str:
    rule = _NAME_RULES[what]
    if not rule.fullmatch(value) or value == LATEST:
        raise ArtifactStoreError(f"invalid {what} {value!r}: must match {rule.pattern} and not be {LATEST}")
    return value
