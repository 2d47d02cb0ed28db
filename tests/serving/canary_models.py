"""Bad model versions for Canary analysis tests: the digits MLP wrapped so that it fails on a known fraction
of inputs (any input whose first pixel is negative: the client picks the fraction) or is slow by a fixed amount
of CPU work per request. TorchScript (scripted, not traced: the branch and the loop must survive export),
published as the trainer publishes, so the real loader and Triton serve them unchanged."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from kubemaas.runtime.artifacts import ArtifactStore
from tests.serving.conftest import INPUTS, KEY_ID, OUTPUTS, make_mlp

# A first pixel of this value makes the erroring model raise; real digits pixels are never negative.
POISON = -1.0


class Poisoned(torch.nn.Module):
    """The MLP, but a batch holding a poisoned input raises (Triton answers every request of it with an error)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError("poisoned input")
        out: torch.Tensor = self.inner(x)
        return out


class Slow(torch.nn.Module):
    """The MLP after `rounds` products of 256x256 matrices per call: a fixed amount of CPU work (TorchScript
    has no sleep), whose result is folded into the answer as zero so that none of it can be skipped."""

    def __init__(self, inner: torch.nn.Module, rounds: int) -> None:
        super().__init__()
        self.inner = inner
        self.rounds = rounds
        self.mix = torch.nn.Parameter(torch.full((256, 256), 1.0 / 256), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ones(256, 256)
        for _ in range(self.rounds):
            y = torch.matmul(y, self.mix)
        out: torch.Tensor = self.inner(x)
        return out + 0.0 * y[0, 0]


class OneAtATime(torch.nn.Module):
    """The MLP, but it raises on a batch of more than one input: a model that fails only as a batch, whose every
    request succeeds when run alone (how the Python model's retry of a failed batch is tested)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("batched")
        out: torch.Tensor = self.inner(x)
        return out


def publish_module(
    store: ArtifactStore, workdir: Path, module: torch.nn.Module, *, model: str, version: str, key: bytes
) -> None:
    path = workdir / f"{model}-{version}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.script(module.eval()).save(str(path))  # type: ignore[no-untyped-call]
    store.publish(path, model=model, version=version, key=key, key_id=KEY_ID, inputs=INPUTS, outputs=OUTPUTS)


def publish_poisoned(store: ArtifactStore, workdir: Path, *, model: str, version: str, seed: int, key: bytes) -> None:
    publish_module(store, workdir, Poisoned(make_mlp(seed)), model=model, version=version, key=key)


def publish_slow(
    store: ArtifactStore, workdir: Path, *, model: str, version: str, seed: int, key: bytes, rounds: int = 20
) -> None:
    publish_module(store, workdir, Slow(make_mlp(seed), rounds), model=model, version=version, key=key)


def publish_one_at_a_time(
    store: ArtifactStore, workdir: Path, *, model: str, version: str, seed: int, key: bytes
) -> None:
    publish_module(store, workdir, OneAtATime(make_mlp(seed)), model=model, version=version, key=key)
