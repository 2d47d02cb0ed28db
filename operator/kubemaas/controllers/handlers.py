"""Imports every controller module, so kopf registers their handlers (`kubemaas run` imports this)."""

from kubemaas.controllers import modelservice, trainingjob  # noqa: F401
