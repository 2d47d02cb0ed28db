"""BufferPool: what is given back is taken again, by size, up to its limit; and the chunk pipeline's buffers
serve the next pipeline of the process."""

from __future__ import annotations

import pytest

from kubemaas.runtime.buffers import BufferPool
from kubemaas.runtime.crypto import pipeline
from kubemaas.runtime.crypto.pipeline import ChunkPipeline, Slot


def test_a_buffer_given_back_is_taken_again_for_its_size_only() -> None:
    made: list[int] = []

    def make(size: int) -> bytearray:
        made.append(size)
        return bytearray(size)

    pool = BufferPool(make, limit=100)
    first = pool.take(10)
    pool.give(10, first)
    assert pool.kept == 10
    assert pool.take(20) is not first  # another size: made anew
    assert pool.take(10) is first and pool.kept == 0
    assert made == [10, 20]


def test_buffers_over_the_limit_are_dropped() -> None:
    pool = BufferPool(bytearray, limit=25)
    given = [pool.take(10) for _ in range(3)]
    for buffer in given:
        pool.give(10, buffer)
    assert pool.kept == 20
    taken = [pool.take(10) for _ in range(3)]
    assert taken[0] is given[1] and taken[1] is given[0]
    assert all(taken[2] is not buffer for buffer in given)


def test_the_next_chunk_pipeline_takes_the_buffers_of_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh memory faults in at 0.4-0.75 ms a MiB on the VMs this is tested on: a trainer's checkpoints, each one
    sealed by a pipeline, reuse the buffers instead of touching new ones."""
    monkeypatch.setattr(pipeline, "_BUFFERS", BufferPool(pipeline.page_aligned, limit=64 * 1024 * 1024))
    size = 1024 * 1024
    seen: list[set[int]] = []
    for _ in range(2):
        buffers: set[int] = set()

        def job(index: int, slot: Slot, scratch: memoryview, buffers: set[int] = buffers) -> None:
            buffers.update({id(slot.held.obj), id(scratch.obj)})
            slot.loaded.set_result(slot.held)

        with ChunkPipeline(job, 6, held_size=size, scratch_size=size + 16) as pipe:
            for index in range(6):
                pipe.done(index)
        seen.append(buffers)
    assert seen[1] <= seen[0], "the second pipeline made buffers of its own"
