"""The chunk stream: sealing and opening every chunk of an artifact with AES-256-GCM, hashing the plaintext.

The header is already written or checked (:mod:`kubemaas.runtime.crypto.format`); the workers that
run the chunks are the pipeline's (:mod:`kubemaas.runtime.crypto.pipeline`).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubemaas.runtime.crypto.access import RandomAccess
from kubemaas.runtime.crypto.format import TAG_BYTES, ArtifactHeader, chunk_aad, chunk_nonce
from kubemaas.runtime.crypto.pipeline import (
    ChunkPipeline,
    Slot,
    advise_sequential,
    matching,
    pread_into,
    pwrite_all,
)
from kubemaas.runtime.errors import (
    ArtifactIntegrityError,
    ChunkOrderError,
    TamperedChunkError,
    TruncatedArtifactError,
)


@dataclass(frozen=True)
class PlaintextDigest:
    """The sha256 (hex) and size of an artifact's plaintext, as its manifest records them."""

    sha256: str
    size: int


class Sink(Protocol):
    """Where an artifact's bytes go, by offset, from several threads at once: a file (:class:`FileSink`), or the
    parts of a multipart upload (kubemaas.runtime.object_client.MultipartWriter)."""

    def place(self, offset: int, length: int, scratch: memoryview) -> memoryview:
        """Room to seal the ``length`` bytes at ``offset`` into: memory of the sink's own where it holds them
        (a part's buffer: sealed in place, no copy), else a part of ``scratch``."""
        ...

    def put(self, view: memoryview, offset: int) -> None:
        """``view`` holds the artifact's bytes at ``offset``: in the room :meth:`place` gave, or elsewhere."""
        ...


class FileSink:
    """An artifact written into an open file: sealed in the worker's scratch, then pwritten."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def place(self, offset: int, length: int, scratch: memoryview) -> memoryview:
        return matching(scratch, offset, length)

    def put(self, view: memoryview, offset: int) -> None:
        pwrite_all(self.fd, view, offset)


def encrypt_chunks(src_fd: int, sink: Sink, header: ArtifactHeader, aead: AESGCM) -> PlaintextDigest:
    """Workers read, seal and put chunks in parallel (the sink is called from several threads at once, with each
    chunk's offset in the artifact); this thread hashes them, in order."""
    advise_sequential(src_fd)
    sealed_size = header.chunk_size + TAG_BYTES

    def seal(index: int, slot: Slot, scratch: memoryview) -> None:
        length, src_at, out_at = (
            header.chunk_length(index),
            index * header.chunk_size,
            header.header_len + index * sealed_size,
        )
        plain = matching(slot.held, src_at, length)
        if pread_into(src_fd, plain, src_at) != length:
            raise RuntimeError(f"source file changed while encrypting (chunk {index} is short)")
        slot.loaded.set_result(plain)  # the hashing thread may read `plain` from now on
        final = index == header.chunk_count - 1
        sealed = sink.place(out_at, length + TAG_BYTES, scratch)
        aead.encrypt_into(
            chunk_nonce(header.nonce_prefix, index), plain, chunk_aad(header.checksum, index, final), sealed
        )
        sink.put(sealed, out_at)

    # SHA-256 for the manifest is one serial stream over the plaintext, so it stays on this thread
    # while the workers run ahead; a slot is refilled only after its chunk was both hashed and written.
    digest = hashlib.sha256()
    length = header.chunk_length(0)
    with ChunkPipeline(seal, header.chunk_count, held_size=length, scratch_size=length + TAG_BYTES) as pipe:
        for index in range(header.chunk_count):
            digest.update(pipe.slot(index).loaded.result())
            pipe.done(index)
    if os.pread(src_fd, 1, header.plaintext_size):
        raise RuntimeError("source file grew while encrypting")
    return PlaintextDigest(sha256=digest.hexdigest(), size=header.plaintext_size)


def decrypt_chunks(src: RandomAccess, header: ArtifactHeader, aead: AESGCM, out_fd: int | None, *, hashed: bool) -> str:
    """Workers read, open and write chunks in parallel; the first failing chunk (by index) is raised.

    With ``hashed``, this thread hashes the authenticated plaintext in order while the workers run
    ahead (as in encryption) and the hex sha256 is returned; otherwise an empty string.
    """
    sealed_size = header.chunk_size + TAG_BYTES
    # scratch: [sealed chunk at its file offset's page offset | plaintext from the next page boundary]
    # When hashed, the plaintext goes to the chunk's held slot instead, which waits for the hash.
    plain_at = -(-(header.chunk_length(0) + TAG_BYTES + mmap.PAGESIZE) // mmap.PAGESIZE) * mmap.PAGESIZE

    def open_chunk(index: int, slot: Slot, scratch: memoryview) -> None:
        length, src_at, out_at = (
            header.chunk_length(index),
            header.header_len + index * sealed_size,
            index * header.chunk_size,
        )
        sealed = matching(scratch, src_at, length + TAG_BYTES)
        plain = matching(slot.held if hashed else scratch[plain_at:], out_at, length)
        if src.read_into(sealed, src_at) != len(sealed):
            raise TruncatedArtifactError(f"artifact is truncated inside chunk {index}")  # shrank after the check
        final = index == header.chunk_count - 1
        try:
            aead.decrypt_into(
                chunk_nonce(header.nonce_prefix, index), sealed, chunk_aad(header.checksum, index, final), plain
            )
        except InvalidTag:
            raise classify_chunk_failure(bytes(sealed), index, header, aead) from None
        slot.loaded.set_result(plain)  # authenticated: the hashing thread may read it from now on
        if out_fd is not None:
            # Only authenticated plaintext is written, to a temp file renamed only after every chunk.
            pwrite_all(out_fd, plain, out_at)

    length = header.chunk_length(0)
    digest = hashlib.sha256() if hashed else None
    held_size, scratch_size = (length, length + TAG_BYTES) if hashed else (0, plain_at + length)
    with ChunkPipeline(open_chunk, header.chunk_count, held_size=held_size, scratch_size=scratch_size) as pipe:
        for index in range(header.chunk_count):
            # In index order, so the error reported is that of the first bad chunk.
            if digest is not None:
                digest.update(pipe.slot(index).loaded.result())
            pipe.done(index)
    return digest.hexdigest() if digest is not None else ""


def classify_chunk_failure(sealed: bytes, index: int, header: ArtifactHeader, aead: AESGCM) -> ArtifactIntegrityError:
    """Tell a moved chunk from a modified one by trying the other positions of equal length.

    Runs only on the failure path; costs one trial decryption per chunk of the file.
    """
    for other in range(header.chunk_count):
        if other == index or header.chunk_length(other) + TAG_BYTES != len(sealed):
            continue
        final = other == header.chunk_count - 1
        with contextlib.suppress(InvalidTag):
            aead.decrypt(chunk_nonce(header.nonce_prefix, other), sealed, chunk_aad(header.checksum, other, final))
            message = f"chunk {index} holds the authentic data of chunk {other}: chunks were reordered"
            return ChunkOrderError(index, other, message)
    return TamperedChunkError(
        index, f"chunk {index} of {header.chunk_count} failed authentication: its bytes were altered"
    )
