"""Reading a directory tree whose writers are not trusted (the artifact store): beneath its root, no links.

The store's writers hold no key (docs/runtime-contract.md §4), yet the loader and rank 0 read what
they left. A symbolic link there could point a reader at the pod's token or key files, a FIFO could
hang it, ``/dev/zero`` or a sparse file could exhaust its memory. So every path below the root is
walked one component at a time from an open descriptor of the root: each directory opened with
``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's descriptor, the file itself with ``O_NOFOLLOW |
O_NONBLOCK`` (a FIFO opens at once instead of waiting for a writer) and kept only if ``fstat`` says it
is a regular file. Python has no ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``; refusing a link at
every component gives the same guarantee for a reader, and ``..`` or an absolute component is refused
before any call. The root itself is trusted (the claim's mount, which the operator made) and may be a
link.

Refusals are :class:`UnsafeEntryError` (a link, a special file, a file where a directory belongs) and
:class:`OversizedFileError`; a missing entry stays ``FileNotFoundError``. No message carries a byte
of what a file holds: they name the path below the root and what kind of entry it is.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kubemaas.contract.store import ArtifactStoreError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise block until someone opens it for writing.
# O_NOCTTY: a terminal device must never become the process's controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_READ_BLOCK = 64 * 1024


class UnsafeEntryError(ArtifactStoreError):
    """An entry below the store root is a symbolic link, or not the kind of entry expected there."""


class OversizedFileError(ArtifactStoreError):
    """A file below the store root is larger than a reader accepts for it."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class Kind(StrEnum):
    FILE = "regular file"
    DIRECTORY = "directory"
    LINK = "symbolic link"
    FIFO = "FIFO"
    SOCKET = "socket"
    DEVICE = "device"


def kind_of(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIRECTORY
    if stat.S_ISLNK(mode):
        return Kind.LINK
    if stat.S_ISFIFO(mode):
        return Kind.FIFO
    if stat.S_ISSOCK(mode):
        return Kind.SOCKET
    return Kind.DEVICE


class Beneath:
    """Read-only access to the tree under ``root`` that never follows a link below it.

    Paths are given as absolute paths under ``root`` (what the store computes) or relative to it.
    Each call opens the root afresh, so nothing is held open between calls.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def parts(self, path: Path) -> tuple[str, ...]:
        """``path``'s components below the root; :class:`UnsafeEntryError` for ``..`` or a path outside it."""
        try:
            relative = PurePosixPath(path.relative_to(self.root) if path.is_absolute() else path)
        except ValueError:
            raise UnsafeEntryError(f"{path} is not under the store root {self.root}") from None
        parts = tuple(part for part in relative.parts if part != ".")
        if any(part in ("..", "/") for part in parts):
            raise UnsafeEntryError(f"{path} leaves the store root {self.root}")
        return parts

    @contextmanager
    def directory(self, path: Path) -> Iterator[int]:
        """A descriptor of the directory ``path``, each component opened without following links."""
        parts = self.parts(path)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth in range(len(parts)):
                child = self._open_child(fd, parts[: depth + 1], Kind.DIRECTORY)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open(self, path: Path) -> Iterator[BinaryIO]:
        """The regular file ``path``, open for reading (unbuffered), or a refusal."""
        *parents, name = self.parts(path) or ("",)
        if not name:
            raise UnsafeEntryError(f"{self.root} is a directory, not a file")
        with self.directory(Path(*parents)) as parent:
            fd = self._open_child(parent, (*parents, name), Kind.FILE)
        with os.fdopen(fd, "rb", buffering=0) as stream:
            yield stream

    def read(self, path: Path, *, cap: int) -> bytes:
        """All of the regular file ``path``, refused (:class:`OversizedFileError`) above ``cap`` bytes.

        The size is checked before the first read and the read stops at ``cap + 1`` bytes, so a huge,
        sparse or growing file costs at most ``cap + 1`` bytes of memory and no time.
        """
        with self.open(path) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > cap:
                raise self._oversized(path, size, cap)
            data = bytearray()
            while len(data) <= cap and (block := stream.read(min(_READ_BLOCK, cap + 1 - len(data)))):
                data += block
        if len(data) > cap:  # grew after fstat
            raise self._oversized(path, len(data), cap)
        return bytes(data)

    def require_directory(self, path: Path) -> None:
        """Refuse unless ``path`` and each directory above it (below the root) is a real directory.

        For writers, which still write by path: a check before writing, not a guarantee against a writer
        racing it (that one can redirect where ciphertext goes, never what a reader reads)."""
        with self.directory(path):
            pass

    def kind(self, path: Path) -> Kind | None:
        """What ``path`` is (not following a link), or None if it does not exist; its directories must be real."""
        *parents, name = self.parts(path) or ("",)
        if not name:
            return Kind.DIRECTORY
        try:
            with self.directory(Path(*parents)) as parent:
                return kind_of(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return None

    def entries(self, path: Path) -> dict[str, Kind]:
        """The directory's entries and their kinds (links not followed); empty if it does not exist."""
        try:
            with self.directory(path) as fd, os.scandir(fd) as scan:
                return {entry.name: kind_of(entry.stat(follow_symlinks=False).st_mode) for entry in scan}
        except FileNotFoundError:
            return {}

    def _open_child(self, parent: int, parts: tuple[str, ...], expected: Kind) -> int:
        """Open the last of ``parts`` in ``parent`` if it is an ``expected`` entry, else refuse."""
        name, where = parts[-1], "/".join(parts)
        # Looked at before it is opened: opening a device or a FIFO at all can have effects.
        found = kind_of(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        if found is not expected:
            raise UnsafeEntryError(f"{where} under {self.root} is a {found.value}, not a {expected.value}")
        try:
            fd = os.open(name, _DIR_FLAGS if expected is Kind.DIRECTORY else _FILE_FLAGS, dir_fd=parent)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a link since the look
                raise UnsafeEntryError(f"{where} under {self.root} changed into a link while it was opened") from None
            raise
        # Replaced between the look and the open by something else: what was opened decides.
        opened = kind_of(os.fstat(fd).st_mode)
        if opened is not expected:
            os.close(fd)
            raise UnsafeEntryError(f"{where} under {self.root} is a {opened.value}, not a {expected.value}")
        return fd

    def _oversized(self, path: Path, size: int, cap: int) -> OversizedFileError:
        where = "/".join(self.parts(path))
        return OversizedFileError(f"{where} under {self.root} has {size} bytes, more than the {cap} it may hold", size)
