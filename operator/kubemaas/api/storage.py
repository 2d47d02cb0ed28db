"""How pods reach an object store that an ``s3://`` URI names: endpoint, region, addressing, trust, credentials.

Shared by every kind with a store URI. The pods get it as ``KUBEMAAS_S3_*`` variables and a mounted credentials
Secret (docs/runtime-contract.md); the operator itself never reads the store.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubemaas.api.base import DNS_SUBDOMAIN_PATTERN, ApiModel, Bool, CelRule
from kubemaas.api.core import SecretRef

# http(s)://host[:port][/path], nothing else: no credentials in the URL (user:password@) and no query string.
ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"


class ConfigMapKeySelector(ApiModel):
    """One key of a ConfigMap in the same namespace."""

    name: str = Field(description="Name of the ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    key: str = Field(description="The key holding the value.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class S3Storage(ApiModel):
    """An S3-compatible object store. Every field is optional: AWS itself needs none of them."""

    endpoint: str | None = Field(
        default=None,
        pattern=ENDPOINT_PATTERN,
        max_length=2048,
        description="The store's URL for a private or non-AWS endpoint (https://s3.example:9000); unset: AWS.",
    )
    region: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]+$",
        max_length=64,
        description="The region requests are signed for; unset: us-east-1.",
    )
    path_style: Bool = Field(
        default=False,
        description="Address buckets in the path (https://host/bucket/key), as most private endpoints need.",
    )
    ca_bundle: ConfigMapKeySelector | None = Field(
        default=None,
        description="A ConfigMap key holding the PEM certificates that sign a private endpoint's certificate.",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "A Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (KServe's key names), mounted read-only "
            "into the pods that read or write the store. Unset: the SDK's default chain, e.g. the web identity "
            "of the pods' ServiceAccount (IRSA-style), with no Secret at all."
        ),
    )


class Storage(ApiModel):
    """How to reach the store a URI names, where a scheme needs it."""

    s3: S3Storage | None = Field(default=None, description="For s3:// URIs.")


def _storage_matches_uri(model: Any) -> bool:
    return model.storage is None or (model.uri is not None and model.uri.startswith("s3://"))


# The rule of every object with a store `uri` and its `storage` beside it.
STORAGE_NEEDS_S3_URI = CelRule(
    rule="!has(self.storage) || (has(self.uri) && self.uri.startsWith('s3://'))",
    message="storage applies to an s3:// uri",
    field_path=".storage",
    check=_storage_matches_uri,
)
