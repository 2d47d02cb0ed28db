"""Train a small MLP on scikit-learn's digits (8x8 images, 10 classes) with the Kubemaas harness.

Runs offline (the dataset ships inside scikit-learn). Every rank trains on its own shard under
DistributedDataParallel; rank 0 evaluates on the held-out split and publishes the encrypted
TorchScript model. Run locally as one process:

    KUBEMAAS_MODEL_NAME=digits KUBEMAAS_MODEL_VERSION=v1 KUBEMAAS_OUTPUT_URI=file:///tmp/store \
    KUBEMAAS_KEY_DIR=/tmp/keys KUBEMAAS_TERMINATION_LOG=/tmp/result.json \
    python examples/training/digits_mlp.py --steps 300

or as several processes under torchrun's launcher (what a pod with nprocPerNode > 1 runs):

    python -m kubemaas.runtime.launch --nproc-per-node=2 --no-python python examples/training/digits_mlp.py

How often to checkpoint is the harness's setting (KUBEMAAS_CHECKPOINT_EVERY), not the program's, and so
are compression (pruning, quantization) and distillation: with a teacher configured (the TrainingJob's
spec.distillation, KUBEMAAS_TEACHER_URI), the same program trains a student against the teacher's outputs;
`--hidden 10` makes it a tenth of the default model's size (examples/trainingjob-digits-distilled.yaml).

Data: without a TrainingJob `data` (KUBEMAAS_DATA_URI) the program uses the copy inside scikit-learn. With
one, it reads `train-*.npz` (each rank its own share of the files) and `heldout.npz` (rank 0) from there,
through the harness, which decrypts them in memory when the dataset is encrypted. Write such a directory
with `python digits_mlp.py --write-dataset DIR`, then encrypt it with `kubemaas encrypt-data DIR OUT ...`.
On a claim or in a bucket alike (examples/trainingjob-digits-s3.yaml): there a rank fetches only its own
objects.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from kubemaas.runtime.artifacts import TensorSpec
from kubemaas.runtime.distributed import batch_for_step
from kubemaas.runtime.trainer import Harness, main

FEATURES, CLASSES = 64, 10
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 1234


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="global optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--write-dataset", type=Path, help="write the digits as npz files to this directory, then exit")
    parser.add_argument("--dataset-shards", type=int, default=4, help="train-*.npz files --write-dataset writes")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def make_model(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, CLASSES),
    )


def split(n: int) -> tuple[list[int], list[int]]:
    """The same train/held-out split on every rank and every restart."""
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    cut = int(n * (1 - HOLDOUT_FRACTION))
    return order[:cut], order[cut:]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    model.train(was_training)
    return float((predicted == y).float().mean().item())


def write_dataset(directory: Path, shards: int) -> None:
    """The digits as a dataset directory: the training split in `shards` files, the held-out split in one."""
    images, labels = load_digits(return_X_y=True)
    train_idx, holdout_idx = split(len(images))
    directory.mkdir(parents=True, exist_ok=True)
    for part in range(shards):
        rows = train_idx[part::shards]
        np.savez(directory / f"train-{part:03d}.npz", images=images[rows], labels=labels[rows])
    np.savez(directory / "heldout.npz", images=images[holdout_idx], labels=labels[holdout_idx])


def tensors(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    return torch.tensor(arrays["images"] / 16.0, dtype=torch.float32), torch.tensor(arrays["labels"], dtype=torch.long)


Split = tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor, torch.Tensor, int]


def load(h: Harness) -> Split:
    """(x, y, this rank's indices into them, held-out x and y (rank 0), training samples of all ranks)."""
    if h.data is None:
        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images / 16.0, dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.long)
        train_idx, holdout_idx = split(len(x))
        shard = [train_idx[i] for i in h.shard(len(train_idx))]
        return x, y, shard, x[holdout_idx], y[holdout_idx], len(train_idx)
    names = [n for n in h.data.files() if n.startswith("train-")]
    if len(names) < h.world_size:
        raise ValueError(f"{len(names)} train-*.npz files cannot be shared among {h.world_size} ranks")
    parts = [tensors(h.data.read(names[i])) for i in h.shard(len(names))]  # decrypted as read, in memory
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    held_x, held_y = tensors(h.data.read("heldout.npz")) if h.is_primary else (x[:0], y[:0])
    total = torch.tensor([len(x)], device=h.device)
    dist.all_reduce(total)
    return x, y, list(range(len(x))), held_x, held_y, int(total.item())


def train(h: Harness, args: argparse.Namespace) -> None:
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    x, y, shard, x_held, y_held, train_samples = load(h)

    model = h.wrap(make_model(args.hidden))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    step = h.resume(model, optimizer)
    while step < args.steps:
        batch = batch_for_step(shard, step, args.batch_size)
        inputs, targets = x[batch].to(h.device), y[batch].to(h.device)
        optimizer.zero_grad()
        logits = model(inputs)
        if h.teacher is not None:
            with torch.no_grad():
                soft_targets = h.teacher(inputs)
            loss = h.distillation_loss(logits, soft_targets, targets)
        else:
            loss = loss_fn(logits, targets)
        loss.backward()
        optimizer.step()
        step += 1
        h.report_progress(step, args.steps, loss=float(loss.item()), samples=len(batch))
        h.after_step(step, model, optimizer)
    h.save_checkpoint(step, model, optimizer)

    if not h.is_primary:
        return
    # What is published is measured: the compressed model (pruned, quantized as the job says), on CPU.
    compressed = h.compress(model)
    metrics = {
        "heldOutAccuracy": accuracy(compressed.module, x_held, y_held),
        "steps": float(step),
        "trainSamples": float(train_samples),
    }
    if h.teacher is not None:
        metrics["teacherHeldOutAccuracy"] = accuracy(h.teacher, x_held.to(h.device), y_held.to(h.device))
    h.publish(
        compressed,
        torch.zeros(1, FEATURES),
        inputs=[TensorSpec(name="pixels", datatype="FP32", dims=[FEATURES])],
        outputs=[TensorSpec(name="logits", datatype="FP32", dims=[CLASSES])],
        metrics=metrics,
    )


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.write_dataset is not None:
        write_dataset(arguments.write_dataset, arguments.dataset_shards)
        sys.exit(0)
    main(lambda harness: train(harness, arguments))
