"""The pieces of core/v1 that Kubemaas pods inherit from a spec, with Kubernetes' own validation rules.

A value that Kubernetes would refuse when the operator creates the pod (a toleration with operator
Exists and a value, an image with a blank in it, a volume without a source) is refused here, at
`kubectl apply`, instead of surfacing later as a child that cannot be created.

The types are typed subsets, not pass-through copies of core/v1: only what a training or serving pod
needs, so every field is documented in `kubectl explain`, and nothing can weaken the pods' Pod Security
`restricted` profile.

One idea a module: ``references`` (Secrets, pull Secrets, the ServiceAccount), ``labels`` (labels and
selectors), ``environment``, ``volumes``, ``scheduling`` (resources, tolerations, placement). Every
name is importable from this package.
"""

from kubemaas.api.core.environment import (
    KUBEMAAS_ENV_PREFIX,
    EnvFromList,
    EnvFromSource,
    EnvList,
    EnvVar,
    EnvVarSource,
    KeyRef,
    SourceRef,
    reserved_env_rules,
)
from kubemaas.api.core.labels import (
    LabelKey,
    LabelMap,
    LabelSelector,
    LabelSelectorRequirement,
    LabelValue,
    SelectorOperator,
)
from kubemaas.api.core.references import (
    IMAGE_PULL_SECRETS_DESCRIPTION,
    SERVICE_ACCOUNT_DESCRIPTION,
    ImagePullSecrets,
    LocalObjectRef,
    SecretRef,
)
from kubemaas.api.core.scheduling import (
    DEFAULT_GPU_RESOURCE,
    EXTENDED_RESOURCE_PATTERN,
    Resources,
    Scheduling,
    TaintEffect,
    Toleration,
    TolerationOperator,
)
from kubemaas.api.core.volumes import (
    MOUNTS_NAME_VOLUMES_RULE,
    RESERVED_MOUNT_PATHS,
    RESERVED_MOUNT_PREFIXES,
    RESERVED_VOLUME_PREFIX,
    ClaimVolume,
    ConfigMapVolume,
    EmptyDirMedium,
    EmptyDirVolume,
    SecretVolume,
    Volume,
    VolumeList,
    VolumeMount,
    VolumeMountList,
)

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "EXTENDED_RESOURCE_PATTERN",
    "IMAGE_PULL_SECRETS_DESCRIPTION",
    "KUBEMAAS_ENV_PREFIX",
    "MOUNTS_NAME_VOLUMES_RULE",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_MOUNT_PREFIXES",
    "RESERVED_VOLUME_PREFIX",
    "SERVICE_ACCOUNT_DESCRIPTION",
    "ClaimVolume",
    "ConfigMapVolume",
    "EmptyDirMedium",
    "EmptyDirVolume",
    "EnvFromList",
    "EnvFromSource",
    "EnvList",
    "EnvVar",
    "EnvVarSource",
    "ImagePullSecrets",
    "KeyRef",
    "LabelKey",
    "LabelMap",
    "LabelSelector",
    "LabelSelectorRequirement",
    "LabelValue",
    "LocalObjectRef",
    "Resources",
    "Scheduling",
    "SecretRef",
    "SecretVolume",
    "SelectorOperator",
    "SourceRef",
    "TaintEffect",
    "Toleration",
    "TolerationOperator",
    "Volume",
    "VolumeList",
    "VolumeMount",
    "VolumeMountList",
    "reserved_env_rules",
]
