"""Encrypted artifacts as files: encrypt, open (header checked), decrypt or verify, and the manifest MAC.

Output is written atomically (a temporary file in the destination's directory, fsynced, renamed only
after the whole stream was processed and, for decryption, every chunk verified): a refused artifact
leaves no output file.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kubemaas.runtime.crypto.access import FileAccess, RandomAccess
from kubemaas.runtime.crypto.format import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    ArtifactHeader,
    build_header,
    check_binding,
    check_size,
    parse_header,
    read_header,
    read_header_bytes,
    verify_header,
)
from kubemaas.runtime.crypto.keys import FileKeys, derive_file_keys, derive_manifest_key, manifest_mac_of
from kubemaas.runtime.crypto.stream import FileSink, PlaintextDigest, Sink, decrypt_chunks, encrypt_chunks
from kubemaas.runtime.errors import (
    ExtendedArtifactError,
    ManifestTamperedError,
    PlaintextMismatchError,
    WrongKeyError,
)
from kubemaas.runtime.fsutil import atomic_write
from kubemaas.runtime.keyring import KEY_BYTES, Keyring, validate_key_id


def encrypt_file(
    src: Path | str,
    dst: Path | str,
    *,
    key: bytes,
    key_id: str,
    model: str,
    version: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PlaintextDigest:
    """Encrypt ``src`` into ``dst`` (atomically replaced), bound to ``model``/``version``/``key_id``."""

    def into_file(out_fd: int) -> PlaintextDigest:
        sink = FileSink(out_fd)
        return encrypt_to(
            src, lambda _: sink, key=key, key_id=key_id, model=model, version=version, chunk_size=chunk_size
        ).digest

    return atomic_write(Path(dst), into_file, suffix=".partial")


@dataclass(frozen=True)
class Encrypted:
    """What :func:`encrypt_to` produced: the plaintext's digest, the artifact's header and its whole size."""

    digest: PlaintextDigest
    header: bytes
    size: int


def encrypt_to(
    src: Path | str,
    sink_for: Callable[[ArtifactHeader], Sink],
    *,
    key: bytes,
    key_id: str,
    model: str,
    version: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Encrypted:
    """Encrypt ``src`` as an artifact bound to ``model``/``version``/``key_id`` into ``sink_for(header)``: the
    header at 0, then the sealed chunks, from worker threads, in any order. The sink is made once the header
    is known, so that it can lay out its memory along the chunks: a file (:func:`encrypt_file`), or a multipart
    upload whose parts hold whole chunks (kubemaas.runtime.object_store)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes")
    validate_key_id(key_id)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    with open(src, "rb", buffering=0) as source:
        plaintext_size = os.fstat(source.fileno()).st_size
        nonce_prefix, salt = os.urandom(8), os.urandom(16)
        keys = derive_file_keys(key, salt)
        header_bytes = build_header(
            keys=keys,
            key_id=key_id,
            model=model,
            version=version,
            chunk_size=chunk_size,
            plaintext_size=plaintext_size,
            nonce_prefix=nonce_prefix,
            salt=salt,
        )
        header = parse_header(header_bytes)
        sink = sink_for(header)
        sink.put(memoryview(header_bytes), 0)
        digest = encrypt_chunks(source.fileno(), sink, header, keys.enc)
    return Encrypted(digest, header_bytes, header.encrypted_size)


# An artifact to read: a path, a file the caller opened (the store opens its files beneath its root), or
# any other random-access source (an object in a bucket: kubemaas.runtime.object_store).
Source = Path | str | BinaryIO | RandomAccess


def decrypt_file(
    src: Source,
    dst: Path | str,
    *,
    keyring: Keyring,
    model: str,
    version: str,
    expect: PlaintextDigest | None = None,
) -> ArtifactHeader:
    """Verify and decrypt ``src`` into ``dst``; ``dst`` appears only if every check passed.

    Returns the verified header. GCM authenticates every byte, so no separate hash is needed to
    trust the plaintext; ``expect`` additionally ties it to a manifest's sha256 and size.
    """
    with open_artifact(src, keyring=keyring, model=model, version=version) as artifact:
        return artifact.decrypt_to(dst, expect=expect)


def verify_file(
    src: Source, *, keyring: Keyring, model: str, version: str, expect: PlaintextDigest | None = None
) -> ArtifactHeader:
    """Run every check of :func:`decrypt_file` without writing plaintext anywhere."""
    with open_artifact(src, keyring=keyring, model=model, version=version) as artifact:
        return artifact.verify(expect=expect)


class OpenedArtifact:
    """An open artifact whose header passed every check that needs no chunk (see :func:`open_artifact`).

    Its methods read the same open file (or object version), so what :meth:`verify_manifest` vouched for is
    what :meth:`decrypt_to` decrypts, even if the path is replaced in between.
    """

    def __init__(self, source: RandomAccess, header: ArtifactHeader, keys: FileKeys, manifest_key: bytes) -> None:
        self._source, self.header, self._keys, self._manifest_key = source, header, keys, manifest_key

    def verify_manifest(self, document: bytes, mac: bytes) -> None:
        """Check that ``document`` (a manifest's canonical bytes) is the one published with this artifact.

        ``mac`` is :func:`manifest_mac`'s value; it covers the header checksum, so a manifest of
        another artifact (another model, version, key or publication) fails like an edited one.
        """
        expected = manifest_mac_of(self._manifest_key, self.header.checksum, document)
        if not hmac.compare_digest(expected, mac):
            raise ManifestTamperedError(
                "manifest authentication failed: the manifest was altered, or belongs to another artifact"
            )

    def decrypt_to(self, dst: Path | str, *, expect: PlaintextDigest | None = None) -> ArtifactHeader:
        """Decrypt into ``dst`` (atomically: it appears only after every chunk verified)."""
        return atomic_write(Path(dst), lambda out_fd: self._decrypt(out_fd, expect), suffix=".partial")

    def decrypt_into(self, out_fd: int) -> ArtifactHeader:
        """Decrypt into the open file ``out_fd`` at offsets ``0..plaintext_size``, without a temp file.

        Only authenticated chunks are written, but a refusal can leave the chunks before it in the
        file: for callers that discard the whole file on error (the loader's staging directory).
        No fsync: the caller makes it durable with everything else it writes.
        """
        return self._decrypt(out_fd, None)

    def verify(self, *, expect: PlaintextDigest | None = None) -> ArtifactHeader:
        """Every check of :meth:`decrypt_to`, without writing plaintext anywhere."""
        return self._decrypt(None, expect)

    def _decrypt(self, out_fd: int | None, expect: PlaintextDigest | None) -> ArtifactHeader:
        header = self.header
        if expect is not None and expect.size != header.plaintext_size:
            # Known from the authenticated header: refuse before decrypting anything.
            raise PlaintextMismatchError(
                None, f"artifact holds {header.plaintext_size} bytes of plaintext, the manifest says {expect.size}"
            )
        sha256 = decrypt_chunks(self._source, header, self._keys.enc, out_fd, hashed=expect is not None)
        if self._source.read_into(memoryview(bytearray(1)), header.encrypted_size):  # it grew after the size check
            raise ExtendedArtifactError("artifact has unexpected bytes after its final chunk")
        if expect is not None and not hmac.compare_digest(sha256, expect.sha256):
            raise PlaintextMismatchError(
                sha256, f"decrypted model has sha256 {sha256}, the manifest says {expect.sha256}"
            )
        return header


@contextlib.contextmanager
def open_artifact(src: Source, *, keyring: Keyring, model: str, version: str) -> Iterator[OpenedArtifact]:
    """Open ``src`` and check its header: checksum, key (commitment), header MAC, model/version binding,
    and the file size it promises. Chunks are checked as :meth:`OpenedArtifact.decrypt_to` reads them.
    An open file given as ``src`` is read from its start and left open."""
    with _reading(src) as source:
        file_size = source.size()
        raw = read_header_bytes(source, file_size)
        header = parse_header(raw)
        key = keyring.key(header.key_id)
        keys = verify_header(header, raw, key)
        check_binding(header, model, version)
        check_size(header, file_size)
        yield OpenedArtifact(source, header, keys, derive_manifest_key(key, header.salt))


@contextlib.contextmanager
def _reading(src: Source) -> Iterator[RandomAccess]:
    if isinstance(src, Path | str):
        with open(src, "rb") as stream:
            yield FileAccess(stream.fileno())
    elif isinstance(src, RandomAccess):
        yield src
    else:
        yield FileAccess(src.fileno())


def manifest_mac(artifact: Path | str, document: bytes, *, key: bytes) -> bytes:
    """The MAC that binds ``document`` (a manifest's canonical bytes) to the artifact at ``artifact``.

    Computed by the publisher right after :func:`encrypt_file`, with the same key; checked by
    :meth:`OpenedArtifact.verify_manifest`.
    """
    return manifest_mac_for(read_header(artifact), document, key=key)


def manifest_mac_for(header: ArtifactHeader, document: bytes, *, key: bytes) -> bytes:
    """:func:`manifest_mac` from the artifact's header (what :func:`encrypt_to` returned, parsed)."""
    keys = derive_file_keys(key, header.salt)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise WrongKeyError(f"the key given for {header.key_id!r} is not the key this artifact was encrypted with")
    return manifest_mac_of(derive_manifest_key(key, header.salt), header.checksum, document)
