"""The training harness with real torch.distributed (gloo, separate processes on loopback)."""

from __future__ import annotations

import importlib.util
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubemaas import contract
from kubemaas.contract.termination import ExitCode
from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.checkpoint import DirectoryCheckpoints
from kubemaas.runtime.crypto import MAGIC, Keyring, decrypt_file
from kubemaas.runtime.distributed import batch_for_step, shard_indices
from kubemaas.runtime.export import load_torchscript
from kubemaas.runtime.trainer import run

from .trainer_launch import (
    EXAMPLE,
    EXAMPLE_JOB,
    KEY,
    REPO,
    Job,
    example_args,
    log_text,
    pods,
    program_ranks,
    ranks,
    wait_all,
    wait_for,
)

pytestmark = pytest.mark.torch


# ------------------------------------------------------------------ environment and shards


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


KEYRING = Keyring({"k1": KEY}, "k1")


def checkpoint_store(directory: Path, keyring: Keyring = KEYRING, version: str = "v1") -> DirectoryCheckpoints:
    return DirectoryCheckpoints(directory, model="digits", version=version, keyring=keyring, keep=2)


def test_checkpoint_store_keeps_newest_complete(tmp_path: Path) -> None:
    store = checkpoint_store(tmp_path)
    for step in (10, 20, 30):
        store.save(step, {"w": torch.tensor([float(step)])})
    assert store.steps() == [20, 30]
    (tmp_path / ".step-000000000040.kmenc.abc.partial").write_bytes(b"half written")  # a crashed writer
    store.path_for(30).write_bytes(b"corrupt")  # a bad disk block
    latest = store.load_latest()
    assert latest is not None and latest.step == 20 and latest.state["w"].item() == 20.0


def test_checkpoints_on_the_store_are_encrypted_and_bound(tmp_path: Path) -> None:
    """Weights never sit in plaintext on the shared store; a checkpoint only decrypts as itself."""
    weights = torch.arange(1000, dtype=torch.float32)
    store = checkpoint_store(tmp_path)
    path = store.path_for(7)
    assert store.save(7, {"model": {"w": weights}}) == path.name
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    assert weights.numpy().tobytes()[:64] not in data
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, it is not a checkpoint to it
        torch.load(path, weights_only=True)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no plaintext left beside it
    # Without the key, with another key, or as another job's version, it does not load.
    assert checkpoint_store(tmp_path, Keyring({"k1": bytes(32)}, "k1")).load_latest() is None
    assert checkpoint_store(tmp_path, version="v2").load_latest() is None
    path.rename(store.path_for(8))  # moved to another step's name
    assert store.load_latest() is None


# ------------------------------------------------------------------ real multi-process runs


def test_the_example_args_are_the_programs_own() -> None:
    """examples/trainingjob-digits.yaml passes flags digits_mlp.py accepts (argparse would exit 2)."""
    spec = importlib.util.spec_from_file_location("digits_mlp", EXAMPLE)
    assert spec is not None and spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    parsed = program.parse_args(example_args())
    assert parsed.steps > 0 and parsed.batch_size > 0


def test_the_example_image_is_the_one_the_dockerfile_builds() -> None:
    image = yaml.safe_load(EXAMPLE_JOB.read_text())["spec"]["image"]
    dockerfile = (REPO / "images" / "trainer" / "Dockerfile").read_text()
    assert re.findall(r"docker build .* -t (\S+) \.", dockerfile) == [image]


def test_two_rank_gloo_ddp_trains_and_publishes(tmp_path: Path) -> None:
    """The shipped example's args, exactly, as two gloo ranks."""
    job = Job(tmp_path)
    with ranks(job, 2, attempt=0, args=example_args(), KUBEMAAS_CHECKPOINT_EVERY="100") as procs:
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


# Rank 0 takes a while after training (its export and publication); the others have nothing left to do.
LATE_PRIMARY = """
import sys, time
from pathlib import Path
from kubemaas.runtime.trainer import main

def train(h):
    if h.is_primary:
        time.sleep(3)
        Path(sys.argv[1]).write_text(repr(time.time()))

main(train)
"""


def test_every_rank_leaves_once_rank_zero_has_published(tmp_path: Path) -> None:
    """No rank exits while rank 0 still holds the process group: the others wait for it in a last barrier (a
    peer that leaves early can make gloo abort the one still working, docs/runtime-contract.md §7)."""
    job, program, published = Job(tmp_path), tmp_path / "late_primary.py", tmp_path / "published-at"
    program.write_text(LATE_PRIMARY)
    exited: dict[int, float] = {}  # rank -> when it was seen gone
    with program_ranks(program, job, 2, 0, [str(published)]) as procs:

        def all_exited() -> bool:
            for rank, proc in enumerate(procs):
                if rank not in exited and proc.poll() is not None:
                    exited[rank] = time.time()
            return len(exited) == len(procs)

        wait_for(all_exited, timeout=120, what="both ranks to exit")
    assert [p.returncode for p in procs] == [0, 0], log_text(job, 0, 0) + log_text(job, 1, 0)
    assert exited[1] >= float(published.read_text()), "rank 1 left before rank 0 had published"


# The exit hook stands in for a native thread that std::terminate()s while the interpreter finalizes (seen once:
# gloo's, on a rank that had finished; docs/runtime-contract.md §7).
ABORT_WHILE_FINALIZING = """
import atexit, logging, os
from kubemaas.runtime.trainer import main

def train(h):
    atexit.register(os.abort)
    logging.getLogger("kubemaas.test").warning("trained on rank %d", h.rank)

main(train)
"""


def test_a_finished_rank_exits_with_its_runs_code_whatever_the_interpreter_does_at_exit(tmp_path: Path) -> None:
    """Once the run has decided the exit code, nothing of the interpreter's finalization runs; the logs are flushed."""
    job, program = Job(tmp_path), tmp_path / "abort_while_finalizing.py"
    program.write_text(ABORT_WHILE_FINALIZING)
    with program_ranks(program, job, 2, 0, []) as procs:
        codes = wait_all(procs, timeout=120)
    assert codes == [0, 0], log_text(job, 0, 0) + log_text(job, 1, 0)
    assert all(f"trained on rank {rank}" in log_text(job, rank, 0) for rank in (0, 1))


def test_killed_rank_then_restart_resumes_from_checkpoint(tmp_path: Path) -> None:
    job = Job(tmp_path)
    store = checkpoint_store(job.checkpoints)
    args = ["--steps", "900"]
    # Only rank 0 holds the key: rank 1 resumes from what rank 0 decrypted and sent.
    no_key = {1: {"KUBEMAAS_KEY_DIR": str(tmp_path / "no-keys-here")}}
    with ranks(job, 2, attempt=0, args=args, rank_env=no_key, KUBEMAAS_CHECKPOINT_EVERY="25") as procs:
        wait_for(lambda: any(s >= 50 for s in store.steps()), timeout=180, what="a checkpoint at step >= 50")
        assert all(p.poll() is None for p in procs), "training finished before the kill"
        procs[1].send_signal(signal.SIGKILL)
        codes = wait_all(procs, timeout=120)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == ExitCode.RETRYABLE, log_text(job, 0, 0)
    assert job.result(0)["reason"] == "Retryable"
    checkpointed = max(store.steps())
    assert 50 <= checkpointed < 900

    with ranks(job, 2, attempt=1, args=args, rank_env=no_key, KUBEMAAS_CHECKPOINT_EVERY="25") as procs:
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
    store = checkpoint_store(job.checkpoints)
    with ranks(job, 1, attempt=0, args=["--steps", "100000"], KUBEMAAS_CHECKPOINT_EVERY="1000000") as procs:
        wait_for(lambda: "joined" in log_text(job, 0, 0), timeout=120, what="rank 0 to join")
        procs[0].send_signal(signal.SIGTERM)
        (code,) = wait_all(procs, timeout=60)
    assert code == ExitCode.PREEMPTED, log_text(job, 0, 0)
    result = job.result(0)
    assert result["reason"] == "Preempted"
    assert store.steps() and store.steps()[-1] > 0  # the checkpoint written on SIGTERM
    assert f"terminated at step {store.steps()[-1]}" in result["message"]


def test_missing_key_directory_fails_fast_as_config_error(tmp_path: Path) -> None:
    job = Job(tmp_path)
    with ranks(job, 1, attempt=0, args=["--steps", "10"], KUBEMAAS_KEY_DIR=str(tmp_path / "nokeys")) as procs:
        (code,) = wait_all(procs, timeout=120)
    assert code == ExitCode.CONFIG
    assert job.result(0)["reason"] == "ConfigError"
    assert not store_has_checkpoints(job)


@pytest.mark.parametrize("claim_mounted", [True, False])
def test_a_fresh_claim_gets_its_store_and_a_missing_claim_is_a_config_error(
    tmp_path: Path, claim_mounted: bool
) -> None:
    """pvc://models/store on a new, empty claim: rank 0 creates `store/` under the claim's mount (found by the
    real-node e2e: a fresh local PersistentVolume failed with "not mounted"); no claim mounted at all stays
    ConfigError, before any training."""
    job = Job(tmp_path)
    mounts = tmp_path / "mnt"
    if claim_mounted:
        (mounts / "models").mkdir(parents=True)
    env = {contract.OUTPUT_URI: "pvc://models/store", contract.MOUNT_ROOT: str(mounts)}
    with ranks(job, 1, attempt=0, args=["--steps", "10"], rank_env={0: env}) as procs:
        (code,) = wait_all(procs, timeout=120)
    if claim_mounted:
        assert code == 0, log_text(job, 0, 0)
        assert ArtifactStore(mounts / "models" / "store").versions("digits")
    else:
        assert code == ExitCode.CONFIG
        assert job.result(0)["reason"] == "ConfigError"
        assert "not mounted" in job.result(0)["message"]


def store_has_checkpoints(job: Job) -> bool:
    return job.checkpoints.exists() and any(job.checkpoints.iterdir())


# ------------------------------------------------------------------ under torchrun (nprocPerNode > 1)


def test_two_pods_of_two_processes_under_torchrun_train_and_publish(tmp_path: Path) -> None:
    """What the operator builds for nprocPerNode 2: each pod's launcher starts two gloo workers."""
    job = Job(tmp_path)
    with pods(job, nnodes=2, nproc_per_node=2, attempt=0, args=example_args()) as procs:
        codes = wait_all(procs, timeout=300)
    assert codes == [0, 0], log_text(job, 0, 0) + log_text(job, 1, 0)
    result = job.result(0)
    assert result["metrics"]["heldOutAccuracy"] >= 0.90, result
    assert not job.termination(1).exists()  # pod 1 holds ranks 2 and 3: no result from it
    logs = log_text(job, 0, 0) + log_text(job, 1, 0)
    for rank in range(4):
        assert f"rank {rank}/4 joined (gloo)" in logs


def test_launcher_keeps_the_workers_exit_code(tmp_path: Path) -> None:
    """torchrun alone exits 1 (permanent) for any worker failure; the contract's code must survive."""
    job = Job(tmp_path)
    no_keys = str(tmp_path / "no-keys-here")
    with pods(job, nnodes=1, nproc_per_node=2, attempt=0, args=["--steps", "5"], KUBEMAAS_KEY_DIR=no_keys) as procs:
        (code,) = wait_all(procs, timeout=180)
    assert code == ExitCode.CONFIG, log_text(job, 0, 0)
    assert job.result(0)["reason"] == "ConfigError"


def test_an_unknown_rank_is_a_config_error_naming_both_variables(tmp_path: Path) -> None:
    job = Job(tmp_path)
    env = job.env(0, 2, 29500)
    del env["RANK"]
    code = run(lambda harness: None, env)
    assert code == ExitCode.CONFIG
    result = job.result(0)
    assert result["reason"] == "ConfigError" and "rank" not in result  # unknown, not 0
    assert "RANK" in result["message"] and "JOB_COMPLETION_INDEX" in result["message"]


def test_sigterm_to_the_launcher_checkpoints_and_exits_preempted(tmp_path: Path) -> None:
    """The kubelet signals PID 1, the launcher: its workers must still agree on a step and checkpoint."""
    job = Job(tmp_path)
    store = checkpoint_store(job.checkpoints)
    args = ["--steps", "100000"]
    with pods(job, nnodes=1, nproc_per_node=2, attempt=0, args=args, KUBEMAAS_CHECKPOINT_EVERY="1000000") as procs:
        wait_for(lambda: log_text(job, 0, 0).count("joined") == 2, timeout=120, what="both workers to join")
        procs[0].send_signal(signal.SIGTERM)
        (code,) = wait_all(procs, timeout=60)
    assert code == ExitCode.PREEMPTED, log_text(job, 0, 0)
    assert job.result(0)["reason"] == "Preempted"
    assert store.steps() and store.steps()[-1] > 0
