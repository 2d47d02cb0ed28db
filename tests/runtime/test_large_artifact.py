"""A 2 GiB artifact round-trips through encrypt and decrypt with bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SIZE = 2 * 1024**3
RSS_LIMIT_MIB = 200

# Runs in a fresh interpreter so the peak RSS it reports is that of this work alone. The peak is
# VmHWM from /proc/self/status: the high-water mark of this process's own address space. Not
# getrusage().ru_maxrss: Linux carries that across fork+exec, so it would report the RSS of the
# pytest process that spawned us (hundreds of MiB once torch is imported), not ours.
_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from pathlib import Path
    from kubemaas.runtime.crypto import Keyring, decrypt_file, encrypt_file

    def peak_rss_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc/self/status")

    work, size = Path(sys.argv[1]), int(sys.argv[2])
    key = bytes(range(32))
    plain, sealed, out = work / "plain.bin", work / "model.kmenc", work / "out.bin"
    block = bytearray(os.urandom(1 << 20))
    with open(plain, "wb") as f:  # streamed: never more than one 1 MiB block in memory
        for i in range(size >> 20):
            block[:8] = i.to_bytes(8, "big")  # every block differs, so reordering would show
            f.write(block)
    t0 = time.perf_counter()
    digest = encrypt_file(plain, sealed, key=key, key_id="k1", model="big", version="v1")
    t1 = time.perf_counter()
    plain.unlink()
    decrypt_file(sealed, out, keyring=Keyring({"k1": key}, "k1"), model="big", version="v1")
    t2 = time.perf_counter()
    h = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    print(json.dumps({
        "plaintext_sha256": digest.sha256, "decrypted_sha256": h.hexdigest(),
        "size": digest.size, "decrypted_size": out.stat().st_size,
        "encrypted_size": sealed.stat().st_size,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "encrypt_s": t1 - t0, "decrypt_s": t2 - t1,
    }))
    """
)


@pytest.mark.slow
def test_two_gib_round_trip_with_bounded_memory(tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(SIZE)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
    finally:
        for name in ("plain.bin", "model.kmenc", "out.bin"):
            (tmp_path / name).unlink(missing_ok=True)
    print(report)
    assert report["size"] == report["decrypted_size"] == SIZE
    assert report["decrypted_sha256"] == report["plaintext_sha256"]
    assert report["encrypted_size"] > SIZE
    assert 5 < report["peak_rss_mib"] < RSS_LIMIT_MIB, report
