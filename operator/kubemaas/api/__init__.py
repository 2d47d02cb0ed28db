"""The Kubemaas API (kubemaas.io/v1alpha1): pydantic models that are the single source of the CRDs.

The values other parts of Kubemaas share with the API (the runtime's store names and quantization,
the operator's defaults, the reserved environment) are defined here once and imported from here.
"""

from kubemaas.api.base import (
    LATEST,
    MODEL_NAME_MAX_LENGTH,
    MODEL_NAME_PATTERN,
    VERSION_MAX_LENGTH,
    VERSION_PATTERN,
    immutable_changes,
)
from kubemaas.api.core import DEFAULT_GPU_RESOURCE, KUBEMAAS_ENV_PREFIX
from kubemaas.api.modelservice import (
    DEFAULT_REPLICAS,
    DEFAULT_TRITON_IMAGE,
    ModelService,
    ModelServiceSpec,
    ModelServiceStatus,
)
from kubemaas.api.trainingjob import (
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    Quantization,
    RendezvousEnv,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
)

API_VERSION = "kubemaas.io/v1alpha1"

__all__ = [
    "API_VERSION",
    "DEFAULT_GPU_RESOURCE",
    "DEFAULT_REPLICAS",
    "DEFAULT_TRITON_IMAGE",
    "KUBEMAAS_ENV_PREFIX",
    "LATEST",
    "MODEL_NAME_MAX_LENGTH",
    "MODEL_NAME_PATTERN",
    "RESERVED_ENV",
    "RESERVED_ENV_PREFIXES",
    "VERSION_MAX_LENGTH",
    "VERSION_PATTERN",
    "ModelService",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "Quantization",
    "RendezvousEnv",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "immutable_changes",
]
