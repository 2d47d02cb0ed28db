"""The trainer's side of an s3:// store, against the local cluster's S3 server (e2e/cluster/object_store.py).

A dataset as objects (kubemaas.runtime.object_dataset), checkpoints sealed into the bucket
(kubemaas.runtime.object_checkpoint), the cleanup of interrupted publications, and the shipped example run as two
real gloo ranks that read their shards from a bucket, checkpoint to it, are stopped, resume, and publish to it.
The pods' side (the operator's manifests, a real node) is e2e/test_real_node_object_store.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from e2e.cluster.object_store import ObjectStore
from e2e.test_object_store import KEY, KEYRING, MODEL, decrypted, keys, plaintext, publish, settings_for
from kubemaas.contract.store import DATA_STORE, MODEL_STORE, S3Settings
from kubemaas.contract.termination import ExitCode
from kubemaas.runtime.crypto import MAGIC
from kubemaas.runtime.dataset import DataKeyError, TamperedDataError, encrypt_dataset
from kubemaas.runtime.keyring import Keyring, write_keyring_dir
from kubemaas.runtime.object_checkpoint import ObjectCheckpoints
from kubemaas.runtime.object_client import client_for
from kubemaas.runtime.object_dataset import ObjectDataset
from kubemaas.runtime.object_store import ObjectArtifactStore
from tests.runtime.trainer_launch import EXAMPLE, Job, log_text, ranks, wait_all, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DATA_KEY = bytes(range(32, 64))


@pytest.fixture
def client(s3_server: ObjectStore, tmp_path: Path) -> S3Client:
    return client_for(settings_for(s3_server, tmp_path / "credentials"))


@pytest.fixture
def bucket(client: S3Client) -> str:
    name = f"tt-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


def upload_tree(client: S3Client, bucket: str, directory: Path, prefix: str) -> list[str]:
    """``directory``'s files as objects below ``prefix`` (what `aws s3 cp --recursive` does)."""
    names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    for name in names:
        client.upload_file(str(directory / name), bucket, f"{prefix}/{name}")
    return names


def encrypted_dataset(tmp_path: Path) -> Path:
    """The example's digits dataset (`--write-dataset`), encrypted with the data key as `kubemaas encrypt-data`."""
    plain = tmp_path / "digits"
    subprocess.run([sys.executable, str(EXAMPLE), "--write-dataset", str(plain)], check=True, timeout=120)
    sealed = tmp_path / "digits.enc"
    encrypt_dataset(plain, sealed, key=DATA_KEY, key_id="d1")
    return sealed


def test_a_dataset_in_a_bucket_reads_as_on_a_claim_and_a_swapped_object_is_refused(
    client: S3Client, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "plain"
    (source / "shards").mkdir(parents=True)
    files = {"a.csv": b"1,2\n", "shards/b.bin": bytes(range(256)) * 300}
    for name, data in files.items():
        (source / name).write_bytes(data)
    encrypt_dataset(source, tmp_path / "sealed", key=DATA_KEY, key_id="d1", chunk_size=4096)
    upload_tree(client, bucket, tmp_path / "sealed", "sets/one")
    # What a writer's tools leave beside the files: hidden names and "directory" markers are not data.
    for extra in ("sets/one/.partial-upload", "sets/one/.tmp/c.bin"):
        client.put_object(Bucket=bucket, Key=extra, Body=b"x")
    client.put_object(Bucket=bucket, Key="sets/one/shards/", Body=b"")

    dataset = ObjectDataset(f"s3://{bucket}/sets/one", client, keyring=Keyring({"d1": DATA_KEY}, "d1"))
    assert dataset.files() == ["a.csv", "shards/b.bin"]
    assert {name: dataset.read(name) for name in dataset.files()} == files
    plain = ObjectDataset(f"s3://{bucket}/sets", client)  # unencrypted: the object's bytes as they are
    client.put_object(Bucket=bucket, Key="sets/raw.txt", Body=b"as is")
    assert plain.read("raw.txt") == b"as is"

    with pytest.raises(DataKeyError):
        ObjectDataset(f"s3://{bucket}/sets/one", client, keyring=Keyring({"d1": bytes(32)}, "d1")).read("a.csv")
    # One authentic encrypted file put in another's place: bound to its own name, refused under this one.
    swapped = client.get_object(Bucket=bucket, Key="sets/one/shards/b.bin")["Body"].read()
    client.put_object(Bucket=bucket, Key="sets/one/a.csv", Body=swapped)
    with pytest.raises(TamperedDataError, match=r"a\.csv"):
        dataset.read("a.csv")


def test_checkpoints_in_the_bucket_are_sealed_bound_pruned_and_the_newest_whole_one_wins(
    client: S3Client, bucket: str
) -> None:
    prefix = f"s3://{bucket}/store/{MODEL}/.checkpoints/v1"
    store = ObjectCheckpoints(prefix, client, model=MODEL, version="v1", keyring=KEYRING, keep=2)
    weights = torch.arange(4096, dtype=torch.float32)
    for step in (10, 20, 30):
        assert store.save(step, {"w": weights + step}) == f"{prefix}/step-{step:012d}.kmenc"
    assert store.steps() == [20, 30]  # pruned to the newest two
    sealed = client.get_object(Bucket=bucket, Key=f"store/{MODEL}/.checkpoints/v1/step-000000000030.kmenc")
    data = sealed["Body"].read()
    assert data.startswith(MAGIC) and (weights + 30).numpy().tobytes()[:64] not in data
    latest = store.load_latest()
    assert latest is not None and latest.step == 30 and torch.equal(latest.state["w"], weights + 30)
    assert store.saved_at(30) is not None

    # The newest one changed in the bucket: refused, and the next older one is used.
    client.put_object(Bucket=bucket, Key=store.key_for(30), Body=data[:-1] + bytes([data[-1] ^ 1]))
    older = store.load_latest()
    assert older is not None and older.step == 20
    # Another version's checkpoints are not this version's, nor sealed with another key.
    other = ObjectCheckpoints(prefix, client, model=MODEL, version="v2", keyring=KEYRING)
    assert other.load_latest() is None
    wrong_key = ObjectCheckpoints(prefix, client, model=MODEL, version="v1", keyring=Keyring({"k1": bytes(32)}, "k1"))
    assert wrong_key.load_latest() is None


def test_a_cleanup_removes_what_interrupted_publishers_left_once_it_is_old(
    client: S3Client, bucket: str, tmp_path: Path
) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}/store", client)
    published = publish(store, plaintext(tmp_path, 100_000), "v1")
    orphan = f"store/{MODEL}/v2/model-0123456789abcdef.kmenc"  # uploaded, then the publisher died
    client.put_object(Bucket=bucket, Key=orphan, Body=b"sealed bytes")
    loser = f"store/{MODEL}/v1/model-fedcba9876543210.kmenc"  # the artifact of a publisher that lost the race
    client.put_object(Bucket=bucket, Key=loser, Body=b"sealed bytes")
    unfinished = client.create_multipart_upload(Bucket=bucket, Key=f"store/{MODEL}/v3/model-aaaaaaaaaaaaaaaa.kmenc")

    assert store.remove_leftovers(MODEL) == []  # fresh: perhaps a publisher at work
    removed = store.remove_leftovers(MODEL, older_than=timedelta(0))
    assert sorted(removed) == sorted([orphan, loser, f"store/{MODEL}/v3/model-aaaaaaaaaaaaaaaa.kmenc"])
    assert orphan not in keys(client, bucket) and loser not in keys(client, bucket)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert unfinished["UploadId"]
    # The published version is untouched.
    assert decrypted(store, store.resolve(MODEL), tmp_path / "out") == (tmp_path / "model.pt").read_bytes()
    assert published.manifest.artifact in {k.rsplit("/", 1)[1] for k in keys(client, bucket)}


def store_env(settings: S3Settings, *, data: bool = True) -> dict[str, str]:
    """The KUBEMAAS_S3_* (output) and KUBEMAAS_DATA_S3_* (dataset) variables the operator renders."""
    env = settings.to_env(MODEL_STORE)
    if data:
        env |= settings.to_env(DATA_STORE)
    return env


def test_two_ranks_read_their_shards_from_a_bucket_checkpoint_to_it_resume_and_publish_to_it(
    s3_server: ObjectStore, client: S3Client, bucket: str, tmp_path: Path
) -> None:
    settings = settings_for(s3_server, tmp_path / "credentials")
    upload_tree(client, bucket, encrypted_dataset(tmp_path), "datasets/digits")
    write_keyring_dir(tmp_path / "data-keys", {"d1": DATA_KEY}, "d1")
    job = Job(tmp_path / "job")
    env = {
        "KUBEMAAS_OUTPUT_URI": f"s3://{bucket}/store",
        "KUBEMAAS_DATA_URI": f"s3://{bucket}/datasets/digits",
        "KUBEMAAS_DATA_KEY_DIR": str(tmp_path / "data-keys"),
        "KUBEMAAS_CHECKPOINT_EVERY": "50",
        **store_env(settings),
    }
    checkpoints = ObjectCheckpoints(
        f"s3://{bucket}/store/digits/.checkpoints/v1", client, model="digits", version="v1", keyring=KEYRING
    )
    args = ["--steps", "600"]
    with ranks(job, 2, 0, args, None, **env) as procs:
        wait_for(lambda: any(s >= 50 for s in checkpoints.steps()), timeout=180, what="a checkpoint in the bucket")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # the kubelet stopping both pods (a preemption)
        codes = wait_all(procs, timeout=120)
    assert codes == [ExitCode.PREEMPTED] * 2, log_text(job, 0, 0) + log_text(job, 1, 0)
    stopped_at = max(checkpoints.steps())
    assert 50 <= stopped_at < 600

    with ranks(job, 2, 1, args, None, **env) as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0, 0], log_text(job, 0, 1) + log_text(job, 1, 1)
    result = job.result(0)
    assert result["uri"] == f"s3://{bucket}/store/digits/v1"
    assert result["metrics"]["resumedFromStep"] == stopped_at and result["metrics"]["steps"] == 600
    assert result["metrics"]["heldOutAccuracy"] >= 0.85, result
    for rank in (0, 1):
        assert f"resumed from checkpoint at step {stopped_at}" in log_text(job, rank, 1)

    store = ObjectArtifactStore(f"s3://{bucket}/store", client_for(settings))
    resolved = store.resolve("digits")
    assert resolved.manifest.sha256 == result["sha256"] and resolved.manifest.version == "v1"
    model = decrypted(store, resolved, tmp_path / "model.pt")
    published = [k for k in keys(client, bucket) if k.startswith("store/")]
    for key in published:  # nothing of the weights in plaintext: every object but LATEST and the manifest sealed
        if not key.endswith(("LATEST", "manifest.json")):
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read().startswith(MAGIC), key
    assert model[:4] != MAGIC
    assert KEY not in b"".join(client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in published)


def test_a_rank_0_the_bucket_refuses_fails_in_seconds_with_access_denied_naming_the_bucket_only(
    s3_server: ObjectStore, client: S3Client, bucket: str, tmp_path: Path
) -> None:
    """Wrong keys in the mounted Secret: rank 0 stops before its first step (not at its first checkpoint), exit 78
    with reason AccessDenied, its message naming the bucket and never a key."""
    wrong = settings_for(s3_server, tmp_path / "wrong", secret="not-the-secret-" + uuid.uuid4().hex)
    job = Job(tmp_path / "job")
    env = {"KUBEMAAS_OUTPUT_URI": f"s3://{bucket}/store", **store_env(wrong, data=False)}
    with ranks(job, 1, 0, ["--steps", "100000"], None, **env) as procs:
        (code,) = wait_all(procs, timeout=120)
    assert code == ExitCode.CONFIG, log_text(job, 0, 0)
    result = job.result(0)
    assert result["reason"] == "AccessDenied", result
    assert f"s3://{bucket}/store/digits/LATEST" in result["message"] and "access denied" in result["message"]
    for secret in (s3_server.access_key_id, s3_server.secret_access_key, "not-the-secret-"):
        assert secret not in result["message"] and secret not in log_text(job, 0, 0)
