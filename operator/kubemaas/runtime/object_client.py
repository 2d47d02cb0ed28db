"""An S3 client for the artifact store, its failures as the store's errors, and objects read by offset.

boto3 (the SDK KServe's storage initializer and Kubeflow Trainer's initializers use) does the signing,
the retries (its "standard" mode: throttling and 5xx answers are retried with exponential backoff and
jitter) and the multipart transfers. This module decides only what the store needs on top:

- **Credentials** come from a mounted Secret (files ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``,
  KServe's key names) or, without one, from the SDK's default chain, which includes the web-identity
  token a ServiceAccount projects (IRSA-style): no Secret at all. Never from this process's arguments,
  never in a message.
- **Failures** become one error class each, whose message names the bucket and key and the S3 error code,
  never a credential: :class:`ObjectAccessDeniedError`, :class:`NoSuchBucketError`,
  :class:`ObjectStoreUnavailableError`; a missing object is ``FileNotFoundError`` as on a claim.
- **ObjectAccess** reads one object version by offset (ranged GETs, each conditional on the ETag seen
  when it was opened), the :class:`~kubemaas.runtime.crypto.access.RandomAccess` decryption reads through:
  an object replaced while it is read is refused, never mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import boto3
import botocore.config
import botocore.exceptions

from kubemaas.contract.store import S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE, S3Settings
from kubemaas.runtime.errors import (
    NoSuchBucketError,
    ObjectAccessDeniedError,
    ObjectChangedError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Throttling (503 SlowDown) and 5xx: up to 10 attempts in all, with the SDK's capped exponential backoff.
MAX_ATTEMPTS: Final = 10
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
PRECONDITION_FAILED: Final = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
# What the SDK raises: an error answer (ClientError), or no answer after its retries (BotoCoreError).
SDK_ERRORS: Final = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def client_for(settings: S3Settings) -> S3Client:
    """An S3 client as ``settings`` say: endpoint, region, addressing, CA bundle, and keys from the mounted
    Secret's files, or else the SDK's default credential chain."""
    config = botocore.config.Config(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        # Checksums on every request only where the endpoint asks for them: private S3 implementations
        # differ in the trailing checksums boto3 sends by default since 1.36.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    keys: dict[str, Any] = {}
    if settings.credentials_dir is not None:
        keys = {
            "aws_access_key_id": _read_credential(settings.credentials_dir / S3_ACCESS_KEY_FILE),
            "aws_secret_access_key": _read_credential(settings.credentials_dir / S3_SECRET_KEY_FILE),
        }
    session = boto3.session.Session(region_name=settings.region or "us-east-1")
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        verify=str(settings.ca_bundle) if settings.ca_bundle is not None else None,
        config=config,
        **keys,
    )


def _read_credential(path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ObjectStoreError(f"the credentials directory has no {path.name} file ({path.parent})") from None
    if not value:
        raise ObjectStoreError(f"{path.name} in {path.parent} is empty")
    return value


def error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def raise_for(
    error: botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError, bucket: str, key: str, action: str
) -> NoReturn:
    """Re-raise an SDK failure of ``action`` on ``s3://bucket/key`` as the store's error for it."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(error, botocore.exceptions.ClientError):
        code = error_code(error)
        if code in _DENIED:
            raise ObjectAccessDeniedError(f"{action} {where}: access denied ({code})") from None
        if code == "NoSuchBucket":
            raise NoSuchBucketError(f"{action} {where}: bucket {bucket!r} does not exist") from None
        if code in _MISSING:
            raise FileNotFoundError(f"{action} {where}: no such object") from None
        raise ObjectStoreError(f"{action} {where}: {code or 'error'}") from None
    # No answer after the SDK's retries; the class name says which failure (it carries no credential).
    raise ObjectStoreUnavailableError(f"{action} {where}: {type(error).__name__}") from None


class ObjectAccess:
    """One object, read by offset with ranged GETs pinned to the version seen when it was opened."""

    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        self._client, self.bucket, self.key = client, bucket, key
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except SDK_ERRORS as error:
            raise_for(error, bucket, key, "open")
        self._size, self._etag = int(head["ContentLength"]), head["ETag"]

    def size(self) -> int:
        return self._size

    def read_into(self, view: memoryview, offset: int) -> int:
        if offset >= self._size or not len(view):
            return 0
        last = min(offset + len(view), self._size) - 1
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{last}", IfMatch=self._etag
            )
            data = response["Body"].read()
        except botocore.exceptions.ClientError as error:
            if error_code(error) in PRECONDITION_FAILED:
                raise ObjectChangedError(f"s3://{self.bucket}/{self.key} was replaced while it was read") from None
            raise_for(error, self.bucket, self.key, "read")
        except botocore.exceptions.BotoCoreError as error:
            raise_for(error, self.bucket, self.key, "read")
        view[: len(data)] = data
        return len(data)
