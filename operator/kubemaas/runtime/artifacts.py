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
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubemaas.api.base import LATEST
from kubemaas.api.modelservice import ServedFormat
from kubemaas.api.trainingjob import Quantization

# URIs, names and the store's base error are the contract's (kubemaas.contract.store); re-exported here.
from kubemaas.contract.store import DEFAULT_MOUNT_ROOT as DEFAULT_MOUNT_ROOT
from kubemaas.contract.store import ArtifactStoreError as ArtifactStoreError
from kubemaas.contract.store import resolve_uri as resolve_uri
from kubemaas.contract.store import validate_name as validate_name
from kubemaas.runtime.crypto import (
    DEFAULT_CHUNK_SIZE,
    OpenedArtifact,
    PlaintextDigest,
    encrypt_file,
    manifest_mac,
    open_artifact,
    read_header,
)
from kubemaas.runtime.errors import UnauthenticatedManifestError
from kubemaas.runtime.fsutil import atomic_write_bytes, fsync_dir, write_new_file
from kubemaas.runtime.keyring import Keyring

ARTIFACT_FILE = "model.kmenc"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
LATEST_LOCK = ".LATEST.lock"
STAGING_PREFIX = ".staging-"
MANIFEST_SCHEMA_VERSION = 1
MAC_FIELD = "mac"
_MAC_PATTERN = re.compile(r"[0-9a-f]{64}")


Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class VersionExistsError(ArtifactStoreError):
    """Versions are immutable: this one is already published."""


class MisplacedManifestError(ArtifactStoreError):
    """A manifest names another model or version than the directory it lies in (moved or copied there)."""


class InvalidManifestError(ValueError):
    """``manifest.json`` is not a JSON object this reader can authenticate (syntax, duplicate keys, NaN, mac)."""


class _CamelModel(BaseModel):
    # Unknown fields are ignored, so an older loader can read a newer trainer's manifest.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class TensorSpec(_CamelModel):
    """One model input or output as Triton sees it."""

    name: str = Field(min_length=1, max_length=128)
    datatype: Datatype = Field(description="KServe v2 / Triton datatype, e.g. FP32.")
    dims: list[int] = Field(description="Shape without the batch dimension; -1 for a variable size.")


class Manifest(_CamelModel):
    """What a published version is: read by the model loader and reported by the operator."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    model: str
    version: str
    format: ServedFormat = ServedFormat.TorchScript
    quantization: Quantization = Quantization.NONE
    artifact: str = Field(default=ARTIFACT_FILE, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    encryption: str = "AES-256-GCM (KMAASENC v1)"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the plaintext model file.")
    size: int = Field(ge=0, description="Plaintext size in bytes.")
    key_id: str
    frameworks: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def document(self) -> dict[str, object]:
        """The JSON object ``manifest.json`` holds, without its MAC."""
        document: dict[str, object] = json.loads(self.model_dump_json(by_alias=True))
        return document


def canonical_manifest(document: dict[str, object]) -> bytes:
    """The bytes a manifest's MAC covers: the JSON object without ``mac``, keys sorted, no spaces, ASCII.

    Computed from the parsed object, so a reader that ignores a field still authenticates it, and
    whitespace or key order in the file does not matter. Python's json round-trips every value it
    writes (floats by their shortest repr), so writer and reader get the same bytes.
    """
    unsigned = {name: value for name, value in document.items() if name != MAC_FIELD}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def render_manifest(document: dict[str, object], mac: bytes) -> bytes:
    """``manifest.json``'s bytes: the document and its hex MAC, indented for people."""
    return (json.dumps({**document, MAC_FIELD: mac.hex()}, indent=2, allow_nan=False) + "\n").encode("utf-8")


def parse_manifest(raw: bytes) -> tuple[dict[str, object], Manifest]:
    """Parse ``manifest.json`` into its JSON object and the :class:`Manifest` validated from that same object.

    Refuses (:class:`InvalidManifestError`) what two JSON parsers could read differently (duplicate
    keys, NaN/Infinity) and a ``mac`` that is not 64 hex digits; a schema error is pydantic's
    ``ValidationError``.
    """
    try:
        document = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidManifestError(f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifestError(f"not a JSON object but {type(document).__name__}")
    mac = document.get(MAC_FIELD)
    if mac is not None and not (isinstance(mac, str) and _MAC_PATTERN.fullmatch(mac)):
        raise InvalidManifestError(f"{MAC_FIELD!r} must be 64 lower-case hex digits")
    return document, Manifest.model_validate(document)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise InvalidManifestError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _refuse_constant(name: str) -> object:
    raise InvalidManifestError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class ModelVersion:
    """A complete published version, as a reader resolved it (not yet authenticated)."""

    directory: Path
    manifest: Manifest
    # The JSON object manifest.json holds, unknown fields and ``mac`` included: what the MAC covers.
    document: dict[str, object] = field(hash=False)

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
    with open_artifact(resolved.artifact, keyring=keyring, model=manifest.model, version=manifest.version) as artifact:
        artifact.verify_manifest(canonical_manifest(resolved.document), bytes.fromhex(mac))
        yield artifact


class ArtifactStore:
    """Publish and resolve model versions under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_uri(cls, uri: str, *, mount_root: Path) -> ArtifactStore:
        return cls(resolve_uri(uri, mount_root=mount_root))

    def model_dir(self, model: str) -> Path:
        return self.root / validate_name(model, "model name")

    def version_dir(self, model: str, version: str) -> Path:
        return self.model_dir(model) / validate_name(version, "version")

    # ------------------------------------------------------------------ readers

    def latest_version(self, model: str) -> str | None:
        try:
            return (self.model_dir(model) / LATEST_FILE).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def versions(self, model: str) -> list[str]:
        """Complete versions (a manifest present), oldest first by creation time."""
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            return []
        found = [
            self._read_version(model, entry.name)
            for entry in model_dir.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST_FILE).is_file()
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
        return (self.version_dir(model, version) / MANIFEST_FILE).is_file()

    def _read_version(self, model: str, version: str) -> ModelVersion:
        directory = self.version_dir(model, version)
        try:
            document, manifest = parse_manifest((directory / MANIFEST_FILE).read_bytes())
        except FileNotFoundError:
            raise ArtifactStoreError(f"model {model!r} has no version {version!r} under {self.root}") from None
        if (manifest.model, manifest.version) != (model, version):
            raise MisplacedManifestError(
                f"manifest describes {manifest.model!r} {manifest.version!r}, not {model!r} {version!r} "
                f"({directory / MANIFEST_FILE})"
            )
        if manifest.schema_version > MANIFEST_SCHEMA_VERSION:
            raise ArtifactStoreError(f"manifest schema {manifest.schema_version} is newer than this reader")
        return ModelVersion(directory=directory, manifest=manifest, document=document)

    # ------------------------------------------------------------------ writer

    def publish(
        self,
        plaintext: Path,
        *,
        model: str,
        version: str,
        key: bytes,
        key_id: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        quantization: Quantization = Quantization.NONE,
        frameworks: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        now: datetime | None = None,
    ) -> ModelVersion:
        """Encrypt ``plaintext`` as ``model``/``version``, publish it atomically, move LATEST to it."""
        final_dir = self.version_dir(model, version)
        if final_dir.exists():
            raise VersionExistsError(f"model {model!r} version {version!r} is already published")
        model_dir = final_dir.parent
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            digest = self._encrypt_into(staging, plaintext, model, version, key, key_id, chunk_size)
            manifest = Manifest(
                model=model,
                version=version,
                quantization=quantization,
                sha256=digest.sha256,
                size=digest.size,
                key_id=key_id,
                frameworks=frameworks or {},
                metrics=metrics or {},
                created_at=now or datetime.now(UTC),
                inputs=inputs,
                outputs=outputs,
            )
            document = manifest.document()
            mac = manifest_mac(staging / ARTIFACT_FILE, canonical_manifest(document), key=key)
            write_new_file(staging / MANIFEST_FILE, render_manifest(document, mac))
            fsync_dir(staging)
            # rename(2) onto an existing non-empty directory fails: a racing publisher cannot clobber us.
            os.rename(staging, final_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(model_dir)
        self.advance_latest(model, version)
        return ModelVersion(directory=final_dir, manifest=manifest, document={**document, MAC_FIELD: mac.hex()})

    @staticmethod
    def _encrypt_into(
        staging: Path, plaintext: Path, model: str, version: str, key: bytes, key_id: str, chunk_size: int
    ) -> PlaintextDigest:
        target = staging / ARTIFACT_FILE
        digest = encrypt_file(
            plaintext, target, key=key, key_id=key_id, model=model, version=version, chunk_size=chunk_size
        )
        read_header(target)  # parse back what we wrote before anyone can see it
        return digest

    def advance_latest(self, model: str, version: str) -> bool:
        """Point ``Latest`` at ``version`` (which must be complete) unless LATEST already names a
        version created later; returns whether LATEST names ``version`` now.

        The lock serialises publishers of one model (flock: local file systems and NFSv4 honour it);
        the pointer itself is replaced atomically, so readers never need the lock.
        """
        candidate = self._complete_version(model, version)
        with self._latest_lock(model):
            current = self.latest_version(model)
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
        fd = os.open(self.model_dir(model) / LATEST_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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
