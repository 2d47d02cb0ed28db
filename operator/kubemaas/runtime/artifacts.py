"""The model artifact store: encrypted versions under ``<root>/<model>/<version>/``.

Layout::

    <root>/<model>/LATEST                  one line: the newest published version
    <root>/<model>/<version>/model.kmenc   the encrypted model (kubemaas.runtime.crypto format)
    <root>/<model>/<version>/manifest.json a :class:`Manifest` (camelCase JSON)
    <root>/<model>/.staging-*              in-progress publications; never read

Publishing is atomic: the version is assembled in a hidden staging directory, every file and
the directory are fsynced, the directory is renamed to ``<version>`` (and the parent fsynced),
and only then ``LATEST`` is replaced (temp file, fsync, rename, fsync). A crash at any point
leaves readers with the previous version or the new one, complete. Versions are immutable.

``LATEST`` only moves forward: it is re-pointed only to a version created later than the one it
names (compared by the manifests' ``createdAt``, under a lock), so a late restart of an old job
cannot take it back.

URIs (``pvc://<claim>/<path>``, ``file:///abs/path``) are parsed by kubemaas.contract.store; the caller
passes the mount root (``KUBEMAAS_MOUNT_ROOT``, read by kubemaas.contract).

Manifests are authenticated: ``manifest.json`` carries ``mac``, the hex HMAC that
:func:`kubemaas.runtime.crypto.manifest_mac` computes over the manifest's canonical bytes (every
other field, unknown ones included: :func:`canonical_manifest`) under the model's key, bound to the
artifact's header. :func:`open_authenticated` checks it before a reader trusts any field; the
store's own key-less readers (listing, ``LATEST`` ordering) read manifests unauthenticated.

The store is untrusted input (its writers hold no key): every read goes through
:class:`kubemaas.runtime.beneath.Beneath`, rooted at the claim's mount, so no link below it is followed
and only regular files are read; ``LATEST`` and ``manifest.json`` are read with a size cap, and no
message quotes what a file holds (a length and a sha256 prefix instead).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NotRequired, TypedDict, Unpack

from kubemaas.api.base import LATEST, VERSION_PATTERN
from kubemaas.api.trainingjob import Quantization

# URIs, names and the store's base error are the contract's (kubemaas.contract.store); re-exported here.
from kubemaas.contract.store import DEFAULT_MOUNT_ROOT as DEFAULT_MOUNT_ROOT
from kubemaas.contract.store import ArtifactStoreError as ArtifactStoreError
from kubemaas.contract.store import StoreUri
from kubemaas.contract.store import resolve_uri as resolve_uri
from kubemaas.contract.store import validate_name as validate_name
from kubemaas.runtime.beneath import Beneath, Kind, OversizedFileError
from kubemaas.runtime.beneath import UnsafeEntryError as UnsafeEntryError
from kubemaas.runtime.crypto import (
    DEFAULT_CHUNK_SIZE,
    OpenedArtifact,
    encrypt_file,
    manifest_mac,
    open_artifact,
    read_header,
)
from kubemaas.runtime.errors import UnauthenticatedManifestError
from kubemaas.runtime.fsutil import atomic_write_bytes, fsync_dir, write_new_file
from kubemaas.runtime.keyring import Keyring

# The manifest's format is kubemaas.runtime.manifest's; re-exported for the store's callers.
from kubemaas.runtime.manifest import ARTIFACT_FILE as ARTIFACT_FILE
from kubemaas.runtime.manifest import MAC_FIELD as MAC_FIELD
from kubemaas.runtime.manifest import MANIFEST_MAX_BYTES as MANIFEST_MAX_BYTES
from kubemaas.runtime.manifest import MANIFEST_SCHEMA_VERSION as MANIFEST_SCHEMA_VERSION
from kubemaas.runtime.manifest import InvalidManifestError as InvalidManifestError
from kubemaas.runtime.manifest import Manifest as Manifest
from kubemaas.runtime.manifest import TensorSpec as TensorSpec
from kubemaas.runtime.manifest import canonical_manifest as canonical_manifest
from kubemaas.runtime.manifest import fingerprint as fingerprint
from kubemaas.runtime.manifest import parse_manifest as parse_manifest
from kubemaas.runtime.manifest import render_manifest as render_manifest
from kubemaas.runtime.manifest import schema_errors as schema_errors

MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
LATEST_LOCK = ".LATEST.lock"
STAGING_PREFIX = ".staging-"
# "<version>\n" needs at most 64 bytes; the slack is for a writer's whitespace, not for content.
LATEST_MAX_BYTES = 256
_VERSION = re.compile(VERSION_PATTERN)


class VersionExistsError(ArtifactStoreError):
    """Versions are immutable: this one is already published."""


class MisplacedManifestError(ArtifactStoreError):
    """A manifest names another model or version than the directory it lies in (moved or copied there)."""


class InvalidLatestError(ArtifactStoreError):
    """``LATEST`` does not hold a version name (too long, not UTF-8, not a valid version)."""


def parse_latest(raw: bytes, model: str) -> str | None:
    """The version a ``LATEST`` file's bytes name (None when empty); :class:`InvalidLatestError` if none."""
    try:
        version = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        version = None
    if version == "":
        return None
    if version is None or not _VERSION.fullmatch(version) or version == LATEST:
        raise InvalidLatestError(f"{LATEST_FILE} of {model!r} is not a valid version ({fingerprint(raw)})")
    return version


def oversized_latest(model: str, size: int) -> InvalidLatestError:
    return InvalidLatestError(
        f"{LATEST_FILE} of {model!r} has {size} bytes, more than the {LATEST_MAX_BYTES} a version needs"
    )


def oversized_manifest(size: int) -> InvalidManifestError:
    return InvalidManifestError(f"{size} bytes, more than the {MANIFEST_MAX_BYTES} a manifest may have")


def read_manifest(raw: bytes, model: str, version: str, where: str) -> tuple[dict[str, object], Manifest]:
    """Parse the manifest found at ``where`` for ``model``/``version`` and check it describes that version."""
    document, manifest = parse_manifest(raw)
    if (manifest.model, manifest.version) != (model, version):
        # Both names passed the store's name rules (Manifest's patterns): quoting them quotes no content.
        raise MisplacedManifestError(
            f"manifest describes {manifest.model!r} {manifest.version!r}, not {model!r} {version!r} ({where})"
        )
    if manifest.schema_version > MANIFEST_SCHEMA_VERSION:
        raise ArtifactStoreError(f"manifest schema {manifest.schema_version} is newer than this reader")
    return document, manifest


class Publication(TypedDict):
    """What a publisher says of the version it publishes: the keyword arguments of every store's ``publish``."""

    model: str
    version: str
    key: bytes
    key_id: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: NotRequired[Quantization]  # default: None
    frameworks: NotRequired[dict[str, str] | None]
    metrics: NotRequired[dict[str, float] | None]
    chunk_size: NotRequired[int]  # default: DEFAULT_CHUNK_SIZE
    now: NotRequired[datetime | None]  # the manifest's createdAt; default: the time of the call


def draft_manifest(publication: Publication, artifact: str = ARTIFACT_FILE) -> Manifest:
    """A version's manifest before its artifact exists: :func:`seal_version` fills in the plaintext's digest."""
    return Manifest(
        model=publication["model"],
        version=publication["version"],
        quantization=publication.get("quantization", Quantization.NONE),
        artifact=artifact,
        sha256="0" * 64,
        size=0,
        key_id=publication["key_id"],
        frameworks=publication.get("frameworks") or {},
        metrics=publication.get("metrics") or {},
        created_at=publication.get("now") or datetime.now(UTC),
        inputs=publication["inputs"],
        outputs=publication["outputs"],
    )


def seal_version(
    staging: Path, plaintext: Path, draft: Manifest, *, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[Manifest, dict[str, object], bytes]:
    """Encrypt ``plaintext`` into ``staging``/``draft.artifact`` and write the authenticated manifest.json beside
    it: ``draft`` with the plaintext's sha256 and size. Returns the manifest, its document and its MAC. What a
    publisher does before the version becomes visible, on a claim or in a bucket."""
    target = staging / draft.artifact
    digest = encrypt_file(
        plaintext,
        target,
        key=key,
        key_id=draft.key_id,
        model=draft.model,
        version=draft.version,
        chunk_size=chunk_size,
    )
    read_header(target)  # parse back what we wrote before anyone can see it
    manifest = draft.model_copy(update={"sha256": digest.sha256, "size": digest.size})
    document = manifest.document()
    mac = manifest_mac(target, canonical_manifest(document), key=key)
    write_new_file(staging / MANIFEST_FILE, render_manifest(document, mac))
    fsync_dir(staging)
    return manifest, document, mac


@dataclass(frozen=True)
class ModelVersion:
    """A complete published version, as a reader resolved it (not yet authenticated)."""

    directory: Path
    manifest: Manifest
    # The JSON object manifest.json holds, unknown fields and ``mac`` included: what the MAC covers.
    document: dict[str, object] = field(hash=False)
    # The store it was read from: the artifact is opened beneath the same root.
    tree: Beneath = field(hash=False, compare=False, repr=False, kw_only=True)

    @property
    def artifact(self) -> Path:
        return self.directory / self.manifest.artifact


@contextmanager
def open_authenticated(resolved: ModelVersion, keyring: Keyring) -> Iterator[OpenedArtifact]:
    """Open the version's artifact (header checked under ``keyring``, bound to its model and version)
    and check the manifest's MAC against it: inside the block every manifest field is the publisher's.

    A manifest without a MAC is refused (:class:`UnauthenticatedManifestError`): a reader cannot tell
    one written before manifests were authenticated from one whose MAC an attacker removed.
    """
    mac = resolved.document.get(MAC_FIELD)
    manifest = resolved.manifest
    if not isinstance(mac, str):
        raise UnauthenticatedManifestError(
            f"manifest of {manifest.model!r} {manifest.version!r} has no {MAC_FIELD!r}: it was written before "
            "manifests were authenticated, or its MAC was removed; republish the version"
        )
    with (
        resolved.tree.open(resolved.artifact) as stream,
        open_artifact(stream, keyring=keyring, model=manifest.model, version=manifest.version) as artifact,
    ):
        artifact.verify_manifest(canonical_manifest(resolved.document), bytes.fromhex(mac))
        yield artifact


class ArtifactStore:
    """Publish and resolve model versions under one root directory.

    ``anchor`` is the trusted directory the root lies in (default: the root itself): for a ``pvc://``
    store the claim's mount, since the path from there to the root is on the claim, which the store's
    writers control. Readers follow no link below the anchor.
    """

    def __init__(self, root: Path | str, *, anchor: Path | str | None = None) -> None:
        self.root = Path(root)
        self.tree = Beneath(self.root if anchor is None else Path(anchor))
        self.tree.parts(self.root)  # the root must lie beneath the anchor

    @classmethod
    def from_uri(cls, uri: str, *, mount_root: Path) -> ArtifactStore:
        parsed = StoreUri.parse(uri)
        return cls(parsed.resolve(mount_root), anchor=parsed.mount(mount_root))

    @property
    def location(self) -> str:
        return str(self.root)

    def open_authenticated(self, resolved: ModelVersion, keyring: Keyring) -> AbstractContextManager[OpenedArtifact]:
        return open_authenticated(resolved, keyring)

    def model_dir(self, model: str) -> Path:
        return self.root / validate_name(model, "model name")

    def version_dir(self, model: str, version: str) -> Path:
        return self.model_dir(model) / validate_name(version, "version")

    # ------------------------------------------------------------------ readers

    def latest_version(self, model: str) -> str | None:
        """The version ``LATEST`` names, None without one; :class:`InvalidLatestError` if it names none."""
        try:
            raw = self.tree.read(self.model_dir(model) / LATEST_FILE, cap=LATEST_MAX_BYTES)
        except FileNotFoundError:
            return None
        except OversizedFileError as error:
            raise oversized_latest(model, error.size) from None
        return parse_latest(raw, model)

    def versions(self, model: str) -> list[str]:
        """Complete versions (a manifest present), oldest first by creation time."""
        model_dir = self.model_dir(model)
        found = [
            self._read_version(model, name)
            for name, kind in self.tree.entries(model_dir).items()
            if kind is Kind.DIRECTORY and not name.startswith(".") and self.has_version(model, name)
        ]
        return [v.manifest.version for v in sorted(found, key=lambda v: v.manifest.created_at)]

    def resolve(self, model: str, version: str = LATEST) -> ModelVersion:
        """The complete version ``version`` of ``model``; ``Latest`` follows the LATEST pointer."""
        if version == LATEST:
            latest = self.latest_version(model)
            if latest is None:
                raise ArtifactStoreError(f"model {model!r} has no published version under {self.root}")
            version = latest
        return self._read_version(model, version)

    def has_version(self, model: str, version: str) -> bool:
        """Whether the version's manifest exists. Any entry counts, so that a link or a FIFO in its place is
        refused when read (:class:`UnsafeEntryError`) rather than reported as a missing version."""
        return self.tree.kind(self.version_dir(model, version) / MANIFEST_FILE) is not None

    def _read_version(self, model: str, version: str) -> ModelVersion:
        directory = self.version_dir(model, version)
        try:
            raw = self.tree.read(directory / MANIFEST_FILE, cap=MANIFEST_MAX_BYTES)
        except FileNotFoundError:
            raise ArtifactStoreError(f"model {model!r} has no version {version!r} under {self.root}") from None
        except OversizedFileError as error:
            raise oversized_manifest(error.size) from None
        document, manifest = read_manifest(raw, model, version, str(directory / MANIFEST_FILE))
        return ModelVersion(directory=directory, manifest=manifest, document=document, tree=self.tree)

    # ------------------------------------------------------------------ writer

    def publish(self, plaintext: Path, **publication: Unpack[Publication]) -> ModelVersion:
        """Encrypt ``plaintext`` as ``model``/``version``, publish it atomically, move LATEST to it."""
        model, version = publication["model"], publication["version"]
        final_dir = self.version_dir(model, version)
        if final_dir.exists():
            raise VersionExistsError(f"model {model!r} version {version!r} is already published")
        model_dir = final_dir.parent
        model_dir.mkdir(parents=True, exist_ok=True)
        self.tree.require_directory(model_dir)  # not through a link a store writer planted
        staging = model_dir / f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            manifest, document, mac = seal_version(
                staging,
                plaintext,
                draft_manifest(publication),
                key=publication["key"],
                chunk_size=publication.get("chunk_size", DEFAULT_CHUNK_SIZE),
            )
            # rename(2) onto an existing non-empty directory fails: a racing publisher cannot clobber us.
            os.rename(staging, final_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(model_dir)
        self.advance_latest(model, version)
        return ModelVersion(
            directory=final_dir, manifest=manifest, document={**document, MAC_FIELD: mac.hex()}, tree=self.tree
        )

    def advance_latest(self, model: str, version: str) -> bool:
        """Point ``Latest`` at ``version`` (which must be complete) unless LATEST already names a
        version created later; returns whether LATEST names ``version`` now.

        The lock serialises publishers of one model (flock: local file systems and NFSv4 honour it);
        the pointer itself is replaced atomically, so readers never need the lock.
        """
        candidate = self._complete_version(model, version)
        with self._latest_lock(model):
            try:
                current = self.latest_version(model)
            except ArtifactStoreError:  # LATEST names no version, or is a link or a FIFO: replace it
                current = None
            if current is not None and current != version:
                try:
                    is_newer = self._read_version(model, current).manifest.created_at > candidate.manifest.created_at
                except (ArtifactStoreError, ValueError, TypeError):
                    is_newer = False  # LATEST names a deleted or unreadable version: replace it
                if is_newer:
                    return False
            atomic_write_bytes(self.model_dir(model) / LATEST_FILE, f"{version}\n".encode())
        return True

    def _complete_version(self, model: str, version: str) -> ModelVersion:
        if not self.has_version(model, version):
            raise ArtifactStoreError(f"cannot point LATEST at incomplete version {model!r} {version!r}")
        return self._read_version(model, version)

    @contextmanager
    def _latest_lock(self, model: str) -> Iterator[None]:
        # Not through a link a store writer left there, and never blocking on a FIFO.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(self.model_dir(model) / LATEST_LOCK, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def remove_leftovers(self, model: str) -> list[Path]:
        """Delete what crashed publishers left (staging dirs, LATEST temp files). Not while publishing."""
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            return []
        stale = [*model_dir.glob(f"{STAGING_PREFIX}*"), *model_dir.glob(f".{LATEST_FILE}.*.tmp")]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale
