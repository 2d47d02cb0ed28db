"""Streaming artifact encryption/decryption throughput beside `openssl speed -evp aes-256-gcm`.

Both sides run on the same machine, interleaved (openssl, ours, openssl, ours, ...) so that
background load hits them alike; each figure is the median over the repeats. The baseline is
`openssl speed -evp aes-256-gcm -bytes <chunk size>`: one AES-256-GCM pass over an in-memory
buffer of exactly our chunk size (4 MiB). The default table's 16384-byte column is recorded too.

Our side is the public API on real files:
  * encrypt_file  plaintext file -> artifact (includes the plaintext SHA-256 for the manifest)
  * decrypt_file  artifact -> plaintext file, every chunk authenticated before the rename
  * verify_file   artifact -> nothing (the loader's authenticate-only pass)
on a RAM-backed directory (/dev/shm) so disk speed does not mask the crypto path, and once
more on the working directory's disk with fsync as it happens in a pod (context, not ratio).

    .venv/bin/python e2e/bench/bench_crypto.py [--size-mib 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubemaas.runtime.crypto import DEFAULT_CHUNK_SIZE, Keyring, decrypt_file, encrypt_file, verify_file

RESULTS = Path(__file__).parent / "results" / "crypto.json"
MB = 1_000_000  # openssl reports 1000s of bytes per second; keep the same unit throughout


def openssl_speed(seconds: int, size: int | None) -> dict[int, float]:
    """Bytes/s per buffer size from `openssl speed -evp aes-256-gcm` (``size``: one custom size)."""
    cmd = ["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", str(seconds)]
    if size is not None:
        cmd += ["-bytes", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    header = next(line for line in out.splitlines() if line.startswith("type"))
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", header)]
    row = next(line for line in out.splitlines() if line.upper().startswith("AES-256-GCM"))
    rates = [float(v) * 1000 for v in re.findall(r"([\d.]+)k", row)]
    if len(rates) != len(sizes):
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return dict(zip(sizes, rates, strict=True))


def primitive_speed(seconds: float, size: int) -> float:
    """Bytes/s of the `cryptography` AESGCM primitive itself on ``size``-byte buffers, in process.

    Not a baseline for the ratio: it shows how much of any gap to openssl is the library's own
    (its bundled OpenSSL build) and how much is our streaming (framing, file I/O, hashing).
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, data, out = AESGCM(bytes(32)), bytearray(os.urandom(size)), bytearray(size + 16)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        aead.encrypt_into(os.urandom(12), data, b"aad", out)
        done += size
    return done / (time.perf_counter() - start)


def make_plaintext(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def timed(fn: Callable[[], object], size: int) -> float:
    start = time.perf_counter()
    fn()
    return size / (time.perf_counter() - start)


def measure_ours(work: Path, size: int, keyring: Keyring) -> dict[str, float]:
    plain, sealed, out = work / "plain.bin", work / "model.kmenc", work / "out.bin"
    if not plain.exists():
        make_plaintext(plain, size)
    key = keyring.key("k1")
    rates = {
        "encrypt": timed(lambda: encrypt_file(plain, sealed, key=key, key_id="k1", model="bench", version="v1"), size),
        "decrypt": timed(lambda: decrypt_file(sealed, out, keyring=keyring, model="bench", version="v1"), size),
        "verify": timed(lambda: verify_file(sealed, keyring=keyring, model="bench", version="v1"), size),
    }
    out.unlink()
    return rates


def ram_dir() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run(size_mib: int, repeats: int, seconds: int) -> dict[str, Any]:
    size = size_mib << 20
    keyring = Keyring({"k1": bytes(range(32))}, "k1")
    baseline_chunk: list[float] = []
    baseline_16k: list[float] = []
    primitive: list[float] = []
    ours: dict[str, list[float]] = {"encrypt": [], "decrypt": [], "verify": []}
    disk: dict[str, list[float]] = {"encrypt": [], "decrypt": [], "verify": []}
    ram_root = ram_dir()
    with (
        tempfile.TemporaryDirectory(dir=ram_root, prefix="kmbench-") as ram,
        tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".kmbench-") as on_disk,
    ):
        for _ in range(repeats):
            baseline_chunk.append(openssl_speed(seconds, DEFAULT_CHUNK_SIZE)[DEFAULT_CHUNK_SIZE])
            for name, rate in measure_ours(Path(ram), size, keyring).items():
                ours[name].append(rate)
            baseline_16k.append(openssl_speed(seconds, None)[16384])
            primitive.append(primitive_speed(seconds, DEFAULT_CHUNK_SIZE))
        for name, rate in measure_ours(Path(on_disk), size, keyring).items():
            disk[name].append(rate)
        shutil.rmtree(on_disk, ignore_errors=True)
    base = statistics.median(baseline_chunk)
    base16 = statistics.median(baseline_16k)
    result: dict[str, Any] = {
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "openssl_cli": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            "cryptography_openssl": _cryptography_openssl(),
        },
        "size_bytes": size,
        "chunk_size_bytes": DEFAULT_CHUNK_SIZE,
        "repeats": repeats,
        "working_dir": "RAM (/dev/shm)" if ram_root else "temp dir (no /dev/shm)",
        "unit": "MB/s (10^6 bytes per second), medians",
        "baseline": {
            "openssl_speed_evp_aes_256_gcm_chunk_size": base / MB,
            "openssl_speed_evp_aes_256_gcm_16384": base16 / MB,
            "samples_chunk_size": [r / MB for r in baseline_chunk],
            "samples_16384": [r / MB for r in baseline_16k],
        },
        "cryptography_aesgcm_primitive_chunk_size": statistics.median(primitive) / MB,
        "ratio_vs_cryptography_primitive": {
            name: statistics.median(rates) / statistics.median(primitive) for name, rates in ours.items()
        },
        "ours": {name: statistics.median(rates) / MB for name, rates in ours.items()},
        "ours_samples": {name: [r / MB for r in rates] for name, rates in ours.items()},
        "ratio_vs_openssl_chunk_size": {name: statistics.median(rates) / base for name, rates in ours.items()},
        "ratio_vs_openssl_16384": {name: statistics.median(rates) / base16 for name, rates in ours.items()},
        "on_disk_with_fsync": {name: rates[0] / MB for name, rates in disk.items()},
        "target_ratio": 0.5,
    }
    return result


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
    base = result["baseline"]
    rows = [
        "| operation | ours MB/s | openssl @4 MiB MB/s | ratio | openssl @16 KiB MB/s | ratio | on disk+fsync MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("encrypt", "decrypt", "verify"):
        rows.append(
            f"| {name} | {result['ours'][name]:.0f} | {base['openssl_speed_evp_aes_256_gcm_chunk_size']:.0f} | "
            f"{result['ratio_vs_openssl_chunk_size'][name]:.2f} | "
            f"{base['openssl_speed_evp_aes_256_gcm_16384']:.0f} | {result['ratio_vs_openssl_16384'][name]:.2f} | "
            f"{result['on_disk_with_fsync'][name]:.0f} |"
        )
    rows.append(
        f"\n`cryptography` AESGCM primitive alone, 4 MiB buffers in memory: "
        f"{result['cryptography_aesgcm_primitive_chunk_size']:.0f} MB/s "
        f"({result['cryptography_aesgcm_primitive_chunk_size'] / base['openssl_speed_evp_aes_256_gcm_chunk_size']:.2f}"
        " of openssl speed)"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
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
