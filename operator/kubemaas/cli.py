"""The `kubemaas` command: `kubemaas run | crds | access | load-model`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from kubemaas.api.modelservice import DEFAULT_TRITON_IMAGE
from kubemaas.controllers import DEFAULT_METRICS_PORT, WATCH_SERVER_TIMEOUT

Command = Callable[[argparse.Namespace], int]


def _generate(
    command: str, out: Path, check: bool, stale: Callable[[Path], list[str]], write: Callable[[Path], list[Path]]
) -> int:
    """Write the files a generator makes under `out`, or (check) name each stale one and exit 1."""
    if check:
        problems = stale(out)
        for line in problems:
            print(f"kubemaas {command} --check: {line}", file=sys.stderr)
        if problems:
            print(f"kubemaas {command} --check: run `make crds` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    for path in write(out):
        print(f"wrote {path}")
    return 0


def _crds(args: argparse.Namespace) -> int:
    from kubemaas.api import crd

    return _generate(
        "crds",
        Path(args.out),
        args.check,
        partial(crd.stale, peering=args.peering),
        partial(crd.write, peering=args.peering),
    )


def _access(args: argparse.Namespace) -> int:
    from kubemaas.api import access_manifests

    return _generate("access", Path(args.out), args.check, access_manifests.stale, access_manifests.write)


def _run(args: argparse.Namespace) -> int:
    from kubemaas.controllers.main import run_operator

    return run_operator(
        namespaces=args.namespace,
        standalone=args.standalone,
        liveness_endpoint=args.liveness,
        metrics_port=args.metrics_port,
        triton_image=args.triton_image,
        watch_timeout=args.watch_timeout or None,
    )


def _add_crds(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("crds", help="write the CRDs generated from the API models")
    p.add_argument("--out", default="crds", help="directory to write (default: crds)")
    p.add_argument("--check", action="store_true", help="exit non-zero, naming the file, when a CRD is stale")
    p.add_argument(
        "--peering",
        action="store_true",
        help="also kopf's peering CRDs (the Helm chart ships them for replicas > 1)",
    )
    p.set_defaults(func=_crds)


def _add_access(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "access",
        help="write the admission policy (admission/) and aggregated roles (roles/) generated from the API models",
    )
    p.add_argument("--out", default="crds", help="directory to write them under (default: crds)")
    p.add_argument("--check", action="store_true", help="exit non-zero, naming the file, when one is stale")
    p.set_defaults(func=_access)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster config")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all",
    )
    p.add_argument("--standalone", action="store_true", help="no peering: only for a single operator replica")
    p.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"serve Prometheus metrics at :PORT/metrics (default {DEFAULT_METRICS_PORT}; 0 turns them off)",
    )
    p.add_argument(
        "--triton-image",
        default=DEFAULT_TRITON_IMAGE,
        help=f"Triton image for ModelServices without spec.runtime.image (default {DEFAULT_TRITON_IMAGE})",
    )
    p.add_argument(
        "--watch-timeout",
        type=int,
        default=WATCH_SERVER_TIMEOUT,
        help=f"seconds the API server keeps one watch open (default {WATCH_SERVER_TIMEOUT}); 0 leaves it to the "
        "API server's --min-request-timeout",
    )
    p.set_defaults(func=_run)


def _load_model(args: argparse.Namespace) -> int:
    from kubemaas.runtime.loader import run

    return run(args)


def _add_load_model(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from kubemaas.runtime.loader import add_arguments

    p = sub.add_parser(
        "load-model",
        help="init container: decrypt and verify a model version into a Triton model repository",
    )
    add_arguments(p)
    p.set_defaults(func=_load_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubemaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_crds(sub)
    _add_access(sub)
    _add_run(sub)
    _add_load_model(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
