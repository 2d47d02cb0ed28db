"""Training data as a directory of files, plain or encrypted (docs/runtime-contract.md §9).

``kubemaas encrypt-data SRC DST`` encrypts every regular file below ``SRC`` into the same relative name below
``DST``, one object per file, in the format of model artifacts (:mod:`kubemaas.runtime.crypto`: AES-256-GCM
in chunks, authenticated header). Each file is bound to ``model`` = ``kubemaas-data`` and ``version`` = its
relative path: a file renamed, or swapped with another, fails its binding check like a changed byte fails its
chunk. The harness reads each file through :class:`Dataset`: beneath the claim's mount without following
links (the data claim's writers are no more trusted than the store's), decrypted into anonymous memory, never
onto a disk. A refused file raises :class:`TamperedDataError`, naming it: the job fails with ``TamperedData``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from kubemaas.contract.termination import Cause
from kubemaas.runtime.beneath import Beneath, Kind, UnsafeEntryError
from kubemaas.runtime.crypto import DEFAULT_CHUNK_SIZE, encrypt_file, open_artifact
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
                if len(str(path).encode("utf-8")) > MAX_NAME_BYTES:
                    raise ValueError(f"data file name {str(path)[:80]}... is longer than {MAX_NAME_BYTES} bytes")
                found.append(str(path))
            else:
                raise UnsafeEntryError(f"{path} under {directory} is a {kind.value}, not a regular file")
    return sorted(found)


class Dataset:
    """The files below ``root`` (``KUBEMAAS_DATA_URI``), read beneath ``anchor`` (the claim's mount).

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
        """The whole file ``name`` (a name :meth:`files` returned), decrypted in memory when encrypted."""
        path = self.root / name
        with self.tree.open(path) as stream:
            if self.keyring is None:
                return stream.read()
            try:
                with open_artifact(stream, keyring=self.keyring, model=DATA_BINDING, version=name) as artifact:
                    return plaintext(artifact)
            except (UnknownKeyError, WrongKeyError) as error:
                raise DataKeyError(f"data file {name}: {error}") from None
            except ArtifactIntegrityError as error:
                raise TamperedDataError(name, str(error)) from None

    def __repr__(self) -> str:
        return f"Dataset({self.root}, encrypted={self.encrypted})"
