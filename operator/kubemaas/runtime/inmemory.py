"""Plaintext that must never reach a disk: decrypted into anonymous memory (memfd), handed over as bytes.

A teacher model and encrypted training data are read this way; the pod's scratch disk and the shared store
only ever hold ciphertext of them.
"""

from __future__ import annotations

import os

from kubemaas.runtime.crypto import OpenedArtifact


def plaintext(artifact: OpenedArtifact) -> bytes:
    """Every chunk of ``artifact`` authenticated and decrypted, in memory; raises as decryption does."""
    fd = os.memfd_create("kubemaas-plaintext", os.MFD_CLOEXEC)
    try:
        artifact.decrypt_into(fd)
        size = artifact.header.plaintext_size
        view = bytearray(size)
        done = 0
        while done < size:
            read = os.preadv(fd, [memoryview(view)[done:]], done)
            if read <= 0:
                raise OSError(f"in-memory plaintext ended after {done} of {size} bytes")
            done += read
        return bytes(view)
    finally:
        os.close(fd)
