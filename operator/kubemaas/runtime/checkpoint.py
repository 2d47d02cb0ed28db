"""Training checkpoints in the output store: encrypted, written atomically, newest complete one wins.

One format and protocol (:class:`CheckpointStore`), two places: a directory on the output claim
(:class:`DirectoryCheckpoints`) and a key prefix in the output bucket (kubemaas.runtime.object_checkpoint).

A checkpoint holds the model's weights (and the optimizer's state), so it is encrypted exactly like
a published model: the crypto module's format (AES-256-GCM in chunks, authenticated header) with
the job's active key, bound to the model and to ``<version>/checkpoint/<step>`` (a binding no
published version can have: version names cannot contain ``/``), so a checkpoint cannot pass for
a model artifact nor for another step. Only rank 0 holds the key: it writes checkpoints and, on
resume, reads the newest one and hands it to the other ranks over the process group
(:meth:`Harness.resume <kubemaas.runtime.trainer.Harness.resume>`).

``<dir>/step-<step:012d>.kmenc`` appears only by rename after its bytes are fsynced (encrypt_file
writes atomically), or, in a bucket, when its multipart upload completes, so a listed checkpoint is
complete; one that still fails to decrypt or load (a
bad disk, a key rotated out of the Secret) is skipped in favour of the next older one. The
plaintext exists only in the pod's scratch directory, for the moment of serialising. Only the
newest ``keep`` checkpoints are kept.

The directory is on the store's claim, whose other writers are not trusted: checkpoints are listed and
opened beneath ``root`` (the claim's mount) without following links, regular files only
(kubemaas.runtime.beneath), so a link or a FIFO planted there is skipped like a corrupt checkpoint.
"""

from __future__ import annotations

import logging
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubemaas.runtime.beneath import Beneath, Kind
from kubemaas.runtime.crypto import decrypt_file, encrypt_file
from kubemaas.runtime.keyring import Keyring

log = logging.getLogger(__name__)

SUFFIX = ".kmenc"
_NAME = re.compile(r"step-(\d{12})\.kmenc")


def checkpoint_binding(version: str, step: int) -> str:
    """The ``version`` a checkpoint's header is bound to."""
    return f"{version}/checkpoint/{step}"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]


class CheckpointStore(ABC):
    """Checkpoints of one model version: sealed from a scratch file, listed by step, the newest ``keep`` kept."""

    def __init__(
        self, *, model: str, version: str, keyring: Keyring, keep: int = 2, scratch: Path | None = None
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.model = model
        self.version = version
        self.keyring = keyring
        self.keep = keep
        self.scratch = scratch  # None: the system temp dir (the pod's /tmp emptyDir)

    @staticmethod
    def name_for(step: int) -> str:
        return f"step-{step:012d}{SUFFIX}"

    @staticmethod
    def step_of(name: str) -> int | None:
        match = _NAME.fullmatch(name)
        return int(match[1]) if match else None

    @abstractmethod
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""

    @abstractmethod
    def saved_at(self, step: int) -> float | None:
        """When the checkpoint of ``step`` was written (a POSIX time), if known."""

    @abstractmethod
    def _seal(self, step: int, plaintext: Path) -> str:
        """Encrypt ``plaintext`` as the checkpoint of ``step``, made visible only once complete; returns where."""

    @abstractmethod
    def _decrypt(self, step: int, plaintext: Path) -> None:
        """Authenticate and decrypt the checkpoint of ``step`` into ``plaintext``."""

    @abstractmethod
    def _remove(self, step: int) -> None: ...

    def save(self, step: int, state: dict[str, Any]) -> str:
        """Write the checkpoint of ``step``; returns where it is (for logs)."""
        with tempfile.TemporaryDirectory(prefix="kubemaas-checkpoint-", dir=self.scratch) as scratch:
            plaintext = Path(scratch) / "checkpoint.pt"
            torch.save({"step": step, **state}, plaintext)
            where = self._seal(step, plaintext)
        self._prune()
        return where

    def load_latest(self, map_location: torch.device | str = "cpu") -> Checkpoint | None:
        for step in reversed(self.steps()):
            try:
                state = self._load(step, map_location)
            except Exception as exc:  # unreadable despite the protocol: fall back to an older one
                log.warning("skipping unreadable checkpoint %s: %s", self.name_for(step), exc)
                continue
            return Checkpoint(step=int(state.pop("step")), state=state)
        return None

    def _load(self, step: int, map_location: torch.device | str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="kubemaas-checkpoint-", dir=self.scratch) as scratch:
            plaintext = Path(scratch) / "checkpoint.pt"
            self._decrypt(step, plaintext)
            state: dict[str, Any] = torch.load(plaintext, map_location=map_location, weights_only=True)
        if state.get("step") != step:
            raise ValueError(f"checkpoint {self.name_for(step)} holds step {state.get('step')}")
        return state

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            self._remove(step)

    def _bound_to(self, step: int) -> str:
        return checkpoint_binding(self.version, step)


class DirectoryCheckpoints(CheckpointStore):
    """Checkpoints in ``directory`` on the output claim, listed and opened beneath ``root`` (the claim's mount)."""

    def __init__(
        self,
        directory: Path,
        *,
        model: str,
        version: str,
        keyring: Keyring,
        keep: int = 2,
        scratch: Path | None = None,
        root: Path | None = None,
    ) -> None:
        super().__init__(model=model, version=version, keyring=keyring, keep=keep, scratch=scratch)
        self.directory = directory
        # The trusted directory ``directory`` lies beneath (None: the directory itself).
        self.tree = Beneath(directory if root is None else root)

    def path_for(self, step: int) -> Path:
        return self.directory / self.name_for(step)

    def steps(self) -> list[int]:
        entries = self.tree.entries(self.directory)
        return sorted(
            step for name, kind in entries.items() if kind is Kind.FILE and (step := self.step_of(name)) is not None
        )

    def saved_at(self, step: int) -> float | None:
        path = self.path_for(step)
        return path.stat().st_mtime if path.exists() else None

    def save(self, step: int, state: dict[str, Any]) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tree.require_directory(self.directory)  # not through a link a store writer planted
        return super().save(step, state)

    def _seal(self, step: int, plaintext: Path) -> str:
        target = self.path_for(step)
        keyring = self.keyring
        encrypt_file(
            plaintext,
            target,
            key=keyring.active_key(),
            key_id=keyring.active_id,
            model=self.model,
            version=self._bound_to(step),
        )
        return target.name

    def _decrypt(self, step: int, plaintext: Path) -> None:
        with self.tree.open(self.path_for(step)) as sealed:
            decrypt_file(sealed, plaintext, keyring=self.keyring, model=self.model, version=self._bound_to(step))

    def _remove(self, step: int) -> None:
        self.path_for(step).unlink(missing_ok=True)
