"""Imports every controller module, so kopf registers their handlers (`kubemaas run` imports this)."""
