"""Serving benchmark: Triton (python backend, CPU) beside eager torch in-process, and model preparation.

Run from the repository root:  .venv/bin/python e2e/bench/bench_serving.py [--seconds 5] [--prep-mib 1024]

What it measures, all on this machine and in this process's lifetime:

* Latency p50/p99 and throughput of single-row requests at concurrency 1, 8 and 32 against
  - eager torch in-process (the module the TorchScript file was exported from; the baseline),
  - Triton with the dynamic batcher on, and with it off (two models in one tritonserver),
  each Triton model built by ``kubemaas load-model`` from an encrypted artifact. The client is the
  gRPC tritonclient, one client per concurrent caller thread.
* Model preparation for a large artifact: ``load_model`` (resolve, authenticate the manifest, decrypt
  with every chunk authenticated, write, rename) beside a plain copy (+fsync) of a file of the same size
  (bench_loader.py measures this alone, against a baseline tree).

Writes e2e/bench/results/serving.json and serving.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from kubemaas.runtime.artifacts import ArtifactStore, TensorSpec  # noqa: E402
from kubemaas.runtime.keyring import generate_key, write_keyring_dir  # noqa: E402
from kubemaas.runtime.loader import LoadRequest, load_model  # noqa: E402
from kubemaas.runtime.triton_config import Backend, InstanceKind, ServingSettings, Toggle  # noqa: E402
from tests.serving.triton_harness import TritonServer  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
IN_FEATURES, HIDDEN, OUT_FEATURES = 256, 2048, 10
CONCURRENCY = (1, 8, 32)
KEY_ID = "bench"
BATCHED, UNBATCHED = "mlp-batched", "mlp-unbatched"


@dataclass(frozen=True)
class Measurement:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    throughput_rps: float


@dataclass(frozen=True)
class Preparation:
    size_bytes: int
    artifact_bytes: int
    loader_seconds: list[float]
    copy_seconds: list[float]

    @property
    def loader_median_s(self) -> float:
        return statistics.median(self.loader_seconds)

    @property
    def copy_median_s(self) -> float:
        return statistics.median(self.copy_seconds)

    def summary(self) -> dict[str, object]:
        gib = self.size_bytes / 2**30
        return {
            **asdict(self),
            "loader_median_s": self.loader_median_s,
            "copy_median_s": self.copy_median_s,
            "loader_over_copy": self.loader_median_s / self.copy_median_s,
            "loader_gib_per_s": gib / self.loader_median_s,
            "copy_gib_per_s": gib / self.copy_median_s,
        }


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, OUT_FEATURES),
    ).eval()


def closed_loop(
    mode: str, concurrency: int, seconds: float, make_caller: Callable[[], Callable[[], None]]
) -> Measurement:
    """``concurrency`` threads each call back-to-back for ``seconds``; every call's latency is kept."""
    callers = [make_caller() for _ in range(concurrency)]
    for call in callers:  # warm up connections and lazy initialisation outside the timed window
        call()
    latencies: list[list[float]] = [[] for _ in callers]
    start_barrier = threading.Barrier(concurrency + 1)
    deadline = 0.0

    def worker(call: Callable[[], None], sink: list[float]) -> None:
        start_barrier.wait()
        while (now := time.perf_counter()) < deadline:
            call()
            sink.append(time.perf_counter() - now)

    threads = [threading.Thread(target=worker, args=(c, s)) for c, s in zip(callers, latencies, strict=True)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start_barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for sink in latencies for x in sink)
    return Measurement(
        mode=mode,
        concurrency=concurrency,
        requests=len(flat),
        seconds=elapsed,
        p50_ms=1000 * flat[len(flat) // 2],
        p99_ms=1000 * flat[min(len(flat) - 1, int(0.99 * len(flat)))],
        throughput_rps=len(flat) / elapsed,
    )


def eager_caller(module: torch.nn.Module) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, IN_FEATURES)).astype(np.float32))

        def call() -> None:
            with torch.inference_mode():
                module(x)

        return call

    return make


def triton_caller(url: str, model: str) -> Callable[[], Callable[[], None]]:
    import tritonclient.grpc as grpcclient

    def make() -> Callable[[], None]:
        client = grpcclient.InferenceServerClient(url)
        x = np.random.default_rng(1).standard_normal((1, IN_FEATURES)).astype(np.float32)
        request = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)

        def call() -> None:
            client.infer(model, [request])

        return call

    return make


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(module, torch.zeros(1, IN_FEATURES)).save(str(path))  # type: ignore[no-untyped-call]
    return path


def publish(store: ArtifactStore, plaintext: Path, model: str, key: bytes, dims: tuple[int, int]) -> None:
    store.publish(
        plaintext,
        model=model,
        version="v1",
        key=key,
        key_id=KEY_ID,
        inputs=[TensorSpec(name="INPUT__0", datatype="FP32", dims=[dims[0]])],
        outputs=[TensorSpec(name="OUTPUT__0", datatype="FP32", dims=[dims[1]])],
    )


def load(store: ArtifactStore, key_dir: Path, repository: Path, model: str, settings: ServingSettings) -> float:
    result = load_model(
        LoadRequest(
            store_uri=f"file://{store.root}",
            model=model,
            version="Latest",
            key_dir=key_dir,
            repository=repository,
            settings=settings,
        )
    )
    return result.seconds


def bench_serving(work: Path, seconds: float) -> tuple[list[Measurement], dict[str, object]]:
    module = make_model()
    key = generate_key()
    key_dir = write_keyring_dir(work / "keys", {KEY_ID: key}, KEY_ID)
    store = ArtifactStore(work / "store")
    plaintext = save_torchscript(module, work / "model.pt")
    repository = work / "models"
    batching = ServingSettings(
        backend=Backend.PYTHON,
        max_batch_size=32,
        dynamic_batching=Toggle.ENABLED,
        max_queue_delay_us=500,
        instance_kind=InstanceKind.CPU,
    )
    unbatched = batching.model_copy(update={"dynamic_batching": Toggle.DISABLED})
    for model, settings in ((BATCHED, batching), (UNBATCHED, unbatched)):
        publish(store, plaintext, model, key, (IN_FEATURES, OUT_FEATURES))
        load(store, key_dir, repository, model, settings)

    # Both sides get one intra-op thread: the client, the server and eager torch share this
    # machine's cores, and torch's default (one thread per core, OpenMP spin-waits) oversubscribes them.
    torch.set_num_threads(1)
    results = [closed_loop("eager torch (in-process)", c, seconds, eager_caller(module)) for c in CONCURRENCY]
    with TritonServer(repository, work / "triton", env={"OMP_NUM_THREADS": "1"}) as server:
        for c in CONCURRENCY:
            results.append(closed_loop("triton, dynamic batching", c, seconds, triton_caller(server.grpc_url, BATCHED)))
            results.append(closed_loop("triton, no batching", c, seconds, triton_caller(server.grpc_url, UNBATCHED)))
    config = {
        "model": f"MLP {IN_FEATURES}-{HIDDEN}-{HIDDEN}-{OUT_FEATURES}, FP32, one row per request",
        "triton": "tritonserver 2.51 (nvidia-pytriton wheel), python backend, 1 CPU instance",
        "batching": {"max_batch_size": 32, "max_queue_delay_us": 500},
        "client": "tritonclient gRPC, one client per caller thread, closed loop",
        "seconds_per_point": seconds,
        "intra_op_threads": "1 (torch.set_num_threads in-process, OMP_NUM_THREADS for the Triton stub)",
    }
    return results, config


def bench_preparation(work: Path, size_mib: int, repeats: int) -> Preparation:
    """load_model (decrypt + verify + write + rename) vs a plain copy of the same number of bytes."""
    key = generate_key()
    key_dir = write_keyring_dir(work / "keys-prep", {KEY_ID: key}, KEY_ID)
    store = ArtifactStore(work / "store-prep")
    plaintext = work / "big-model.pt"
    with plaintext.open("wb") as out:  # incompressible bytes: the loader never parses the model file
        for _ in range(size_mib):
            out.write(os.urandom(1024 * 1024))
    publish(store, plaintext, "big", key, (IN_FEATURES, OUT_FEATURES))
    settings = ServingSettings(backend=Backend.PYTHON, instance_kind=InstanceKind.CPU)
    artifact = store.root / "big" / "v1" / "model.kmenc"
    loader_s: list[float] = []
    copy_s: list[float] = []
    for i in range(repeats):
        repository = work / f"prep-models-{i}"
        loader_s.append(load(store, key_dir, repository, "big", settings))
        shutil.rmtree(repository)
        copy_s.append(timed_copy(artifact, work / f"copy-{i}.bin"))
        (work / f"copy-{i}.bin").unlink()
    return Preparation(
        size_bytes=size_mib * 2**20,
        artifact_bytes=artifact.stat().st_size,
        loader_seconds=loader_s,
        copy_seconds=copy_s,
    )


def timed_copy(src: Path, dst: Path) -> float:
    # fsync as the loader does, so both sides pay for durable bytes.
    started = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def lookup(results: list[Measurement], mode: str, concurrency: int) -> Measurement:
    return next(m for m in results if m.mode == mode and m.concurrency == concurrency)


def ratios(results: list[Measurement]) -> dict[str, float]:
    eager1 = lookup(results, "eager torch (in-process)", 1)
    on1 = lookup(results, "triton, dynamic batching", 1)
    off1 = lookup(results, "triton, no batching", 1)
    on32 = lookup(results, "triton, dynamic batching", 32)
    off32 = lookup(results, "triton, no batching", 32)
    return {
        "triton_no_batching_p50_over_eager_c1": off1.p50_ms / eager1.p50_ms,
        "triton_batching_p50_over_eager_c1": on1.p50_ms / eager1.p50_ms,
        "triton_overhead_ms_p50_c1": off1.p50_ms - eager1.p50_ms,
        "batching_throughput_gain_c32": on32.throughput_rps / off32.throughput_rps,
    }


def markdown(results: list[Measurement], prep: Preparation, ratio: dict[str, float]) -> str:
    lines = [
        "| mode | concurrency | p50 ms | p99 ms | throughput req/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(f"| {m.mode} | {m.concurrency} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.throughput_rps:.0f} |")
    lines += [
        "",
        f"Triton (no batching) p50 at concurrency 1 is {ratio['triton_no_batching_p50_over_eager_c1']:.1f}x eager "
        f"(+{ratio['triton_overhead_ms_p50_c1']:.2f} ms); dynamic batching gives "
        f"{ratio['batching_throughput_gain_c32']:.2f}x the throughput of no batching at concurrency 32.",
        "",
        "| model preparation | size | median s | GiB/s |",
        "|---|---:|---:|---:|",
        f"| `kubemaas load-model` (decrypt, verify, write) | {prep.size_bytes >> 20} MiB "
        f"| {prep.loader_median_s:.2f} | {prep.size_bytes / 2**30 / prep.loader_median_s:.2f} |",
        f"| plain file copy (+fsync) | {prep.size_bytes >> 20} MiB "
        f"| {prep.copy_median_s:.2f} | {prep.size_bytes / 2**30 / prep.copy_median_s:.2f} |",
        "",
        f"Loader / copy: {prep.loader_median_s / prep.copy_median_s:.2f}x.",
    ]
    return "\n".join(lines)


def plot(results: list[Measurement], prep: Preparation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(m.mode for m in results))
    fig, (thr, lat, prep_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    for mode in modes:
        points = [m for m in results if m.mode == mode]
        xs = [m.concurrency for m in points]
        thr.plot(xs, [m.throughput_rps for m in points], marker="o", label=mode)
        line = lat.plot(xs, [m.p50_ms for m in points], marker="o", label=f"{mode} p50")[0]
        lat.plot(
            xs, [m.p99_ms for m in points], marker="x", linestyle="--", color=line.get_color(), label=f"{mode} p99"
        )
    for ax, title, unit in ((thr, "Throughput", "requests/s"), (lat, "Latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    lat.set_yscale("log")
    thr.legend(fontsize=8)
    lat.legend(fontsize=7)
    size_mib = prep.size_bytes >> 20
    prep_ax.bar(
        ["load-model\n(decrypt+verify+write)", "plain copy\n(+fsync)"],
        [prep.loader_median_s, prep.copy_median_s],
        color=["tab:blue", "tab:gray"],
    )
    prep_ax.set_ylabel("seconds (median)")
    prep_ax.set_title(f"Model preparation, {size_mib} MiB")
    fig.suptitle(f"Kubemaas serving on {os.cpu_count()} CPU cores (no GPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per point")
    parser.add_argument("--prep-mib", type=int, default=1024, help="artifact size for the preparation benchmark")
    parser.add_argument("--prep-repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir, removed)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kubemaas-bench-", dir=args.workdir) as scratch:
        work = Path(scratch)
        results, config = bench_serving(work, args.seconds)
        prep = bench_preparation(work, args.prep_mib, args.prep_repeats)
    ratio = ratios(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "config": config,
        "serving": [asdict(m) for m in results],
        "ratios": ratio,
        "preparation": prep.summary(),
    }
    (RESULTS / "serving.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, prep, RESULTS / "serving.png")
    print(markdown(results, prep, ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
