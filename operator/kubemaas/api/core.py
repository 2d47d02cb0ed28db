"""The pieces of core/v1 that Kubemaas pods inherit from a spec, with Kubernetes' own validation rules.

A value that Kubernetes would refuse when the operator creates the pod (a toleration with operator
Exists and a value, an image with a blank in it, a volume without a source) is refused here, at
`kubectl apply`, instead of surfacing later as a child that cannot be created.

The types are typed subsets, not pass-through copies of core/v1: only what a training or serving pod
needs, so every field is documented in `kubectl explain`, and nothing can weaken the pods' Pod Security
`restricted` profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from kubemaas.api.base import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    ApiModel,
    Bool,
    CelRule,
    Int,
    Quantity,
    map_list,
    unique_by,
)

# --- References -----------------------------------------------------------------------------------


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

# --- Labels ---------------------------------------------------------------------------------------

LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME_PATTERN, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
# The CRD generator turns the key constraint (JSON schema `propertyNames`, which structural schemas do
# not allow) into a CEL rule on the map.
LabelMap = Annotated[dict[LabelKey, LabelValue], Field(max_length=64)]


class SelectorOperator(StrEnum):
    In = "In"
    NotIn = "NotIn"
    Exists = "Exists"
    DoesNotExist = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(
        default=None, max_length=64, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
            field_path=".values",
            check=lambda r: (r.operator in (SelectorOperator.In, SelectorOperator.NotIn)) == bool(r.values),
        ),
    )


class LabelSelector(ApiModel):
    """A label selector, as in metav1.LabelSelector; all requirements must hold."""

    match_labels: LabelMap | None = Field(default=None, description="Labels an object must carry, key: value.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Set-based requirements on labels."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule=(
                "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                "(has(self.matchExpressions) && size(self.matchExpressions) > 0)"
            ),
            message="the selector must name at least one label: an empty selector selects everything",
            check=lambda s: bool(s.match_labels) or bool(s.match_expressions),
        ),
    )

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """metav1.LabelSelector semantics: every matchLabels pair and every expression must hold."""
        labels = labels or {}
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        return all(_holds(e, labels) for e in self.match_expressions or ())

    def describe(self) -> str:
        """The selector as `kubectl get -l` writes it: `team=a,stage In (eval,prod),gpu`."""
        parts = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        for e in self.match_expressions or ():
            values = ",".join(sorted(set(e.values or ())))
            parts.append(f"{e.key} {e.operator.value} ({values})" if values else f"{e.key} {e.operator.value}")
        return ",".join(parts)


def _holds(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    values = requirement.values or ()
    match requirement.operator:
        case SelectorOperator.In:
            return present and labels[requirement.key] in values
        case SelectorOperator.NotIn:
            return not present or labels[requirement.key] not in values
        case SelectorOperator.Exists:
            return present
        case SelectorOperator.DoesNotExist:
            return not present


# --- Environment ----------------------------------------------------------------------------------


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the same namespace."""

    name: str = Field(description="Name of the Secret or ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    key: str = Field(description="The key to read.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    optional: Bool | None = Field(
        default=None, description="When true, a missing Secret, ConfigMap or key leaves the variable unset."
    )


class EnvVarSource(ApiModel):
    """Where a variable's value comes from; exactly one source."""

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="exactly one of secretKeyRef and configMapKeyRef must be set",
            check=lambda v: (v.secret_key_ref is None) != (v.config_map_key_ref is None),
        ),
    )


class EnvVar(ApiModel):
    """An environment variable of the container: a literal value, or a key of a Secret or ConfigMap."""

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str | None = Field(
        default=None,
        max_length=32768,
        description="Literal value. Never put secrets here: use valueFrom.secretKeyRef.",
    )
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret or ConfigMap.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            # As core/v1: an empty value may sit beside valueFrom (what some generators write).
            rule="!has(self.value) || self.value == '' || !has(self.valueFrom)",
            message="value and valueFrom are exclusive",
            field_path=".valueFrom",
            check=lambda e: not e.value or e.value_from is None,
        ),
    )


# The env list is a map keyed by name: the API server refuses a duplicate, server-side apply merges by name.
EnvList = Annotated[list[EnvVar], unique_by("name"), Field(max_length=128, json_schema_extra=map_list("name"))]


# Every variable Kubemaas sets in its containers starts with this (docs/runtime-contract.md §1).
KUBEMAAS_ENV_PREFIX = "KUBEMAAS_"


def reserved_env_rules(
    names: tuple[str, ...], prefixes: tuple[str, ...], env: str = "env", env_from: str = "envFrom"
) -> tuple[CelRule, CelRule]:
    """Rules refusing `names`, and names starting with `prefixes`, in the lists `env` and `envFrom[].prefix`.

    `env` and `env_from` are the wire names of the lists on the object the rules sit on. Keys imported
    through envFrom without a prefix cannot be checked at admission; the variables Kubemaas sets win over
    them because explicit env takes precedence over envFrom in a container.
    """
    shown = ", ".join([*names, *(f"{p}*" for p in prefixes)])
    env_checks = " && ".join(
        ([f"!(e.name in {[str(n) for n in names]!r})"] if names else [])
        + [f"!e.name.startsWith('{p}')" for p in prefixes]
    )
    from_starts = " && ".join(f"!s.prefix.startsWith('{p}')" for p in prefixes)
    env_attr, from_attr = _snake(env), _snake(env_from)
    return (
        CelRule(
            rule=f"!has(self.{env}) || self.{env}.all(e, {env_checks})",
            message=f"{env} must not set {shown}: Kubemaas sets them",
            field_path=f".{env}",
            check=lambda s: not any(e.name in names or e.name.startswith(prefixes) for e in getattr(s, env_attr) or ()),
        ),
        CelRule(
            rule=f"!has(self.{env_from}) || self.{env_from}.all(s, !has(s.prefix) || ({from_starts}))",
            message=f"{env_from}[].prefix must not start with {', '.join(prefixes)}: Kubemaas sets those variables",
            field_path=f".{env_from}",
            check=lambda s: not any((f.prefix or "").startswith(prefixes) for f in getattr(s, from_attr) or ()),
        ),
    )


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


class SourceRef(ApiModel):
    """A whole Secret or ConfigMap in the same namespace."""

    name: str = Field(description="Name of the Secret or ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    optional: Bool | None = Field(default=None, description="When true, a missing object is skipped.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as a variable; exactly one source.

    Variables listed in env, and those Kubemaas sets, take precedence over keys imported here.
    """

    prefix: str | None = Field(
        default=None, pattern=ENV_NAME_PATTERN, max_length=64, description="Prepended to every imported key."
    )
    secret_ref: SourceRef | None = Field(default=None, description="The Secret to import.")
    config_map_ref: SourceRef | None = Field(default=None, description="The ConfigMap to import.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.secretRef) != has(self.configMapRef)",
            message="exactly one of secretRef and configMapRef must be set",
            check=lambda v: (v.secret_ref is None) != (v.config_map_ref is None),
        ),
    )


EnvFromList = Annotated[list[EnvFromSource], Field(max_length=16)]


# --- Volumes --------------------------------------------------------------------------------------

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

# --- Resources and scheduling ---------------------------------------------------------------------

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
EXTENDED_RESOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"


class Resources(ApiModel):
    """Compute resources of each pod.

    cpu and memory become requests equal to limits, and GPUs become limits of gpuResource (for which
    Kubernetes sets the request equal). The pod's QoS class is therefore Guaranteed only when both cpu
    and memory are set: a pod with GPUs alone is BestEffort (Kubernetes ignores extended resources for
    QoS), one with only cpu or only memory is Burstable.
    """

    gpus: Int = Field(default=0, ge=0, le=64, description="GPUs per pod, requested as limits of gpuResource.")
    gpu_resource: str | None = Field(
        default=None,
        pattern=EXTENDED_RESOURCE_PATTERN,
        max_length=253,
        description=(
            f"Extended resource the GPUs are requested as; {DEFAULT_GPU_RESOURCE} when unset. A MIG profile such "
            "as nvidia.com/mig-1g.10gb asks for MIG slices (the NVIDIA device plugin's mixed strategy)."
        ),
    )
    cpu: Quantity | None = Field(default=None, description="CPU per pod as a Kubernetes quantity, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory per pod as a Kubernetes quantity, e.g. 16Gi.")
    shm_size: Quantity | None = Field(
        default=None,
        description=(
            "Size of /dev/shm, a memory-backed emptyDir (NCCL and DataLoader workers need more than the "
            "container runtime's 64Mi); its pages count against the memory limit."
        ),
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.gpuResource) || self.gpus > 0",
            message="gpuResource needs gpus > 0",
            field_path=".gpuResource",
            check=lambda r: r.gpu_resource is None or r.gpus > 0,
        ),
    )


class TolerationOperator(StrEnum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(StrEnum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


class Toleration(ApiModel):
    """A pod toleration, as in core/v1, with the API server's rules for pods."""

    key: LabelKey | None = Field(default=None, description="Taint key the toleration applies to; empty matches all.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.Equal, description="How key and value are compared: Exists or Equal."
    )
    value: LabelValue | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; empty matches all.")
    toleration_seconds: Int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists",
            field_path=".value",
            check=lambda t: t.operator != TolerationOperator.Exists or not t.value,
        ),
        CelRule(
            rule="(has(self.key) && self.key != '') || self.operator == 'Exists'",
            message="operator must be Exists when key is empty",
            field_path=".operator",
            check=lambda t: bool(t.key) or t.operator == TolerationOperator.Exists,
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds is only valid with effect NoExecute",
            field_path=".tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == TaintEffect.NoExecute,
        ),
    )


class Scheduling(ApiModel):
    """Where and how pods are scheduled."""

    node_selector: LabelMap | None = Field(
        default=None, description="Node labels a pod's node must carry (core/v1 nodeSelector)."
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description="Pod tolerations.")
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="PriorityClass of the pods."
    )
    queue_name: str | None = Field(
        default=None,
        pattern=LABEL_VALUE_PATTERN,
        max_length=63,
        description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label on the workload.",
    )
    scheduler_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Scheduler for the pods, e.g. a gang scheduler such as volcano; default-scheduler if unset.",
    )
