"""Triton Python-backend model that serves a TorchScript file with torch: the CPU serving path.

The model loader copies this file, unchanged, to ``<repo>/<model>/<n>/model.py`` next to ``model.pt``.
It runs inside Triton's ``triton_python_backend_stub``, not inside kubemaas, so it imports nothing
from kubemaas and is never imported by it (``triton_python_backend_utils`` exists only in the stub).

Contract with the TorchScript module: ``forward`` takes the config's inputs positionally, in order,
each with the batch as its first dimension, and returns one tensor or a tuple in the config's output
order.
"""

from __future__ import annotations

import json
import os
import site
import sys
from typing import Any


def _honor_pythonpath() -> None:
    # The stub's embedded interpreter ignores PYTHONPATH (it is initialised in isolated mode), so an
    # image or harness that installs torch outside the base site-packages would be invisible. Restore
    # the usual meaning: PYTHONPATH entries (with their .pth files) go first on sys.path.
    before = list(sys.path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in before:
            site.addsitedir(entry)
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before


_honor_pythonpath()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # noqa: E402

MODEL_FILE = "model.pt"


class TritonPythonModel:
    """One instance per Triton model instance (``instance_group``)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self._input_names = [tensor["name"] for tensor in config["input"]]
        self._outputs = [
            (tensor["name"], pb_utils.triton_string_to_numpy(tensor["data_type"])) for tensor in config["output"]
        ]
        if args["model_instance_kind"] == "GPU":
            self._device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self._device = torch.device("cpu")
        path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILE)
        self._module = torch.jit.load(path, map_location=self._device)  # type: ignore[no-untyped-call]
        self._module.eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        # A failing request must RAISE: Triton 2.51's Python backend counts a request in
        # nv_inference_request_failure only when execute() raises (an error response counts as a success),
        # and the Canary analysis reads that counter. Raising fails this call's requests, not the instance:
        # the stub answers each with the error and the next call is served as usual.
        try:
            return self._execute_batch(requests)
        except Exception as error:
            if len(requests) == 1:
                raise pb_utils.TritonModelException(_describe(error)) from error
            batch_error = error
        # The dynamic batcher put several requests into this call: run each alone, so that a batch that failed
        # as a whole (one bad request, inputs that do not concatenate) costs only what really fails. Should
        # one still fail, the whole call must raise (the backend fails requests per call, not per request).
        responses: list[Any] = []
        failed: list[str] = []
        for request in requests:
            try:
                responses.extend(self._execute_batch([request]))
            except Exception as error:
                failed.append(_describe(error))
        if failed:
            raise pb_utils.TritonModelException(
                f"{len(failed)} of {len(requests)} batched requests failed; the first: {failed[0]}"
            ) from batch_error
        return responses

    def _execute_batch(self, requests: list[Any]) -> list[Any]:
        # The dynamic batcher hands over several requests at once; run them as ONE forward pass
        # (concatenated along the batch dimension) so batching actually buys throughput.
        columns: list[list[np.ndarray[Any, Any]]] = [[] for _ in self._input_names]
        rows: list[int] = []
        for request in requests:
            for column, name in zip(columns, self._input_names, strict=True):
                column.append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            rows.append(int(columns[0][-1].shape[0]))
        batch = [torch.from_numpy(np.concatenate(column)).to(self._device) for column in columns]
        with torch.inference_mode():
            result = self._module(*batch)
        tensors = result if isinstance(result, tuple | list) else (result,)
        if len(tensors) != len(self._outputs):
            raise ValueError(f"model returned {len(tensors)} outputs, config declares {len(self._outputs)}")
        arrays = [
            tensor.detach().cpu().numpy().astype(dtype, copy=False)
            for tensor, (_, dtype) in zip(tensors, self._outputs, strict=True)
        ]
        boundaries = np.cumsum(rows)[:-1]
        per_output = [np.split(array, boundaries) for array in arrays]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(parts[i]))
                    for (name, _), parts in zip(self._outputs, per_output, strict=True)
                ]
            )
            for i in range(len(requests))
        ]


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
