"""The part of ObjectMeta the operator reads from its own resources."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class ObjectMeta(BaseModel):
    """metav1.ObjectMeta, reduced to what Kubemaas uses; other metadata fields pass through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=253, description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    uid: str | None = Field(default=None, description="UID assigned by the API server.")
    generation: StrictInt | None = Field(default=None, description="Spec generation, bumped on each spec change.")
    labels: dict[str, str] | None = Field(default=None, description="Object labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Object annotations.")
