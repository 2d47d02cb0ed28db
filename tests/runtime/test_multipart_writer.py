"""MultipartWriter's bookkeeping, against an in-memory stand-in for S3's multipart calls (pure logic: which bytes
go into which part, when a part goes out, how many buffers exist, what an error leaves). The real server's
side is e2e/test_object_store.py's."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from kubemaas.runtime.errors import ObjectStoreError
from kubemaas.runtime.object_client import MultipartWriter

PART = 1024


class Uploads:
    """create/upload_part/complete/abort as S3 answers them, recording what arrived and how many parts were
    buffered (between a writer asking for a part and its upload ending) at the peak."""

    def __init__(self, fail_part: int | None = None, fail_create: bool = False) -> None:
        self.parts: dict[int, bytes] = {}
        self.bodies: list[bytearray] = []  # every body handed over, kept alive: identity tells reuse
        self.attempted: list[int] = []
        self.completed: bytes | None = None
        self.aborted = False
        self.fail_part, self.fail_create = fail_part, fail_create
        self._lock = threading.Lock()

    def create_multipart_upload(self, **_: Any) -> dict[str, str]:
        if self.fail_create:
            raise RuntimeError("injected create failure")
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber: int, Body: bytearray, UploadId: str, **_: Any) -> dict[str, str]:
        assert UploadId == "u1"
        with self._lock:
            self.attempted.append(PartNumber)
        if PartNumber == self.fail_part:
            raise RuntimeError("injected failure")
        with self._lock:
            self.parts[PartNumber] = bytes(Body)
            self.bodies.append(Body)
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, *, MultipartUpload: dict[str, Any], **_: Any) -> None:
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(self.parts) == list(range(1, len(numbers) + 1))
        assert all(p["ETag"] == f'"{p["PartNumber"]}"' for p in MultipartUpload["Parts"])
        self.completed = b"".join(self.parts[n] for n in numbers)

    def abort_multipart_upload(self, **_: Any) -> None:
        self.aborted = True


def writer(uploads: Uploads, buffered: int = 3) -> MultipartWriter:
    return MultipartWriter(cast(Any, uploads), "b", "k", part_size=PART, concurrency=2, buffered=buffered)


@pytest.mark.parametrize("size", [1, PART - 1, PART, PART + 1, 7 * PART + 13])
def test_bytes_written_in_a_bounded_window_in_any_order_become_the_object(size: int) -> None:
    data = os.urandom(size)
    pieces = [(offset, data[offset : offset + 300]) for offset in range(0, size, 300)]
    uploads = Uploads()
    out = writer(uploads)
    chance = random.Random(size)
    # As the chunk workers write: a window of a few consecutive pieces, each window in any order, in parallel.
    with ThreadPoolExecutor(3) as pool:
        for start in range(0, len(pieces), 3):
            window = pieces[start : start + 3]
            chance.shuffle(window)
            list(pool.map(lambda p: out.write(memoryview(p[1]), p[0]), window))
    out.complete(size)
    assert uploads.completed == data
    assert not uploads.aborted


def test_an_uploaded_parts_buffer_takes_the_next_part_instead_of_a_new_one() -> None:
    """A new buffer's pages fault in and are zeroed as they are first written, four times the cost of the copy
    itself: eight parts through a window of three are carried by at most three buffers, and come out right."""
    data = os.urandom(8 * PART - 5)
    uploads = Uploads()
    out = writer(uploads, buffered=3)
    for offset in range(0, len(data), 256):
        out.write(memoryview(data[offset : offset + 256]), offset)
    out.complete(len(data))
    assert uploads.completed == data
    distinct = {id(body) for body in uploads.bodies}  # the bodies are kept alive: no id is reused
    assert len(uploads.bodies) == 8 and len(distinct) <= 3, len(distinct)


def test_a_short_object_or_a_failed_part_aborts_the_upload_and_names_the_object() -> None:
    uploads = Uploads()
    out = writer(uploads)
    out.write(memoryview(b"x" * (PART + 10)), 0)
    with pytest.raises(ObjectStoreError, match=r"s3://b/k: 1034 of 2048 bytes written"):
        out.complete(2 * PART)
    assert uploads.aborted and uploads.completed is None

    failing = Uploads(fail_part=2)
    out = writer(failing)
    with pytest.raises(RuntimeError, match="injected"):  # raised by a later write, or else by complete
        out.write(memoryview(os.urandom(3 * PART)), 0)
        out.complete(3 * PART)
    out.abort()  # as upload_sealed does when a write raises (complete has aborted already otherwise)
    assert failing.aborted and failing.completed is None


def test_after_a_failed_part_the_next_write_raises_instead_of_sealing_the_rest() -> None:
    uploads = Uploads(fail_part=1)
    out = writer(uploads, buffered=2)
    out.write(memoryview(b"a" * PART), 0)  # part 1 goes out, and fails
    with pytest.raises(RuntimeError, match="injected failure"):
        for index in range(1, 100):  # would block on room, or go on sealing, without the check
            out.write(memoryview(b"b" * PART), index * PART)
    assert max(uploads.attempted) < 10, "parts went on being uploaded after the first one failed"
    out.abort()
    assert uploads.aborted


def test_an_upload_that_could_not_be_created_fails_the_first_write_and_aborts_nothing() -> None:
    uploads = Uploads(fail_create=True)
    out = writer(uploads)
    with pytest.raises(RuntimeError, match="injected create failure"):
        for index in range(100):
            out.write(memoryview(b"c" * PART), index * PART)
        out.complete(100 * PART)
    assert not uploads.parts and uploads.completed is None
    out.abort()
    assert not uploads.aborted, "an upload that does not exist was aborted"


def test_writers_wait_for_room_instead_of_buffering_the_whole_object() -> None:
    uploads = Uploads()
    gate = threading.Event()
    real_upload = uploads.upload_part

    def slow_upload(**kwargs: Any) -> dict[str, str]:
        gate.wait(5)
        return real_upload(**kwargs)

    uploads.upload_part = slow_upload  # type: ignore[method-assign]
    out = writer(uploads, buffered=2)
    done = threading.Event()

    def produce() -> None:
        for index in range(5):
            out.write(memoryview(bytes([index]) * PART), index * PART)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert not done.wait(0.5), "five parts were buffered while only two may be"
    gate.set()
    assert done.wait(5)
    out.complete(5 * PART)
    assert uploads.completed == b"".join(bytes([i]) * PART for i in range(5))
