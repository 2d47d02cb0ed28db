"""Where an artifact's bytes are read from, by offset: an open file, or an object in a bucket.

Decryption reads the header, then every chunk at its offset on several worker threads at once
(:mod:`kubemaas.runtime.crypto.stream`). Anything that can fill a buffer from an offset can be
decrypted that way: a file (``pread``), or an object store's ranged GETs (kubemaas.runtime.object_store),
so a model in a bucket is fetched and decrypted in the same pass, with no full download to disk first.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from kubemaas.runtime.crypto.pipeline import advise_sequential, pread_into


@runtime_checkable
class RandomAccess(Protocol):
    """An artifact's bytes, read at offsets, safe to call from several threads at once."""

    def size(self) -> int:
        """The artifact's length in bytes, as it was when opened."""
        ...

    def read_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from ``offset``; fewer bytes only at the end of the artifact (0 past it)."""
        ...


class FileAccess:
    """An open file's descriptor (left open: its owner closes it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        advise_sequential(fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_into(self, view: memoryview, offset: int) -> int:
        return pread_into(self.fd, view, offset)
