"""Joining the job's process group, and rank-sharded data.

The rendezvous variables are parsed once, by :func:`kubemaas.contract.parse` at the trainer's
entry point; this module takes the typed :class:`~kubemaas.contract.Process` it produced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from kubemaas.contract import Process


def pick_device(process: Process) -> torch.device:
    """``cuda:LOCAL_RANK`` when the pod has GPUs (torchrun starts one process per GPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", process.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(process: Process, device: torch.device, timeout: timedelta) -> str:
    """Join the job's process group: NCCL on a GPU, gloo otherwise.

    Under torchrun, MASTER_ADDR:MASTER_PORT is the store its agent on node 0 already serves;
    torch recognises that address and connects as a client instead of binding it a second time.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{process.master_addr}:{process.master_port}",
        world_size=process.world_size,
        rank=process.rank,
        timeout=timeout,
    )
    return backend


def shard_indices(n: int, rank: int, world_size: int, *, seed: int = 0) -> list[int]:
    """This rank's share of ``range(n)``: shards are disjoint, cover everything, sizes differ by <= 1.

    The shuffle is seeded identically on every rank, so no communication is needed.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[rank::world_size]


def batch_for_step(shard: Sequence[int], step: int, batch_size: int, *, seed: int = 0) -> list[int]:
    """The indices of global step ``step``: a pure function of the step, so a resumed run continues
    the same sequence, and every rank gets a full batch even when its shard is one item shorter."""
    if not shard:
        raise ValueError("empty shard")
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), len(shard))
        order = list(shard)
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(batch_size - len(out), len(shard) - offset)
        out.extend(order[offset : offset + take])
    return out
