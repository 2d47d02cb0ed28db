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

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import boto3
import botocore.config
import botocore.exceptions

from kubemaas.contract.store import S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE, S3Settings
from kubemaas.runtime.buffers import BufferPool
from kubemaas.runtime.errors import (
    NoSuchBucketError,
    ObjectAccessDeniedError,
    ObjectChangedError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectTypeDef

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


def list_objects(client: S3Client, bucket: str, prefix: str) -> Iterator[ObjectTypeDef]:
    """Every object whose key starts with ``prefix``, page after page; the SDK's failures as the store's."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])
    except SDK_ERRORS as error:
        raise_for(error, bucket, prefix, "list")


class ObjectAccess:
    """One object, read by offset with ranged GETs pinned to the version seen when it was opened.

    Opening it GETs its first ``HEAD_BYTES`` (an artifact's header, and its size and ETag from the answer): one
    request instead of a HEAD and two small GETs. Reads of equal ranges one after the other (decryption's
    chunks) fetch ``AHEAD`` ranges ahead on threads of their own, so that more GETs are in flight than there
    are decryption workers: on a network, latency, not bandwidth, bounds one GET at a time.
    """

    HEAD_BYTES: Final = 64 * 1024
    AHEAD: Final = 4

    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        self._client, self.bucket, self.key = client, bucket, key
        try:
            response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{self.HEAD_BYTES - 1}")
            self._head = response["Body"].read()
            total = response.get("ContentRange", "").rpartition("/")[2]
            self._size, self._etag = int(total) if total.isdigit() else len(self._head), response["ETag"]
        except botocore.exceptions.ClientError as error:
            if error_code(error) != "InvalidRange":
                raise_for(error, bucket, key, "open")
            self._head, self._size, self._etag = b"", 0, ""  # an empty object: no byte 0 to range over
        except botocore.exceptions.BotoCoreError as error:
            raise_for(error, bucket, key, "open")
        self._lock = threading.Lock()
        self._fetches: dict[int, Future[bytes]] = {}  # offset -> the bytes from there, fetched ahead
        self._pool: ThreadPoolExecutor | None = None

    def size(self) -> int:
        return self._size

    def read_into(self, view: memoryview, offset: int) -> int:
        if offset >= self._size or not len(view):
            return 0
        if offset + len(view) <= len(self._head) or len(self._head) == self._size:  # within what open() read
            data = self._head[offset : offset + len(view)]
        else:
            with self._lock:
                fetch = self._fetches.pop(offset, None)
                for ahead in range(1, self.AHEAD + 1):  # the next ranges of the same length
                    self._fetch_ahead(offset + ahead * len(view), len(view))
            data = fetch.result() if fetch is not None else self._get(offset, len(view))
            data = data[: len(view)]
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ObjectAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch_ahead(self, offset: int, length: int) -> None:
        if offset < self._size and offset not in self._fetches:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.AHEAD, thread_name_prefix="kms3get")
            self._fetches[offset] = self._pool.submit(self._get, offset, length)

    def _get(self, offset: int, length: int) -> bytes:
        last = min(offset + length, self._size) - 1
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{last}", IfMatch=self._etag
            )
            return response["Body"].read()
        except botocore.exceptions.ClientError as error:
            if error_code(error) in PRECONDITION_FAILED:
                raise ObjectChangedError(f"s3://{self.bucket}/{self.key} was replaced while it was read") from None
            raise_for(error, self.bucket, self.key, "read")
        except botocore.exceptions.BotoCoreError as error:
            raise_for(error, self.bucket, self.key, "read")


# The parts' buffers, kept for the next part or the next upload: a new buffer's pages fault in and are zeroed as
# the first chunk lands in them, 8 MiB costing 6 ms of CPU here, four times the copy itself. As much as the
# store's uploads have buffered at once (kubemaas.runtime.object_store: 8 parts of two sealed 4 MiB chunks).
PART_BUFFERS: Final = BufferPool(bytearray, limit=72 * 1024 * 1024)


class MultipartWriter:
    """An object written by offset, as :func:`kubemaas.runtime.crypto.encrypt_to` hands over an artifact's
    bytes, and uploaded part by part while the rest is still being written: encryption and upload overlap,
    and the object never lies on a disk first.

    Bytes land in the buffer of their part (``first_part_size`` the first one, ``part_size`` each after it, the
    last one shorter): sealed there in place (:meth:`place`), or copied in (:meth:`put`). A part is uploaded, on
    up to ``concurrency`` threads, as soon as all its bytes are there. At most ``buffered`` parts exist at once
    (filling or uploading): a writer that needs a new one waits for an upload to end, so memory stays bounded
    however much faster encryption is than the network. An uploaded part's buffer takes a later part, of this
    upload or the next one (kubemaas.runtime.buffers: a new buffer's pages fault in and are zeroed as they are
    first written). The chunk workers write a bounded window of chunks in order, so the parts they fill are
    always among the oldest ones and always complete. Nothing is visible until :meth:`complete`; :meth:`abort`
    (or an error) drops every part already uploaded.

    The upload is created on the pool while the first part fills (one round trip less before the first part
    leaves). The first failure (creating the upload, or a part after the SDK's retries) is raised by the next
    write and by :meth:`complete`: writers stop at once instead of sealing the rest for an upload that failed.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int = 16 * 1024 * 1024,
        first_part_size: int | None = None,
        concurrency: int = 4,
        buffered: int = 8,
    ) -> None:
        self._client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.first_part_size = part_size if first_part_size is None else first_part_size
        self._lock = threading.Lock()
        self._room = threading.BoundedSemaphore(buffered)
        self._parts: dict[int, tuple[bytearray, int]] = {}  # index -> (buffer, bytes written into it)
        self._uploads: dict[int, Future[str]] = {}
        self._failure: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kms3part")
        self._created = self._pool.submit(self._create)
        self._created.add_done_callback(self._note_failure)
        self.size = 0

    def place(self, offset: int, length: int, scratch: memoryview) -> memoryview:
        """Room for the ``length`` bytes at ``offset`` (kubemaas.runtime.crypto's Sink): in their part's buffer
        when no part boundary cuts them, so that they are sealed in place; else in ``scratch``, copied by
        :meth:`put`."""
        self._raise_failure()
        index, start = self._locate(offset)
        if start + length > self._part_size(index):
            return scratch[:length]
        return memoryview(self._buffer(index))[start : start + length]

    def put(self, view: memoryview, offset: int) -> None:
        """``view`` holds the object's bytes at ``offset``: in the room :meth:`place` gave, or anywhere else."""
        self._raise_failure()
        index, start = self._locate(offset)
        if start + len(view) <= self._part_size(index) and view.obj is self._buffer(index):
            self._filled(index, offset, len(view))
            return
        while len(view):
            index, start = self._locate(offset)
            length = min(len(view), self._part_size(index) - start)
            buffer = self._buffer(index)
            buffer[start : start + length] = view[:length]
            self._filled(index, offset, length)
            view, offset = view[length:], offset + length

    def _locate(self, offset: int) -> tuple[int, int]:
        """(part index, offset in that part) of the object's byte at ``offset``."""
        if offset < self.first_part_size:
            return 0, offset
        index, start = divmod(offset - self.first_part_size, self.part_size)
        return index + 1, start

    def _part_size(self, index: int) -> int:
        return self.first_part_size if index == 0 else self.part_size

    def _filled(self, index: int, offset: int, length: int) -> None:
        with self._lock:
            buffer, filled = self._parts[index]
            self._parts[index] = (buffer, filled + length)
            self.size = max(self.size, offset + length)
            if filled + length == self._part_size(index):
                self._send(index)

    def _buffer(self, index: int) -> bytearray:
        with self._lock:
            if index in self._parts:
                return self._parts[index][0]
        self._room.acquire()  # outside the lock: an upload that ends releases room
        if self._failure is not None:
            self._room.release()
            self._raise_failure()
        with self._lock:
            if index in self._parts:  # another writer made it meanwhile
                self._room.release()
            else:
                self._parts[index] = (PART_BUFFERS.take(self._part_size(index)), 0)
            return self._parts[index][0]

    def _send(self, index: int, length: int | None = None) -> None:
        buffer, _ = self._parts.pop(index)
        if length is not None:
            del buffer[length:]  # the last part, shortened in place
        self._uploads[index] = self._pool.submit(self._upload, index, buffer)
        self._uploads[index].add_done_callback(self._note_failure)

    def _note_failure(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _create(self) -> str:
        try:
            return self._client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        except SDK_ERRORS as error:
            raise_for(error, self.bucket, self.key, "upload")

    def _upload(self, index: int, buffer: bytearray) -> str:
        # The part's own buffer is the body, no copy: botocore takes a bytearray as it takes bytes (its
        # validator lists both; the stubs name bytes only) and signs and sends it in one pass each, where bytes
        # would be wrapped in a file object that is read back in pieces for the signature and again to send.
        body = cast("bytes", buffer)
        try:
            upload_id = self._created.result()
            answer = self._client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumber=index + 1, Body=body
            )
        except SDK_ERRORS as error:
            raise_for(error, self.bucket, self.key, "upload")
        finally:
            if len(buffer) == self._part_size(index):  # not the last part, shortened in place
                PART_BUFFERS.give(len(buffer), buffer)
            self._room.release()
        return answer["ETag"]

    def complete(self, size: int) -> None:
        """Upload the last part and make the object visible: ``size`` bytes, every one of them written."""
        try:
            with self._lock:
                last, length = self._locate(size - 1)
                if last in self._parts and self._parts[last][1] == length + 1:
                    self._send(last, length + 1)
                if self._parts or self.size != size:
                    self._raise_failure()  # the reason the rest was never written
                    raise ObjectStoreError(f"upload s3://{self.bucket}/{self.key}: {self.size} of {size} bytes written")
            upload_id = self._created.result()
            parts: list[CompletedPartTypeDef] = [
                {"PartNumber": i + 1, "ETag": self._uploads[i].result()} for i in sorted(self._uploads)
            ]
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except SDK_ERRORS as error:
            self.abort()
            raise_for(error, self.bucket, self.key, "upload")
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Drop the upload and every part of it (best effort: the bucket's lifecycle rules catch the rest)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._created.cancelled() or self._created.exception() is not None:
            return  # never created: nothing to drop
        with contextlib.suppress(*SDK_ERRORS):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._created.result())
