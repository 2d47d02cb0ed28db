"""Errors raised while reading keys and encrypted model artifacts.

Every refusal of an artifact is an :class:`ArtifactIntegrityError`; the subclass says
why, so the model loader can report a precise reason (and never start Triton). No
message, ``repr`` or attribute of these errors ever carries key material.
"""

from __future__ import annotations

from kubemaas.contract.store import ArtifactStoreError
from kubemaas.contract.termination import Cause


class KeyringError(Exception):
    """The mounted key directory is unusable (missing, malformed key file, no active key)."""


class ArtifactIntegrityError(Exception):
    """Base class: the artifact was refused and no plaintext was produced."""


class BadHeaderError(ArtifactIntegrityError):
    """The header is not a Kubemaas artifact header, or it is corrupted."""


class UnsupportedFormatError(BadHeaderError):
    """The header names a format version this code cannot read."""


class HeaderTamperedError(BadHeaderError):
    """The header is well formed but its keyed MAC does not verify (deliberately altered)."""


class UnknownKeyError(ArtifactIntegrityError):
    """The artifact was encrypted with a key id that the keyring does not hold."""


class WrongKeyError(ArtifactIntegrityError):
    """The keyring holds a key under the artifact's key id, but it is not the key used to encrypt."""


class BindingMismatchError(ArtifactIntegrityError):
    """The artifact is authentic but belongs to another model name or version than requested."""


class TruncatedArtifactError(ArtifactIntegrityError):
    """The file is shorter than its authenticated header says: chunks are missing."""


class ExtendedArtifactError(ArtifactIntegrityError):
    """The file has data after its final chunk."""


class TamperedChunkError(ArtifactIntegrityError):
    """A chunk failed authentication: its bytes were changed."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class ChunkOrderError(ArtifactIntegrityError):
    """A chunk is authentic but sits at the wrong position (chunks swapped or duplicated)."""

    def __init__(self, index: int, found: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.found = found


class ManifestTamperedError(ArtifactIntegrityError):
    """The manifest's MAC does not verify: it was edited, or it belongs to another artifact."""


class UnauthenticatedManifestError(ArtifactIntegrityError):
    """The manifest carries no MAC (written before manifests were authenticated, or the MAC was removed)."""


class PlaintextMismatchError(ArtifactIntegrityError):
    """The artifact is authentic, but its plaintext is not the one the manifest describes.

    ``actual`` is the decrypted plaintext's sha256, or None when the sizes already differ.
    """

    def __init__(self, actual: str | None, message: str) -> None:
        super().__init__(message)
        self.actual = actual


# An s3:// store's failures (kubemaas.runtime.object_client): here, so that a reader can tell them apart
# without importing the SDK.


class ObjectStoreError(ArtifactStoreError):
    """The object store refused or could not answer a request."""


class ObjectAccessDeniedError(ObjectStoreError):
    """The credentials may not do this to this bucket or key (or are not valid credentials at all)."""

    cause = Cause.AccessDenied  # what a trainer's termination message says (the loader has its own causes)


class NoSuchBucketError(ObjectStoreError):
    """The bucket does not exist."""


class ObjectStoreUnavailableError(ObjectStoreError):
    """The endpoint could not be reached, or kept failing, after every retry."""


class ObjectChangedError(ArtifactIntegrityError):
    """The object was replaced while it was read: what was checked is no longer what would be read."""
