"""One artifact store interface, one implementation per kind of storage: a directory (``pvc://``, a claim's
mount, and ``file://``: kubemaas.runtime.artifacts) and a bucket (``s3://``: kubemaas.runtime.object_store).

Readers and publishers (the model loader, the trainer) open a store by its URI here and use only this
interface; nothing else branches on the scheme.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Unpack

from kubemaas.api.base import LATEST
from kubemaas.contract.store import S3Settings, StoreUri
from kubemaas.runtime.artifacts import ArtifactStore, Manifest, ModelVersion, Publication
from kubemaas.runtime.crypto import OpenedArtifact
from kubemaas.runtime.keyring import Keyring

V = TypeVar("V", bound="ResolvedVersion")


class ResolvedVersion(Protocol):
    """A complete version as a reader found it, before it is authenticated."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def document(self) -> dict[str, object]: ...


class Store(Protocol[V]):
    """What every artifact store offers (the layout and guarantees are docs/runtime-contract.md's)."""

    @property
    def location(self) -> str:
        """Where the store is, for messages: a directory or ``s3://bucket/prefix`` (no credentials)."""
        ...

    def latest_version(self, model: str) -> str | None: ...

    def has_version(self, model: str, version: str) -> bool: ...

    def resolve(self, model: str, version: str = LATEST) -> V: ...

    def open_authenticated(self, resolved: V, keyring: Keyring) -> AbstractContextManager[OpenedArtifact]: ...

    def advance_latest(self, model: str, version: str) -> bool: ...

    def publish(self, plaintext: Path, **publication: Unpack[Publication]) -> V:
        """Encrypt ``plaintext`` as ``model``/``version``, make it visible whole or not at all, move LATEST."""
        ...

    def remove_leftovers(self, model: str) -> Sequence[object]:
        """Delete what interrupted publishers of ``model`` left; returns what was deleted."""
        ...


def open_store(uri: str, *, mount_root: Path, environ: Mapping[str, str]) -> Store[Any]:
    """The store ``uri`` names: its directory under ``mount_root``, or its bucket reached as ``environ``'s
    ``KUBEMAAS_S3_*`` variables say (kubemaas.contract.store.S3Settings)."""
    if StoreUri.parse(uri).scheme == "s3":
        from kubemaas.runtime.object_store import ObjectArtifactStore  # boto3 only where a bucket is used

        return ObjectArtifactStore.from_uri(uri, S3Settings.from_env(environ))
    return ArtifactStore.from_uri(uri, mount_root=mount_root)


if TYPE_CHECKING:  # mypy checks here that each store implements the whole interface, versions typed
    from kubemaas.runtime.object_store import ObjectArtifactStore, ObjectModelVersion

    def _implementations(
        directory: ArtifactStore, bucket: ObjectArtifactStore
    ) -> tuple[Store[ModelVersion], Store[ObjectModelVersion]]:
        return directory, bucket
