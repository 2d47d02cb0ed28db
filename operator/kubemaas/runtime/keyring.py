"""Model encryption keys, read from a mounted Kubernetes Secret directory.

Directory layout (a Secret mounted as a volume; see docs/runtime-contract.md)::

    <dir>/key-<id>   exactly 32 raw bytes: an AES-256 key. Kubernetes mounts Secret
                     ``data`` values decoded, so the Secret holds the base64 of these
                     32 bytes and the file holds the raw bytes.
    <dir>/active     the id of the key new artifacts are encrypted with (surrounding
                     whitespace ignored).

``<id>`` matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,62}``. Entries whose names start with
``..`` (the kubelet's atomic-update bookkeeping) and any other names are ignored.
Key bytes never appear in ``repr``, messages or logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The file names are the contract's; re-exported for the runtime's callers.
from kubemaas.contract.keys import ACTIVE_FILE as ACTIVE_FILE
from kubemaas.contract.keys import KEY_BYTES as KEY_BYTES
from kubemaas.contract.keys import KEY_FILE_PREFIX as KEY_FILE_PREFIX
from kubemaas.contract.keys import KEY_ID_PATTERN
from kubemaas.runtime.errors import KeyringError, UnknownKeyError


def validate_key_id(key_id: str) -> str:
    """Return ``key_id`` if it is a valid key id, else raise :class:`KeyringError`."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise KeyringError(f"invalid key id {key_id!r}: must match {KEY_ID_PATTERN.pattern}")
    return key_id


def generate_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=256)


class Keyring:
    """Named AES-256 keys with one active id. Immutable after construction."""

    __slots__ = ("_active_id", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active_id: str) -> None:
        for key_id, key in keys.items():
            validate_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id!r} has {len(key)} bytes, expected {KEY_BYTES}")
        if active_id not in keys:
            raise KeyringError(f"active key id {active_id!r} is not among the keys {sorted(keys)}")
        self._keys = {key_id: bytes(key) for key_id, key in keys.items()}
        self._active_id = active_id

    @classmethod
    def from_dir(cls, path: Path | str) -> Keyring:
        """Read ``key-<id>`` files and the ``active`` file from a mounted Secret directory."""
        directory = Path(path)
        if not directory.is_dir():
            raise KeyringError(f"key directory {directory} does not exist or is not a directory")
        keys: dict[str, bytes] = {}
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("..") or not entry.name.startswith(KEY_FILE_PREFIX):
                continue
            key_id = validate_key_id(entry.name[len(KEY_FILE_PREFIX) :])
            keys[key_id] = _read_key_file(entry)
        if not keys:
            raise KeyringError(f"key directory {directory} holds no {KEY_FILE_PREFIX}<id> files")
        active_file = directory / ACTIVE_FILE
        if active_file.is_file():
            active_id = active_file.read_text(encoding="utf-8").strip()
        elif len(keys) == 1:
            # A Secret with a single key needs no `active` entry: there is nothing to choose.
            active_id = next(iter(keys))
        else:
            raise KeyringError(f"key directory {directory} holds several keys but no {ACTIVE_FILE} file")
        return cls(keys, active_id)

    @property
    def active_id(self) -> str:
        return self._active_id

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def key(self, key_id: str) -> bytes:
        """The key bytes for ``key_id``; :class:`UnknownKeyError` if absent."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(
                f"artifact was encrypted with key id {key_id!r}, which the keyring does not hold "
                f"(known ids: {self.ids})"
            ) from None

    def active_key(self) -> bytes:
        return self._keys[self._active_id]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring(active_id={self._active_id!r}, ids={self.ids!r})"


def _read_key_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size != KEY_BYTES:
        # Say how long it is, never what it holds: base64 text here is a common mistake.
        hint = " (it looks base64-encoded; the file must hold the raw bytes)" if size in (44, 45) else ""
        raise KeyringError(f"key file {path.name} has {size} bytes, expected {KEY_BYTES} raw bytes{hint}")
    return path.read_bytes()


def write_keyring_dir(path: Path | str, keys: Mapping[str, bytes], active_id: str) -> Path:
    """Write keys in the mounted-Secret layout (for tests and local tooling), files mode 0600."""
    Keyring(keys, active_id)  # validate before touching the disk
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for key_id, key in keys.items():
        _write_private(directory / f"{KEY_FILE_PREFIX}{key_id}", key)
    _write_private(directory / ACTIVE_FILE, active_id.encode("utf-8"))
    return directory


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
