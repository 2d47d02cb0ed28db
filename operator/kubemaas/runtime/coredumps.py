"""Core dumps off in every runtime process that holds a key or plaintext weights.

A core dump is a copy of the process's memory written where the node or the container runtime says:
for the model loader and the trainer that memory holds the model key and the decrypted model, which
must never leave the pod's own volumes (docs/runtime-contract.md). Both limits go to zero, so the
process (and every child it starts: torchrun's workers) cannot raise them again.
"""

from __future__ import annotations

import resource


def disable_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
