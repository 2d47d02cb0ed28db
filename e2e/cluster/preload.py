"""Import the real node's images into its image store before the cluster starts.

The store (`NodePaths.images`, containerd's root) outlives the cluster, so the node's containerd finds every
layer already there and the first real-node test of each group no longer waits for a cold import (about
3 min 40 s on a new 2-core machine, docs/local-cluster.md). `prepare` calls this on its image thread, right
after the images are built, where the import's disk work runs beside the compiler's CPU work.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import debian, node, processes
from .images import ensure_image, import_images


def preload_images(names: list[str]) -> list[str]:
    """Start a containerd of the node's configuration on a throwaway state directory, import the named images
    into the node's store (only the layers it lacks travel), stop it; returns the image references.

    Only while no cluster runs: the node's own containerd holds the store's metadata database, and the caller
    imports through it then (node.load_images)."""
    debian.ensure("node")
    with tempfile.TemporaryDirectory(prefix="kubemaas-preload-") as root:
        paths = node.NodePaths(Path(root))
        paths.containerd.mkdir(parents=True)
        paths.images.mkdir(parents=True, exist_ok=True)
        running, process = processes.start(
            "containerd", node.containerd_binary(), node.containerd_args(paths), paths.containerd, []
        )
        try:
            processes.wait_ready(running, process, node.containerd_serving(paths), node.READY_TIMEOUT)
            return import_images([ensure_image(name) for name in names], node.ctr_command(paths), store=paths.images)
        finally:
            processes.stop(running)
