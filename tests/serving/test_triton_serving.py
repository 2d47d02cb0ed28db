"""Acceptance: encrypted artifact -> `kubemaas load-model` -> the real tritonserver -> tritonclient.

One Triton process serves two models built by the loader from the same kind of artifact:
``digits`` with the dynamic batcher and a long queue delay, ``digits-unbatched`` with it disabled,
so the batching tests compare the two under the same server and load.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from numpy.typing import NDArray

from .conftest import IN_FEATURES, INPUT_NAME, MODEL, OUT_FEATURES, OUTPUT_NAME, PublishedModels, publish, run_loader
from .triton_harness import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.torch]

UNBATCHED = "digits-unbatched"
MAX_BATCH = 8
QUEUE_DELAY_US = 200_000  # long enough that a lone request's wait is unmistakable on a busy CI box
CONCURRENCY = 32


@pytest.fixture(scope="module")
def unbatched_eager(published: PublishedModels) -> torch.nn.Module:
    from kubemaas.runtime.artifacts import ArtifactStore

    return publish(
        ArtifactStore(published.root),
        published.root.parent,
        model=UNBATCHED,
        version="v1",
        seed=3,
        key=published.key,
    )


@pytest.fixture(scope="module")
def triton(
    published: PublishedModels, unbatched_eager: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("serving") / "models"
    common = [f"--store-uri={published.uri}", f"--key-dir={published.key_dir}", f"--repository={repository}"]
    common += ["--backend=python", "--instance-kind=CPU", f"--max-batch-size={MAX_BATCH}"]
    batched = run_loader(
        [*common, f"--model={MODEL}", f"--max-queue-delay-us={QUEUE_DELAY_US}", "--preferred-batch-size=8"]
    )
    assert batched.returncode == 0, batched.stderr
    unbatched = run_loader([*common, f"--model={UNBATCHED}", "--dynamic-batching=Disabled"])
    assert unbatched.returncode == 0, unbatched.stderr
    # One intra-op thread per model instance: torch's default (all cores) oversubscribes a small
    # CI box shared with the client, and OpenMP spin-waiting then swamps the timings.
    with TritonServer(repository, repository.parent / "triton", env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


def eager_outputs(module: torch.nn.Module, x: NDArray[np.float32]) -> NDArray[np.float32]:
    with torch.inference_mode():
        out: NDArray[np.float32] = module(torch.from_numpy(x)).numpy()
    return out


def rows(n: int, seed: int) -> NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, IN_FEATURES)).astype(np.float32)


def test_http_outputs_match_eager_torch(triton: TritonServer, published: PublishedModels) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    assert client.is_model_ready(MODEL)
    x = rows(5, seed=10)
    request = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer(MODEL, [request], outputs=[httpclient.InferRequestedOutput(OUTPUT_NAME)])
    got = result.as_numpy(OUTPUT_NAME)
    assert got.shape == (5, OUT_FEATURES)
    np.testing.assert_allclose(got, eager_outputs(published.eager["v2"], x), rtol=1e-5, atol=1e-6)
    # Latest resolved to v2, and the repository says so where clients can read it.
    config = client.get_model_config(MODEL)
    assert config["parameters"]["kubemaas_model_version"]["string_value"] == "v2"


def test_grpc_outputs_match_eager_torch(
    triton: TritonServer, published: PublishedModels, unbatched_eager: torch.nn.Module
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for model, eager in ((MODEL, published.eager["v2"]), (UNBATCHED, unbatched_eager)):
        x = rows(3, seed=11)
        request = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        got = client.infer(model, [request]).as_numpy(OUTPUT_NAME)
        np.testing.assert_allclose(got, eager_outputs(eager, x), rtol=1e-5, atol=1e-6)
    client.close()


def inference_stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    # Triton's statistics extension, as JSON.
    stats: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
    return stats


def fire_concurrently(
    url: str, model: str, requests: int, seed: int
) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Send ``requests`` single-row requests with up to CONCURRENCY in flight; return (input, output)."""
    client = httpclient.InferenceServerClient(url, concurrency=CONCURRENCY)
    try:
        inputs = [rows(1, seed=seed + i) for i in range(requests)]
        pending = []
        for x in inputs:
            request = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            pending.append(client.async_infer(model, [request]))
        return [(x, p.get_result().as_numpy(OUTPUT_NAME)) for x, p in zip(inputs, pending, strict=True)]
    finally:
        client.close()


def test_dynamic_batching_combines_concurrent_requests(triton: TritonServer, published: PublishedModels) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    before = inference_stats(client, MODEL)
    answered = fire_concurrently(triton.http_url, MODEL, requests=4 * CONCURRENCY, seed=100)
    for x, y in answered:  # batching must not mix up whose row is whose
        np.testing.assert_allclose(y, eager_outputs(published.eager["v2"], x), rtol=1e-5, atol=1e-6)
    after = inference_stats(client, MODEL)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 4 * CONCURRENCY
    assert executions < inferences, (executions, inferences)
    batch_sizes = {int(b["batch_size"]) for b in after["batch_stats"] if int(b["compute_infer"]["count"]) > 0}
    assert max(batch_sizes) > 1, batch_sizes
    assert max(batch_sizes) <= MAX_BATCH


def test_with_batching_disabled_every_request_is_its_own_execution(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    before = inference_stats(client, UNBATCHED)
    fire_concurrently(triton.http_url, UNBATCHED, requests=CONCURRENCY, seed=200)
    after = inference_stats(client, UNBATCHED)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == executions == CONCURRENCY


def lone_request(client: httpclient.InferenceServerClient, model: str) -> tuple[float, int]:
    """Latency (s) of one request with nothing else in flight, and the queue time Triton recorded (ns)."""
    before = inference_stats(client, model)["inference_stats"]["queue"]["ns"]
    x = rows(1, seed=300)
    request = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    started = time.perf_counter()
    client.infer(model, [request])
    latency = time.perf_counter() - started
    after = inference_stats(client, model)["inference_stats"]["queue"]["ns"]
    return latency, int(after) - int(before)


def test_a_lone_request_waits_for_the_configured_queue_delay(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    delay_s = QUEUE_DELAY_US / 1e6
    latency, queued_ns = lone_request(client, MODEL)
    # The batcher held the request for max_queue_delay hoping for company, then ran it alone.
    assert latency >= delay_s, latency
    assert queued_ns >= 0.95 * QUEUE_DELAY_US * 1000, queued_ns
    # Same server, same network path, no batcher: the request is not held. Its queue time is only the server's
    # scheduling, which a loaded machine stretches (71 ms once beside a cold run's compilation): half the delay
    # still tells "held for max_queue_delay" from "not held" with room on both sides.
    unbatched_latency, unbatched_queued_ns = lone_request(client, UNBATCHED)
    assert unbatched_latency < delay_s, unbatched_latency
    assert unbatched_queued_ns < 0.5 * QUEUE_DELAY_US * 1000, unbatched_queued_ns


def test_metrics_port_exposes_inference_metrics_for_the_model(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    lone_request(client, MODEL)  # at least one success, whatever ran before
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for metric in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count"):
        match = re.search(rf'^{metric}{{model="{MODEL}",version="1"}} (\S+)$', text, re.MULTILINE)
        assert match, f"{metric} for {MODEL} missing from {triton.metrics_url}"
        assert float(match.group(1)) >= 1
    assert re.search(rf'^nv_inference_queue_duration_us{{model="{MODEL}",version="1"}} \S+$', text, re.MULTILINE)
