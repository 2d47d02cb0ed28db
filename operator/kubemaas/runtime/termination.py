"""Moved to kubemaas.contract.termination (the operator reads what the runtime writes); this name stays for
callers outside the package (e2e/test_images.py)."""

from kubemaas.contract.termination import *  # noqa: F403
