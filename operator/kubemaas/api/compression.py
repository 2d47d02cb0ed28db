"""Making a TrainingJob's model smaller before it is served: pruning at export (beside quantization) and
distillation from a teacher model. They compose: a distilled student can be pruned and quantized too.

Amounts, temperatures and weights are integers (percent, whole degrees): the API conventions keep floats out
of specs, and no finer grain is needed to choose them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from kubemaas.api.base import PVC_URI_PATTERN, VERSION_PATTERN, ApiModel, CelRule, Int
from kubemaas.api.core import LocalObjectRef, SecretRef


class PruningMethod(StrEnum):
    # torch.nn.utils.prune.l1_unstructured on every Linear and Conv layer's weight.
    L1Unstructured = "L1Unstructured"
    # torch.nn.utils.prune.ln_structured (n=1, dim=0): whole output channels, every layer but the output one.
    L1Structured = "L1Structured"


class Pruning(ApiModel):
    """Weights set to zero at export, made permanent before the model is traced."""

    method: PruningMethod = Field(
        description=(
            "L1Unstructured: the smallest weights (by magnitude) of every Linear and Conv layer. L1Structured: "
            "whole output channels (rows, filters) with the smallest L1 norm, in every such layer but the last "
            "(its rows are the model's outputs)."
        )
    )
    amount_percent: Int = Field(ge=1, le=99, description="Share of each layer's weights (or channels) pruned.")


class Compression(ApiModel):
    """Compression applied at export, before quantization (output.quantization)."""

    pruning: Pruning | None = Field(default=None, description="Magnitude pruning of the trained weights.")


class Teacher(ApiModel):
    """The model a student learns from: a published, encrypted model version of the store."""

    training_job_ref: LocalObjectRef | None = Field(
        default=None,
        description=(
            "A Succeeded TrainingJob of this namespace: the version it published. Its encryption.keySecretRef "
            "must be keySecretRef."
        ),
    )
    uri: str | None = Field(
        default=None,
        pattern=PVC_URI_PATTERN,
        description="The teacher model's directory in the artifact store: pvc://<claim>/<path>/<model>.",
    )
    version: str | None = Field(
        default=None,
        pattern=VERSION_PATTERN,
        max_length=63,
        description="With uri: the version to learn from, or Latest (resolved when training starts). Default Latest.",
    )
    key_secret_ref: SecretRef = Field(
        description=(
            "Secret holding the teacher's key-<id> entry; mounted only into rank 0, which decrypts the teacher in "
            "memory and sends it to the other ranks. Required with trainingJobRef too: the admission policy "
            "checks that the job's author may read it."
        )
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.trainingJobRef) != has(self.uri)",
            message="exactly one of trainingJobRef and uri must be set",
            check=lambda t: (t.training_job_ref is None) != (t.uri is None),
        ),
        CelRule(
            rule="has(self.uri) || !has(self.version)",
            message="version is only valid with uri: a TrainingJob publishes one version",
            field_path=".version",
            check=lambda t: t.uri is not None or t.version is None,
        ),
    )


class Distillation(ApiModel):
    """Train the job's model (the student) to match a teacher's softened outputs as well as the labels.

    loss = softLossPercent/100 * T^2 * KL(softmax(teacher/T) || softmax(student/T))
         + (1 - softLossPercent/100) * cross_entropy(student, labels)
    """

    teacher: Teacher = Field(description="The teacher model.")
    temperature: Int = Field(default=4, ge=1, le=100, description="Softmax temperature T of both models' outputs.")
    soft_loss_percent: Int = Field(
        default=70,
        ge=0,
        le=100,
        description="Weight of the soft (teacher) loss in percent; the hard loss (the labels) gets the rest.",
    )


class ResolvedTeacher(ApiModel):
    """The teacher a distillation uses, fixed when the workload is created (status.teacher)."""

    uri: str = Field(description="The teacher model's directory in the artifact store.")
    version: str = Field(pattern=VERSION_PATTERN, description="The teacher's version, or Latest for a uri teacher.")
