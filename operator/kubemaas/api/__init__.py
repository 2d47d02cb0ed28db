"""The Kubemaas API (kubemaas.io/v1alpha1): pydantic models that are the single source of the CRDs."""

from kubemaas.api.modelservice import ModelService, ModelServiceSpec, ModelServiceStatus
from kubemaas.api.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus

API_VERSION = "kubemaas.io/v1alpha1"

__all__ = [
    "API_VERSION",
    "ModelService",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
