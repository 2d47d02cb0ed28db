"""`python -m e2e.cluster build|prepare|up|down|status|kubeconfig|apply-crds|packages|images [NAME...]|run`."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import control_plane, debian, host, images, node, object_store, preload, quickstart
from .build import BuildError, ensure_built
from .processes import ComponentError
from .versions import run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    commands = ["build", "prepare", "up", "down", "status", "kubeconfig", "apply-crds", "packages", "images", "run"]
    parser.add_argument("command", choices=commands)
    parser.add_argument("names", nargs="*", help="images: which to build (default: all)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="up: add a real node (containerd, kubelet, kube-proxy, CoreDNS) beside the kwok nodes; needs root",
    )
    parser.add_argument(
        "--images", action="store_true", help="prepare: build the real node's images beside the components"
    )
    parser.add_argument(
        "--detach", action="store_true", help="run: return once the operator is installed instead of following its log"
    )
    arguments = parser.parse_args(argv)
    command = arguments.command
    try:
        if command == "build":
            print(ensure_built())
        elif command == "packages":  # every step's Debian packages at once (each step also installs its own)
            for step in debian.PACKAGES:
                debian.ensure(step)
        elif command == "prepare":
            _prepare(with_images=arguments.images)
        elif command == "images":
            _build_images(arguments.names)
        elif command == "run":  # `make run` as root (quickstart.py)
            _prepare(with_images=True)  # cached: a lookup once built
            cluster = quickstart.run()
            if not arguments.detach:
                quickstart.follow_operator_log(cluster)
        elif command == "up":
            print(control_plane.up(real_node=arguments.real_node, batch_controllers=True).kubeconfig)
        elif command == "down":
            control_plane.down()
        elif command == "apply-crds":
            _apply_crds()
        elif command == "kubeconfig":
            print(run_dir() / "kubeconfig")
        else:
            return _status()
    except (
        BuildError,
        ComponentError,
        debian.PackageError,
        images.ImageError,
        node.NodeError,
        host.HostRestoreError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _build_images(names: list[str]) -> None:
    built = {name: images.ensure_image(name) for name in names or images.BUILDERS}
    for name, archive in built.items():
        print(f"{name}: {archive}")
    if not names:  # every current image is in hand: older cache entries can go
        stale = images.prune_cache(built.values())
        for entry in stale:
            print(f"removed stale {entry}", file=sys.stderr)
        images.forget_builds(stale)


def _prepare(*, with_images: bool) -> None:
    """What `make e2e` needs before pytest starts: the components and (for the real node) every image, built side
    by side, the images then imported into the node's store. The Go build keeps both cores busy; the image build
    and the import spend much of their time on the Debian mirror, unpacking wheels and writing layers, so
    together they finish sooner than one after the other."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        builds: list[Future[Any]] = [pool.submit(ensure_built)]  # only waited on: their results differ
        if with_images:
            builds.append(pool.submit(_build_and_import_images))
        for build in builds:
            build.result()  # the first failure, after both have ended


def _build_and_import_images() -> None:
    """Every image, built and then imported into the real node's store, so that the cluster's node finds them
    there. A running cluster's node holds the store: then through its containerd."""
    _build_images([])
    names = list(images.BUILDERS)
    cluster = control_plane.load()
    if cluster is not None and any(c.name == "containerd" and c.alive() for c in cluster.components):
        node.load_images(cluster, names)
    else:
        preload.preload_images(names)


def _apply_crds() -> None:
    """Apply crds/ to the cluster of the current kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from e2e.kube import apply_crd, load_crds
    from e2e.typed_client import new_client

    api = new_client()
    for crd in load_crds():
        for warning in apply_crd(api, crd):
            print(f"warning from the API server: {warning}", file=sys.stderr)
        print(f"applied {crd['metadata']['name']}")


def _status() -> int:
    cluster = control_plane.load()
    if cluster is None:
        print("no cluster recorded")
        return 1
    for c in cluster.components:
        print(f"{c.name:26} pid {c.pid:<8} {'running' if c.alive() else 'DEAD'}  log {c.log}")
    healthy = control_plane.healthy(cluster)
    print(f"kubeconfig: {cluster.kubeconfig} ({'ready' if healthy else 'NOT ready'})")
    print(object_store.describe(cluster))
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
