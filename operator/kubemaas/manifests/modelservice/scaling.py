"""How many serving pods run and how many may be disrupted: the HorizontalPodAutoscaler and the
PodDisruptionBudget.
"""

from __future__ import annotations

from typing import Any

from kubemaas.api.modelservice import (
    Autoscaling,
    ScalingMetric,
)
from kubemaas.manifests.modelservice.inputs import (
    DEFAULT_PDB_MAX_UNAVAILABLE,
    Parent,
    ServingOptions,
    Track,
    child_meta,
    deployment_name,
)
from kubemaas.serving_metrics import QUEUE_TIME_METRIC


def _hpa_metric(autoscaling: Autoscaling) -> dict[str, Any]:
    if autoscaling.metric is ScalingMetric.CPU:
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": autoscaling.target}},
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": QUEUE_TIME_METRIC},
            "target": {"type": "AverageValue", "averageValue": canonical_quantity(autoscaling.target)},
        },
    }


_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


def canonical_quantity(value: int) -> str:
    """An integer as the API server writes it back (2000 -> "2k"), so an unchanged HPA compares equal."""
    suffix = 0
    while value and value % 1000 == 0 and suffix < len(_DECIMAL_SUFFIXES) - 1:
        value //= 1000
        suffix += 1
    return f"{value}{_DECIMAL_SUFFIXES[suffix]}"


def horizontal_pod_autoscaler(parent: Parent, autoscaling: Autoscaling) -> dict[str, Any]:
    """autoscaling/v2 HPA on the stable Deployment; it, not the operator, owns ``spec.replicas``."""
    behavior = autoscaling.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_meta(parent, parent.name),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(parent.name, Track.STABLE),
            },
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [_hpa_metric(autoscaling)],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": behavior.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": behavior.scale_down_stabilization_seconds},
            },
        },
    }


def pod_disruption_budget(parent: Parent, options: ServingOptions) -> dict[str, Any]:
    """Voluntary disruptions (drains) take serving pods one at a time. Only for more than one replica:
    with one, any budget would block every node drain."""
    budget: dict[str, Any]
    if options.pdb_min_available is not None:
        budget = {"minAvailable": options.pdb_min_available}
    else:
        budget = {"maxUnavailable": options.pdb_max_unavailable or DEFAULT_PDB_MAX_UNAVAILABLE}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(parent, parent.name),
        "spec": {
            **budget,
            "selector": {"matchLabels": dict(parent.selector)},
            # A pod that never got ready (a bad version) may be evicted even when the budget is spent.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
