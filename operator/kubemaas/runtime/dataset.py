"""Training data as a directory of files or a bucket of objects, plain or encrypted (docs/runtime-contract.md §9).

``kubemaas encrypt-data SRC DST`` encrypts every regular file below ``SRC`` into the same relative name below
``DST``, one object per file, in the format of model artifacts (:mod:`kubemaas.runtime.crypto`: AES-256-GCM
in chunks, authenticated header). Each file is bound to ``model`` = ``kubemaas-data`` and ``version`` = its
relative path: a file renamed, or swapped with another, fails its binding check like a changed byte fails its
chunk. The harness reads each file through a :class:`Dataset`: on a claim (:class:`DirectoryDataset`) beneath
the claim's mount without following links (the data claim's writers are no more trusted than the store's); in a
bucket (kubemaas.runtime.object_dataset) one object per file, fetched only by the rank that reads it. Either way
decrypted into anonymous memory, never onto a disk. A refused file raises :class:`TamperedDataError`, naming it:
the job fails with ``TamperedData``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Protocol

from kubemaas.contract.store import S3Settings, StoreUri
from kubemaas.contract.termination import Cause
from kubemaas.runtime.beneath import Beneath, Kind, UnsafeEntryError
from kubemaas.runtime.crypto import DEFAULT_CHUNK_SIZE, encrypt_file, open_artifact
from kubemaas.runtime.crypto.files import Source
from kubemaas.runtime.errors import ArtifactIntegrityError, KeyringError, UnknownKeyError, WrongKeyError
from kubemaas.runtime.inmemory import plaintext
from kubemaas.runtime.keyring import Keyring

DATA_BINDING = "kubemaas-data"
# What the header's version field holds at most (kubemaas.runtime.crypto.format.MAX_NAME_BYTES).
MAX_NAME_BYTES = 1024


class TamperedDataError(Exception):
    """A data file failed authentication: it is not the file encrypted under this name with this key."""

    cause = Cause.TamperedData

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"data file {name} failed authentication: {detail}")
        self.name = name


class DataKeyError(KeyringError):
    """The data key Secret does not hold the key a data file was encrypted with (a configuration error)."""


def encrypt_dataset(
    src: Path, dst: Path, *, key: bytes, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[str]:
    """Encrypt every regular file below ``src`` to the same relative name below ``dst``; returns the names.

    Links and special files are refused rather than followed: what is encrypted is what the directory holds.
    """
    src, dst = src.resolve(), dst.resolve()
    if dst == src or dst.is_relative_to(src):
        raise ValueError(f"the destination {dst} must not lie inside the source {src}")
    names = files_below(Beneath(src), src)
    for name in names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(
            src / name, target, key=key, key_id=key_id, model=DATA_BINDING, version=name, chunk_size=chunk_size
        )
    return names


def files_below(tree: Beneath, directory: Path) -> list[str]:
    """Relative POSIX names of the regular files below ``directory``, sorted; hidden entries skipped (the
    kubelet's and writers' temporary files), links and special files refused."""
    found: list[str] = []
    pending = [PurePosixPath()]
    while pending:
        relative = pending.pop()
        for name, kind in sorted(tree.entries(directory / relative).items()):
            if name.startswith("."):
                continue
            path = relative / name
            if kind is Kind.DIRECTORY:
                pending.append(path)
            elif kind is Kind.FILE:
                found.append(checked_name(str(path)))
            else:
                raise UnsafeEntryError(f"{path} under {directory} is a {kind.value}, not a regular file")
    return sorted(found)


def checked_name(name: str) -> str:
    """``name`` if it fits a header's version field (what a file is bound to)."""
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"data file name {name[:80]}... is longer than {MAX_NAME_BYTES} bytes")
    return name


def decrypt_data(source: Source, name: str, keyring: Keyring) -> bytes:
    """The authenticated plaintext of the data file ``name`` read from ``source``."""
    try:
        with open_artifact(source, keyring=keyring, model=DATA_BINDING, version=name) as artifact:
            return plaintext(artifact)
    except (UnknownKeyError, WrongKeyError) as error:
        raise DataKeyError(f"data file {name}: {error}") from None
    except ArtifactIntegrityError as error:
        raise TamperedDataError(name, str(error)) from None


class Dataset(Protocol):
    """What the harness offers a training program as ``h.data``: the dataset's file names and their contents."""

    @property
    def encrypted(self) -> bool: ...

    def files(self) -> list[str]:
        """Relative POSIX names of the dataset's files, sorted (hidden ones left out)."""
        ...

    def read(self, name: str) -> bytes:
        """The whole file ``name`` (a name :meth:`files` returned), decrypted in memory when encrypted."""
        ...


class DirectoryDataset:
    """The files below ``root`` (``KUBEMAAS_DATA_URI`` on a claim), read beneath ``anchor`` (the claim's mount).

    With a keyring (``KUBEMAAS_DATA_KEY_DIR``) every file is an encrypted object and :meth:`read` returns its
    authenticated plaintext; without one, the file's bytes.
    """

    def __init__(self, root: Path, *, anchor: Path | None = None, keyring: Keyring | None = None) -> None:
        self.root = root
        self.tree = Beneath(root if anchor is None else anchor)
        self.keyring = keyring

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None

    def files(self) -> list[str]:
        return files_below(self.tree, self.root)

    def read(self, name: str) -> bytes:
        path = self.root / name
        with self.tree.open(path) as stream:
            if self.keyring is None:
                return stream.read()
            return decrypt_data(stream, name, self.keyring)

    def __repr__(self) -> str:
        return f"DirectoryDataset({self.root}, encrypted={self.encrypted})"


def open_dataset(uri: str, *, mount_root: Path, s3: S3Settings, keyring: Keyring | None) -> Dataset:
    """The dataset ``uri`` names: a directory on a claim mounted under ``mount_root``, or the objects below an
    ``s3://`` prefix, reached as ``s3`` says."""
    parsed = StoreUri.parse(uri)
    if parsed.scheme == "s3":
        from kubemaas.runtime.object_dataset import ObjectDataset  # boto3 only where a bucket is used

        return ObjectDataset.from_uri(uri, s3, keyring=keyring)
    return DirectoryDataset(parsed.resolve(mount_root), anchor=parsed.mount(mount_root), keyring=keyring)
