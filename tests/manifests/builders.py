"""Builders shared by the ModelService tests: the Parent the controller derives from a ModelService."""

from __future__ import annotations

from kubemaas.api import ModelService
from kubemaas.manifests import modelservice as m


def parent_of(ms: ModelService) -> m.Parent:
    name = ms.metadata.name
    return m.Parent(
        name=name,
        namespace=ms.metadata.namespace or "default",
        labels={
            "app.kubernetes.io/name": "modelservice",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "kubemaas",
            "kubemaas.io/modelservice": name,
        },
        selector={"kubemaas.io/modelservice": name},
        owner_reference={
            "apiVersion": "kubemaas.io/v1alpha1",
            "kind": "ModelService",
            "name": name,
            "uid": ms.metadata.uid or "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        },
    )
