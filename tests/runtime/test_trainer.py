"""The training harness with real torch.distributed (gloo, separate processes on loopback)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.checkpoint import CheckpointStore
from kubemaas.runtime.crypto import Keyring, decrypt_file
from kubemaas.runtime.distributed import DistConfigError, batch_for_step, read_dist_env, shard_indices
from kubemaas.runtime.export import load_torchscript
from kubemaas.runtime.trainer import (
    EXIT_CONFIG,
    EXIT_PREEMPTED,
    EXIT_RETRYABLE,
    TERMINATION_MESSAGE_LIMIT,
    TrainerConfig,
    TrainerConfigError,
    write_termination_message,
)

from .trainer_launch import KEY, Job, log_text, ranks, wait_all, wait_for

pytestmark = pytest.mark.torch


# ------------------------------------------------------------------ environment and shards


def test_rank_from_pytorchjob_or_indexed_job() -> None:
    pytorchjob = read_dist_env({"MASTER_ADDR": "m-0", "MASTER_PORT": "23456", "WORLD_SIZE": "4", "RANK": "3"})
    assert (pytorchjob.master_addr, pytorchjob.master_port, pytorchjob.rank, pytorchjob.world_size) == (
        "m-0", 23456, 3, 4,
    )  # fmt: skip
    indexed = read_dist_env({"MASTER_ADDR": "w-0.svc", "WORLD_SIZE": "2", "JOB_COMPLETION_INDEX": "1"})
    assert (indexed.rank, indexed.master_port, indexed.local_rank) == (1, 29500, 0)
    assert read_dist_env({}).world_size == 1
    for bad in ({"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "2"}, {"RANK": "x"}):
        with pytest.raises(DistConfigError):
            read_dist_env(bad)


@given(n=st.integers(min_value=1, max_value=3000), world_size=st.integers(min_value=1, max_value=16))
def test_shards_are_disjoint_and_cover_everything(n: int, world_size: int) -> None:
    shards = [shard_indices(n, rank, world_size, seed=7) for rank in range(world_size)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))  # cover, and no index twice
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_batches_depend_only_on_the_step() -> None:
    shard = shard_indices(1437, 1, 2)
    batches = [batch_for_step(shard, step, 32) for step in range(100)]
    assert all(len(b) == 32 and set(b) <= set(shard) for b in batches)
    assert batch_for_step(shard, 57, 32) == batches[57]  # a resumed run sees the same batch
    epoch = [i for b in batches[: len(shard) // 32] for i in b]
    assert len(set(epoch)) == len(epoch)  # no repeats within an epoch


def test_config_from_env(tmp_path: Path) -> None:
    env = {
        "KUBEMAAS_MODEL_NAME": "digits",
        "KUBEMAAS_MODEL_VERSION": "v3",
        "KUBEMAAS_OUTPUT_URI": "pvc://models/store/",
        "KUBEMAAS_MOUNT_ROOT": str(tmp_path),
    }
    import os

    old = os.environ.get("KUBEMAAS_MOUNT_ROOT")
    os.environ["KUBEMAAS_MOUNT_ROOT"] = str(tmp_path)
    try:
        config = TrainerConfig.from_env(env)
    finally:
        if old is None:
            del os.environ["KUBEMAAS_MOUNT_ROOT"]
        else:
            os.environ["KUBEMAAS_MOUNT_ROOT"] = old
    assert config.output_root == tmp_path / "models/store"
    assert config.checkpoint_dir == tmp_path / "models/store/digits/.checkpoints/v3"
    assert config.termination_log == Path("/dev/termination-log")
    assert (config.checkpoint_every, config.quantization) == (100, "None")
    for key, value in [
        ("KUBEMAAS_MODEL_VERSION", ""),
        ("KUBEMAAS_MODEL_VERSION", "../x"),
        ("KUBEMAAS_OUTPUT_URI", "s3://b/x"),
        ("KUBEMAAS_QUANTIZATION", "Int4"),
        ("KUBEMAAS_CHECKPOINT_EVERY", "0"),
    ]:
        with pytest.raises(TrainerConfigError):
            TrainerConfig.from_env({**env, key: value})


def test_termination_message_fits_the_kubelet_limit(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_termination_message(path, {"reason": "TrainingError", "message": "x" * 10_000})
    data = path.read_bytes()
    assert len(data) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(data)["reason"] == "TrainingError"


def test_checkpoint_store_keeps_newest_complete(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (10, 20, 30):
        store.save(step, {"w": torch.tensor([float(step)])})
    assert store.steps() == [20, 30]
    (tmp_path / ".step-000000000040.pt.abc.tmp").write_bytes(b"half written")  # a crashed writer
    store.path_for(30).write_bytes(b"corrupt")  # a bad disk block
    latest = store.load_latest()
    assert latest is not None and latest.step == 20 and latest.state["w"].item() == 20.0


# ------------------------------------------------------------------ real multi-process runs


def test_two_rank_gloo_ddp_trains_and_publishes(tmp_path: Path) -> None:
    job = Job(tmp_path)
    with ranks(job, 2, attempt=0, args=["--steps", "300"], KUBEMAAS_CHECKPOINT_EVERY="100") as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0, 0], log_text(job, 0, 0) + log_text(job, 1, 0)

    result = job.result(0)
    assert result["metrics"]["heldOutAccuracy"] >= 0.90, result
    assert result["metrics"]["resumedFromStep"] == 0
    assert (result["version"], result["keyId"]) == ("v1", "k1")
    assert result["uri"] == f"file://{job.store}/digits/v1"
    assert not job.termination(1).exists()  # only rank 0 reports a result

    published = ArtifactStore(job.store).resolve("digits")
    assert published.manifest.sha256 == result["sha256"]
    assert [t.name for t in published.manifest.inputs] == ["pixels"]
    plain = tmp_path / "model.pt"
    decrypt_file(published.artifact, plain, keyring=Keyring({"k1": KEY}, "k1"), model="digits", version="v1")
    scripted = load_torchscript(plain)
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    predicted = scripted(torch.tensor(images / 16.0, dtype=torch.float32)).argmax(dim=1)
    assert (predicted.numpy() == labels).mean() >= 0.90  # the exported model is the trained one


def test_killed_rank_then_restart_resumes_from_checkpoint(tmp_path: Path) -> None:
    job = Job(tmp_path)
    store = CheckpointStore(job.checkpoints)
    args = ["--steps", "900"]
    with ranks(job, 2, attempt=0, args=args, KUBEMAAS_CHECKPOINT_EVERY="25") as procs:
        wait_for(lambda: any(s >= 50 for s in store.steps()), timeout=180, what="a checkpoint at step >= 50")
        assert all(p.poll() is None for p in procs), "training finished before the kill"
        procs[1].send_signal(signal.SIGKILL)
        codes = wait_all(procs, timeout=120)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == EXIT_RETRYABLE, log_text(job, 0, 0)
    assert job.result(0)["reason"] == "Retryable"
    checkpointed = max(store.steps())
    assert 50 <= checkpointed < 900

    with ranks(job, 2, attempt=1, args=args, KUBEMAAS_CHECKPOINT_EVERY="25") as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0, 0], log_text(job, 0, 1) + log_text(job, 1, 1)
    result = job.result(0)
    assert result["metrics"]["resumedFromStep"] == checkpointed  # continued, not from zero
    assert result["metrics"]["steps"] == 900
    assert result["metrics"]["heldOutAccuracy"] >= 0.90
    for rank in (0, 1):
        assert f"resumed from checkpoint at step {checkpointed}" in log_text(job, rank, 1)


def test_sigterm_checkpoints_and_exits_retryable(tmp_path: Path) -> None:
    job = Job(tmp_path)
    store = CheckpointStore(job.checkpoints)
    with ranks(job, 1, attempt=0, args=["--steps", "100000"], KUBEMAAS_CHECKPOINT_EVERY="1000000") as procs:
        wait_for(lambda: "joined" in log_text(job, 0, 0), timeout=120, what="rank 0 to join")
        procs[0].send_signal(signal.SIGTERM)
        (code,) = wait_all(procs, timeout=60)
    assert code == EXIT_PREEMPTED, log_text(job, 0, 0)
    result = job.result(0)
    assert result["reason"] == "Preempted"
    assert store.steps() and store.steps()[-1] > 0  # the checkpoint written on SIGTERM
    assert f"terminated at step {store.steps()[-1]}" in result["message"]


def test_missing_key_directory_fails_fast_as_config_error(tmp_path: Path) -> None:
    job = Job(tmp_path)
    with ranks(job, 1, attempt=0, args=["--steps", "10"], KUBEMAAS_KEY_DIR=str(tmp_path / "nokeys")) as procs:
        (code,) = wait_all(procs, timeout=120)
    assert code == EXIT_CONFIG
    assert job.result(0)["reason"] == "ConfigError"
    assert not store_has_checkpoints(job)


def store_has_checkpoints(job: Job) -> bool:
    return job.checkpoints.exists() and any(job.checkpoints.iterdir())
