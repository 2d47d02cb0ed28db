"""``kubemaas load-model``: the init container of every serving pod.

It turns one encrypted model version from the artifact store into a Triton model repository::

    <repository>/<model>/config.pbtxt
    <repository>/<model>/1/model.pt        (model.onnx for onnxruntime)
    <repository>/<model>/1/model.py        (python backend only: serves model.pt with torch)

Steps: resolve the version (a pin, or ``Latest``), read its manifest, open the artifact and check
its header under the key and the manifest's MAC against it (nothing in the manifest is trusted
before), check that the format suits the backend, decrypt with streaming (every chunk authenticated
by GCM, bound to model, version, key and position) into a staging directory inside the repository,
render ``config.pbtxt``, then rename the model directory into place. The plaintext is not hashed
again: the authenticated manifest and the chunk tags together already prove it is the file whose
sha256 the manifest records (docs/runtime-contract.md, "Why the loader does not hash the model").
Triton starts only after this container succeeded, and it never sees a partial repository: until the
final rename everything lives under a hidden ``.kubemaas-staging-*`` directory, which is removed on
failure and swept on the next start.

Triton version directory: always ``1``. One serving pod serves exactly one model version (a new
version is a new pod template, rolled out by the Deployment), so the directory number carries no
information; the artifact's own version string is recorded in ``config.pbtxt`` as the
``kubemaas_model_version`` parameter, readable from Triton's model-config endpoint.

Failure contract: ONE line on stderr, ``kubemaas load-model: <cause>: <detail>`` (cause is a
``Cause`` value), and a non-zero exit code following docs/runtime-contract.md: 78 the pod is
misconfigured (key directory, wrong key, settings, format vs backend, store URI), 79 the artifact
is refused (missing version, bad manifest or LATEST, a link or special file in the store, tampered
artifact or manifest), 138 an I/O error worth a retry, 1 anything unforeseen. The termination-message
file gets a ``FailureMessage`` (``{"exitCode", "message", "reason"}``), like the trainer's, so the
operator can put the CamelCase reason in a condition; on success it gets a ``SuccessMessage`` naming the
version it resolved and its sha256 (kubemaas.contract.termination). Never a traceback, never key
material, never a byte of a file from the store: the store's writers are untrusted
(docs/runtime-contract.md §4), so its files are opened beneath the store root without following links, ``LATEST`` and
``manifest.json`` are read with size caps, and messages give lengths and sha256 prefixes instead of
content. The process runs without core dumps (it holds the key and the plaintext).

``Latest`` is resolved here only for standalone use: the operator resolves the version itself and
pins it in the pod template, so every replica of a ModelService serves the same version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubemaas import contract
from kubemaas.api.base import LATEST
from kubemaas.api.errors import summary
from kubemaas.api.modelservice import ServedFormat
from kubemaas.contract import termination
from kubemaas.contract.store import DEFAULT_MOUNT_ROOT
from kubemaas.contract.termination import ExitCode, FailureMessage, SuccessMessage
from kubemaas.runtime import artifacts, coredumps
from kubemaas.runtime.crypto import OpenedArtifact
from kubemaas.runtime.errors import (
    ArtifactIntegrityError,
    KeyringError,
    ObjectAccessDeniedError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
)
from kubemaas.runtime.fsutil import fsync_dir
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.stores import ResolvedVersion, Store, open_store
from kubemaas.runtime.triton_config import (
    BACKEND_FORMATS,
    MODEL_FILE_NAMES,
    Backend,
    ServingSettings,
    add_serving_arguments,
    render_config,
    settings_from_args,
)

TRITON_VERSION_DIR = "1"
STAGING_PREFIX = ".kubemaas-staging-"
PYTHON_MODEL_RESOURCE = "triton_python_model.py"


class Cause(StrEnum):
    """Why loading failed; the first words of the error line, stable for alerting and status."""

    MISSING_VERSION = "missing version"
    STORE = "artifact store"
    UNSAFE_ENTRY = "unsafe store entry"
    BAD_LATEST = "bad LATEST"
    BAD_MANIFEST = "bad manifest"
    UNSUPPORTED_FORMAT = "unsupported format"
    KEYRING = "key directory"
    WRONG_KEY = "wrong key"
    TAMPERED = "tampered artifact"
    ACCESS_DENIED = "access denied"
    INVALID_SETTINGS = "invalid settings"
    IO = "i/o error"
    INTERNAL = "internal error"

    @property
    def reason(self) -> str:
        """CamelCase reason for the termination message (the operator copies it into conditions)."""
        return _OUTCOMES[self][0]

    @property
    def exit_code(self) -> ExitCode:
        return _OUTCOMES[self][1]


# The runtime contract's exit codes (docs/runtime-contract.md): the pod's configuration is wrong,
# the artifact is refused, a retry may help, or the unforeseen.
_OUTCOMES = {
    Cause.MISSING_VERSION: ("MissingVersion", ExitCode.ARTIFACT),
    Cause.STORE: ("ArtifactStoreError", ExitCode.CONFIG),
    # A link, FIFO or device in the store, or a file where a directory belongs: its writers' doing.
    Cause.UNSAFE_ENTRY: ("UnsafeStoreEntry", ExitCode.ARTIFACT),
    Cause.BAD_LATEST: ("BadLatest", ExitCode.ARTIFACT),
    Cause.BAD_MANIFEST: ("BadManifest", ExitCode.ARTIFACT),
    Cause.UNSUPPORTED_FORMAT: ("UnsupportedFormat", ExitCode.CONFIG),
    Cause.KEYRING: ("KeyDirectoryError", ExitCode.CONFIG),
    Cause.WRONG_KEY: ("WrongKey", ExitCode.CONFIG),
    Cause.TAMPERED: ("TamperedArtifact", ExitCode.ARTIFACT),
    # The bucket refused the pod's credentials (or they are no valid credentials): fix the Secret or the role.
    Cause.ACCESS_DENIED: ("AccessDenied", ExitCode.CONFIG),
    Cause.INVALID_SETTINGS: ("InvalidSettings", ExitCode.CONFIG),
    Cause.IO: ("IOError", ExitCode.RETRYABLE),
    Cause.INTERNAL: ("InternalError", ExitCode.FAILED),
}


class LoadError(Exception):
    """A refusal with its cause; ``str()`` is the one line the loader prints."""

    def __init__(self, cause: Cause, detail: str) -> None:
        super().__init__(f"{cause.value}: {' '.join(detail.split())}")
        self.cause = cause


@dataclass(frozen=True)
class LoadRequest:
    store_uri: str
    model: str
    version: str
    key_dir: Path
    repository: Path
    settings: ServingSettings
    mount_root: Path = DEFAULT_MOUNT_ROOT
    # The pod's environment: how an s3:// store is reached (KUBEMAAS_S3_*, kubemaas.contract.store).
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    model_dir: Path
    manifest: artifacts.Manifest
    seconds: float

    @property
    def version(self) -> str:
        return self.manifest.version


def load_model(request: LoadRequest) -> LoadResult:
    """Build ``<repository>/<model>`` from the artifact store; raises :class:`LoadError` on any refusal."""
    started = time.monotonic()
    store, resolved = _resolve(request)
    keyring = _open_keyring(request.key_dir)
    with _refusals(), store.open_authenticated(resolved, keyring) as artifact:
        # From here on the manifest is the publisher's: its format, tensors and version can be used.
        _check_format(resolved.manifest.format, request.settings.backend)
        request.repository.mkdir(parents=True, exist_ok=True)
        _sweep_stale_staging(request.repository)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=request.repository))
        try:
            model_dir = _build_model_dir(staging, request, resolved, artifact)
            target = _publish(model_dir, request.repository / request.model, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return LoadResult(model_dir=target, manifest=resolved.manifest, seconds=time.monotonic() - started)


def _resolve(request: LoadRequest) -> tuple[Store[Any], ResolvedVersion]:
    try:
        store = open_store(request.store_uri, mount_root=request.mount_root, environ=request.environ)
        _require_version(store, request.model, request.version)
        return store, store.resolve(request.model, request.version)
    except artifacts.MisplacedManifestError as error:  # a manifest swapped in from another model or version
        raise LoadError(Cause.TAMPERED, str(error)) from None
    except artifacts.UnsafeEntryError as error:
        raise LoadError(Cause.UNSAFE_ENTRY, str(error)) from None
    except artifacts.InvalidLatestError as error:
        raise LoadError(Cause.BAD_LATEST, str(error)) from None
    except ObjectStoreError as error:
        raise _object_store_refusal(error) from None
    except artifacts.ArtifactStoreError as error:
        raise LoadError(Cause.STORE, str(error)) from None
    except ValidationError as error:
        raise LoadError(Cause.BAD_MANIFEST, artifacts.schema_errors(error)) from None
    except artifacts.InvalidManifestError as error:
        raise LoadError(Cause.BAD_MANIFEST, f"manifest.json: {error}") from None


def _object_store_refusal(error: ObjectStoreError) -> LoadError:
    """A bucket's refusals: denied access is the pod's configuration (its credentials), an endpoint that kept
    failing is worth a retry. The messages name bucket and key, never a credential (object_client)."""
    if isinstance(error, ObjectAccessDeniedError):
        return LoadError(Cause.ACCESS_DENIED, str(error))
    if isinstance(error, ObjectStoreUnavailableError):
        return LoadError(Cause.IO, str(error))
    return LoadError(Cause.STORE, str(error))


def _require_version(store: Store[Any], model: str, version: str) -> None:
    """A version that is not there is MissingVersion, whether pinned or named by LATEST."""
    if version == LATEST:
        latest = store.latest_version(model)
        if latest is None:
            raise LoadError(
                Cause.MISSING_VERSION, f"model {model!r} has no published version (no LATEST) under {store.location}"
            )
        if not store.has_version(model, latest):
            raise LoadError(
                Cause.MISSING_VERSION,
                f"model {model!r} has no version {latest!r} (named by LATEST) under {store.location}",
            )
    elif not store.has_version(model, version):
        raise LoadError(Cause.MISSING_VERSION, f"model {model!r} has no version {version!r} under {store.location}")


def _check_format(artifact_format: ServedFormat, backend: Backend) -> None:
    expected = BACKEND_FORMATS[backend]
    if artifact_format is not expected:
        raise LoadError(
            Cause.UNSUPPORTED_FORMAT,
            f"artifact format {artifact_format.value!r} cannot be served by backend {backend.value} "
            f"(it serves {expected.value})",
        )


def _open_keyring(key_dir: Path) -> Keyring:
    try:
        return Keyring.from_dir(key_dir)
    except KeyringError as error:
        raise LoadError(Cause.KEYRING, str(error)) from None


def _build_model_dir(staging: Path, request: LoadRequest, resolved: ResolvedVersion, artifact: OpenedArtifact) -> Path:
    model_dir = staging / request.model
    version_dir = model_dir / TRITON_VERSION_DIR
    version_dir.mkdir(parents=True)
    backend = request.settings.backend
    model_file = version_dir / MODEL_FILE_NAMES[backend]
    # One streaming pass: read, open and check each chunk, write. No temp file and rename: the whole
    # staging directory is the unit that appears or not, and _publish fsyncs the tree once.
    fd = os.open(model_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        artifact.decrypt_into(fd)
    finally:
        os.close(fd)
    if backend is Backend.PYTHON:
        source = importlib.resources.files("kubemaas.runtime").joinpath(PYTHON_MODEL_RESOURCE)
        (version_dir / "model.py").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    try:
        config = render_config(
            model_name=request.model,
            model_version=resolved.manifest.version,
            settings=request.settings,
            inputs=resolved.manifest.inputs,
            outputs=resolved.manifest.outputs,
        )
    except ValueError as error:  # a tensor signature Triton cannot express
        raise LoadError(Cause.BAD_MANIFEST, str(error)) from None
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    return model_dir


@contextmanager
def _refusals() -> Iterator[None]:
    """Turn the artifact's refusals (header, key, manifest MAC, chunks) into the loader's causes."""
    try:
        yield
    except (WrongKeyError, UnknownKeyError) as error:
        raise LoadError(Cause.WRONG_KEY, str(error)) from None
    except UnsupportedFormatError as error:
        raise LoadError(Cause.UNSUPPORTED_FORMAT, str(error)) from None
    except artifacts.UnsafeEntryError as error:  # model.kmenc is a link, a FIFO, a device
        raise LoadError(Cause.UNSAFE_ENTRY, str(error)) from None
    except ArtifactIntegrityError as error:  # header, binding, size, manifest MAC, chunks
        raise LoadError(Cause.TAMPERED, str(error)) from None
    except ObjectStoreError as error:  # a ranged GET of the artifact refused
        raise _object_store_refusal(error) from None


def _publish(model_dir: Path, target: Path, staging: Path) -> Path:
    """Rename the finished model directory into place; an older copy (a restarted pod) is replaced."""
    _fsync_tree(model_dir)
    if target.exists():
        os.replace(target, staging / ".previous")
    os.replace(model_dir, target)
    fsync_dir(target.parent)
    return target


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def _sweep_stale_staging(repository: Path) -> None:
    # A loader killed mid-way (OOM, node drain) leaves its staging dir; the next attempt removes it.
    for entry in repository.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store-uri",
        required=True,
        help="artifact store root: pvc://<claim>/<path> (mounted), s3://<bucket>/<prefix> or file:///<path>",
    )
    parser.add_argument("--model", required=True, help="model name in the store")
    parser.add_argument(
        "--version",
        default=LATEST,
        help=f"the version to load (the operator pins one); {LATEST}, the default, follows LATEST",
    )
    parser.add_argument("--key-dir", required=True, type=Path, help="mounted key Secret: key-<id> files (+ active)")
    parser.add_argument("--repository", required=True, type=Path, help="Triton model repository to write (an emptyDir)")
    parser.add_argument(
        "--mount-root",
        type=Path,
        default=None,
        help=(
            f"where pvc://<claim> is mounted (default: ${contract.MOUNT_ROOT} or {DEFAULT_MOUNT_ROOT}, as for the "
            "trainer)"
        ),
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        help=(f"file for the result JSON (default: ${contract.TERMINATION_LOG} or {contract.DEFAULT_TERMINATION_LOG})"),
    )
    add_serving_arguments(parser)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Entry point behind ``kubemaas load-model``: 0 on success, else the cause's exit code and one line."""
    coredumps.disable_core_dumps()  # before the key or a byte of plaintext is in memory
    environ = os.environ if environ is None else environ
    termination_log: Path = args.termination_log or contract.termination_log(environ)
    try:
        result = load_model(_request_from_args(args, environ))
    except LoadError as error:
        return _fail(error, termination_log)
    except OSError as error:
        return _fail(LoadError(Cause.IO, f"{error.strerror or error}: {error.filename}"), termination_log)
    except Exception as error:  # one line, not a traceback, whatever went wrong
        return _fail(LoadError(Cause.INTERNAL, _unforeseen(error)), termination_log)
    manifest = result.manifest
    print(
        f"kubemaas load-model: loaded {args.model} version {manifest.version} "
        f"({manifest.size} bytes, sha256 {manifest.sha256}) into {result.model_dir} in {result.seconds:.2f}s"
    )
    if _may_write(termination_log):
        termination.write(termination_log, SuccessMessage.of(args.store_uri, manifest))
    return ExitCode.OK


def _unforeseen(error: Exception) -> str:
    """The exception's type and where it was raised, not its text: an unforeseen error's text may quote
    whatever it was handed, a file from the store included."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"


def _request_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> LoadRequest:
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        raise LoadError(Cause.INVALID_SETTINGS, summary(error)) from None
    return LoadRequest(
        store_uri=args.store_uri,
        model=args.model,
        version=args.version,
        key_dir=args.key_dir,
        repository=args.repository,
        settings=settings,
        mount_root=args.mount_root or contract.mount_root(environ),
        environ=dict(environ),
    )


def _may_write(termination_log: Path) -> bool:
    # Kubernetes creates the default file; anywhere else (a developer's machine) it is left alone.
    return termination_log != contract.DEFAULT_TERMINATION_LOG or termination_log.exists()


def _fail(error: LoadError, termination_log: Path) -> int:
    line = f"kubemaas load-model: {error}"
    print(line, file=sys.stderr)
    if _may_write(termination_log):
        message = FailureMessage(reason=error.cause.reason, exit_code=error.cause.exit_code, message=line)
        termination.write(termination_log, message)
    return error.cause.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubemaas load-model", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
