"""`python -m e2e.cluster build|up|down|status|kubeconfig|apply-crds|packages|images [NAME...]`."""

from __future__ import annotations

import argparse
import sys

from . import control_plane, debian, host, images, node
from .build import BuildError, ensure_built
from .processes import ComponentError
from .versions import run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.add_argument(
        "command", choices=["build", "up", "down", "status", "kubeconfig", "apply-crds", "packages", "images"]
    )
    parser.add_argument("names", nargs="*", help="images: which to build (default: all)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="up: add a real node (containerd, kubelet, kube-proxy, CoreDNS) beside the kwok nodes; needs root",
    )
    arguments = parser.parse_args(argv)
    command = arguments.command
    try:
        if command == "build":
            print(ensure_built())
        elif command == "packages":  # every step's Debian packages at once (each step also installs its own)
            for step in debian.PACKAGES:
                debian.ensure(step)
        elif command == "images":
            built = {name: images.ensure_image(name) for name in arguments.names or images.BUILDERS}
            for name, archive in built.items():
                print(f"{name}: {archive}")
            if not arguments.names:  # every current image is in hand: older cache entries can go
                stale = images.prune_cache(built.values())
                for entry in stale:
                    print(f"removed stale {entry}", file=sys.stderr)
                images.forget_builds(stale)
        elif command == "up":
            print(control_plane.up(real_node=arguments.real_node).kubeconfig)
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


def _apply_crds() -> None:
    """Apply crds/ to the cluster of the current kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import config

    from e2e.kube import apply_crd, load_crds

    api = config.new_client_from_config()  # type: ignore[no-untyped-call]
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
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
