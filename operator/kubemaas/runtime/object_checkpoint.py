"""Training checkpoints in the output bucket: ``<prefix>/<model>/.checkpoints/<version>/step-<step>.kmenc``.

The format and protocol are the claim's (kubemaas.runtime.checkpoint): sealed with the job's active key and bound
to ``<version>/checkpoint/<step>``. A checkpoint is one multipart upload of the sealed bytes, which the bucket makes
visible only when it completes: a listed checkpoint is whole, and one still refused (tampered, or sealed with a key
rotated out) is skipped for the next older one. Only ciphertext reaches the bucket.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from kubemaas.contract.store import bucket_of
from kubemaas.runtime.checkpoint import CheckpointStore
from kubemaas.runtime.crypto import decrypt_file
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.object_client import SDK_ERRORS, ObjectAccess, list_objects
from kubemaas.runtime.object_store import upload_sealed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectCheckpoints(CheckpointStore):
    """Checkpoints below ``uri`` (an ``s3://`` key prefix)."""

    def __init__(
        self,
        uri: str,
        client: S3Client,
        *,
        model: str,
        version: str,
        keyring: Keyring,
        keep: int = 2,
        scratch: Path | None = None,
    ) -> None:
        super().__init__(model=model, version=version, keyring=keyring, keep=keep, scratch=scratch)
        self.bucket, self.uri = bucket_of(uri)
        self.client = client
        self._listed: dict[int, float] = {}  # step -> when it was written, as the last listing said

    def key_for(self, step: int) -> str:
        return self.uri.key(self.name_for(step))

    def steps(self) -> list[int]:
        start = self.uri.key_prefix()
        listed: dict[int, float] = {}
        for entry in list_objects(self.client, self.bucket, start):
            step = self.step_of(entry["Key"][len(start) :])
            if step is not None:
                listed[step] = entry["LastModified"].timestamp()
        self._listed = listed
        return sorted(listed)

    def saved_at(self, step: int) -> float | None:
        return self._listed.get(step)

    def _seal(self, step: int, plaintext: Path) -> str:
        key = self.key_for(step)
        keyring = self.keyring
        upload_sealed(
            self.client,
            self.bucket,
            key,
            plaintext,
            key=keyring.active_key(),
            key_id=keyring.active_id,
            model=self.model,
            version=self._bound_to(step),
        )
        return f"s3://{self.bucket}/{key}"

    def _decrypt(self, step: int, plaintext: Path) -> None:
        with ObjectAccess(self.client, self.bucket, self.key_for(step)) as source:
            decrypt_file(source, plaintext, keyring=self.keyring, model=self.model, version=self._bound_to(step))

    def _remove(self, step: int) -> None:
        with contextlib.suppress(*SDK_ERRORS):  # a checkpoint left over is only storage, and the next prune retries
            self.client.delete_object(Bucket=self.bucket, Key=self.key_for(step))
