"""Knowledge distillation: the teacher model, loaded in memory on every rank, and the student's loss.

Only rank 0 holds the teacher's key (like the model key): it resolves the teacher's version in the store,
checks the manifest's MAC and every chunk, decrypts into memory and sends the TorchScript bytes to the other
ranks over the process group. No rank writes the teacher's plaintext anywhere.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kubemaas.contract import Settings
from kubemaas.contract.store import ArtifactStoreError
from kubemaas.runtime.artifacts import ArtifactStore, open_authenticated
from kubemaas.runtime.export import load_torchscript_bytes
from kubemaas.runtime.inmemory import plaintext
from kubemaas.runtime.keyring import Keyring

log = logging.getLogger("kubemaas.trainer")


def read_teacher(settings: Settings) -> bytes:
    """Rank 0: the teacher's TorchScript bytes, authenticated and decrypted in memory."""
    directory, mount = settings.teacher_path, settings.teacher_mount
    if directory is None or mount is None:
        raise ArtifactStoreError("no teacher configured")
    keyring = Keyring.from_dir(settings.teacher_key_dir)
    # pvc://: nothing below the claim's mount is trusted; file:// (a developer's machine) names the model
    # directory itself, whose parent is the store.
    root = directory.parent
    store = ArtifactStore(root, anchor=mount if root.is_relative_to(mount) else root)
    resolved = store.resolve(directory.name, settings.teacher_version)
    with open_authenticated(resolved, keyring) as artifact:
        data = plaintext(artifact)
    log.info("teacher %s %s loaded in memory (%d bytes)", resolved.manifest.model, resolved.manifest.version, len(data))
    return data


def load_teacher(settings: Settings, *, primary: bool, world_size: int, device: torch.device) -> torch.nn.Module:
    """Collective: every rank calls it and gets the teacher (eval mode, on ``device``)."""
    payload: list[bytes | None] = [read_teacher(settings) if primary else None]
    if world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    data = payload[0]
    assert data is not None
    teacher: torch.nn.Module = load_torchscript_bytes(data, device)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: int,
    soft_percent: int,
) -> torch.Tensor:
    """soft * T^2 * KL(teacher_T || student_T) + (1 - soft) * cross_entropy(student, targets).

    T^2 keeps the soft term's gradients on the scale of the hard term's whatever the temperature (Hinton et
    al., 2015).
    """
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    hard = F.cross_entropy(student_logits, targets)
    weight = soft_percent / 100
    return weight * soft + (1 - weight) * hard
