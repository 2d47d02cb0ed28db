"""Compression at export: magnitude pruning made permanent, then dynamic int8 quantization.

Order matters: pruning works on float weights (torch.nn.utils.prune masks ``weight``), and
``prune.remove`` folds the mask into the weight, so the module the quantizer and the tracer see is a plain
module whose pruned weights are zeros. Quantization then keeps those zeros (symmetric int8 maps 0 to 0).

The statistics the harness publishes (parameter count, sparsity) are taken after pruning and before
quantization: a dynamically quantized ``Linear`` keeps its weights packed, outside ``parameters()``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch.nn.utils import prune

from kubemaas.api.compression import PruningMethod
from kubemaas.api.trainingjob import Quantization

PRUNABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


@dataclass(frozen=True)
class Pruning:
    method: PruningMethod
    percent: int

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 99:
            raise ValueError(f"pruning percent must be 1..99, got {self.percent}")


@dataclass(frozen=True)
class Compressed:
    """A module ready to export (on CPU, in eval mode), and what the published metrics say of it."""

    module: torch.nn.Module
    parameters: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.parameters if self.parameters else 0.0


def prunable_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, PRUNABLE)]


def prune_permanently(module: torch.nn.Module, pruning: Pruning) -> None:
    """Prune ``module``'s layers in place and fold the masks into the weights."""
    layers = prunable_layers(module)
    if pruning.method is PruningMethod.L1Structured:
        # The last layer's output channels are the model's outputs (classes, values): never remove one.
        layers = layers[:-1]
    amount = pruning.percent / 100
    for layer in layers:
        if pruning.method is PruningMethod.L1Unstructured:
            prune.l1_unstructured(layer, "weight", amount=amount)  # type: ignore[no-untyped-call]
        else:
            prune.ln_structured(layer, "weight", amount=amount, n=1, dim=0)  # type: ignore[no-untyped-call]
        prune.remove(layer, "weight")  # type: ignore[no-untyped-call]


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters, of which zero)."""
    total = zeros = 0
    for parameter in module.parameters():
        total += parameter.numel()
        zeros += int((parameter.detach() == 0).sum().item())
    return total, zeros


def compress(
    module: torch.nn.Module, *, pruning: Pruning | None = None, quantization: Quantization = Quantization.NONE
) -> Compressed:
    """A compressed copy of ``module`` (the trained module is left as it is, e.g. for a later checkpoint)."""
    copied = copy.deepcopy(module).to("cpu").eval()
    if pruning is not None:
        prune_permanently(copied, pruning)
    total, zeros = count_parameters(copied)
    if quantization is Quantization.DynamicInt8:
        with warnings.catch_warnings():
            # torch marks torch.ao as deprecated in favour of torch.export, whose int8 path Triton's libtorch
            # backend cannot load; the call works as documented.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            copied = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                copied, {torch.nn.Linear}, dtype=torch.qint8
            )
    return Compressed(module=copied, parameters=total, zeros=zeros)
