"""What a pod needs to reach an s3:// store (api/storage.py's S3Storage): the KUBEMAAS_S3_* variables, and the
credentials Secret and CA bundle mounted read-only where the runtime reads them (kubemaas.contract.store).

Credentials are mounted as files, never put in the environment: a pod's environment shows in `kubectl describe`
and in every process's /proc/<pid>/environ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubemaas.api.storage import S3Storage
from kubemaas.contract.store import (
    MODEL_STORE,
    S3_ACCESS_KEY_FILE,
    S3_CA_BUNDLE_FILE,
    S3_SECRET_KEY_FILE,
    S3Settings,
    S3Wiring,
)

CREDENTIALS_VOLUME = "s3-credentials"
CA_BUNDLE_VOLUME = "s3-ca-bundle"


def _volume(wiring: S3Wiring, name: str, prefix: str) -> str:
    return f"{prefix}{wiring.role}-{name}" if wiring.role else f"{prefix}{name}"


@dataclass(frozen=True)
class StoreAccess:
    """The environment, volumes and mounts a store's reader or writer gets."""

    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def s3_access(s3: S3Storage | None, wiring: S3Wiring = MODEL_STORE, *, volume_prefix: str = "") -> StoreAccess:
    """How a pod reaches an s3:// store as ``s3`` says (None: AWS, with the SDK's default credential chain), in
    the variables and mounts of ``wiring``'s role; the volumes' names start with ``volume_prefix``."""
    s3 = s3 or S3Storage()
    credentials, ca_bundle = s3.credentials_secret_ref, s3.ca_bundle
    settings = S3Settings(
        endpoint_url=s3.endpoint,
        region=s3.region,
        path_style=s3.path_style,
        ca_bundle=wiring.ca_bundle_mount / S3_CA_BUNDLE_FILE if ca_bundle is not None else None,
        credentials_dir=wiring.credentials_mount if credentials is not None else None,
    )
    access = StoreAccess(env=[{"name": name, "value": value} for name, value in settings.to_env(wiring).items()])
    if credentials is not None:
        items = [{"key": key, "path": key} for key in (S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE)]
        volume = _volume(wiring, CREDENTIALS_VOLUME, volume_prefix)
        access.volumes.append(
            {"name": volume, "secret": {"secretName": credentials.name, "items": items, "defaultMode": 0o400}}
        )
        access.mounts.append({"name": volume, "mountPath": str(wiring.credentials_mount), "readOnly": True})
    if ca_bundle is not None:
        items = [{"key": ca_bundle.key, "path": S3_CA_BUNDLE_FILE}]
        volume = _volume(wiring, CA_BUNDLE_VOLUME, volume_prefix)
        access.volumes.append({"name": volume, "configMap": {"name": ca_bundle.name, "items": items}})
        access.mounts.append({"name": volume, "mountPath": str(wiring.ca_bundle_mount), "readOnly": True})
    return access


def s3_storage_from(env: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> S3Storage:
    """The inverse of :func:`s3_access`: the S3Storage a container's environment and its pod's volumes came from
    (the controller reads back what a running template serves)."""
    settings = S3Settings.from_env({e["name"]: e["value"] for e in env if "value" in e})
    by_name = {v.get("name"): v for v in volumes}
    secret = (by_name.get(CREDENTIALS_VOLUME) or {}).get("secret")
    config_map = (by_name.get(CA_BUNDLE_VOLUME) or {}).get("configMap")
    return S3Storage.model_validate(
        {
            "endpoint": settings.endpoint_url,
            "region": settings.region,
            "pathStyle": settings.path_style,
            "caBundle": {"name": config_map["name"], "key": config_map["items"][0]["key"]} if config_map else None,
            "credentialsSecretRef": {"name": secret["secretName"]} if secret else None,
        }
    )
