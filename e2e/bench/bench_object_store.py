"""The artifact store in a bucket beside the same SDK moving the same bytes, on the local cluster's S3 server.

Run from the repository root (starts the local cluster, or reuses a running one, for its S3 server):

    .venv/bin/python e2e/bench/bench_object_store.py [--sizes-mib 64,1024] [--rounds 5]

What it measures, in one process, against one S3 server (versitygw on this machine, e2e/cluster/object_store.py):

* ``load``: ``kubemaas.runtime.loader.load_model`` from ``s3://``: ranged GETs of the artifact (one per 4 MiB
  chunk, several in flight), each chunk authenticated and decrypted into the Triton repository as it arrives,
  fsync, the config rendered, the rename; timed around the call.
* ``download``: boto3's own ``download_file`` of the same artifact object (its transfer manager: ranged GETs
  of 8 MiB on 10 threads) into a file beside it, then fsync, with a client made for it as ``load`` makes one:
  what a fresh process (an init container, KServe's storage initializer) does to fetch those bytes.
* ``publish``: ``ObjectArtifactStore.publish`` of the plaintext: the chunks sealed straight into the parts of a
  multipart upload of the artifact (no copy on any disk), the manifest (If-None-Match), LATEST (compare-and-swap).
* ``upload``: boto3's ``upload_file`` of the same number of bytes with the same transfer settings (parts of
  8 MiB, 8 in flight: ``TRANSFER``): the plain multipart upload publication is compared to.
* ``upload+seal``: that same upload while another thread seals the same plaintext (AES-GCM chunks and the
  sha256 the manifest records, ``encrypt_to`` into nothing): the CPU the format needs, overlapped with
  ``upload_file`` as well as it can be, on the cores the server shares. Not a hard floor: publication seals each
  chunk in place in its part's buffer and hands the SDK each part as one buffer, which it signs and sends in one
  pass each, where ``upload_file`` reads a file object back in pieces for both
  (kubemaas.runtime.object_client.MultipartWriter).

The pairs run one after the other, the order alternating per round; a ratio is best over best (interference on
shared cores only ever slows a run), medians kept too. The 1-minute load average is recorded before each round.
Writes e2e/bench/results/object-store.json and object-store.png and prints a markdown table. Not a test.
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
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "operator"))

from e2e.bench.bench_loader import _fsync  # noqa: E402
from e2e.cluster import control_plane, object_store  # noqa: E402
from kubemaas.contract.store import S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE, S3Settings  # noqa: E402
from kubemaas.runtime.artifacts import TensorSpec  # noqa: E402
from kubemaas.runtime.crypto.files import encrypt_to  # noqa: E402
from kubemaas.runtime.keyring import generate_key, write_keyring_dir  # noqa: E402
from kubemaas.runtime.loader import LoadRequest, load_model  # noqa: E402
from kubemaas.runtime.object_client import client_for  # noqa: E402
from kubemaas.runtime.object_store import TRANSFER, ObjectArtifactStore  # noqa: E402
from kubemaas.runtime.triton_config import Backend, InstanceKind, ServingSettings  # noqa: E402

RESULTS = REPO_ROOT / "e2e" / "bench" / "results"
MODEL, KEY_ID = "big", "bench"
TARGET_RATIO = 1.3


class _Discard:
    """A sink that keeps nothing (kubemaas.runtime.crypto's Sink): the CPU of sealing alone."""

    def place(self, offset: int, length: int, scratch: memoryview) -> memoryview:
        return scratch[:length]

    def put(self, view: memoryview, offset: int) -> None:
        pass


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Round:
    """One round's four timed actions on one size, under a key prefix of its own."""

    def __init__(self, work: Path, settings: S3Settings, bucket: str, plaintext: Path, prefix: str, key: bytes) -> None:
        self.work, self.bucket, self.plaintext, self.prefix, self.key = work, bucket, plaintext, prefix, key
        self.s3, self.settings, self.environ = client_for(settings), settings, settings.to_env()
        self.store = ObjectArtifactStore(f"s3://{bucket}/{prefix}", self.s3)
        self.repository, self.copy = work / "repository", work / "download.bin"

    def publish(self) -> None:
        spec = [TensorSpec(name="INPUT__0", datatype="FP32", dims=[16])]
        self.store.publish(
            self.plaintext, model=MODEL, version="v1", key=self.key, key_id=KEY_ID, inputs=spec, outputs=spec
        )

    def upload(self) -> None:
        self.s3.upload_file(str(self.plaintext), self.bucket, f"plain/{self.prefix}", Config=TRANSFER)

    def upload_and_seal(self) -> None:
        with ThreadPoolExecutor(1) as pool:
            sealing = pool.submit(
                encrypt_to,
                self.plaintext,
                lambda _: _Discard(),
                key=self.key,
                key_id=KEY_ID,
                model=MODEL,
                version="v0",
            )
            self.upload()
            sealing.result()

    def load(self) -> None:
        request = LoadRequest(
            store_uri=self.store.location,
            model=MODEL,
            version="v1",
            key_dir=self.work / "keys",
            repository=self.repository,
            settings=ServingSettings(backend=Backend.PYTHON, instance_kind=InstanceKind.CPU),
            environ=self.environ,
        )
        load_model(request)

    def download(self) -> None:
        # A client of its own, as load-model makes one: each is what a fresh process (an init container, a
        # storage initializer) does to fetch the bytes; creating a boto3 client takes 0.1-0.3 s here.
        client_for(self.settings).download_file(self.bucket, self.artifact_key(), str(self.copy))
        _fsync(self.copy)

    def artifact_key(self) -> str:
        return self.store.resolve(MODEL, "v1").artifact_key

    def clean(self) -> None:
        shutil.rmtree(self.repository, ignore_errors=True)
        self.copy.unlink(missing_ok=True)

    def delete_objects(self) -> None:
        """The round's objects, so that the server's disk holds one round at a time (two 1 GiB objects)."""
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix).get("Contents", [])
        for key in [o["Key"] for o in listed] + [f"plain/{self.prefix}"]:
            self.s3.delete_object(Bucket=self.bucket, Key=key)


def measure(work: Path, sizes_mib: list[int], rounds: int) -> dict[str, Any]:
    server = object_store.connection(control_plane.up())
    credentials = work / "credentials"
    credentials.mkdir()
    (credentials / S3_ACCESS_KEY_FILE).write_text(server.access_key_id)
    (credentials / S3_SECRET_KEY_FILE).write_text(server.secret_access_key)
    settings = S3Settings(
        endpoint_url=server.endpoint_url, region=server.region, path_style=True, credentials_dir=credentials
    )
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client_for(settings).create_bucket(Bucket=bucket)
    key = generate_key()
    write_keyring_dir(work / "keys", {KEY_ID: key}, KEY_ID)
    samples: dict[str, dict[str, list[float]]] = {str(s): {} for s in sizes_mib}
    load_average: list[float] = []
    artifact_bytes: dict[str, int] = {}
    for size in sizes_mib:
        plaintext = work / f"plain-{size}.bin"
        with plaintext.open("wb") as out:  # incompressible: nothing here parses the model
            for _ in range(size):
                out.write(os.urandom(1 << 20))
        for index in range(rounds):
            load_average.append(os.getloadavg()[0])
            one = Round(work, settings, bucket, plaintext, f"r{size}-{index}", key)
            writes = [("publish", one.publish), ("upload", one.upload), ("upload+seal", one.upload_and_seal)]
            reads = [("load", one.load), ("download", one.download)]
            if index % 2:
                writes, reads = writes[::-1], reads[::-1]
            for name, action in [*writes, *reads]:
                samples[str(size)].setdefault(name, []).append(_timed(action))
                one.clean()
            artifact_bytes[str(size)] = one.s3.head_object(Bucket=bucket, Key=one.artifact_key())["ContentLength"]
            one.delete_objects()
        plaintext.unlink()
    client_for(settings).delete_bucket(Bucket=bucket)  # the server's disk keeps nothing of a run
    return {
        "samples": samples,
        "artifact_bytes": artifact_bytes,
        "load_average_before_rounds": load_average,
        "server": "versitygw v1.8.0 (posix backend) on this machine, over loopback",
    }


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for size, by_name in samples.items():
        best = {name: min(values) for name, values in by_name.items()}
        median = {name: statistics.median(values) for name, values in by_name.items()}
        out[size] = {
            **{f"{name}_best_s": value for name, value in best.items()},
            **{f"{name}_median_s": value for name, value in median.items()},
            "load_over_download": best["load"] / best["download"],
            "publish_over_upload": best["publish"] / best["upload"],
            "load_over_download_median": median["load"] / median["download"],
            "publish_over_upload_median": median["publish"] / median["upload"],
            "sealed_floor_over_upload": best["upload+seal"] / best["upload"],
            "publish_over_sealed_floor": best["publish"] / best["upload+seal"],
        }
    return out


def plot(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (ours, floor, title) in zip(
        axes,
        (("load", "download", "read from the bucket"), ("publish", "upload", "publish to the bucket")),
        strict=True,
    ):
        x = range(len(sizes))
        axis.bar([i - 0.2 for i in x], [summary[s][f"{ours}_best_s"] for s in sizes], 0.4, label=ours)
        axis.bar([i + 0.2 for i in x], [summary[s][f"{floor}_best_s"] for s in sizes], 0.4, label=f"boto3 {floor}")
        axis.set_xticks(list(x), [f"{s} MiB" for s in sizes])
        axis.set_ylabel("seconds (best of rounds)")
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| size | load (s) | boto3 download (s) | ratio | publish (s) | boto3 upload (s) | ratio "
        "| upload+seal (s) | its ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in summary.items():
        lines.append(
            f"| {size} MiB | {row['load_best_s']:.2f} | {row['download_best_s']:.2f} | "
            f"**{row['load_over_download']:.2f}x** | {row['publish_best_s']:.2f} | {row['upload_best_s']:.2f} | "
            f"**{row['publish_over_upload']:.2f}x** | {row['upload+seal_best_s']:.2f} | "
            f"{row['sealed_floor_over_upload']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="64,1024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="object-store")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-object-store-") as scratch:
        measured = measure(Path(scratch), sizes, args.rounds)
    summary = summarize(measured["samples"])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rounds": args.rounds,
        "target_ratio": TARGET_RATIO,
        "summary": summary,
        **measured,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, RESULTS / f"{args.out}.png")
    print(table(summary))


if __name__ == "__main__":
    main()
