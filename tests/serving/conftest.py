"""Fixtures for the serving path: a small TorchScript MLP published encrypted, and the loader CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kubemaas.runtime.artifacts import ArtifactStore, TensorSpec
from kubemaas.runtime.keyring import generate_key, write_keyring_dir
from kubemaas.runtime.object_store import ObjectArtifactStore

# The digits example's signature (docs/runtime-contract.md): 8x8 pixels in, 10 logits out.
IN_FEATURES = 64
OUT_FEATURES = 10
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
KEY_ID = "k1"
MODEL = "digits"
INPUTS = [TensorSpec(name=INPUT_NAME, datatype="FP32", dims=[IN_FEATURES])]
OUTPUTS = [TensorSpec(name=OUTPUT_NAME, datatype="FP32", dims=[OUT_FEATURES])]


def make_mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, OUT_FEATURES),
    )
    return model.eval()


def save_torchscript(model: torch.nn.Module, path: Path) -> Path:
    example = torch.zeros(1, IN_FEATURES)
    with warnings.catch_warnings():
        # torch 2.x marks jit deprecated in favour of torch.export; TorchScript is still what Triton loads.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(model, example).save(str(path))  # type: ignore[no-untyped-call]
    return path


@dataclass(frozen=True)
class PublishedModels:
    """An artifact store with encrypted versions, its key directory, and the eager models behind them."""

    root: Path
    key_dir: Path
    key: bytes
    eager: dict[str, torch.nn.Module]  # version -> the eager module that was exported

    @property
    def uri(self) -> str:
        return f"file://{self.root}"


def publish(
    store: ArtifactStore | ObjectArtifactStore, workdir: Path, *, model: str, version: str, seed: int, key: bytes
) -> torch.nn.Module:
    eager = make_mlp(seed)
    plaintext = save_torchscript(eager, workdir / f"{model}-{version}.pt")
    store.publish(plaintext, model=model, version=version, key=key, key_id=KEY_ID, inputs=INPUTS, outputs=OUTPUTS)
    return eager


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedModels:
    """Model ``digits`` with versions v1 then v2 (LATEST -> v2), as the trainer runtime publishes them."""
    workdir = tmp_path_factory.mktemp("published")
    key = generate_key()
    key_dir = write_keyring_dir(workdir / "keys", {KEY_ID: key}, KEY_ID)
    store = ArtifactStore(workdir / "store")
    eager = {
        version: publish(store, workdir, model=MODEL, version=version, seed=seed, key=key)
        for version, seed in (("v1", 1), ("v2", 2))
    }
    return PublishedModels(root=store.root, key_dir=key_dir, key=key, eager=eager)


def run_loader(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run the real ``kubemaas load-model`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "kubemaas.cli", "load-model", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def loader_args(store_uri: str, key_dir: Path, repository: Path, *extra: str) -> list[str]:
    """The loader's command line for ``digits`` from ``store_uri`` on the python backend, CPU instances."""
    return [
        f"--store-uri={store_uri}",
        f"--model={MODEL}",
        f"--key-dir={key_dir}",
        f"--repository={repository}",
        "--backend=python",
        "--instance-kind=CPU",
        *extra,
    ]


def copy_store(published: PublishedModels, tmp_path: Path) -> Path:
    """A private copy of the published store, to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(published.root, root)
    return root


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
