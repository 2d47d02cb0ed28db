"""What every pod Kubemaas builds shares: Pod Security `restricted`, the images' user, claims from URIs."""

from __future__ import annotations

from typing import Any

# The UID:GID every Kubemaas image runs as (images/*/Dockerfile). Triton's own image runs as root by
# default; it runs fine as this user when everything it writes is a mounted volume.
WORKLOAD_UID = 65532


def restricted_pod_security_context() -> dict[str, Any]:
    """Pod-level part of Pod Security `restricted`; fsGroup gives the non-root user the mounted Secret's
    files (they keep their 0400 mode)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security_context() -> dict[str, Any]:
    """Container-level part of `restricted`, plus a read-only root filesystem (writes go to mounted volumes).

    A fresh dict per call: callers (and apply) may mutate what they get."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
