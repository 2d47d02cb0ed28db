"""Where a TrainingJob's published version lives, derived from its spec (docs/runtime-contract.md §5).

Rank 0 reports the version it published, and the operator computes everything else: the URI in a pod's
termination message is checked against this, never trusted (docs/security.md).
"""

from __future__ import annotations


def published_model_name(model_name: str | None, job_name: str) -> str:
    """The model a job publishes: `spec.output.modelName`, else the job's own name."""
    return model_name or job_name


def version_uri(store_uri: str, model: str, version: str) -> str:
    """The URI of one published version: `<store>/<model>/<version>`."""
    return f"{store_uri.rstrip('/')}/{model}/{version}"
