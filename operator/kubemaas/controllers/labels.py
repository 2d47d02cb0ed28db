"""Moved to kubemaas.manifests.labels (the builders set them); this name stays for callers outside the
package (e2e/test_faults.py)."""

from kubemaas.manifests.labels import *  # noqa: F403
