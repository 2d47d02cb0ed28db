"""Compression at export against real torch: pruning made permanent, composed with int8 quantization; the
distillation loss; the teacher decrypted in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubemaas import contract
from kubemaas.api.compression import PruningMethod
from kubemaas.api.trainingjob import Quantization
from kubemaas.runtime.artifacts import ArtifactStore, TensorSpec
from kubemaas.runtime.compression import Pruning, compress, count_parameters
from kubemaas.runtime.distill import distillation_loss, read_teacher
from kubemaas.runtime.errors import TamperedChunkError, WrongKeyError
from kubemaas.runtime.export import export_torchscript, load_torchscript, load_torchscript_bytes
from kubemaas.runtime.keyring import write_keyring_dir

pytestmark = pytest.mark.torch

KEY = bytes(range(32))


def mlp(hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )  # fmt: skip


def linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_unstructured_pruning_zeroes_the_smallest_weights_of_every_layer_and_leaves_the_original() -> None:
    model = mlp()
    before = [layer.weight.detach().clone() for layer in linears(model)]
    compressed = compress(model, pruning=Pruning(PruningMethod.L1Unstructured, 40))
    for original, pruned, layer in zip(before, linears(compressed.module), linears(model), strict=True):
        zero = pruned.weight == 0
        assert int(zero.sum()) == round(0.4 * original.numel())
        # Magnitude: every pruned weight is no larger than every kept one.
        assert original.abs()[zero].max() <= original.abs()[~zero].min()
        assert torch.equal(layer.weight, original)  # the trained model is untouched
        assert not hasattr(pruned, "weight_orig") and not hasattr(pruned, "weight_mask")  # made permanent
    weights = sum(w.numel() for w in before)
    total, zeros = count_parameters(compressed.module)
    assert (compressed.parameters, compressed.zeros) == (total, zeros)
    assert compressed.sparsity == pytest.approx(sum(round(0.4 * w.numel()) for w in before) / total)
    assert zeros < weights  # biases are not pruned


def test_structured_pruning_removes_whole_output_channels_but_never_an_output() -> None:
    compressed = compress(mlp(), pruning=Pruning(PruningMethod.L1Structured, 25))
    first, second, last = linears(compressed.module)
    for layer in (first, second):
        dead_rows = (layer.weight == 0).all(dim=1)
        assert int(dead_rows.sum()) == 8  # 25 % of 32 channels
        assert int((layer.weight == 0).sum()) == 8 * layer.in_features  # nothing else
    assert not (last.weight == 0).all(dim=1).any()  # every class keeps its row


def test_pruning_and_quantization_compose_and_export_what_was_measured(tmp_path: Path) -> None:
    model = mlp()
    compressed = compress(
        model, pruning=Pruning(PruningMethod.L1Unstructured, 50), quantization=Quantization.DynamicInt8
    )
    assert compressed.sparsity > 0.45
    quantized = [
        m for m in compressed.module.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
    ]
    assert len(quantized) == 3
    for layer in quantized:
        weight = layer.weight()  # type: ignore[operator]  # a method on quantized layers: the int8 weight unpacked
        assert float((weight.int_repr() == 0).float().mean()) >= 0.5  # the pruned zeros stay zero in int8
    x = torch.randn(16, 64)
    path = export_torchscript(compressed, torch.zeros(1, 64), tmp_path / "model.pt")
    exported = load_torchscript(path)
    assert torch.allclose(exported(x), compressed.module(x))
    # The export is the compressed model, not the trained one.
    assert not torch.allclose(exported(x), model.eval()(x), atol=1e-3)


def test_a_plain_module_is_still_exported_with_the_quantization_asked_for(tmp_path: Path) -> None:
    path = export_torchscript(mlp(), torch.zeros(1, 64), tmp_path / "m.pt", quantization=Quantization.DynamicInt8)
    assert "_packed_params" in repr(load_torchscript(path))  # dynamic int8 Linear layers keep packed weights


def test_the_distillation_loss_weights_soft_and_hard_terms() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)
    targets = torch.randint(0, 10, (8,))
    hard = torch.nn.functional.cross_entropy(student, targets)
    t = 3.0
    soft = (
        (
            torch.nn.functional.softmax(teacher / t, 1)
            * (torch.nn.functional.log_softmax(teacher / t, 1) - torch.nn.functional.log_softmax(student / t, 1))
        )
        .sum(1)
        .mean()
        * t
        * t
    )
    assert torch.allclose(distillation_loss(student, teacher, targets, temperature=3, soft_percent=0), hard)
    assert torch.allclose(distillation_loss(student, teacher, targets, temperature=3, soft_percent=100), soft)
    mixed = distillation_loss(student, teacher, targets, temperature=3, soft_percent=70)
    assert torch.allclose(mixed, 0.7 * soft + 0.3 * hard)
    mixed.backward()  # type: ignore[no-untyped-call]
    assert student.grad is not None and student.grad.abs().sum() > 0
    # Matching the teacher exactly leaves only the hard term.
    same = distillation_loss(teacher, teacher, targets, temperature=5, soft_percent=50)
    assert torch.allclose(same, 0.5 * torch.nn.functional.cross_entropy(teacher, targets), atol=1e-6)


def publish_teacher(root: Path) -> Path:
    store = root / "claim" / "store"
    store.mkdir(parents=True)
    exported = export_torchscript(mlp(), torch.zeros(1, 64), root / "teacher.pt")
    ArtifactStore(store).publish(
        exported, model="teacher", version="v1", key=KEY, key_id="t1",
        inputs=[TensorSpec(name="pixels", datatype="FP32", dims=[64])],
        outputs=[TensorSpec(name="logits", datatype="FP32", dims=[10])],
    )  # fmt: skip
    exported.unlink()
    return store


def teacher_settings(root: Path, key_dir: Path) -> contract.Settings:
    return contract.Settings.model_validate(
        {
            contract.MODEL_NAME: "student",
            contract.MODEL_VERSION: "v1",
            contract.OUTPUT_URI: "pvc://claim/store",
            contract.MOUNT_ROOT: str(root),
            contract.TEACHER_URI: "pvc://claim/store/teacher",
            contract.TEACHER_KEY_DIR: str(key_dir),
        }
    )


def test_the_teacher_is_authenticated_and_decrypted_in_memory(tmp_path: Path) -> None:
    store = publish_teacher(tmp_path)
    keys = write_keyring_dir(tmp_path / "teacher-keys", {"t1": KEY}, "t1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    data = read_teacher(teacher_settings(tmp_path, keys))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no plaintext written anywhere
    teacher = load_torchscript_bytes(data)
    x = torch.randn(4, 64)
    assert torch.allclose(teacher(x), mlp().eval()(x))

    wrong = write_keyring_dir(tmp_path / "other-keys", {"t1": bytes(32)}, "t1")
    with pytest.raises(WrongKeyError):
        read_teacher(teacher_settings(tmp_path, wrong))
    artifact = store / "teacher" / "v1" / "model.kmenc"
    raw = bytearray(artifact.read_bytes())
    raw[-20] ^= 1
    artifact.write_bytes(bytes(raw))
    with pytest.raises(TamperedChunkError):
        read_teacher(teacher_settings(tmp_path, keys))
