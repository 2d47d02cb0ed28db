"""The model artifact store in an S3 bucket: the claim's layout and guarantees, over objects.

Keys under the URI's prefix (``s3://<bucket>/<prefix>``)::

    <prefix>/<model>/LATEST                          one line: the newest published version
    <prefix>/<model>/<version>/manifest.json         the MACed manifest; its existence makes the version
    <prefix>/<model>/<version>/model-<id>.kmenc      the encrypted model the manifest names (``artifact``)

Only ciphertext and the MACed manifest ever reach the bucket: a bucket-policy mistake leaks nothing usable,
and a byte changed in the bucket is refused exactly like a changed file on a claim (the same checks, on
the same format: kubemaas.runtime.artifacts).

Publication, where a claim has rename(2), relies on S3's conditional writes:

1. the artifact's chunks are sealed straight into the parts of a multipart upload
   (kubemaas.runtime.object_client.MultipartWriter: parts go out while later chunks are still being
   encrypted, no copy on any disk) under a name of its own (``model-<random id>.kmenc``): an object that no
   manifest names is not a version, and racing publishers of one version never overwrite each other's
   artifact;
2. ``manifest.json`` is written with ``If-None-Match: *``: the first publisher of a version wins, a second
   one gets :class:`~kubemaas.runtime.artifacts.VersionExistsError` (and deletes its own artifact);
3. ``LATEST`` is moved with a compare-and-swap (``If-Match`` on the ETag read, ``If-None-Match: *`` when
   there is none yet), re-read and retried when another publisher moved it in between, and only ever
   forward (to a version created later than the one it names), as on a claim.

A publisher interrupted anywhere leaves at most an artifact object that no manifest names: never a visible
version. Readers fetch the artifact with ranged GETs pinned to one ETag and decrypt as the bytes arrive
(kubemaas.runtime.object_client.ObjectAccess): no full download to disk first.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Unpack

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from kubemaas.api.base import LATEST
from kubemaas.contract.store import ArtifactStoreError, S3Settings, bucket_of, validate_name
from kubemaas.runtime.artifacts import (
    LATEST_FILE,
    LATEST_MAX_BYTES,
    MAC_FIELD,
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    InvalidLatestError,
    Manifest,
    Publication,
    VersionExistsError,
    canonical_manifest,
    draft_manifest,
    oversized_latest,
    oversized_manifest,
    parse_latest,
    read_manifest,
    render_manifest,
)
from kubemaas.runtime.crypto import DEFAULT_CHUNK_SIZE, OpenedArtifact, open_artifact
from kubemaas.runtime.crypto.files import Encrypted, encrypt_to, manifest_mac_for
from kubemaas.runtime.crypto.format import TAG_BYTES, ArtifactHeader, parse_header
from kubemaas.runtime.errors import UnauthenticatedManifestError
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.object_client import (
    PRECONDITION_FAILED,
    SDK_ERRORS,
    MultipartWriter,
    ObjectAccess,
    client_for,
    error_code,
    list_objects,
    raise_for,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Parts of 8 MiB (two sealed 4 MiB chunks and their tags: upload_sealed cuts them at chunk boundaries), 8 in
# flight, 8 buffered at most (64 MiB, each reused once its part is uploaded): a 1 GiB model is 128 parts. Small
# parts start the upload after a few chunks are sealed and leave a short tail after the last one (measured on
# 64 MiB: 16 MiB parts, 4 in flight, 1.41-1.87x a plain upload). Reused buffers took 1 GiB from 1.23x (16
# buffered, each new) to 1.17-1.18x (6 or 8, reused) and 64 MiB from 1.31-1.36x to 1.25-1.28x
# (e2e/bench/bench_object_store.py). TRANSFER is the same for boto3's own transfers (the benchmark's baseline).
PART_SIZE: Final = 8 * 1024 * 1024
PART_CONCURRENCY: Final = 8
TRANSFER = TransferConfig(
    multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=PART_CONCURRENCY
)
# Publishers racing on one LATEST: each lost round means another publisher moved it; this many is a storm.
LATEST_ATTEMPTS: Final = 20
# What a publisher's cleanup treats as abandoned: far longer than any upload of one part, or the moment between
# an artifact's completion and its manifest.
LEFTOVER_AGE: Final = timedelta(hours=1)


@dataclass(frozen=True)
class ObjectModelVersion:
    """A complete published version in a bucket, as a reader resolved it (not yet authenticated)."""

    prefix: str  # the version's key prefix: <prefix>/<model>/<version>
    manifest: Manifest
    document: dict[str, object] = field(hash=False)  # manifest.json's JSON object, ``mac`` included

    @property
    def artifact_key(self) -> str:
        return f"{self.prefix}/{self.manifest.artifact}"


class ObjectArtifactStore:
    """Publish and resolve model versions below ``s3://<bucket>/<prefix>``."""

    def __init__(self, uri: str, client: S3Client) -> None:
        self.bucket, self.uri = bucket_of(uri)
        self.client = client

    @classmethod
    def from_uri(cls, uri: str, settings: S3Settings) -> ObjectArtifactStore:
        return cls(uri, client_for(settings))

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.uri.path}".rstrip("/")

    def model_key(self, model: str, *parts: str) -> str:
        return self.uri.key(validate_name(model, "model name"), *parts)

    def version_key(self, model: str, version: str, *parts: str) -> str:
        return self.model_key(model, validate_name(version, "version"), *parts)

    # ------------------------------------------------------------------ readers

    def latest_version(self, model: str) -> str | None:
        """The version ``LATEST`` names, None without one; :class:`InvalidLatestError` if it names none."""
        found = self._latest(model)
        return None if found is None else found[0]

    def resolve(self, model: str, version: str = LATEST) -> ObjectModelVersion:
        """The complete version ``version`` of ``model``; ``Latest`` follows the LATEST pointer."""
        if version == LATEST:
            latest = self.latest_version(model)
            if latest is None:
                raise ArtifactStoreError(f"model {model!r} has no published version under {self.location}")
            version = latest
        key = self.version_key(model, version, MANIFEST_FILE)
        try:
            raw = self._read_capped(key, MANIFEST_MAX_BYTES)
        except FileNotFoundError:
            raise ArtifactStoreError(f"model {model!r} has no version {version!r} under {self.location}") from None
        except _Oversized as error:
            raise oversized_manifest(error.size) from None
        document, manifest = read_manifest(raw, model, version, f"s3://{self.bucket}/{key}")
        return ObjectModelVersion(self.version_key(model, version), manifest, document)

    def has_version(self, model: str, version: str) -> bool:
        key = self.version_key(model, version, MANIFEST_FILE)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except SDK_ERRORS as error:
            with contextlib.suppress(FileNotFoundError):
                raise_for(error, self.bucket, key, "look up")
            return False
        return True

    @contextlib.contextmanager
    def open_authenticated(self, resolved: ObjectModelVersion, keyring: Keyring) -> Iterator[OpenedArtifact]:
        """As :func:`kubemaas.runtime.artifacts.open_authenticated`: the header checked under ``keyring`` and
        bound to the version, the manifest's MAC checked against it; the chunks are checked as they are read."""
        mac, manifest = resolved.document.get(MAC_FIELD), resolved.manifest
        if not isinstance(mac, str):
            raise UnauthenticatedManifestError(
                f"manifest of {manifest.model!r} {manifest.version!r} has no {MAC_FIELD!r}; republish the version"
            )
        with (
            ObjectAccess(self.client, self.bucket, resolved.artifact_key) as source,
            open_artifact(source, keyring=keyring, model=manifest.model, version=manifest.version) as artifact,
        ):
            artifact.verify_manifest(canonical_manifest(resolved.document), bytes.fromhex(mac))
            yield artifact

    # ------------------------------------------------------------------ writer

    def publish(self, plaintext: Path, **publication: Unpack[Publication]) -> ObjectModelVersion:
        """Encrypt ``plaintext`` as ``model``/``version``, publish it, move LATEST to it (module docstring).

        The chunks are sealed straight into the parts of a multipart upload, which go out while the rest is
        still being encrypted: no copy of the artifact on any disk, and the upload overlaps the encryption."""
        model, version, key = publication["model"], publication["version"], publication["key"]
        prefix = self.version_key(model, version)
        if self.has_version(model, version):
            raise VersionExistsError(f"model {model!r} version {version!r} is already published")
        draft = draft_manifest(publication, artifact=f"model-{secrets.token_hex(8)}.kmenc")
        artifact_key = f"{prefix}/{draft.artifact}"
        sealed = upload_sealed(
            self.client,
            self.bucket,
            artifact_key,
            plaintext,
            key=key,
            key_id=publication["key_id"],
            model=model,
            version=version,
            chunk_size=publication.get("chunk_size", DEFAULT_CHUNK_SIZE),
        )
        manifest = draft.model_copy(update={"sha256": sealed.digest.sha256, "size": sealed.digest.size})
        document = manifest.document()
        mac = manifest_mac_for(parse_header(sealed.header), canonical_manifest(document), key=key)
        if not self._put_if(f"{prefix}/{MANIFEST_FILE}", render_manifest(document, mac), etag=None):
            self._delete_quietly(artifact_key)
            raise VersionExistsError(f"model {model!r} version {version!r} was published by another publisher")
        published = ObjectModelVersion(prefix, manifest, {**document, MAC_FIELD: mac.hex()})
        self._advance_latest_to(published)
        return published

    def advance_latest(self, model: str, version: str) -> bool:
        """Point ``Latest`` at ``version`` (which must be complete) unless LATEST already names a version
        created later; returns whether LATEST names ``version`` now. Compare-and-swap on LATEST's ETag."""
        return self._advance_latest_to(self.resolve(model, version))

    def _advance_latest_to(self, candidate: ObjectModelVersion) -> bool:
        model, version = candidate.manifest.model, candidate.manifest.version
        key = self.model_key(model, LATEST_FILE)
        for _ in range(LATEST_ATTEMPTS):
            try:
                current, etag = self._latest(model) or (None, None)  # None: no LATEST yet, created if none
            except (InvalidLatestError, ArtifactStoreError):
                current, etag = None, self._etag(key)  # names no version: replaced, if still at this ETag
            if current is not None and current != version:
                try:
                    is_newer = self.resolve(model, current).manifest.created_at > candidate.manifest.created_at
                except (ArtifactStoreError, ValueError, TypeError):
                    is_newer = False  # LATEST names a deleted or unreadable version: replace it
                if is_newer:
                    return False
            elif current == version:
                return True
            if self._put_if(key, f"{version}\n".encode(), etag=etag):
                return True
        raise ArtifactStoreError(f"{LATEST_FILE} of {model!r} kept changing under {LATEST_ATTEMPTS} attempts")

    def remove_leftovers(self, model: str, *, older_than: timedelta = LEFTOVER_AGE) -> list[str]:
        """Delete what interrupted publishers of ``model`` left: unfinished multipart uploads, and artifacts no
        manifest names (a publisher stopped before its manifest, or the loser of a race), once ``older_than``
        old: a publisher at work, whose artifact exists a moment before its manifest, is never touched."""
        start = self.model_key(model) + "/"
        cutoff = datetime.now(UTC) - older_than
        removed: list[str] = []
        named: dict[str, str | None] = {}  # version prefix -> the artifact its manifest names (None: no manifest)
        try:
            uploads = self.client.get_paginator("list_multipart_uploads")
            for listed in uploads.paginate(Bucket=self.bucket, Prefix=start):
                for upload in listed.get("Uploads", []):
                    if upload["Initiated"] > cutoff:
                        continue
                    with contextlib.suppress(*SDK_ERRORS):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed.append(upload["Key"])
        except SDK_ERRORS as error:
            raise_for(error, self.bucket, start, "clean up")
        for entry in list_objects(self.client, self.bucket, start):
            version, _, name = entry["Key"][len(start) :].partition("/")
            if not (name.startswith("model-") and name.endswith(".kmenc")) or "/" in name:
                continue
            if entry["LastModified"] > cutoff:
                continue
            if version not in named:
                named[version] = self._named_artifact(model, version)
            if named[version] is None or named[version] not in ("", name):
                self._delete_quietly(entry["Key"])
                removed.append(entry["Key"])
        return removed

    def _named_artifact(self, model: str, version: str) -> str | None:
        """The artifact the version's manifest names; None without a manifest, "" when it cannot be read (its
        objects are then left alone: a cleanup deletes only what is certainly unnamed)."""
        try:
            if self._etag(self.version_key(model, version, MANIFEST_FILE)) is None:
                return None
            return self.resolve(model, version).manifest.artifact
        except (ArtifactStoreError, ValueError):
            return ""

    # ------------------------------------------------------------------ objects

    def _latest(self, model: str) -> tuple[str | None, str] | None:
        """What LATEST names and its ETag; None when there is no LATEST object."""
        try:
            found = self._get_small(self.model_key(model, LATEST_FILE), LATEST_MAX_BYTES)
        except _Oversized as error:
            raise oversized_latest(model, error.size) from None
        return None if found is None else (parse_latest(found[0], model), found[1])

    def _etag(self, key: str) -> str | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except SDK_ERRORS as error:
            with contextlib.suppress(FileNotFoundError):
                raise_for(error, self.bucket, key, "look up")
            return None

    def _read_capped(self, key: str, cap: int) -> bytes:
        found = self._get_small(key, cap)
        if found is None:
            raise FileNotFoundError(key)
        return found[0]

    def _get_small(self, key: str, cap: int) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag, reading at most ``cap`` bytes (:class:`_Oversized` if it has more:
        the store's writers are untrusted); None when it does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{cap}")
        except SDK_ERRORS as error:
            if isinstance(error, botocore.exceptions.ClientError) and error_code(error) == "InvalidRange":
                return b"", self._etag(key) or ""  # an empty object: no byte 0 to range over
            with contextlib.suppress(FileNotFoundError):
                raise_for(error, self.bucket, key, "read")
            return None
        total = response.get("ContentRange", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else response["ContentLength"]
        if size > cap:
            raise _Oversized(size)
        return response["Body"].read(), response["ETag"]

    def _put_if(self, key: str, body: bytes, *, etag: str | None) -> bool:
        """PUT ``body`` only if the object is still at ``etag`` (None: only if it does not exist)."""
        try:
            if etag is None:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfMatch=etag)
        except botocore.exceptions.ClientError as error:
            if error_code(error) in PRECONDITION_FAILED:
                return False
            raise_for(error, self.bucket, key, "write")
        except botocore.exceptions.BotoCoreError as error:
            raise_for(error, self.bucket, key, "write")
        return True

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(*SDK_ERRORS):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def upload_sealed(
    client: S3Client,
    bucket: str,
    object_key: str,
    plaintext: Path,
    *,
    key: bytes,
    key_id: str,
    model: str,
    version: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Encrypted:
    """Encrypt ``plaintext`` (bound to ``model``/``version``) straight into the parts of a multipart upload of
    ``object_key``: the object appears whole when the upload completes, or not at all."""
    uploads: list[MultipartWriter] = []  # the one upload, made once the header is known

    def upload_for(header: ArtifactHeader) -> MultipartWriter:
        # Parts of whole sealed chunks (at least PART_SIZE; the first one also holds the header), so that every
        # chunk is sealed straight into its part's buffer: a 64 MiB model's copy into the parts cost 10 ms of
        # the client's CPU, on cores the server shares (e2e/bench/bench_object_store.py).
        sealed_chunk = header.chunk_size + TAG_BYTES
        part_size = -(-PART_SIZE // sealed_chunk) * sealed_chunk
        upload = MultipartWriter(
            client,
            bucket,
            object_key,
            part_size=part_size,
            first_part_size=header.header_len + part_size,
            concurrency=PART_CONCURRENCY,
            buffered=PART_CONCURRENCY,
        )
        uploads.append(upload)
        return upload

    try:
        sealed = encrypt_to(
            plaintext, upload_for, key=key, key_id=key_id, model=model, version=version, chunk_size=chunk_size
        )
    except BaseException:
        for upload in uploads:
            upload.abort()
        raise
    uploads[0].complete(sealed.size)
    return sealed


class _Oversized(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
