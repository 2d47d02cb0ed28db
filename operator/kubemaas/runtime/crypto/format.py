"""The ``KMAASENC`` v1 file layout: the header (built, read, checked) and each chunk's nonce and associated data.

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

Model name, version and key id are bound into every chunk through the header checksum in the
associated data, and into the header through the MAC (keys: :mod:`kubemaas.runtime.crypto.keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path

from kubemaas.runtime.crypto.access import FileAccess, RandomAccess
from kubemaas.runtime.crypto.keys import FileKeys, derive_file_keys, hmac_sha256
from kubemaas.runtime.errors import (
    BadHeaderError,
    BindingMismatchError,
    ExtendedArtifactError,
    HeaderTamperedError,
    KeyringError,
    TruncatedArtifactError,
    UnsupportedFormatError,
    WrongKeyError,
)
from kubemaas.runtime.keyring import validate_key_id

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
_CHUNK_AAD_LABEL = b"KMAASENC/chunk/v1"
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


def chunk_nonce(nonce_prefix: bytes, index: int) -> bytes:
    return nonce_prefix + struct.pack(">I", index)


def chunk_aad(checksum: bytes, index: int, final: bool) -> bytes:
    return _CHUNK_AAD_LABEL + checksum + struct.pack(">QB", index, 1 if final else 0)


def _pack_str(value: str, length_format: str, field: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"{field} must be 1..{MAX_NAME_BYTES} bytes of UTF-8, got {len(raw)}")
    return struct.pack(length_format, len(raw)) + raw


def build_header(
    *,
    keys: FileKeys,
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
    with_mac = authenticated + hmac_sha256(keys.mac_key, authenticated)
    return with_mac + hashlib.sha256(with_mac).digest()


def read_header_bytes(source: RandomAccess, file_size: int) -> bytes:
    prefix = _read_at(source, 0, _PREFIX.size)
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
    rest = _read_at(source, _PREFIX.size, header_len - _PREFIX.size)
    if len(rest) != header_len - _PREFIX.size:
        raise BadHeaderError("file ends inside the header: truncated or corrupted")
    return prefix + rest


def _read_at(source: RandomAccess, offset: int, length: int) -> bytes:
    buffer = bytearray(length)
    return bytes(buffer[: source.read_into(memoryview(buffer), offset)])


def parse_header(raw: bytes) -> ArtifactHeader:
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
        # The checksum matched, so this header was written this way on purpose: refuse it, naming what is
        # wrong but not quoting it (a decode error or an invalid key id would put the file's bytes in the message).
        raise BadHeaderError(f"malformed header ({_malformed(exc)})") from None
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


def _malformed(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "a name is not UTF-8"
    if isinstance(error, KeyringError):
        return "the key id is not a valid key id"
    return "fields do not fit the header"


def _unpack_str(raw: bytes, offset: int, length_format: str) -> tuple[str, int]:
    (length,) = struct.unpack_from(length_format, raw, offset)
    offset += struct.calcsize(length_format)
    if offset + length > len(raw):
        raise ValueError("string field runs past the header")
    return raw[offset : offset + length].decode("utf-8"), offset + length


def read_header(path: Path | str) -> ArtifactHeader:
    """Parse and checksum-verify the header of ``path``. Does not need (or check) a key."""
    with open(path, "rb") as stream:
        source = FileAccess(stream.fileno())
        return parse_header(read_header_bytes(source, source.size()))


def verify_header(header: ArtifactHeader, raw: bytes, key: bytes) -> FileKeys:
    keys = derive_file_keys(key, header.salt)
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise WrongKeyError(
            f"the keyring's key {header.key_id!r} is not the key this artifact was encrypted with "
            "(the key was replaced under the same id, or the artifact was re-keyed)"
        )
    mac_end = header.header_len - 2 * _DIGEST_BYTES
    if not hmac.compare_digest(hmac_sha256(keys.mac_key, raw[:mac_end]), header.header_mac):
        raise HeaderTamperedError("header authentication failed: the header was altered")
    return keys


def check_binding(header: ArtifactHeader, model: str, version: str) -> None:
    if (header.model, header.version) != (model, version):
        raise BindingMismatchError(
            f"artifact belongs to model {header.model!r} version {header.version!r}, "
            f"not the requested model {model!r} version {version!r}"
        )


def check_size(header: ArtifactHeader, file_size: int) -> None:
    expected = header.encrypted_size
    if file_size < expected:
        raise TruncatedArtifactError(
            f"artifact is truncated: {file_size} bytes on disk, the header promises {expected} "
            f"({header.chunk_count} chunks)"
        )
    if file_size > expected:
        raise ExtendedArtifactError(f"artifact has {file_size - expected} unexpected bytes after its final chunk")
