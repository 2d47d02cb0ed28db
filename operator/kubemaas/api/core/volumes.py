"""Extra volumes and mounts of the pods: the sources Pod Security `restricted` allows, away from the
paths and names Kubemaas uses itself.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field

from kubemaas.api.base import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Bool,
    CelRule,
    Int,
    Quantity,
    map_list,
    unique_by,
)

# Mount points Kubemaas uses itself (docs/runtime-contract.md §2): a user mount there would hide the
# operator's claim, key, scratch or shared-memory volumes. Prefixes cover everything below them.
RESERVED_MOUNT_PREFIXES = ("/mnt/kubemaas", "/var/run/kubemaas", "/dev/shm", "/var/run/secrets")
RESERVED_MOUNT_PATHS = ("/tmp", "/dev/termination-log")
# Volumes Kubemaas adds to its pods are named with this prefix.
RESERVED_VOLUME_PREFIX = "kubemaas-"

_PATH_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"


class EmptyDirMedium(StrEnum):
    Memory = "Memory"


class ConfigMapVolume(ApiModel):
    """A ConfigMap's keys as files."""

    name: str = Field(description="Name of the ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    default_mode: Int | None = Field(default=None, ge=0, le=0o777, description="File mode, e.g. 0444 (as decimal 292).")
    optional: Bool | None = Field(default=None, description="When true, a missing ConfigMap mounts empty.")


class SecretVolume(ApiModel):
    """A Secret's keys as files."""

    secret_name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    default_mode: Int | None = Field(default=None, ge=0, le=0o777, description="File mode, e.g. 0400 (as decimal 256).")
    optional: Bool | None = Field(default=None, description="When true, a missing Secret mounts empty.")


class ClaimVolume(ApiModel):
    """A PersistentVolumeClaim in the same namespace."""

    claim_name: str = Field(description="Name of the claim.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    read_only: Bool = Field(default=False, description="Mount the claim read-only.")


class EmptyDirVolume(ApiModel):
    """Scratch space that lives as long as the pod."""

    medium: EmptyDirMedium | None = Field(default=None, description="Memory for a tmpfs; unset for the node's disk.")
    size_limit: Quantity | None = Field(default=None, description="Most space the volume may use, e.g. 10Gi.")


class Volume(ApiModel):
    """An extra volume of the pods.

    Only configMap, secret, persistentVolumeClaim and emptyDir: the sources a workload needs for data,
    configuration and credentials that are also allowed by Pod Security `restricted` (hostPath and the
    other node-level sources are not, and would make the pods unschedulable in a restricted namespace).
    """

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=f"Volume name, referred to by volumeMounts; the {RESERVED_VOLUME_PREFIX}* names are Kubemaas'.",
    )
    config_map: ConfigMapVolume | None = Field(default=None, description="A ConfigMap.")
    secret: SecretVolume | None = Field(default=None, description="A Secret.")
    persistent_volume_claim: ClaimVolume | None = Field(default=None, description="A PersistentVolumeClaim.")
    empty_dir: EmptyDirVolume | None = Field(default=None, description="An emptyDir.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=(
                "[has(self.configMap), has(self.secret), has(self.persistentVolumeClaim), has(self.emptyDir)]"
                ".filter(x, x).size() == 1"
            ),
            message="exactly one of configMap, secret, persistentVolumeClaim and emptyDir must be set",
            check=lambda v: [v.config_map, v.secret, v.persistent_volume_claim, v.empty_dir].count(None) == 3,
        ),
        CelRule(
            rule=f"!self.name.startsWith('{RESERVED_VOLUME_PREFIX}')",
            message=f"volume names starting with {RESERVED_VOLUME_PREFIX} are reserved for Kubemaas",
            field_path=".name",
            check=lambda v: not v.name.startswith(RESERVED_VOLUME_PREFIX),
        ),
    )


def _reserved_mount(path: str) -> bool:
    return path in RESERVED_MOUNT_PATHS or any(path == p or path.startswith(p + "/") for p in RESERVED_MOUNT_PREFIXES)


class VolumeMount(ApiModel):
    """Where a volume appears in the container."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of a volume in volumes.")
    mount_path: str = Field(
        pattern=rf"^(/{_PATH_SEGMENT})+/?$",
        max_length=1024,
        description="Absolute path without . or .. segments; not one Kubemaas uses itself.",
    )
    read_only: Bool = Field(default=False, description="Mount read-only.")
    sub_path: str | None = Field(
        default=None,
        pattern=rf"^{_PATH_SEGMENT}(/{_PATH_SEGMENT})*$",
        max_length=1024,
        description="Mount this relative path of the volume instead of its root.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=(
                f"!(self.mountPath in {list(RESERVED_MOUNT_PATHS)!r}) && "
                + " && ".join(
                    f"self.mountPath != '{p}' && !self.mountPath.startsWith('{p}/')" for p in RESERVED_MOUNT_PREFIXES
                )
            ),
            message=(
                "mountPath must not be "
                + ", ".join([*RESERVED_MOUNT_PATHS, *(f"{p}[/...]" for p in RESERVED_MOUNT_PREFIXES)])
                + ": Kubemaas mounts its own volumes there"
            ),
            field_path=".mountPath",
            check=lambda m: not _reserved_mount(m.mount_path.rstrip("/") or "/"),
        ),
    )


VolumeList = Annotated[list[Volume], unique_by("name"), Field(max_length=32, json_schema_extra=map_list("name"))]
VolumeMountList = Annotated[
    list[VolumeMount], unique_by("mountPath"), Field(max_length=32, json_schema_extra=map_list("mountPath"))
]

MOUNTS_NAME_VOLUMES_RULE = CelRule(
    rule=(
        "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
        "self.volumes.exists(v, v.name == m.name))"
    ),
    message="every volumeMounts[].name must be a volume in volumes",
    field_path=".volumeMounts",
    check=lambda s: {m.name for m in s.volume_mounts or ()} <= {v.name for v in s.volumes or ()},
)
