"""Imports every controller module, so kopf registers their handlers (`kubemaas run` imports this)."""

from kubemaas.controllers import modelservice as _modelservice  # noqa: F401
from kubemaas.controllers import trainingjob as _trainingjob  # noqa: F401
