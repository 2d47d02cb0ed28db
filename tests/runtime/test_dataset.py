"""Encrypted datasets: `kubemaas encrypt-data` and the harness reading them, against real files and ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubemaas import contract
from kubemaas.cli import main
from kubemaas.contract.termination import Cause, ExitCode
from kubemaas.runtime.beneath import UnsafeEntryError
from kubemaas.runtime.crypto import MAGIC
from kubemaas.runtime.dataset import DataKeyError, DirectoryDataset, TamperedDataError
from kubemaas.runtime.keyring import Keyring, write_keyring_dir

from .trainer_launch import EXAMPLE, Job, log_text, ranks, wait_all

DATA_KEY = bytes(range(100, 132))
FILES = {
    "a.csv": b"1,2,3\n" * 1000,
    "nested/b.bin": os.urandom(70_000),
    "nested/deeper/c.txt": b"a small file of plain words",
}


def encrypt(tmp_path: Path, files: dict[str, bytes] = FILES, key: bytes = DATA_KEY) -> Path:
    src, dst = tmp_path / "plain", tmp_path / "encrypted"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    key_file = tmp_path / "data.key"
    key_file.write_bytes(key)
    assert main(["encrypt-data", str(src), str(dst), "--key-file", str(key_file), "--key-id", "d1"]) == 0
    return dst


def dataset(root: Path, key: bytes = DATA_KEY) -> DirectoryDataset:
    return DirectoryDataset(root, keyring=Keyring({"d1": key}, "d1"))


def test_every_file_is_encrypted_under_its_own_name_and_reads_back(tmp_path: Path) -> None:
    dst = encrypt(tmp_path)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == sorted(FILES)
    for name, data in FILES.items():
        sealed = (dst / name).read_bytes()
        assert sealed.startswith(MAGIC) and data[:64] not in sealed
    reader = dataset(dst)
    assert reader.files() == sorted(FILES)
    assert {name: reader.read(name) for name in reader.files()} == FILES
    assert DirectoryDataset(tmp_path / "plain").read("a.csv") == FILES["a.csv"]  # unencrypted data reads as it is


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def swap(a: Path, b: Path) -> None:
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (lambda d: flip_a_byte(d / "nested/b.bin"), "failed authentication: its bytes were altered"),
        (lambda d: truncate(d / "nested/b.bin"), "truncated"),
        (lambda d: swap(d / "nested/b.bin", d / "a.csv"), "belongs to model 'kubemaas-data' version 'a.csv'"),
        (lambda d: (d / "nested/b.bin").write_bytes(b"plaintext planted by a writer of the claim"), "magic"),
    ],
    ids=["changed byte", "truncated", "swapped with another file", "replaced"],
)
def test_a_tampered_file_is_refused_naming_it(tmp_path: Path, tamper: object, words: str) -> None:
    dst = encrypt(tmp_path)
    tamper(dst)  # type: ignore[operator]
    data = dataset(dst)
    with pytest.raises(TamperedDataError) as refused:
        data.read("nested/b.bin")
    assert refused.value.name == "nested/b.bin" and refused.value.cause is Cause.TamperedData
    assert str(refused.value).startswith("data file nested/b.bin failed authentication") and words in str(refused.value)
    assert data.read("nested/deeper/c.txt") == FILES["nested/deeper/c.txt"]  # the others still read


def test_the_wrong_key_is_a_configuration_error_and_links_are_refused(tmp_path: Path) -> None:
    dst = encrypt(tmp_path)
    with pytest.raises(DataKeyError, match=r"data file a\.csv"):
        dataset(dst, key=bytes(32)).read("a.csv")
    os.symlink("/etc/passwd", dst / "passwd")
    with pytest.raises(UnsafeEntryError, match="symbolic link"):
        dataset(dst).files()


def test_encrypt_data_refuses_a_destination_inside_the_source_and_a_base64_key(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    key_file = tmp_path / "key"
    key_file.write_bytes(DATA_KEY)

    def encrypt_data(destination: Path) -> int:
        return main(["encrypt-data", str(tmp_path / "plain"), str(destination), "--key-file", str(key_file),
                     "--key-id", "d1"])  # fmt: skip

    assert encrypt_data(tmp_path / "plain" / "out") == 1
    os.symlink("/etc/passwd", tmp_path / "plain" / "passwd")  # refused, not followed
    assert encrypt_data(tmp_path / "o") == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "plain" / "passwd").unlink()
    key_file.write_text("ZGF0YS1rZXktMzItYnl0ZXMtb2YtcmFuZG9tbmVzcw==\n")
    assert encrypt_data(tmp_path / "o") == 1


# ------------------------------------------------------------------ the digits example on an encrypted dataset


def digits_dataset(tmp_path: Path) -> Path:
    plain = tmp_path / "digits-plain"
    subprocess.run([sys.executable, str(EXAMPLE), "--write-dataset", str(plain)], check=True)
    return plain


def encrypted_digits(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    plain = digits_dataset(tmp_path)
    claim = tmp_path / "mnt" / "datasets"
    key_file = tmp_path / "data.key"
    key_file.write_bytes(DATA_KEY)
    assert main(["encrypt-data", str(plain), str(claim / "digits"), "--key-file", str(key_file), "--key-id", "d1"]) == 0
    keys = write_keyring_dir(tmp_path / "data-keys", {"d1": DATA_KEY}, "d1")
    env = {
        contract.DATA_URI: "pvc://datasets/digits",
        contract.MOUNT_ROOT: str(tmp_path / "mnt"),
        contract.DATA_KEY_DIR: str(keys),
    }
    return claim / "digits", env


@pytest.mark.torch
def test_two_ranks_train_on_an_encrypted_dataset(tmp_path: Path) -> None:
    data_dir, env = encrypted_digits(tmp_path)
    job = Job(tmp_path / "job")
    with ranks(job, 2, attempt=0, args=["--steps", "300"], rank_env={0: env, 1: env}) as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0, 0], log_text(job, 0, 0) + log_text(job, 1, 0)
    metrics = job.result(0)["metrics"]
    assert metrics["heldOutAccuracy"] >= 0.9, metrics
    assert metrics["trainSamples"] == 1437  # both ranks' shares of the four files
    # Nothing but ciphertext on the claim.
    assert all(p.read_bytes().startswith(MAGIC) for p in data_dir.rglob("*") if p.is_file())


@pytest.mark.torch
def test_a_tampered_data_file_fails_the_job_as_tampered_data(tmp_path: Path) -> None:
    data_dir, env = encrypted_digits(tmp_path)
    flip_a_byte(data_dir / "train-002.npz")
    job = Job(tmp_path / "job")
    with ranks(job, 1, attempt=0, args=["--steps", "300"], rank_env={0: env}) as procs:
        (code,) = wait_all(procs, timeout=240)
    assert code == ExitCode.ARTIFACT == Cause.TamperedData.exit_code, log_text(job, 0, 0)
    result = job.result(0)
    assert result["reason"] == "TamperedData"
    assert result["message"].startswith("data file train-002.npz failed authentication")
    assert "checkpoint at step" not in log_text(job, 0, 0)  # refused before the first step
