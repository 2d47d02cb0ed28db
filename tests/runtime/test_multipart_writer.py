"""MultipartWriter's bookkeeping, against an in-memory stand-in for S3's multipart calls (pure logic: which bytes
go into which part, when a part goes out, how many buffers exist, what an error leaves). The real server's
side is e2e/test_object_store.py's."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from kubemaas.runtime import object_client
from kubemaas.runtime.buffers import BufferPool
from kubemaas.runtime.crypto import decrypt_file
from kubemaas.runtime.crypto.format import TAG_BYTES
from kubemaas.runtime.errors import ObjectStoreError
from kubemaas.runtime.keyring import Keyring, generate_key
from kubemaas.runtime.object_client import MultipartWriter
from kubemaas.runtime.object_store import PART_SIZE, upload_sealed

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


@pytest.fixture(autouse=True)
def own_part_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool of the test's own: what other tests left there would decide which buffers come back."""
    monkeypatch.setattr(object_client, "PART_BUFFERS", BufferPool(bytearray, limit=object_client.PART_BUFFERS.limit))


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
            list(pool.map(lambda p: out.put(memoryview(p[1]), p[0]), window))
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
        out.put(memoryview(data[offset : offset + 256]), offset)
    out.complete(len(data))
    assert uploads.completed == data
    distinct = {id(body) for body in uploads.bodies}  # the bodies are kept alive: no id is reused
    assert len(uploads.bodies) == 8 and len(distinct) <= 3, len(distinct)


def test_a_short_object_or_a_failed_part_aborts_the_upload_and_names_the_object() -> None:
    uploads = Uploads()
    out = writer(uploads)
    out.put(memoryview(b"x" * (PART + 10)), 0)
    with pytest.raises(ObjectStoreError, match=r"s3://b/k: 1034 of 2048 bytes written"):
        out.complete(2 * PART)
    assert uploads.aborted and uploads.completed is None

    failing = Uploads(fail_part=2)
    out = writer(failing)
    with pytest.raises(RuntimeError, match="injected"):  # raised by a later write, or else by complete
        out.put(memoryview(os.urandom(3 * PART)), 0)
        out.complete(3 * PART)
    out.abort()  # as upload_sealed does when a write raises (complete has aborted already otherwise)
    assert failing.aborted and failing.completed is None


def test_after_a_failed_part_the_next_write_raises_instead_of_sealing_the_rest() -> None:
    uploads = Uploads(fail_part=1)
    out = writer(uploads, buffered=2)
    out.put(memoryview(b"a" * PART), 0)  # part 1 goes out, and fails
    with pytest.raises(RuntimeError, match="injected failure"):
        for index in range(1, 100):  # would block on room, or go on sealing, without the check
            out.put(memoryview(b"b" * PART), index * PART)
    assert max(uploads.attempted) < 10, "parts went on being uploaded after the first one failed"
    out.abort()
    assert uploads.aborted


def test_an_upload_that_could_not_be_created_fails_the_first_write_and_aborts_nothing() -> None:
    uploads = Uploads(fail_create=True)
    out = writer(uploads)
    with pytest.raises(RuntimeError, match="injected create failure"):
        for index in range(100):
            out.put(memoryview(b"c" * PART), index * PART)
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
            out.put(memoryview(bytes([index]) * PART), index * PART)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert not done.wait(0.5), "five parts were buffered while only two may be"
    gate.set()
    assert done.wait(5)
    out.complete(5 * PART)
    assert uploads.completed == b"".join(bytes([i]) * PART for i in range(5))


def test_bytes_placed_in_a_part_are_uploaded_from_there_and_a_split_range_is_copied() -> None:
    """place gives room in the part's own buffer where no part boundary cuts the range (sealed there, no copy),
    else in the caller's scratch, copied by put; a first part of its own size (the header's) shifts every
    boundary after it."""
    data = os.urandom(3 * PART + 100)
    uploads = Uploads()
    out = MultipartWriter(
        cast(Any, uploads), "b", "k", part_size=PART, first_part_size=PART + 100, concurrency=2, buffered=3
    )
    scratch = memoryview(bytearray(PART))
    out.put(memoryview(data[:100]), 0)  # the header, from elsewhere: copied
    in_place = []
    for offset in range(100, len(data), PART // 2):  # two pieces a part, none cut by a boundary
        room = out.place(offset, PART // 2, scratch)
        in_place.append(room.obj is not scratch.obj)
        room[:] = data[offset : offset + PART // 2]
        out.put(room, offset)
    out.complete(len(data))
    assert uploads.completed == data
    assert all(in_place), in_place
    assert [len(uploads.parts[n]) for n in sorted(uploads.parts)] == [PART + 100, PART, PART]

    uploads = Uploads()
    out = writer(uploads)
    room = out.place(PART - 10, 20, scratch)  # cut by the boundary between parts 1 and 2
    assert room.obj is scratch.obj
    room[:] = data[:20]
    out.put(room, PART - 10)
    out.put(memoryview(data[20 : PART + 10]), 0)  # the rest, as the header would come: a copy
    out.complete(PART + 10)
    assert uploads.completed == data[20 : PART + 10] + data[:20]


def test_the_next_upload_takes_the_buffers_of_the_last_one() -> None:
    """A trainer seals a checkpoint every few steps: its parts' buffers serve the next checkpoint's parts."""
    first, second = Uploads(), Uploads()
    for uploads in (first, second):
        out = writer(uploads, buffered=2)
        out.put(memoryview(os.urandom(4 * PART)), 0)
        out.complete(4 * PART)
    earlier = {id(body) for body in first.bodies}
    assert {id(body) for body in second.bodies} <= earlier, "the second upload made buffers of its own"


def test_a_sealed_upload_cuts_its_parts_at_chunk_boundaries_and_seals_every_chunk_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of whole sealed chunks (the first one with the header): no chunk is sealed in scratch and copied, and
    what arrives is the artifact, which decrypts to the plaintext."""
    chunk = 1024 * 1024
    plaintext = tmp_path / "model.bin"
    plaintext.write_bytes(os.urandom(19 * chunk + 5))
    placed: list[bool] = []
    place = MultipartWriter.place

    def recording_place(self: MultipartWriter, offset: int, length: int, scratch: memoryview) -> memoryview:
        room = place(self, offset, length, scratch)
        placed.append(room.obj is not scratch.obj)
        return room

    monkeypatch.setattr(MultipartWriter, "place", recording_place)
    key = generate_key()
    uploads = Uploads()
    sealed = upload_sealed(
        cast(Any, uploads), "b", "k", plaintext, key=key, key_id="k1", model="m", version="v1", chunk_size=chunk
    )
    assert len(placed) == 20 and all(placed), placed
    sealed_chunk = chunk + TAG_BYTES
    per_part = -(-PART_SIZE // sealed_chunk) * sealed_chunk
    sizes = [len(uploads.parts[n]) for n in sorted(uploads.parts)]
    header_len = len(sealed.header)
    assert sizes[0] == header_len + per_part and set(sizes[1:-1]) == {per_part}, sizes
    assert sum(sizes) == sealed.size and uploads.completed is not None
    artifact = tmp_path / "model.kmenc"
    artifact.write_bytes(uploads.completed)
    decrypt_file(artifact, tmp_path / "out.bin", keyring=Keyring({"k1": key}, "k1"), model="m", version="v1")
    assert (tmp_path / "out.bin").read_bytes() == plaintext.read_bytes()
