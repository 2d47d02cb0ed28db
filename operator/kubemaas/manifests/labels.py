"""Labels and owner references every child object carries (docs/modelservice.md, Children)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubemaas"
# Server-side filter for every watch of child objects: only what Kubemaas made (docs/operator.md).
MANAGED_BY_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY}"
NAME_KEY = "app.kubernetes.io/name"
INSTANCE_KEY = "app.kubernetes.io/instance"
COMPONENT_KEY = "app.kubernetes.io/component"
PART_OF_KEY = "app.kubernetes.io/part-of"


def parent_label(kind: str) -> str:
    """`kubemaas.io/trainingjob` for TrainingJob: the label that names a child's parent."""
    return f"kubemaas.io/{kind.lower()}"


def child_labels(kind: str, parent_name: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus the parent's own label."""
    return {
        NAME_KEY: kind.lower(),
        INSTANCE_KEY: parent_name,
        COMPONENT_KEY: component,
        PART_OF_KEY: "kubemaas",
        MANAGED_BY_KEY: MANAGED_BY,
        parent_label(kind): parent_name,
    }


def owner_reference(parent: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference to `parent`: the garbage collector deletes the child with it."""
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def parent_of(kind: str, labels: Mapping[str, str] | None) -> str | None:
    """The parent's name a child object names in its labels, if it is one of ours."""
    if not labels or labels.get(MANAGED_BY_KEY) != MANAGED_BY:
        return None
    return labels.get(parent_label(kind))
