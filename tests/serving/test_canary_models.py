"""The bad versions a Canary analysis is tested with, served by the real loader and tritonserver: the
erroring one fails exactly the poisoned requests, the slow one is slower by its fixed work, and the operator's
parser (serving_metrics) reads both off Triton's metrics page.

And what the analysis depends on in Triton itself (2.51, the Python backend): a request counts in
nv_inference_request_failure only when the model's execute() raises; a response that carries an error counts
as a success. Kubemaas's Python model (runtime/triton_python_model.py) therefore raises for a failing request, and
the poisoned requests show in the failure counter while the model goes on serving the clean ones.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.serving_metrics import TritonCounters, parse_triton_metrics

from .canary_models import POISON, publish_one_at_a_time, publish_poisoned, publish_slow
from .conftest import IN_FEATURES, INPUT_NAME, PublishedModels, publish, run_loader
from .triton_harness import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.torch]

GOOD, POISONED, SLOW = "digits-good", "digits-poisoned", "digits-slow"
# Served with the dynamic batcher on and a long queue delay, so that concurrent requests share an execute() call.
POISONED_BATCHED, ONE_AT_A_TIME = "digits-poisoned-batched", "digits-one-at-a-time"
BATCHING = ["--dynamic-batching=Enabled", "--max-queue-delay-us=300000"]
# About 35 ms of work per call here (20 rounds measured 7 ms): a p99 of a few dozen requests is their slowest one,
# and on a loaded 2-core CI machine one scheduling stall put the good version's p99 at 5 ms, so the slow version
# must be slower than any such stall, not merely than a quiet good request.
SLOW_ROUNDS = 100
ERROR_RESPONSE, RAISES = "error-response", "raises"
PLAIN_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "pixels", data_type: TYPE_FP32, dims: [ 64 ] }} ]
output [ {{ name: "logits", data_type: TYPE_FP32, dims: [ 10 ] }} ]
"""
PLAIN_MODELS = {
    ERROR_RESPONSE: "return [pb_utils.InferenceResponse(error=pb_utils.TritonError('bad')) for _ in requests]",
    RAISES: "raise RuntimeError('bad')",
}
# The stub's interpreter ignores PYTHONPATH (isolated mode) and pb_utils needs numpy from it: add it back.
PLAIN_MODEL = """
import os, site
for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if entry:
        site.addsitedir(entry)
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        {body}
"""


@pytest.fixture(scope="module")
def triton(published: PublishedModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("canary")
    store = ArtifactStore(published.root)
    publish(store, work, model=GOOD, version="v1", seed=1, key=published.key)
    publish_poisoned(store, work, model=POISONED, version="v1", seed=1, key=published.key)
    publish_slow(store, work, model=SLOW, version="v1", seed=1, key=published.key, rounds=SLOW_ROUNDS)
    publish_poisoned(store, work, model=POISONED_BATCHED, version="v1", seed=1, key=published.key)
    publish_one_at_a_time(store, work, model=ONE_AT_A_TIME, version="v1", seed=1, key=published.key)
    repository = work / "models"
    batching = {POISONED_BATCHED: BATCHING, ONE_AT_A_TIME: BATCHING}
    for model in (GOOD, POISONED, SLOW, POISONED_BATCHED, ONE_AT_A_TIME):
        loaded = run_loader(
            [f"--store-uri={published.uri}", f"--key-dir={published.key_dir}", f"--repository={repository}",
             "--backend=python", "--instance-kind=CPU", f"--model={model}",
             *batching.get(model, ["--dynamic-batching=Disabled"])]
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
    for name, body in PLAIN_MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(PLAIN_CONFIG.format(name=name))
        (repository / name / "1" / "model.py").write_text(PLAIN_MODEL.format(body=body))
    args = ["--metrics-config=summary_latencies=true"]
    with TritonServer(repository, work / "triton", env={"OMP_NUM_THREADS": "1"}, extra_args=args) as server:
        yield server


def infer(client: httpclient.InferenceServerClient, model: str, first_pixel: float) -> bool:
    x = np.zeros((1, IN_FEATURES), dtype=np.float32)
    x[0, 0] = first_pixel
    data = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    try:
        client.infer(model, [data])
    except InferenceServerException:
        return False
    return True


def counters_of(server: TritonServer, model: str) -> TritonCounters:
    """The parser's figures for one model: the page filtered to its lines (a pod serves one model)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        page = response.read().decode()
    lines = [ln for ln in page.splitlines() if ln.startswith("#") or f'model="{model}"' in ln]
    return parse_triton_metrics("\n".join(lines) + "\n")


def settled(server: TritonServer, model: str, requests: int) -> TritonCounters:
    """Triton records a request's statistics just after answering it: wait until all are counted."""
    deadline = time.monotonic() + 10
    while True:
        counted = counters_of(server, model)
        if counted.success + counted.failure >= requests or time.monotonic() > deadline:
            return counted
        time.sleep(0.1)  # an HTTP endpoint, nothing to watch


def test_the_poisoned_version_fails_exactly_the_poisoned_requests(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    pixels = [POISON if i % 4 == 0 else 0.5 for i in range(40)]  # a quarter poisoned
    answered = [infer(client, POISONED, p) for p in pixels]
    assert answered == [p != POISON for p in pixels]
    assert all(infer(client, GOOD, p) for p in pixels)  # the good version answers them all
    assert settled(triton, GOOD, 40).failure == 0


def test_triton_counts_a_failure_only_when_execute_raises(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    for name in PLAIN_MODELS:
        assert not any(infer(client, name, 0.5) for _ in range(3))
    assert (settled(triton, RAISES, 3).success, settled(triton, RAISES, 3).failure) == (0, 3)
    assert (settled(triton, ERROR_RESPONSE, 3).success, settled(triton, ERROR_RESPONSE, 3).failure) == (3, 0)


def test_triton_counts_the_poisoned_requests_as_failures(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    before = counters_of(triton, POISONED)
    answered = [infer(client, POISONED, POISON if i % 4 == 0 else 0.5) for i in range(8)]
    assert answered.count(False) == 2
    after = settled(triton, POISONED, before.success + before.failure + 8)
    assert (after.success - before.success, after.failure - before.failure) == (6, 2)


def test_a_failed_request_is_an_http_500_naming_the_error_and_the_model_serves_on(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    x = np.zeros((1, IN_FEATURES), dtype=np.float32)
    x[0, 0] = POISON
    data = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as failed:
        client.infer(POISONED, [data])
    assert failed.value.status() == "500" and "poisoned input" in failed.value.message(), failed.value
    assert client.is_model_ready(POISONED) and infer(client, POISONED, 0.5)


def test_the_slow_version_is_slower_and_triton_reports_its_p99(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    for _ in range(30):
        assert infer(client, GOOD, 0.5) and infer(client, SLOW, 0.5)
    good, slow = settled(triton, GOOD, 30), settled(triton, SLOW, 30)
    assert good.p99_us is not None and slow.p99_us is not None
    mean_good, mean_slow = good.request_us / good.success, slow.request_us / slow.success
    print(f"\nmean {mean_good:.0f} us vs {mean_slow:.0f} us; p99 {good.p99_us:.0f} us vs {slow.p99_us:.0f} us")
    assert mean_slow > 2 * mean_good and slow.p99_us > 2 * good.p99_us


def executions(server: TritonServer, model: str) -> int:
    """nv_inference_exec_count: how many execute() calls (batches) served the model's requests."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        page = response.read().decode()
    found = re.search(rf'^nv_inference_exec_count{{[^}}]*model="{model}"[^}}]*}} (\S+)$', page, re.MULTILINE)
    assert found, f"no nv_inference_exec_count for {model}"
    return int(float(found.group(1)))


def concurrently(server: TritonServer, model: str, pixels: list[float]) -> list[bool]:
    """All requests at once (one client each), so that the dynamic batcher groups them."""
    with ThreadPoolExecutor(len(pixels)) as pool:
        return list(pool.map(lambda p: infer(httpclient.InferenceServerClient(server.http_url), model, p), pixels))


def test_a_batch_that_fails_only_as_a_batch_is_rerun_request_by_request(triton: TritonServer) -> None:
    answered = concurrently(triton, ONE_AT_A_TIME, [0.5] * 8)
    counted = settled(triton, ONE_AT_A_TIME, 8)
    assert executions(triton, ONE_AT_A_TIME) < 8, "no batch formed: the retry was not exercised"
    assert all(answered) and (counted.success, counted.failure) == (8, 0)


def test_a_batch_with_a_poisoned_request_fails_and_triton_counts_what_the_clients_saw(triton: TritonServer) -> None:
    pixels = [POISON] + [0.5] * 7
    answered = concurrently(triton, POISONED_BATCHED, pixels)
    counted = settled(triton, POISONED_BATCHED, 8)
    assert executions(triton, POISONED_BATCHED) < 8, "no batch formed"
    assert not answered[0], "the poisoned request was answered"
    # The Python backend fails a whole execute() call: the clean requests batched with the poisoned one fail too.
    assert (counted.success, counted.failure) == (answered.count(True), answered.count(False)), answered
