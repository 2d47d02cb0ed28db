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

from kubemaas.contract.store import ArtifactStoreError, S3Settings, StoreUri
from kubemaas.runtime.dataset import checked_name, decrypt_data
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.object_client import SDK_ERRORS, ObjectAccess, client_for, raise_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectDataset:
    """The objects below ``uri``'s prefix, each read whole and, with a keyring, authenticated and decrypted."""

    def __init__(self, uri: str, client: S3Client, *, keyring: Keyring | None = None) -> None:
        parsed = StoreUri.parse(uri)
        if parsed.bucket is None:
            raise ArtifactStoreError(f"not an s3:// URI: {uri!r}")
        self.bucket, self.prefix, self.client, self.keyring = parsed.bucket, parsed.path, client, keyring

    @classmethod
    def from_uri(cls, uri: str, settings: S3Settings, *, keyring: Keyring | None = None) -> ObjectDataset:
        return cls(uri, client_for(settings), keyring=keyring)

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def files(self) -> list[str]:
        """The names below the prefix, sorted; hidden ones (a segment starting with ".") and "directory" markers
        left out, as on a claim."""
        start = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for entry in page.get("Contents", []):
                    name = entry["Key"][len(start) :]
                    if name and not name.endswith("/") and not any(p.startswith(".") for p in name.split("/")):
                        found.append(checked_name(name))
        except SDK_ERRORS as error:
            raise_for(error, self.bucket, start, "list")
        return sorted(found)

    def read(self, name: str) -> bytes:
        key = self.key(name)
        if self.keyring is None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except SDK_ERRORS as error:
                raise_for(error, self.bucket, key, "read")
        source = ObjectAccess(self.client, self.bucket, key)
        try:
            return decrypt_data(source, name, self.keyring)
        finally:
            source.close()

    def __repr__(self) -> str:
        return f"ObjectDataset(s3://{self.bucket}/{self.prefix}, encrypted={self.encrypted})"
