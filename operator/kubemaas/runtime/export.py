"""Export a trained module to TorchScript, the format Triton's pytorch_libtorch backend loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from kubemaas.api.trainingjob import Quantization


def export_torchscript(
    module: torch.nn.Module, example_input: torch.Tensor, dst: Path, *, quantization: Quantization = Quantization.NONE
) -> Path:
    """Trace ``module`` on CPU (optionally dynamic-int8 quantized) and save it to ``dst``."""
    module = module.to("cpu").eval()
    with warnings.catch_warnings():
        # torch marks torch.jit and torch.ao as deprecated in favour of torch.export, but Triton's
        # libtorch backend still serves TorchScript only; the calls below work as documented.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        if quantization is Quantization.DynamicInt8:
            module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                module, {torch.nn.Linear}, dtype=torch.qint8
            )
        with torch.no_grad():
            traced = torch.jit.trace(module, example_input.to("cpu"))  # type: ignore[no-untyped-call]
        traced.save(str(dst))
    return dst


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    return loaded
