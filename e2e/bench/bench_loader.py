"""The model loader's decrypt stage beside a plain copy of the same bytes, before and after a change.

Run from the repository root:

    .venv/bin/python e2e/bench/bench_loader.py [--sizes-mib 64,1024] [--rounds 7] [--baseline-ref main]

What it measures, on one file system (a temp dir under ``--workdir``, default ``$TMPDIR``):

* ``load-model``: ``kubemaas.runtime.loader.load_model`` building a Triton repository from a published
  artifact (open, authenticate, decrypt every chunk, write, fsync, render the config, rename), timed
  around the call; the artifact is in the page cache, as it is after the first read from a PVC.
* ``plain copy``: ``shutil.copyfile`` of the same artifact file next to it, then fsync (the loader
  fsyncs too): the floor for moving those bytes on this machine at this moment. On Linux it copies
  inside the kernel (copy_file_range/sendfile): the bytes never reach user space.
* ``read/write loop``: the same bytes read into one reused 4 MiB buffer and written out, then fsync: the
  floor for any program that transforms the bytes on their way (they cross into user space and back).

Both run in the same process, one after the other (the order alternates per round), and the ratio
is taken between them in that process: best of the rounds over best of the rounds (interference on
shared cores only ever slows a run), medians kept too.

Two code trees are measured alike: this checkout and ``--baseline-ref`` (default ``main``), exported
with ``git archive`` into the scratch dir. Each round runs one worker process per tree (this script
with ``--worker``, ``PYTHONPATH`` pointing at that tree's ``operator/``); the trees alternate, so
background load falls on both. Each tree publishes its own artifacts with its own code first (same
plaintext, random bytes), since the formats may differ.

Machine load: the 1-minute load average before each round, and for every timed call the share of
all cores busy (from /proc/stat) and this process's own CPU seconds, so a slow sample can be told
from a busy machine.

Writes e2e/bench/results/loader.json and loader.png and prints a markdown table. Not a test: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
MODEL, VERSION, KEY_ID = "big", "v1", "bench"
TARGET_RATIO = 1.3


# --------------------------------------------------------------------------- worker (one tree)


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _timed(action: Callable[[], None]) -> dict[str, float]:
    busy0, total0 = _machine_busy()
    cpu0, started = os.times(), time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    cpu1, (busy1, total1) = os.times(), _machine_busy()
    return {
        "seconds": seconds,
        "own_cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def worker_setup(store_root: Path, plaintext: Path) -> None:
    """Publish ``plaintext`` with this tree's code and write its key directory."""
    from kubemaas.runtime.artifacts import ArtifactStore, TensorSpec
    from kubemaas.runtime.keyring import generate_key, write_keyring_dir

    key = generate_key()
    write_keyring_dir(store_root / "keys", {KEY_ID: key}, KEY_ID)
    ArtifactStore(store_root / "store").publish(
        plaintext,
        model=MODEL,
        version=VERSION,
        key=key,
        key_id=KEY_ID,
        inputs=[TensorSpec(name="INPUT__0", datatype="FP32", dims=[16])],
        outputs=[TensorSpec(name="OUTPUT__0", datatype="FP32", dims=[4])],
    )


def worker_measure(store_root: Path, loader_first: bool) -> dict[str, Any]:
    """One load-model and one plain copy of the artifact, in this process, on the same file system."""
    from kubemaas.runtime.loader import LoadRequest, load_model
    from kubemaas.runtime.triton_config import Backend, InstanceKind, ServingSettings

    artifact = store_root / "store" / MODEL / VERSION / "model.kmenc"
    repository, copy = store_root / "repository", store_root / "copy.bin"
    request = LoadRequest(
        store_uri=f"file://{store_root / 'store'}",
        model=MODEL,
        version=VERSION,
        key_dir=store_root / "keys",
        repository=repository,
        settings=ServingSettings(backend=Backend.PYTHON, instance_kind=InstanceKind.CPU),
    )

    def load() -> None:
        load_model(request)

    def plain_copy() -> None:
        shutil.copyfile(artifact, copy)
        _fsync(copy)

    def read_write_loop() -> None:
        buffer = memoryview(bytearray(4 << 20))
        with artifact.open("rb", buffering=0) as source, copy.open("wb", buffering=0) as sink:
            while got := source.readinto(buffer):
                sink.write(buffer[:got])
            os.fsync(sink.fileno())

    with artifact.open("rb") as stream:  # into the page cache, as after the first read from the claim
        while stream.read(16 << 20):
            pass
    results: dict[str, Any] = {}
    steps = [("loader", load), ("copy", plain_copy), ("read_write", read_write_loop)]
    for name, action in steps if loader_first else steps[::-1]:
        results[name] = _timed(action)
        shutil.rmtree(repository, ignore_errors=True)
        copy.unlink(missing_ok=True)
    results["artifact_bytes"] = artifact.stat().st_size
    return results


# --------------------------------------------------------------------------- orchestration


def _run_worker(tree: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} on {tree} failed:\n{done.stderr}")
    return done.stdout


def export_tree(ref: str, dest: Path) -> str:
    """``git archive <ref> operator`` into ``dest``; returns the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", ref], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = dest / "tree.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit, "operator"], cwd=REPO_ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return commit


def _head() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "operator"], cwd=REPO_ROOT, capture_output=True, text=True)
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def run(work: Path, sizes_mib: list[int], rounds: int, baseline_ref: str) -> dict[str, Any]:
    trees = {"baseline": work / "baseline", "this tree": REPO_ROOT}
    commits = {"baseline": f"{baseline_ref} = {export_tree(baseline_ref, trees['baseline'])}", "this tree": _head()}
    for size in sizes_mib:
        plaintext = work / f"plain-{size}.bin"
        with plaintext.open("wb") as out:  # incompressible: the loader never parses the model file
            for _ in range(size):
                out.write(os.urandom(1 << 20))
        for label, tree in trees.items():
            _run_worker(tree, "setup", str(work / label.replace(" ", "-") / str(size)), str(plaintext))
        plaintext.unlink()
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {label: {str(s): [] for s in sizes_mib} for label in trees}
    load_before_round: list[float] = []
    for index in range(rounds):
        load_before_round.append(os.getloadavg()[0])
        order = list(trees) if index % 2 == 0 else list(reversed(trees))
        for label in order:
            for size in sizes_mib:
                store_root = work / label.replace(" ", "-") / str(size)
                measured = _run_worker(trees[label], "measure", str(store_root), "1" if index % 2 else "0")
                samples[label][str(size)].append(json.loads(measured))
        print(f"round {index + 1}/{rounds} done (load {load_before_round[-1]:.2f})", file=sys.stderr)
    summary = {label: {size: _summarise(runs) for size, runs in by_size.items()} for label, by_size in samples.items()}
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "file_system": _file_system(work),
            "load_average_1min_before_each_round": load_before_round,
            "load_average_at_end": os.getloadavg(),
        },
        "config": {
            "sizes_mib": sizes_mib,
            "rounds": rounds,
            "trees": commits,
            "loader": "load_model: resolve, authenticate, decrypt every chunk, write, fsync, config, rename",
            "copy": "shutil.copyfile of the artifact + fsync, same process, same file system",
            "ratio": "best loader seconds / best copy seconds (medians too)",
        },
        "target_ratio": TARGET_RATIO,
        "results": summary,
        "samples": samples,
    }


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    loader = [r["loader"]["seconds"] for r in runs]
    copy = [r["copy"]["seconds"] for r in runs]
    loop = [r["read_write"]["seconds"] for r in runs]
    size = runs[0]["artifact_bytes"]
    return {
        "artifact_bytes": size,
        "loader_best_s": min(loader),
        "copy_best_s": min(copy),
        "loader_median_s": statistics.median(loader),
        "copy_median_s": statistics.median(copy),
        "ratio_best": min(loader) / min(copy),
        "ratio_median": statistics.median(loader) / statistics.median(copy),
        "ratio_per_round": [lo / co for lo, co in zip(loader, copy, strict=True)],
        "read_write_best_s": min(loop),
        "read_write_median_s": statistics.median(loop),
        "ratio_to_read_write_best": min(loader) / min(loop),
        "ratio_to_read_write_median": statistics.median(loader) / statistics.median(loop),
        "loader_best_mib_per_s": size / 2**20 / min(loader),
        "copy_best_mib_per_s": size / 2**20 / min(copy),
        "machine_busy_median": statistics.median(r[k]["machine_busy"] for r in runs for k in ("loader", "copy")),
        "loader_own_cpu_median_s": statistics.median(r["loader"]["own_cpu_seconds"] for r in runs),
        "copy_own_cpu_median_s": statistics.median(r["copy"]["own_cpu_seconds"] for r in runs),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _file_system(path: Path) -> str:
    done = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=False)
    lines = done.stdout.splitlines()
    return " ".join(lines[-1].split()[:2]) if len(lines) > 1 else "unknown"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| artifact | code | plain copy best s | read/write loop best s | load-model best s "
        "| ratio to copy best (median) | ratio to loop best (median) | machine busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in result["config"]["sizes_mib"]:
        for label, tree in result["config"]["trees"].items():
            s = result["results"][label][str(size)]
            lines.append(
                f"| {size} MiB | {label} ({tree[:20]}) | {s['copy_best_s']:.3f} | {s['read_write_best_s']:.3f} "
                f"| {s['loader_best_s']:.3f} | {s['ratio_best']:.2f} ({s['ratio_median']:.2f}) "
                f"| {s['ratio_to_read_write_best']:.2f} ({s['ratio_to_read_write_median']:.2f}) "
                f"| {100 * s['machine_busy_median']:.0f}% |"
            )
    loads = result["machine"]["load_average_1min_before_each_round"]
    lines += [
        "",
        f"{result['machine']['cpus']} cores, {result['machine']['file_system']}; 1-min load average before the "
        f"rounds {min(loads):.2f}-{max(loads):.2f}. Target: load-model <= {TARGET_RATIO}x the copy.",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["config"]["sizes_mib"]
    labels = list(result["config"]["trees"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5))
    for ax, size in zip(axes if len(sizes) > 1 else [axes], sizes, strict=True):
        names, values, colors = [], [], []
        copy = min(result["results"][label][str(size)]["copy_best_s"] for label in labels)
        loop = min(result["results"][label][str(size)]["read_write_best_s"] for label in labels)
        names += ["plain copy\n(+fsync)", "read/write loop\n(+fsync)"]
        values += [copy, loop]
        colors += ["tab:gray", "silver"]
        for label, color in zip(labels, ("tab:orange", "tab:blue"), strict=False):
            s = result["results"][label][str(size)]
            names.append(f"load-model\n{label}\n({s['ratio_best']:.2f}x its copy)")
            values.append(s["loader_best_s"])
            colors.append(color)
        ax.bar(names, values, color=colors)
        ax.axhline(copy * TARGET_RATIO, color="tab:red", linestyle="--", label=f"{TARGET_RATIO}x copy")
        ax.set_ylabel("seconds (best of rounds)")
        ax.set_title(f"{size} MiB artifact")
        ax.legend(fontsize=8)
    fig.suptitle(f"Model loader decrypt stage vs plain copy, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, store_root = sys.argv[2], Path(sys.argv[3])
        if kind == "setup":
            worker_setup(store_root, Path(sys.argv[4]))
        else:
            print(json.dumps(worker_measure(store_root, loader_first=sys.argv[4] == "1")))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="64,1024", help="artifact sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-ref", default="main", help="git ref measured as the baseline")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch goes in a temp dir under it (default: $TMPDIR)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=".bench-loader-", dir=args.workdir) as scratch:
        result = run(Path(scratch), [int(s) for s in args.sizes_mib.split(",")], args.rounds, args.baseline_ref)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
