"""A running TrainingJob's progress (status.progress), as the operator read it from rank 0.

Decimal values are strings, as in status.model.metrics: the API conventions keep floats out of the API.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from kubemaas.api.base import ApiModel, Int, MetricName, MetricValue

MAX_PROGRESS_METRICS = 16


class Checkpoint(ApiModel):
    """The newest checkpoint rank 0 wrote."""

    step: Int = Field(ge=0, description="Optimizer steps the checkpoint holds.")
    time: datetime = Field(description="When it was written.")


class TrainingProgress(ApiModel):
    """Where the training stands: what rank 0 reported last, and what follows from it."""

    step: Int = Field(ge=0, description="Optimizer steps done (continued from the checkpoint after a restart).")
    total_steps: Int = Field(ge=0, description="Steps the run will take.")
    percent: Int = Field(ge=0, le=100, description="step / totalSteps, in percent (rounded down).")
    loss: MetricValue | None = Field(default=None, description="The latest training loss.")
    metrics: dict[MetricName, MetricValue] | None = Field(
        default=None,
        max_length=MAX_PROGRESS_METRICS,
        description="Other values the training program reported with its step.",
    )
    samples_per_second: MetricValue | None = Field(
        default=None, description="Training samples per second over the last minute, all ranks together."
    )
    eta: datetime | None = Field(default=None, description="When the run is expected to finish, at the current pace.")
    last_checkpoint: Checkpoint | None = Field(default=None, description="The newest checkpoint.")
    update_time: datetime = Field(description="When rank 0 reported this step.")
    summary: str = Field(
        max_length=128, description="One line for `kubectl get`: step/total (percent), and the remaining time."
    )
