"""Crash-safe file system primitives: a rename is only durable once its directory is fsynced."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def fsync_dir(directory: Path) -> None:
    """Make renames and creations inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (not yet visible to readers, e.g. inside a staging dir) with ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all_and_sync(fd, data)
    finally:
        os.close(fd)


def atomic_write(path: Path, produce: Callable[[int], _T], mode: int | None = None, suffix: str = ".tmp") -> _T:
    """Replace ``path`` with what ``produce`` writes to a file descriptor, all or nothing.

    ``produce`` writes into a private temp file beside ``path``; only after it returned, and the
    file was fsynced, is the file renamed onto ``path`` (and the directory fsynced). Readers see the
    old content or the new, never a mix; a failure leaves no temp file behind.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(tmp_name)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            result = produce(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return result


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix."""
    atomic_write(path, lambda fd: _write_all_and_sync(fd, data), mode=mode)
