"""The Triton series the chart's adapter rule and dashboard read exist on a real tritonserver.

Runs the tritonserver binary of the nvidia-pytriton wheel (tests/serving/triton_harness.py) with a
two-line Python-backend identity model, sends requests, and scrapes the metrics port, with the metrics
setting serving pods need for the dashboard's p50/p99 panels (`--metrics-config=summary_latencies=true`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from kubemaas import serving_metrics
from tests.chart.builders import TRITON_METRICS
from tests.serving.triton_harness import TritonServer

pytestmark = pytest.mark.triton

MODEL = "identity"
CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 100 }
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""
# The stub's interpreter ignores PYTHONPATH (isolated mode); the harness puts numpy there, so add it back,
# as kubemaas's own Python model does.
MODEL_PY = """
import os, site
for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if entry:
        site.addsitedir(entry)
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return out
"""


def infer(server: TritonServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]


def settled_metrics(url: str, requests: int, timeout: float = 10.0) -> str:
    """Triton's /metrics once it counts all `requests`: it records a request's statistics after the response
    has gone out, so a scrape right after the last answer can miss it (seen: 4 of 5)."""
    pattern = rf'^{serving_metrics.TRITON_REQUEST_SUCCESS}\{{[^}}]*model="{MODEL}"[^}}]*\}} (\S+)$'
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        counted = re.search(pattern, text, re.MULTILINE)
        if (counted and float(counted.group(1)) >= requests) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)  # an HTTP endpoint, nothing to watch


def test_series_used_by_the_chart_exist(tmp_path: Path) -> None:
    version_dir = tmp_path / "models" / MODEL / "1"
    version_dir.mkdir(parents=True)
    (version_dir.parent / "config.pbtxt").write_text(CONFIG)
    (version_dir / "model.py").write_text(MODEL_PY)
    server = TritonServer(
        tmp_path / "models", tmp_path / "work", extra_args=["--metrics-config=summary_latencies=true"]
    )
    with server:
        for _ in range(5):
            infer(server)
        text = settled_metrics(server.metrics_url, 5)
    samples = {
        name: labels
        for name, labels in re.findall(r"^(nv_[a-z_]+)\{([^}]*)\}", text, re.MULTILINE)
        if f'model="{MODEL}"' in labels
    }
    assert samples.keys() >= TRITON_METRICS, f"missing: {TRITON_METRICS - samples.keys()}"
    for name in (serving_metrics.TRITON_QUEUE_DURATION_US, serving_metrics.TRITON_REQUEST_SUCCESS):
        assert re.search(rf'^{name}\{{[^}}]*model="{MODEL}"[^}}]*\}} ', text, re.MULTILINE)
    success = re.search(
        rf'^{serving_metrics.TRITON_REQUEST_SUCCESS}\{{[^}}]*model="{MODEL}"[^}}]*\}} (\S+)$', text, re.M
    )
    assert success and float(success.group(1)) == 5
    for quantile in ("0.5", "0.99"):
        assert re.search(rf'^nv_inference_request_summary_us\{{[^}}]*quantile="{quantile}"', text, re.MULTILINE)
