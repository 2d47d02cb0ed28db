"""The aggregated ClusterRoles: TrainingJobs and ModelServices folded into the cluster's view, edit and admin
roles (docs/admission.md)."""

from __future__ import annotations

from typing import Any

from kubemaas.api.access import LABELS, NAME_PREFIX
from kubemaas.api.crd import GROUP, KINDS

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete", "deletecollection"]
ROLES = ("view", "edit", "admin")


def aggregated_role(role: str) -> dict[str, Any]:
    """`kubemaas-<role>`, folded into the cluster's `<role>` ClusterRole (and, as Kubernetes aggregates
    view into edit and edit into admin, into the roles above it)."""
    plurals = [k.plural for k in KINDS]
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [*plurals, *(f"{p}/status" for p in plurals)], "verbs": READ},
    ]
    if role != "view":
        # Status stays the operator's: no role writes it.
        rules.append({"apiGroups": [GROUP], "resources": plurals, "verbs": WRITE})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": f"{NAME_PREFIX}-{role}",
            "labels": {**LABELS, f"rbac.authorization.k8s.io/aggregate-to-{role}": "true"},
        },
        "rules": rules,
    }
