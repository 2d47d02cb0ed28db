"""Training checkpoints in the output store: written atomically, newest complete one wins.

``<dir>/step-<step:012d>.pt`` appears only by rename after its bytes are fsynced, so a listed
checkpoint is complete; a file that still fails to load (a bad disk) is skipped in favour of
the next older one. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubemaas.runtime.fsutil import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d{12})\.pt")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]


class CheckpointStore:
    def __init__(self, directory: Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = directory
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:012d}.pt"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m[1]) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name)))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(step)

        def write(fd: int) -> None:
            with open(fd, "wb", closefd=False) as out:
                torch.save({"step": step, **state}, out)

        atomic_write(target, write)
        self._prune()
        return target

    def load_latest(self, map_location: torch.device | str = "cpu") -> Checkpoint | None:
        for step in reversed(self.steps()):
            path = self.path_for(step)
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # unreadable despite the rename protocol: fall back to an older one
                log.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
                continue
            return Checkpoint(step=int(state.pop("step")), state=state)
        return None

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            self.path_for(step).unlink(missing_ok=True)
