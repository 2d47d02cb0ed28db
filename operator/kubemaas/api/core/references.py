"""References to other objects of the namespace: Secrets, image pull Secrets, the ServiceAccount."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubemaas.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    map_list,
    unique_by,
)


class SecretRef(ApiModel):
    """A Secret in the same namespace as the referring object."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)


class LocalObjectRef(ApiModel):
    """A reference to another object in the same namespace."""

    name: str = Field(description="Name of the referenced object.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)


ImagePullSecrets = Annotated[
    list[LocalObjectRef], unique_by("name"), Field(max_length=16, json_schema_extra=map_list("name"))
]
IMAGE_PULL_SECRETS_DESCRIPTION = "Secrets (kubernetes.io/dockerconfigjson) used to pull the images, as in a pod spec."

SERVICE_ACCOUNT_DESCRIPTION = (
    "ServiceAccount the pods run as. When set, its token is mounted (for the Kubernetes API or a cloud "
    "workload identity); when unset, the pods run as the namespace's default account without a token."
)
