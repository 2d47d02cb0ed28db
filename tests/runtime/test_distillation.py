"""Distillation and compression of the digits example, as real ranks (gloo on loopback) against real torch:
a teacher is trained and published, then a student a tenth of its size learns from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubemaas import contract
from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.keyring import write_keyring_dir

from .trainer_launch import KEY, Job, log_text, ranks, wait_all

pytestmark = pytest.mark.torch


def train_teacher(root: Path) -> Job:
    teacher = Job(root / "teacher")
    with ranks(teacher, 1, attempt=0, args=["--steps", "300"]) as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0], log_text(teacher, 0, 0)
    return teacher


def test_a_distilled_student_a_tenth_of_the_teacher_reaches_85_percent(tmp_path: Path) -> None:
    teacher = train_teacher(tmp_path)
    teacher_metrics = teacher.result(0)["metrics"]
    # The teacher's key, as its own Secret; only rank 0 mounts it and sends the model to rank 1.
    teacher_keys = write_keyring_dir(tmp_path / "teacher-keys", {"k1": KEY}, "k1")
    student = Job(tmp_path / "student", version="s1")
    distil = {
        contract.TEACHER_URI: f"file://{teacher.store}/digits",
        contract.TEACHER_VERSION: "v1",
        contract.TEACHER_KEY_DIR: str(teacher_keys),
        contract.DISTILL_TEMPERATURE: "4",
        contract.DISTILL_SOFT_PERCENT: "70",
    }
    no_key = {1: {contract.TEACHER_KEY_DIR: str(tmp_path / "nothing-here"), contract.KEY_DIR: str(tmp_path / "none")}}
    with ranks(student, 2, attempt=0, args=["--steps", "600", "--hidden", "10"], rank_env=no_key, **distil) as procs:
        codes = wait_all(procs, timeout=300)
    assert codes == [0, 0], log_text(student, 0, 0) + log_text(student, 1, 0)

    metrics = student.result(0)["metrics"]
    assert metrics["heldOutAccuracy"] >= 0.85, metrics
    assert metrics["teacherParameters"] == teacher_metrics["parameters"] == 8970
    assert metrics["parameters"] <= metrics["teacherParameters"] / 10, metrics
    assert metrics["teacherHeldOutAccuracy"] == pytest.approx(teacher_metrics["heldOutAccuracy"])
    assert metrics["sizeBytes"] < teacher_metrics["sizeBytes"]
    assert metrics["sparsity"] == 0.0
    assert "teacher digits v1 loaded in memory" in log_text(student, 0, 0)
    # The teacher's plaintext was never written: the student's store and the teacher's hold ciphertext only.
    for store in (student.store, teacher.store):
        names = {p.name for p in store.rglob("*") if p.is_file()}
        assert names <= {"LATEST", ".LATEST.lock", "manifest.json", "model.kmenc"} | {
            n for n in names if n.startswith("step-") and n.endswith(".kmenc")
        }, names
    published = ArtifactStore(student.store).resolve("digits", "s1").manifest
    assert published.metrics["parameters"] == metrics["parameters"]


def test_pruned_and_quantized_export_publishes_its_sparsity(tmp_path: Path) -> None:
    job = Job(tmp_path)
    compression = {
        contract.PRUNING: "L1Unstructured",
        contract.PRUNING_PERCENT: "30",
        contract.QUANTIZATION: "DynamicInt8",
    }
    with ranks(job, 1, attempt=0, args=["--steps", "300"], rank_env={0: compression}) as procs:
        codes = wait_all(procs, timeout=240)
    assert codes == [0], log_text(job, 0, 0)
    metrics = job.result(0)["metrics"]
    # 30 % of each Linear's weights (the biases are kept): 0.3 * 8704 of 8970 parameters.
    assert metrics["sparsity"] == pytest.approx(round(0.3 * 4096) / 8970 + round(0.3 * 4096) / 8970 + 192 / 8970)
    assert metrics["parameters"] == 8970
    assert metrics["heldOutAccuracy"] >= 0.85, metrics  # measured on the compressed model
    assert ArtifactStore(job.store).resolve("digits").manifest.quantization == "DynamicInt8"


def test_a_tampered_teacher_fails_the_student_before_training(tmp_path: Path) -> None:
    teacher = train_teacher(tmp_path)
    artifact = teacher.store / "digits" / "v1" / "model.kmenc"
    raw = bytearray(artifact.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    artifact.write_bytes(bytes(raw))
    student = Job(tmp_path / "student")
    env = {contract.TEACHER_URI: f"file://{teacher.store}/digits", contract.TEACHER_KEY_DIR: str(teacher.root / "keys")}
    with ranks(student, 1, attempt=0, args=["--steps", "300"], rank_env={0: env}) as procs:
        (code,) = wait_all(procs, timeout=120)
    assert code == 79, log_text(student, 0, 0)
    result = student.result(0)
    assert result["reason"] == "ArtifactError" and "failed authentication" in result["message"]
    assert "checkpoint" not in log_text(student, 0, 0)
