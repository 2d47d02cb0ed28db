"""What a ModelService serves: a TrainingJob's published versions or a model in the store, and the
metrics gate a new version must pass before it is rolled out.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field

from kubemaas.api.base import (
    LATEST,
    STORE_URI_PATTERN,
    VERSION_PATTERN,
    ApiModel,
    CelRule,
    MetricName,
    MetricValue,
    map_list,
    unique_by,
)
from kubemaas.api.core import (
    LabelSelector,
    LocalObjectRef,
    SecretRef,
)
from kubemaas.api.storage import STORAGE_NEEDS_S3_URI, Storage


class ServedFormat(StrEnum):
    TorchScript = "TorchScript"
    ONNX = "ONNX"


class ModelEncryption(ApiModel):
    """The key that decrypts the model."""

    key_secret_ref: SecretRef = Field(description="Secret holding the key-<id> entry named by the artifact header.")


class ModelSource(ApiModel):
    """Which model to serve: what a TrainingJob publishes, or a model directory in the artifact store."""

    training_job_ref: LocalObjectRef | None = Field(
        default=None,
        description="A TrainingJob in this namespace; each version it publishes is rolled out automatically.",
    )
    training_job_selector: LabelSelector | None = Field(
        default=None,
        description=(
            "TrainingJobs in this namespace with these labels; the newest Succeeded one (by completionTime) is "
            "served, so a team re-trains by creating a new TrainingJob with the same labels."
        ),
    )
    uri: str | None = Field(
        default=None,
        pattern=STORE_URI_PATTERN,
        description=(
            "The model's directory in the artifact store: pvc://<claim>/<path>/<model>, or "
            "s3://<bucket>/<prefix>/<model> (reached as storage.s3 says)."
        ),
    )
    version: str = Field(
        default=LATEST,
        pattern=VERSION_PATTERN,
        description=(
            "Latest (follow the newest published version) or a version to pin. The operator resolves it and "
            "pins every pod to one version."
        ),
    )
    format: ServedFormat = Field(
        default=ServedFormat.TorchScript,
        description="Format of the model file; a TrainingJob publishes TorchScript, ONNX needs a uri.",
    )
    encryption: ModelEncryption | None = Field(
        default=None,
        description="Key Secret, with uri only: a TrainingJob source brings its own.",
    )
    storage: Storage | None = Field(
        default=None,
        description="How the serving pods reach an s3:// uri's object store: endpoint, region, credentials.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="[has(self.trainingJobRef), has(self.trainingJobSelector), has(self.uri)].filter(x, x).size() == 1",
            message="exactly one of trainingJobRef, trainingJobSelector and uri must be set",
            check=lambda m: [m.training_job_ref, m.training_job_selector, m.uri].count(None) == 2,
        ),
        CelRule(
            rule="!has(self.uri) || has(self.encryption)",
            message="encryption.keySecretRef is required when the model is given by uri",
            field_path=".encryption",
            check=lambda m: m.uri is None or m.encryption is not None,
        ),
        CelRule(
            rule="has(self.uri) || !has(self.encryption)",
            message="encryption is only valid with uri: a TrainingJob source brings its own key Secret",
            field_path=".encryption",
            check=lambda m: m.uri is not None or m.encryption is None,
        ),
        STORAGE_NEEDS_S3_URI,
        CelRule(
            rule="has(self.uri) || self.format == 'TorchScript'",
            message="a TrainingJob publishes TorchScript: format ONNX needs a uri",
            field_path=".format",
            check=lambda m: m.uri is not None or m.format == ServedFormat.TorchScript,
        ),
    )

    @property
    def from_training_job(self) -> bool:
        return self.uri is None


class MetricThreshold(ApiModel):
    """A bound a candidate version's metric must respect (inclusive)."""

    name: MetricName = Field(description="Metric name, as published in the TrainingJob's status.model.metrics.")
    min: MetricValue | None = Field(default=None, description="Lowest acceptable value, a decimal string.")
    max: MetricValue | None = Field(default=None, description="Highest acceptable value, a decimal string.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.min) || has(self.max)",
            message="at least one of min and max must be set",
            check=lambda t: t.min is not None or t.max is not None,
        ),
        CelRule(
            rule="!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
            message="min must not exceed max",
            field_path=".max",
            check=lambda t: t.min is None or t.max is None or Decimal(t.min) <= Decimal(t.max),
        ),
    )

    def admits(self, value: str) -> bool:
        """Whether a published metric value (a decimal string) lies within the bounds."""
        number = Decimal(value)
        if not number.is_finite():
            return False
        return (self.min is None or number >= Decimal(self.min)) and (self.max is None or number <= Decimal(self.max))


class Promotion(ApiModel):
    """What a new version must show before it is rolled out (TrainingJob sources only).

    A candidate that fails is not rolled out: the current version keeps serving and the PromotionBlocked
    condition names the metric, its value and the threshold.
    """

    require_metrics: Annotated[list[MetricThreshold], unique_by("name")] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra=map_list("name"),
        description="Thresholds on the candidate's metrics; a metric the candidate did not publish fails the gate.",
    )
