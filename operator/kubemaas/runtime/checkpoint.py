"""Training checkpoints in the output store: encrypted, written atomically, newest complete one wins.

A checkpoint holds the model's weights (and the optimizer's state), so it is encrypted exactly like
a published model: the crypto module's format (AES-256-GCM in chunks, authenticated header) with
the job's active key, bound to the model and to ``<version>/checkpoint/<step>`` (a binding no
published version can have: version names cannot contain ``/``), so a checkpoint cannot pass for
a model artifact nor for another step. Only rank 0 holds the key: it writes checkpoints and, on
resume, reads the newest one and hands it to the other ranks over the process group
(:meth:`Harness.resume <kubemaas.runtime.trainer.Harness.resume>`).

``<dir>/step-<step:012d>.kmenc`` appears only by rename after its bytes are fsynced (encrypt_file
writes atomically), so a listed checkpoint is complete; one that still fails to decrypt or load (a
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


class CheckpointStore:
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
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = directory
        self.model = model
        self.version = version
        self.keyring = keyring
        self.keep = keep
        self.scratch = scratch  # None: the system temp dir (the pod's /tmp emptyDir)
        # The trusted directory ``directory`` lies beneath (None: the directory itself).
        self.tree = Beneath(directory if root is None else root)

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:012d}{SUFFIX}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        entries = self.tree.entries(self.directory)
        return sorted(int(m[1]) for name, kind in entries.items() if kind is Kind.FILE and (m := _NAME.fullmatch(name)))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tree.require_directory(self.directory)  # not through a link a store writer planted
        target = self.path_for(step)
        with tempfile.TemporaryDirectory(prefix="kubemaas-checkpoint-", dir=self.scratch) as scratch:
            plaintext = Path(scratch) / "checkpoint.pt"
            torch.save({"step": step, **state}, plaintext)
            encrypt_file(
                plaintext,
                target,
                key=self.keyring.active_key(),
                key_id=self.keyring.active_id,
                model=self.model,
                version=checkpoint_binding(self.version, step),
            )
        self._prune()
        return target

    def load_latest(self, map_location: torch.device | str = "cpu") -> Checkpoint | None:
        for step in reversed(self.steps()):
            path = self.path_for(step)
            try:
                state = self._load(path, step, map_location)
            except Exception as exc:  # unreadable despite the rename protocol: fall back to an older one
                log.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
                continue
            return Checkpoint(step=int(state.pop("step")), state=state)
        return None

    def _load(self, path: Path, step: int, map_location: torch.device | str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="kubemaas-checkpoint-", dir=self.scratch) as scratch:
            plaintext = Path(scratch) / "checkpoint.pt"
            with self.tree.open(path) as sealed:
                decrypt_file(
                    sealed,
                    plaintext,
                    keyring=self.keyring,
                    model=self.model,
                    version=checkpoint_binding(self.version, step),
                )
            state: dict[str, Any] = torch.load(plaintext, map_location=map_location, weights_only=True)
        if state.get("step") != step:
            raise ValueError(f"checkpoint {path.name} holds step {state.get('step')}")
        return state

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            self.path_for(step).unlink(missing_ok=True)
