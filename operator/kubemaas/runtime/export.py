"""Export a trained module to TorchScript, the format Triton's pytorch_libtorch backend loads."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from kubemaas.api.trainingjob import Quantization
from kubemaas.runtime.compression import Compressed, compress


def export_torchscript(
    module: torch.nn.Module | Compressed,
    example_input: torch.Tensor,
    dst: Path,
    *,
    quantization: Quantization = Quantization.NONE,
) -> Path:
    """Trace ``module`` on CPU and save it to ``dst``.

    A plain module is quantized as ``quantization`` says first; a :class:`Compressed` one is exported as
    it is (kubemaas.runtime.compression made it).
    """
    compressed = module if isinstance(module, Compressed) else compress(module, quantization=quantization)
    with warnings.catch_warnings():
        # torch marks torch.jit as deprecated in favour of torch.export, but Triton's libtorch backend
        # still serves TorchScript only; the calls below work as documented.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        with torch.no_grad():
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                compressed.module, example_input.to("cpu")
            )
        traced.save(str(dst))
    return dst


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    return loaded


def load_torchscript_bytes(data: bytes, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """A TorchScript module from memory (a model decrypted in memory never touches a disk)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data), map_location=device
        )
    return loaded.eval()
