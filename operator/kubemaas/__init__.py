"""Kubemaas: a Kubernetes operator for the model-as-a-service lifecycle."""

__version__ = "0.1.0"
