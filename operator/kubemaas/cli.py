"""The `kubemaas` command: `kubemaas run | crds | access | load-model | encrypt-data`."""

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


def _encrypt_data(args: argparse.Namespace) -> int:
    from kubemaas.contract.store import ArtifactStoreError
    from kubemaas.runtime.dataset import encrypt_dataset
    from kubemaas.runtime.errors import KeyringError
    from kubemaas.runtime.keyring import KEY_BYTES, validate_key_id

    try:
        validate_key_id(args.key_id)
        key = args.key_file.read_bytes()
        if len(key) != KEY_BYTES:
            raise KeyringError(
                f"{args.key_file} has {len(key)} bytes, an AES-256 key has {KEY_BYTES} (raw, not base64)"
            )
        names = encrypt_dataset(args.src, args.dst, key=key, key_id=args.key_id)
    except (KeyringError, ArtifactStoreError, ValueError, OSError) as error:  # a link in SRC: UnsafeEntryError
        print(f"kubemaas encrypt-data: {error}", file=sys.stderr)
        return 1
    print(f"encrypted {len(names)} files from {args.src} to {args.dst} with key id {args.key_id}")
    return 0


def _add_encrypt_data(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "encrypt-data",
        help="encrypt a dataset directory, file by file, for a TrainingJob's data.encryption",
        description=(
            "Encrypt every regular file below SRC to the same relative name below DST (AES-256-GCM in chunks, each "
            "file bound to its name). Put DST on the data claim and the key in a Secret as key-<id> "
            "(docs/runtime-contract.md §3)."
        ),
    )
    p.add_argument("src", type=Path, help="directory of plaintext files")
    p.add_argument("dst", type=Path, help="where the encrypted files go (not inside SRC)")
    p.add_argument("--key-file", type=Path, required=True, help="file holding the 32 raw bytes of the key")
    p.add_argument("--key-id", required=True, help="the key's id: the Secret's entry is key-<id>")
    p.set_defaults(func=_encrypt_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubemaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_crds(sub)
    _add_access(sub)
    _add_run(sub)
    _add_load_model(sub)
    _add_encrypt_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
