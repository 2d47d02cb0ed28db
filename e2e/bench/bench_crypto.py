"""Streaming artifact encryption/decryption throughput beside `openssl speed -evp aes-256-gcm`,
with the machine's own ceilings measured in the same process, so every number can be read against
what the hardware allows.

Everything runs in one process, interleaved per repeat (openssl, ceilings, ours, openssl, ...) so
background load hits all sides alike. Ours and openssl: the median over the repeats (best kept too).
Ceilings: the best over the repeats, since interference (a shared host) can only lower a ceiling.

Baseline: `openssl speed -evp aes-256-gcm -bytes <chunk size>`: one thread, one AES-256-GCM pass
over an in-memory buffer of exactly our chunk size (4 MiB). The 16384-byte figure is recorded too.

Ours, the public API on real files in a RAM-backed directory (/dev/shm) so a disk does not mask the
crypto path (the headline ratios), and once on the working directory's disk with fsync (context):
  * encrypt  encrypt_file: plaintext file -> artifact, plus the plaintext SHA-256 for the manifest
  * decrypt  decrypt_file: artifact -> plaintext file, every chunk authenticated before the rename
  * verify   verify_file: the same decrypt engine with the plaintext discarded (no output I/O)
The output never exists before a timed call, as when a new version is published or loaded.

Ceilings, measured here with the same buffer size (the chunk size):
  * sha256           hashlib, one thread: the manifest digest is one serial stream
  * aesgcm_1_thread  the `cryptography` AESGCM primitive on an in-memory buffer (what openssl
                     speed measures, through our library's build of OpenSSL)
  * aesgcm_all_cores the same on every core at once (chunks are independent, so ours uses them all)
  * read             pread of a RAM file into a reused buffer, one thread
  * write            os.write of a new file in the same directory, then fsync: one stream, because
                     writes to one file serialize on its inode lock
  * open_write_all_cores
                     decrypt's two unavoidable steps alone: every core opens (AES-GCM decrypt_into)
                     one sealed in-memory chunk after another into its own page-aligned buffer and
                     pwrites it at its offset of one new file, then fsync; no read, no ordering
From these, an ideal bound for each operation: no operation can beat its serial stage (the digest
for encrypt, the single-file write for encrypt and decrypt), nor the total CPU work per byte spread
perfectly over every core (1/sha + 1/aes + 1/read + 1/write core-seconds per byte, over n cores).

    .venv/bin/python e2e/bench/bench_crypto.py [--size-mib 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubemaas.runtime.crypto import DEFAULT_CHUNK_SIZE, Keyring, decrypt_file, encrypt_file, verify_file

RESULTS = Path(__file__).parent / "results" / "crypto.json"
MB = 1_000_000  # openssl reports 1000s of bytes per second; keep the same unit throughout
OPS = ("encrypt", "decrypt", "verify")
CEILINGS = ("sha256", "aesgcm_1_thread", "aesgcm_all_cores", "read", "write", "open_write_all_cores")


# ----------------------------------------------------------------------------- baseline


def openssl_speed(seconds: int, size: int) -> float:
    """Bytes/s of `openssl speed -evp aes-256-gcm -bytes size` (one thread)."""
    cmd = ["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", str(seconds), "-bytes", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    header = next(line for line in out.splitlines() if line.startswith("type"))
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", header)]
    row = next(line for line in out.splitlines() if line.upper().startswith("AES-256-GCM"))
    rates = [float(v) * 1000 for v in re.findall(r"([\d.]+)k", row)]
    if len(rates) != len(sizes) or size not in sizes:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return dict(zip(sizes, rates, strict=True))[size]


# ----------------------------------------------------------------------------- ceilings


def _rate(total: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return total / (time.perf_counter() - start)


def sha256_speed(size: int, block: int) -> float:
    data, digest = memoryview(os.urandom(block)), hashlib.sha256()

    def run() -> None:
        for _ in range(size // block):
            digest.update(data)

    return _rate(size, run)


def _aes_loop(size: int, block: int) -> None:
    aead, data, out = AESGCM(bytes(32)), bytearray(os.urandom(block)), bytearray(block + 16)
    for i in range(size // block):
        aead.encrypt_into(i.to_bytes(12, "big"), data, b"aad", out)


def aesgcm_speed(size: int, block: int, threads: int) -> float:
    """Aggregate bytes/s of ``threads`` threads each sealing ``size`` bytes (AESGCM releases the GIL)."""
    workers = [threading.Thread(target=_aes_loop, args=(size, block)) for _ in range(threads)]

    def run() -> None:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return _rate(size * threads, run)


def read_speed(path: Path, block: int) -> float:
    fd, buf = os.open(path, os.O_RDONLY), memoryview(bytearray(block))
    try:
        size = os.fstat(fd).st_size

        def run() -> None:
            for offset in range(0, size, block):
                os.preadv(fd, [buf], offset)

        return _rate(size, run)
    finally:
        os.close(fd)


def write_speed(path: Path, size: int, block: int) -> float:
    """A new file written in ``block``-sized os.write calls, then fsynced, as our output is."""
    data = memoryview(os.urandom(block))
    path.unlink(missing_ok=True)

    def run() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for _ in range(size // block):
                os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        return _rate(size, run)
    finally:
        path.unlink()


def open_write_speed(path: Path, size: int, block: int, threads: int) -> float:
    """Threads each open sealed chunks into their own buffer and pwrite them into one new file."""
    aead, nonce = AESGCM(bytes(32)), bytes(12)
    sealed = aead.encrypt(nonce, os.urandom(block), b"aad")
    chunks = size // block
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def worker(first: int) -> None:
        out = memoryview(mmap.mmap(-1, block))  # page-aligned, as ours
        for index in range(first, chunks, threads):
            aead.decrypt_into(nonce, sealed, b"aad", out)
            os.pwrite(fd, out, index * block)

    workers = [threading.Thread(target=worker, args=(first,)) for first in range(threads)]

    def run() -> None:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        os.fsync(fd)

    try:
        return _rate(chunks * block, run)
    finally:
        os.close(fd)
        path.unlink()


def measure_ceilings(work: Path, plain: Path, size: int, block: int, cores: int) -> dict[str, float]:
    return {
        "sha256": sha256_speed(size, block),
        "aesgcm_1_thread": aesgcm_speed(size, block, 1),
        "aesgcm_all_cores": aesgcm_speed(size // cores, block, cores),
        "read": read_speed(plain, block),
        "write": write_speed(work / "ceiling.bin", size, block),
        "open_write_all_cores": open_write_speed(work / "ceiling.bin", size, block, cores),
    }


# ----------------------------------------------------------------------------- ours


def make_plaintext(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def measure_ours(work: Path, plain: Path, size: int, keyring: Keyring) -> dict[str, float]:
    sealed, out = work / "model.kmenc", work / "out.bin"
    sealed.unlink(missing_ok=True)
    key = keyring.key("k1")
    rates = {
        "encrypt": _rate(size, lambda: encrypt_file(plain, sealed, key=key, key_id="k1", model="b", version="v1")),
        "decrypt": _rate(size, lambda: decrypt_file(sealed, out, keyring=keyring, model="b", version="v1")),
        "verify": _rate(size, lambda: verify_file(sealed, keyring=keyring, model="b", version="v1")),
    }
    out.unlink()
    sealed.unlink()
    return rates


# ----------------------------------------------------------------------------- bounds


def ideal_bounds(c: dict[str, float], cores: int) -> dict[str, dict[str, Any]]:
    """Upper bounds (bytes/s) from the ceilings: the serial stage, and total work over every core."""

    def over_cores(*rates: float) -> float:
        return cores / sum(1 / r for r in rates)

    candidates = {
        "encrypt": {
            "sha256 (serial digest)": c["sha256"],
            "write (one file)": c["write"],
            "cpu work over all cores": over_cores(c["sha256"], c["aesgcm_1_thread"], c["read"], c["write"]),
        },
        "decrypt": {
            "write (one file)": c["write"],
            "aes-gcm on all cores": c["aesgcm_all_cores"],
            "cpu work over all cores": over_cores(c["aesgcm_1_thread"], c["read"], c["write"]),
            "open+write alone on all cores": c["open_write_all_cores"],
        },
        "verify": {
            "aes-gcm on all cores": c["aesgcm_all_cores"],
            "cpu work over all cores": over_cores(c["aesgcm_1_thread"], c["read"]),
        },
    }
    bounds: dict[str, dict[str, Any]] = {}
    for op, limits in candidates.items():
        binding = min(limits, key=lambda name: limits[name])
        bounds[op] = {"bound": limits[binding], "binding": binding, "candidates": limits}
    return bounds


# ----------------------------------------------------------------------------- run


def _busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPU time spent busy over ``seconds`` (before we start: other tenants' load)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, idle

    busy0, idle0 = sample()
    time.sleep(seconds)
    busy1, idle1 = sample()
    return (busy1 - busy0) / max(1, (busy1 - busy0) + (idle1 - idle0))


def _median(samples: list[float]) -> float:
    return statistics.median(samples) / MB


def run(size_mib: int, repeats: int, seconds: int) -> dict[str, Any]:
    size, block = size_mib << 20, DEFAULT_CHUNK_SIZE
    cores = len(os.sched_getaffinity(0))
    keyring = Keyring({"k1": bytes(range(32))}, "k1")
    baseline: list[float] = []
    baseline_16k: list[float] = []
    ceilings: dict[str, list[float]] = {name: [] for name in CEILINGS}
    ours: dict[str, list[float]] = {name: [] for name in OPS}
    busy_before = _busy_fraction()
    load_start = os.getloadavg()
    shm = Path("/dev/shm")
    ram_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=ram_root, prefix="kmbench-") as ram:
        work = Path(ram)
        plain = work / "plain.bin"
        make_plaintext(plain, size)
        for _ in range(repeats):
            baseline.append(openssl_speed(seconds, block))
            for name, rate in measure_ceilings(work, plain, size, block, cores).items():
                ceilings[name].append(rate)
            for name, rate in measure_ours(work, plain, size, keyring).items():
                ours[name].append(rate)
            baseline_16k.append(openssl_speed(seconds, 16384))
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".kmbench-") as on_disk:
        work = Path(on_disk)
        plain = work / "plain.bin"
        make_plaintext(plain, size)
        disk = measure_ours(work, plain, size, keyring)
        disk_write = write_speed(work / "ceiling.bin", size, block)
    base = statistics.median(baseline)
    ceiling = {name: max(rates) for name, rates in ceilings.items()}
    bounds = ideal_bounds(ceiling, cores)
    median = {name: statistics.median(rates) for name, rates in ours.items()}
    return {
        "machine": {
            "cpu": _cpu_model(),
            "cores": cores,
            "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg(),
            "busy_fraction_before_start": busy_before,
            "quiet": busy_before < 0.05,  # other processes' CPU share just before we started
            "python": platform.python_version(),
            "openssl_cli": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            "cryptography_openssl": _cryptography_openssl(),
        },
        "size_bytes": size,
        "chunk_size_bytes": block,
        "repeats": repeats,
        "working_dir": "RAM (/dev/shm)" if ram_root else "temp dir (no /dev/shm)",
        "unit": "MB/s (10^6 bytes per second); ours and openssl: medians, ceilings: best of the repeats",
        "baseline": {
            "openssl_speed_evp_aes_256_gcm_chunk_size": base / MB,
            "openssl_speed_evp_aes_256_gcm_16384": _median(baseline_16k),
            "samples_chunk_size": [r / MB for r in baseline],
            "samples_16384": [r / MB for r in baseline_16k],
        },
        "ceilings": {name: rate / MB for name, rate in ceiling.items()},
        "ceiling_samples": {name: [r / MB for r in rates] for name, rates in ceilings.items()},
        "ours": {name: rate / MB for name, rate in median.items()},
        "ours_best": {name: max(rates) / MB for name, rates in ours.items()},
        "ours_samples": {name: [r / MB for r in rates] for name, rates in ours.items()},
        "ratio_vs_openssl_chunk_size": {name: rate / base for name, rate in median.items()},
        "ratio_best_vs_openssl_best": {name: max(rates) / max(baseline) for name, rates in ours.items()},
        "ideal_bound": {
            name: {
                "bound": b["bound"] / MB,
                "binding": b["binding"],
                "bound_vs_openssl": b["bound"] / base,
                "ours_vs_bound": median[name] / b["bound"],
                "ours_best_vs_bound": max(ours[name]) / b["bound"],
                "candidates": {k: v / MB for k, v in b["candidates"].items()},
            }
            for name, b in bounds.items()
        },
        "on_disk_with_fsync": {
            "dir": "working directory",
            **{name: rate / MB for name, rate in disk.items()},
            "plain_write_ceiling": disk_write / MB,
        },
        "target_ratio": 0.5,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cryptography_openssl() -> str:
    from cryptography.hazmat.backends.openssl import backend

    return str(backend.openssl_version_text())


def markdown(result: dict[str, Any]) -> str:
    base = result["baseline"]["openssl_speed_evp_aes_256_gcm_chunk_size"]
    disk = result["on_disk_with_fsync"]
    rows = [
        f"openssl speed -evp aes-256-gcm @4 MiB: **{base:.0f} MB/s** (one thread); "
        f"{result['machine']['cores']} cores, quiet={result['machine']['quiet']}",
        "",
        "| operation | ours MB/s (best) | ratio vs openssl (best/best) | ideal bound MB/s | bound vs openssl "
        "| ours vs bound (best) | binding ceiling | on disk+fsync MB/s |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in OPS:
        bound = result["ideal_bound"][name]
        rows.append(
            f"| {name} | {result['ours'][name]:.0f} ({result['ours_best'][name]:.0f}) | "
            f"{result['ratio_vs_openssl_chunk_size'][name]:.2f} ({result['ratio_best_vs_openssl_best'][name]:.2f}) | "
            f"{bound['bound']:.0f} | {bound['bound_vs_openssl']:.2f} | "
            f"{bound['ours_vs_bound']:.2f} ({bound['ours_best_vs_bound']:.2f}) | {bound['binding']} | "
            f"{disk[name]:.0f} |"
        )
    ceilings = result["ceilings"]
    rows += [
        "",
        "| ceiling (same process, 4 MiB buffers, best of repeats) | MB/s |",
        "|---|---:|",
        *(f"| {name} | {ceilings[name]:.0f} |" for name in CEILINGS),
        f"| write on disk + fsync | {disk['plain_write_ceiling']:.0f} |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=2, help="seconds per openssl speed run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.size_mib, args.repeats, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
