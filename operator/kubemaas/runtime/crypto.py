"""Streaming AES-256-GCM encryption of model artifacts (format ``KMAASENC`` v1).

Public API (stable; the model loader codes against it)::

    Keyring.from_dir(path) -> Keyring            # mounted Secret: key-<id> files + `active`
    keyring.active_id -> str
    keyring.key(key_id) -> bytes                 # UnknownKeyError if absent
    encrypt_file(src, dst, *, key, key_id, model, version, chunk_size=DEFAULT_CHUNK_SIZE)
    decrypt_file(src, dst, *, keyring, model, version, expect=None)  # key id comes from the header
    verify_file(src, *, keyring, model, version, expect=None)        # decrypt_file without output
    read_header(path) -> ArtifactHeader                  # structural parse + checksum, no key
    manifest_mac(artifact, document, *, key) -> bytes    # binds a manifest to the artifact
    with open_artifact(src, *, keyring, model, version) as artifact:   # header checked, file kept open
        artifact.verify_manifest(document, mac)          # ManifestTamperedError
        artifact.decrypt_to(dst)                         # or .decrypt_into(fd), .verify()

``encrypt_file`` returns a :class:`PlaintextDigest` (sha256 and size of the plaintext, for the
manifest); ``decrypt_file`` and ``verify_file`` return the verified :class:`ArtifactHeader`.
Callers may ignore both. Given ``expect`` (a manifest's :class:`PlaintextDigest`), decryption also
hashes the plaintext as it streams by and refuses a mismatch with ``PlaintextMismatchError``. The
model loader does not need that hash: it checks the manifest's MAC instead (``manifest_mac``:
HMAC-SHA256 under a key derived from the artifact's key and salt, over the header checksum and the
manifest's bytes), which proves every manifest field, sha256 included, is the publisher's record of
this very file, and the chunks' GCM tags prove the plaintext is the one encrypted (docs/runtime-contract.md).

Both write ``dst`` atomically: output goes to a temporary file in ``dst``'s directory, is
fsynced, and is renamed onto ``dst`` only after the whole stream was processed and, for
decryption, every chunk verified. A refused artifact leaves no output file. Chunks are sealed
and opened on up to four worker threads at once; memory stays a small constant number of chunks
whatever the file size (at most three per worker: 24 MiB with the default chunk size on two
cores, 48 MiB from four cores up).

File layout (all integers big-endian)::

    header:
      magic          8   b"KMAASENC"
      format         2   1
      header_len     4   total header length in bytes
      key_id         1+n length-prefixed ASCII
      model          2+n length-prefixed UTF-8
      version        2+n length-prefixed UTF-8
      chunk_size     4   plaintext bytes per chunk (the last may be shorter)
      plaintext_size 8
      nonce_prefix   8   random per file
      salt          16   random per file, HKDF salt
      commitment    32   HKDF(key, salt) output: identifies the key (wrong key fails here)
      header_mac    32   HMAC-SHA256(mac_key, every header byte before it)
      checksum      32   SHA-256 of every header byte before it (unkeyed: classifies
                         accidental corruption as BadHeaderError before any key is used)
    chunks, n = max(1, ceil(plaintext_size / chunk_size)), each:
      AES-256-GCM(enc_key, nonce = nonce_prefix || u32 index,
                  aad = "KMAASENC/chunk/v1" || checksum || u64 index || u8 final) -> ciphertext || tag(16)

``enc_key``, ``mac_key`` and ``commitment`` come from one HKDF-SHA256 expansion of the
master key with the per-file salt, so each file has its own data key and GCM nonces can
never repeat across files. Model name, version and key id are bound into every chunk
through the header checksum in the associated data, and into the header through the MAC.
The manifest MAC key is a separate HKDF-SHA256 output (same key and salt, info
``KMAASENC/v1 manifest-mac``); the MAC is HMAC-SHA256 over ``"KMAASENC/manifest/v1" ||
checksum || document``.

Error classes (all :class:`ArtifactIntegrityError`): ``BadHeaderError`` (not an artifact,
corrupted header, ``UnsupportedFormatError``, ``HeaderTamperedError``), ``UnknownKeyError``,
``WrongKeyError``, ``BindingMismatchError``, ``TruncatedArtifactError``,
``ExtendedArtifactError``, ``TamperedChunkError`` (``.index``), ``ChunkOrderError``
(``.index``, ``.found``), ``ManifestTamperedError`` and ``PlaintextMismatchError`` (``.actual``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import mmap
import os
import queue
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kubemaas.runtime.errors import (
    ArtifactIntegrityError,
    BadHeaderError,
    BindingMismatchError,
    ChunkOrderError,
    ExtendedArtifactError,
    HeaderTamperedError,
    KeyringError,
    ManifestTamperedError,
    PlaintextMismatchError,
    TamperedChunkError,
    TruncatedArtifactError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
)
from kubemaas.runtime.fsutil import atomic_write
from kubemaas.runtime.keyring import KEY_BYTES, Keyring, validate_key_id

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "ArtifactHeader",
    "ArtifactIntegrityError",
    "BadHeaderError",
    "BindingMismatchError",
    "ChunkOrderError",
    "ExtendedArtifactError",
    "HeaderTamperedError",
    "Keyring",
    "KeyringError",
    "ManifestTamperedError",
    "OpenedArtifact",
    "PlaintextDigest",
    "PlaintextMismatchError",
    "TamperedChunkError",
    "TruncatedArtifactError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "WrongKeyError",
    "decrypt_file",
    "encrypt_file",
    "manifest_mac",
    "open_artifact",
    "read_header",
    "verify_file",
]


MAGIC = b"KMAASENC"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_HEADER_LEN = 64 * 1024
MAX_NAME_BYTES = 1024
TAG_BYTES = 16

_PREFIX = struct.Struct(">8sHI")  # magic, format, header_len
_FIXED_TAIL = struct.Struct(">IQ8s16s32s")  # chunk_size, plaintext_size, nonce_prefix, salt, commitment
_DIGEST_BYTES = 32
_HKDF_INFO = b"KMAASENC/v1 enc-key mac-key commitment"
_CHUNK_AAD_LABEL = b"KMAASENC/chunk/v1"
_HKDF_MANIFEST_INFO = b"KMAASENC/v1 manifest-mac"
_MANIFEST_MAC_LABEL = b"KMAASENC/manifest/v1"
_MIN_HEADER_LEN = _PREFIX.size + 1 + 1 + 2 + 1 + 2 + 1 + _FIXED_TAIL.size + 2 * _DIGEST_BYTES


@dataclass(frozen=True)
class ArtifactHeader:
    """The parsed (checksum-verified, not yet key-verified) header of an encrypted artifact."""

    format_version: int
    key_id: str
    model: str
    version: str
    chunk_size: int
    plaintext_size: int
    nonce_prefix: bytes
    salt: bytes
    commitment: bytes
    header_mac: bytes
    checksum: bytes
    header_len: int

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.plaintext_size // self.chunk_size))

    @property
    def encrypted_size(self) -> int:
        return self.header_len + self.chunk_count * TAG_BYTES + self.plaintext_size

    def chunk_length(self, index: int) -> int:
        """Plaintext length of chunk ``index``."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.plaintext_size - (self.chunk_count - 1) * self.chunk_size


@dataclass(frozen=True)
class PlaintextDigest:
    sha256: str
    size: int


@dataclass(frozen=True)
class _FileKeys:
    enc: AESGCM
    mac_key: bytes
    commitment: bytes


def _derive(key: bytes, salt: bytes) -> _FileKeys:
    material = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt, info=_HKDF_INFO).derive(key)
    return _FileKeys(enc=AESGCM(material[:32]), mac_key=material[32:64], commitment=material[64:])


def _mac(mac_key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _nonce(nonce_prefix: bytes, index: int) -> bytes:
    return nonce_prefix + struct.pack(">I", index)


def _aad(checksum: bytes, index: int, final: bool) -> bytes:
    return _CHUNK_AAD_LABEL + checksum + struct.pack(">QB", index, 1 if final else 0)


def _pack_str(value: str, length_format: str, field: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"{field} must be 1..{MAX_NAME_BYTES} bytes of UTF-8, got {len(raw)}")
    return struct.pack(length_format, len(raw)) + raw


# --------------------------------------------------------------------------- header


def _build_header(
    *,
    keys: _FileKeys,
    key_id: str,
    model: str,
    version: str,
    chunk_size: int,
    plaintext_size: int,
    nonce_prefix: bytes,
    salt: bytes,
) -> bytes:
    body = (
        _pack_str(key_id, ">B", "key id")
        + _pack_str(model, ">H", "model")
        + _pack_str(version, ">H", "version")
        + _FIXED_TAIL.pack(chunk_size, plaintext_size, nonce_prefix, salt, keys.commitment)
    )
    header_len = _PREFIX.size + len(body) + 2 * _DIGEST_BYTES
    authenticated = _PREFIX.pack(MAGIC, FORMAT_VERSION, header_len) + body
    with_mac = authenticated + _mac(keys.mac_key, authenticated)
    return with_mac + hashlib.sha256(with_mac).digest()


def _read_exact_header(stream: BinaryIO, file_size: int) -> bytes:
    prefix = stream.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[: len(MAGIC)] != MAGIC:
        raise BadHeaderError("not a Kubemaas encrypted artifact (magic bytes missing)")
    _, format_version, header_len = _PREFIX.unpack(prefix)
    if format_version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"artifact format version {format_version} is not supported (this reader handles {FORMAT_VERSION})"
        )
    if not _MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise BadHeaderError(f"header length {header_len} is out of range: header is corrupted")
    if header_len > file_size:
        raise BadHeaderError(
            f"file ends inside the header ({file_size} bytes, header needs {header_len}): truncated or corrupted"
        )
    rest = stream.read(header_len - _PREFIX.size)
    if len(rest) != header_len - _PREFIX.size:
        raise BadHeaderError("file ends inside the header: truncated or corrupted")
    return prefix + rest


def _parse_header(raw: bytes) -> ArtifactHeader:
    checked, checksum = raw[:-_DIGEST_BYTES], raw[-_DIGEST_BYTES:]
    if not hmac.compare_digest(hashlib.sha256(checked).digest(), checksum):
        raise BadHeaderError("header checksum mismatch: the header is corrupted")
    _, format_version, header_len = _PREFIX.unpack_from(raw)
    try:
        offset = _PREFIX.size
        key_id, offset = _unpack_str(raw, offset, ">B")
        model, offset = _unpack_str(raw, offset, ">H")
        version, offset = _unpack_str(raw, offset, ">H")
        chunk_size, plaintext_size, nonce_prefix, salt, commitment = _FIXED_TAIL.unpack_from(raw, offset)
        offset += _FIXED_TAIL.size
        header_mac = raw[offset : offset + _DIGEST_BYTES]
        if offset + 2 * _DIGEST_BYTES != len(raw):
            raise ValueError("field lengths do not add up to the header length")
        validate_key_id(key_id)
    except (ValueError, struct.error, UnicodeDecodeError, KeyringError) as exc:
        # The checksum matched, so this header was written this way on purpose: refuse it.
        raise BadHeaderError(f"malformed header: {exc}") from None
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise BadHeaderError(f"chunk size {chunk_size} in header is out of range")
    return ArtifactHeader(
        format_version=format_version,
        key_id=key_id,
        model=model,
        version=version,
        chunk_size=chunk_size,
        plaintext_size=plaintext_size,
        nonce_prefix=nonce_prefix,
        salt=salt,
        commitment=commitment,
        header_mac=header_mac,
        checksum=checksum,
        header_len=header_len,
    )


def _unpack_str(raw: bytes, offset: int, length_format: str) -> tuple[str, int]:
    (length,) = struct.unpack_from(length_format, raw, offset)
    offset += struct.calcsize(length_format)
    if offset + length > len(raw):
        raise ValueError("string field runs past the header")
    return raw[offset : offset + length].decode("utf-8"), offset + length


def read_header(path: Path | str) -> ArtifactHeader:
    """Parse and checksum-verify the header of ``path``. Does not need (or check) a key."""
    with open(path, "rb") as stream:
        return _parse_header(_read_exact_header(stream, os.fstat(stream.fileno()).st_size))


def _verify_header(header: ArtifactHeader, raw: bytes, key: bytes) -> _FileKeys:
    keys = _derive(key, header.salt)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise WrongKeyError(
            f"the keyring's key {header.key_id!r} is not the key this artifact was encrypted with "
            "(the key was replaced under the same id, or the artifact was re-keyed)"
        )
    mac_end = header.header_len - 2 * _DIGEST_BYTES
    if not hmac.compare_digest(_mac(keys.mac_key, raw[:mac_end]), header.header_mac):
        raise HeaderTamperedError("header authentication failed: the header was altered")
    return keys


def _check_binding(header: ArtifactHeader, model: str, version: str) -> None:
    if (header.model, header.version) != (model, version):
        raise BindingMismatchError(
            f"artifact belongs to model {header.model!r} version {header.version!r}, "
            f"not the requested model {model!r} version {version!r}"
        )


def _check_size(header: ArtifactHeader, file_size: int) -> None:
    expected = header.encrypted_size
    if file_size < expected:
        raise TruncatedArtifactError(
            f"artifact is truncated: {file_size} bytes on disk, the header promises {expected} "
            f"({header.chunk_count} chunks)"
        )
    if file_size > expected:
        raise ExtendedArtifactError(f"artifact has {file_size - expected} unexpected bytes after its final chunk")


# --------------------------------------------------------------------------- encrypt


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
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes")
    validate_key_id(key_id)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    with open(src, "rb", buffering=0) as source:
        plaintext_size = os.fstat(source.fileno()).st_size
        nonce_prefix, salt = os.urandom(8), os.urandom(16)
        keys = _derive(key, salt)
        header_bytes = _build_header(
            keys=keys,
            key_id=key_id,
            model=model,
            version=version,
            chunk_size=chunk_size,
            plaintext_size=plaintext_size,
            nonce_prefix=nonce_prefix,
            salt=salt,
        )
        header = _parse_header(header_bytes)

        def write(out_fd: int) -> PlaintextDigest:
            _pwrite_all(out_fd, memoryview(header_bytes), 0)
            return _encrypt_chunks(source.fileno(), out_fd, header, keys.enc)

        return atomic_write(Path(dst), write, suffix=".partial")


def _encrypt_chunks(src_fd: int, out_fd: int, header: ArtifactHeader, aead: AESGCM) -> PlaintextDigest:
    """Workers read, seal and write chunks in parallel; this thread hashes them, in order."""
    _advise_sequential(src_fd)
    sealed_size = header.chunk_size + TAG_BYTES

    def seal(index: int, slot: _Slot, scratch: memoryview) -> None:
        length, src_at, out_at = (
            header.chunk_length(index),
            index * header.chunk_size,
            header.header_len + index * sealed_size,
        )
        plain = _matching(slot.held, src_at, length)
        if _pread_into(src_fd, plain, src_at) != length:
            raise RuntimeError(f"source file changed while encrypting (chunk {index} is short)")
        slot.loaded.set_result(plain)  # the hashing thread may read `plain` from now on
        final = index == header.chunk_count - 1
        sealed = _matching(scratch, out_at, length + TAG_BYTES)
        aead.encrypt_into(_nonce(header.nonce_prefix, index), plain, _aad(header.checksum, index, final), sealed)
        _pwrite_all(out_fd, sealed, out_at)

    # SHA-256 for the manifest is one serial stream over the plaintext, so it stays on this thread
    # while the workers run ahead; a slot is refilled only after its chunk was both hashed and written.
    digest = hashlib.sha256()
    length = header.chunk_length(0)
    with _ChunkPipeline(seal, header.chunk_count, held_size=length, scratch_size=length + TAG_BYTES) as pipe:
        for index in range(header.chunk_count):
            digest.update(pipe.slot(index).loaded.result())
            pipe.done(index)
    if os.pread(src_fd, 1, header.plaintext_size):
        raise RuntimeError("source file grew while encrypting")
    return PlaintextDigest(sha256=digest.hexdigest(), size=header.plaintext_size)


class _Slot:
    """One ring position: the buffer its chunk keeps until the caller is done, and when it is filled."""

    def __init__(self, size: int) -> None:
        self.held = _page_aligned(size)
        self.loaded: Future[memoryview] = Future()


_MAX_WORKERS = 4


class _ChunkPipeline:
    """Runs ``job(index, slot, scratch)`` for every chunk on worker threads, a bounded window at a time.

    Chunks are independent (nonce, associated data and both file offsets follow from the index), so
    workers take them in any order with pread/pwrite, and AES-GCM, file I/O and hashlib all release
    the GIL on large buffers: chunks are sealed or opened on every core at once. Two kinds of memory:
    ``scratch`` (``scratch_size`` bytes) belongs to a running job and goes back to a free list when it
    ends, so there are only as many as workers; ``slot.held`` (``held_size`` bytes) stays with chunk
    ``i`` in slot ``i % depth`` until the caller calls ``done(i)``, for data the caller reads after the
    job (the plaintext it hashes). Either way memory is a few chunks, whatever the file size. Leaving
    the block, also on error, cancels what has not started and waits for what has: no worker
    outlives the call.
    """

    def __init__(
        self, job: Callable[[int, _Slot, memoryview], None], count: int, *, held_size: int, scratch_size: int
    ) -> None:
        workers = min(_MAX_WORKERS, max(2, os.cpu_count() or 2), count)
        # One queued chunk per worker beyond the running ones, so no worker waits on this thread.
        self.depth = min(count, 2 * workers)
        self._job, self._count = job, count
        self._slots = [_Slot(held_size) for _ in range(self.depth)]
        self._scratch: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(workers):
            self._scratch.put(_page_aligned(scratch_size))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kmcrypt")
        self._running: dict[int, Future[None]] = {}

    def __enter__(self) -> _ChunkPipeline:
        for index in range(self.depth):
            self._start(index)
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def slot(self, index: int) -> _Slot:
        return self._slots[index % self.depth]

    def done(self, index: int) -> None:
        """Wait for chunk ``index`` (raising its error) and give its slot to a later chunk."""
        self._running.pop(index).result()
        if index + self.depth < self._count:
            self._start(index + self.depth)

    def _start(self, index: int) -> None:
        slot = self.slot(index)
        slot.loaded = Future()
        self._running[index] = self._pool.submit(self._run, index, slot)

    def _run(self, index: int, slot: _Slot) -> None:
        scratch = self._scratch.get_nowait()  # never empty: no more jobs run than buffers exist
        try:
            self._job(index, slot, scratch)
        except BaseException as exc:
            if not slot.loaded.done():  # whoever waits for the input sees the error too
                slot.loaded.set_exception(exc)
            raise
        finally:
            self._scratch.put(scratch)


def _page_aligned(size: int) -> memoryview:
    """``size`` bytes of fresh anonymous memory starting on a page boundary, plus one page of slack.

    The slack lets :func:`_matching` place each transfer at its file offset's own page offset. Copies
    between the page cache and a buffer whose page offset is a little ahead of the file's (by 16 bytes,
    as malloc'd bytearrays are to page-aligned file offsets) run about 3x slower on this class of CPU
    (4K aliasing in `rep movsb`); with equal page offsets they run at full speed.
    """
    return memoryview(mmap.mmap(-1, size + mmap.PAGESIZE))


def _matching(buffer: memoryview, file_offset: int, length: int) -> memoryview:
    """The ``length`` bytes of page-aligned ``buffer`` at the same page offset as ``file_offset``."""
    start = file_offset % mmap.PAGESIZE
    return buffer[start : start + length]


def _advise_sequential(fd: int) -> None:
    # Read-ahead hint for disk-backed sources; purely advisory, so a refusal changes nothing.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; returns fewer bytes only at end of file."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled:]], offset + filled)
        if not got:
            break
        filled += got
    return filled


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# --------------------------------------------------------------------------- decrypt


def decrypt_file(
    src: Path | str,
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
    src: Path | str, *, keyring: Keyring, model: str, version: str, expect: PlaintextDigest | None = None
) -> ArtifactHeader:
    """Run every check of :func:`decrypt_file` without writing plaintext anywhere."""
    with open_artifact(src, keyring=keyring, model=model, version=version) as artifact:
        return artifact.verify(expect=expect)


class OpenedArtifact:
    """An open artifact whose header passed every check that needs no chunk (see :func:`open_artifact`).

    Its methods read the same open file, so what :meth:`verify_manifest` vouched for is what
    :meth:`decrypt_to` decrypts, even if the path is replaced in between.
    """

    def __init__(self, stream: BinaryIO, header: ArtifactHeader, keys: _FileKeys, manifest_key: bytes) -> None:
        self._stream, self.header, self._keys, self._manifest_key = stream, header, keys, manifest_key

    def verify_manifest(self, document: bytes, mac: bytes) -> None:
        """Check that ``document`` (a manifest's canonical bytes) is the one published with this artifact.

        ``mac`` is :func:`manifest_mac`'s value; it covers the header checksum, so a manifest of
        another artifact (another model, version, key or publication) fails like an edited one.
        """
        expected = _manifest_mac(self._manifest_key, self.header, document)
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
        header, fd = self.header, self._stream.fileno()
        if expect is not None and expect.size != header.plaintext_size:
            # Known from the authenticated header: refuse before decrypting anything.
            raise PlaintextMismatchError(
                None, f"artifact holds {header.plaintext_size} bytes of plaintext, the manifest says {expect.size}"
            )
        sha256 = _decrypt_chunks(fd, header, self._keys.enc, out_fd, hashed=expect is not None)
        if os.pread(fd, 1, header.encrypted_size):  # the file grew after the size check
            raise ExtendedArtifactError("artifact has unexpected bytes after its final chunk")
        if expect is not None and not hmac.compare_digest(sha256, expect.sha256):
            raise PlaintextMismatchError(
                sha256, f"decrypted model has sha256 {sha256}, the manifest says {expect.sha256}"
            )
        return header


@contextlib.contextmanager
def open_artifact(src: Path | str, *, keyring: Keyring, model: str, version: str) -> Iterator[OpenedArtifact]:
    """Open ``src`` and check its header: checksum, key (commitment), header MAC, model/version binding,
    and the file size it promises. Chunks are checked as :meth:`OpenedArtifact.decrypt_to` reads them."""
    with open(src, "rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        raw = _read_exact_header(stream, file_size)
        header = _parse_header(raw)
        key = keyring.key(header.key_id)
        keys = _verify_header(header, raw, key)
        _check_binding(header, model, version)
        _check_size(header, file_size)
        yield OpenedArtifact(stream, header, keys, _derive_manifest_key(key, header.salt))


def manifest_mac(artifact: Path | str, document: bytes, *, key: bytes) -> bytes:
    """The MAC that binds ``document`` (a manifest's canonical bytes) to the artifact at ``artifact``.

    Computed by the publisher right after :func:`encrypt_file`, with the same key; checked by
    :meth:`OpenedArtifact.verify_manifest`.
    """
    header = read_header(artifact)
    keys = _derive(key, header.salt)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise WrongKeyError(f"the key given for {header.key_id!r} is not the key this artifact was encrypted with")
    return _manifest_mac(_derive_manifest_key(key, header.salt), header, document)


def _derive_manifest_key(key: bytes, salt: bytes) -> bytes:
    # Its own HKDF label: never equal to the chunk, header-MAC or commitment keys of any file.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_MANIFEST_INFO).derive(key)


def _manifest_mac(manifest_key: bytes, header: ArtifactHeader, document: bytes) -> bytes:
    # Label and header checksum have fixed lengths, so the input splits one way only.
    return _mac(manifest_key, _MANIFEST_MAC_LABEL + header.checksum + document)


def _decrypt_chunks(src_fd: int, header: ArtifactHeader, aead: AESGCM, out_fd: int | None, *, hashed: bool) -> str:
    """Workers read, open and write chunks in parallel; the first failing chunk (by index) is raised.

    With ``hashed``, this thread hashes the authenticated plaintext in order while the workers run
    ahead (as in encryption) and the hex sha256 is returned; otherwise an empty string.
    """
    _advise_sequential(src_fd)
    sealed_size = header.chunk_size + TAG_BYTES
    # scratch: [sealed chunk at its file offset's page offset | plaintext from the next page boundary]
    # When hashed, the plaintext goes to the chunk's held slot instead, which waits for the hash.
    plain_at = -(-(header.chunk_length(0) + TAG_BYTES + mmap.PAGESIZE) // mmap.PAGESIZE) * mmap.PAGESIZE

    def open_chunk(index: int, slot: _Slot, scratch: memoryview) -> None:
        length, src_at, out_at = (
            header.chunk_length(index),
            header.header_len + index * sealed_size,
            index * header.chunk_size,
        )
        sealed = _matching(scratch, src_at, length + TAG_BYTES)
        plain = _matching(slot.held if hashed else scratch[plain_at:], out_at, length)
        if _pread_into(src_fd, sealed, src_at) != len(sealed):
            raise TruncatedArtifactError(f"artifact is truncated inside chunk {index}")  # shrank after the check
        final = index == header.chunk_count - 1
        try:
            aead.decrypt_into(_nonce(header.nonce_prefix, index), sealed, _aad(header.checksum, index, final), plain)
        except InvalidTag:
            raise _classify_chunk_failure(bytes(sealed), index, header, aead) from None
        slot.loaded.set_result(plain)  # authenticated: the hashing thread may read it from now on
        if out_fd is not None:
            # Only authenticated plaintext is written, to a temp file renamed only after every chunk.
            _pwrite_all(out_fd, plain, out_at)

    length = header.chunk_length(0)
    digest = hashlib.sha256() if hashed else None
    held_size, scratch_size = (length, length + TAG_BYTES) if hashed else (0, plain_at + length)
    with _ChunkPipeline(open_chunk, header.chunk_count, held_size=held_size, scratch_size=scratch_size) as pipe:
        for index in range(header.chunk_count):
            # In index order, so the error reported is that of the first bad chunk.
            if digest is not None:
                digest.update(pipe.slot(index).loaded.result())
            pipe.done(index)
    return digest.hexdigest() if digest is not None else ""


def _classify_chunk_failure(sealed: bytes, index: int, header: ArtifactHeader, aead: AESGCM) -> ArtifactIntegrityError:
    """Tell a moved chunk from a modified one by trying the other positions of equal length.

    Runs only on the failure path; costs one trial decryption per chunk of the file.
    """
    for other in range(header.chunk_count):
        if other == index or header.chunk_length(other) + TAG_BYTES != len(sealed):
            continue
        final = other == header.chunk_count - 1
        with contextlib.suppress(InvalidTag):
            aead.decrypt(_nonce(header.nonce_prefix, other), sealed, _aad(header.checksum, other, final))
            message = f"chunk {index} holds the authentic data of chunk {other}: chunks were reordered"
            return ChunkOrderError(index, other, message)
    return TamperedChunkError(
        index, f"chunk {index} of {header.chunk_count} failed authentication: its bytes were altered"
    )
