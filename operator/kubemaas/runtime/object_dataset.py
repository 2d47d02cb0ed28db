"""A dataset in a bucket: one object per file below an ``s3://<bucket>/<prefix>`` (docs/runtime-contract.md §9).

The layout is the directory's (kubemaas.runtime.dataset), with keys for paths: what ``kubemaas encrypt-data``
writes to a directory is uploaded as it is (``aws s3 cp --recursive``, ``rclone copy``), and each object is bound
to its name below the prefix exactly like the file. Listing the objects reads only their names; a rank fetches an
object only when it reads it, so each rank transfers only its own shard (``h.shard(len(files))`` over the names,
as the example does). Encrypted objects are read with ranged GETs pinned to one ETag and decrypted into
anonymous memory as they arrive (kubemaas.runtime.object_client.ObjectAccess): an object replaced while it is read
is refused, and nothing of the plaintext reaches a disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubemaas.contract.store import S3Settings, bucket_of
from kubemaas.runtime.dataset import checked_name, decrypt_data
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.object_client import SDK_ERRORS, ObjectAccess, client_for, list_objects, raise_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectDataset:
    """The objects below ``uri``'s prefix, each read whole and, with a keyring, authenticated and decrypted."""

    def __init__(self, uri: str, client: S3Client, *, keyring: Keyring | None = None) -> None:
        self.bucket, self.uri = bucket_of(uri)
        self.client, self.keyring = client, keyring

    @classmethod
    def from_uri(cls, uri: str, settings: S3Settings, *, keyring: Keyring | None = None) -> ObjectDataset:
        return cls(uri, client_for(settings), keyring=keyring)

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None

    def files(self) -> list[str]:
        """The names below the prefix, sorted; hidden ones (a segment starting with ".") and "directory" markers
        left out, as on a claim."""
        start = self.uri.key_prefix()
        found: list[str] = []
        for entry in list_objects(self.client, self.bucket, start):
            name = entry["Key"][len(start) :]
            if name and not name.endswith("/") and not any(p.startswith(".") for p in name.split("/")):
                found.append(checked_name(name))
        return sorted(found)

    def read(self, name: str) -> bytes:
        key = self.uri.key(name)
        if self.keyring is None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except SDK_ERRORS as error:
                raise_for(error, self.bucket, key, "read")
        with ObjectAccess(self.client, self.bucket, key) as source:
            return decrypt_data(source, name, self.keyring)

    def __repr__(self) -> str:
        return f"ObjectDataset(s3://{self.bucket}/{self.uri.path}, encrypted={self.encrypted})"
