"""The distributed environment a training pod sees, and rank-sharded data.

Both TrainingJob backends set the same variables: a Kubeflow PyTorchJob sets MASTER_ADDR,
MASTER_PORT, WORLD_SIZE and RANK itself; the Indexed Job backend sets the same names and, in
addition, Kubernetes sets JOB_COMPLETION_INDEX (used as the rank when RANK is absent).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class DistConfigError(ValueError):
    """The distributed environment variables are missing or inconsistent."""


@dataclass(frozen=True)
class DistEnv:
    master_addr: str
    master_port: int
    world_size: int
    rank: int
    local_rank: int

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise DistConfigError(f"environment variable {name} is required")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Parse the rendezvous variables; a missing WORLD_SIZE means a single process."""
    env = os.environ if environ is None else environ
    world_size = _int(env, "WORLD_SIZE", 1)
    if env.get("RANK"):
        rank = _int(env, "RANK")
    else:
        rank = _int(env, "JOB_COMPLETION_INDEX", 0 if world_size == 1 else None)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistConfigError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return DistEnv(
        master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int(env, "MASTER_PORT", 29500),
        world_size=world_size,
        rank=rank,
        local_rank=_int(env, "LOCAL_RANK", 0),
    )


def pick_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(env: DistEnv, timeout: timedelta) -> str:
    """Join the job's process group: NCCL when this pod has a GPU, gloo otherwise."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(pick_device(env))
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        world_size=env.world_size,
        rank=env.rank,
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
