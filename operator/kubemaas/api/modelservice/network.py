"""Who may reach a ModelService's serving pods: the NetworkPolicy the operator writes beside its Service."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kubemaas.api.base import ApiModel, CelRule
from kubemaas.api.core import LabelSelector


class InferencePeer(ApiModel):
    """Clients allowed to call the inference ports, as a NetworkPolicy peer: pods matching podSelector in
    namespaces matching namespaceSelector (podSelector alone: in the ModelService's namespace; namespaceSelector
    alone: every pod of those namespaces)."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces whose pods may call (kubernetes.io/metadata.name names one)."
    )
    pod_selector: LabelSelector | None = Field(default=None, description="Pods that may call.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.namespaceSelector) || has(self.podSelector)",
            message="a peer needs namespaceSelector, podSelector or both",
            check=lambda p: p.namespace_selector is not None or p.pod_selector is not None,
        ),
    )


class ServingNetwork(ApiModel):
    """The serving pods' ingress. Triton's HTTP and gRPC ports answer only the peers listed here (by default
    the ModelService's own namespace); its metrics port answers any client (Prometheus runs in a namespace of
    its own; the metrics carry no model data). Enforced by the cluster's network plugin where it implements
    NetworkPolicy."""

    inference_from: list[InferencePeer] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Who may call the HTTP and gRPC ports; absent: every pod of the ModelService's namespace.",
    )
