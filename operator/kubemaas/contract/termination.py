"""Termination messages and exit codes of the trainer and the model loader (docs/runtime-contract.md §5-6).

Both write one line of JSON to the container's termination-message file; the kubelet keeps at
most 4096 bytes of it, and the controllers read it back from
``status.containerStatuses[].state.terminated.message`` with :func:`parse_termination`. The
encoder shrinks ``message`` and then ``metrics`` until the JSON fits, so what the controllers read
is always complete, valid JSON; the parser refuses anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubemaas.contract.published import version_uri

log = logging.getLogger(__name__)

MESSAGE_LIMIT: Final = 4096  # bytes the kubelet keeps of a termination message
ELLIPSIS: Final = "..."
REASON_PATTERN: Final = r"^[A-Z][A-Za-z0-9]*$"


class ExitCode(IntEnum):
    """Exit codes of training and loader containers.

    Kubeflow's ``restartPolicy: ExitCode`` treats 1-127 as permanent and 128-255 as retryable; the
    Indexed Job backend maps the permanent ones to FailJob in its podFailurePolicy.
    """

    OK = 0
    FAILED = 1  # the program raised (a bug, bad data) or the loader met the unforeseen: retrying will not help
    CONFIG = 78  # the pod is misconfigured: environment, key directory, mounts, settings (EX_CONFIG)
    ARTIFACT = 79  # the artifact store refused: version conflict, missing version, integrity
    RETRYABLE = 138  # lost a peer, rendezvous or I/O failure: restart, resume from the checkpoint
    PREEMPTED = 143  # SIGTERM (128 + 15): a checkpoint was written, a restart resumes from it

    @property
    def retryable(self) -> bool:
        return self >= 128


class Cause(StrEnum):
    """Failures a termination message names more precisely than its exit code's reason, with their code."""

    # A file of an encrypted dataset failed authentication (changed, truncated, swapped or renamed): the
    # message names the file. Permanent, like a refused model artifact: a retry reads the same bytes.
    TamperedData = "TamperedData"
    # An s3:// store refused the pod's credentials: the message names the bucket and key, never a credential.
    # Permanent: the same credentials are refused again.
    AccessDenied = "AccessDenied"

    @property
    def exit_code(self) -> ExitCode:
        return _CAUSE_EXIT_CODES[self]


_CAUSE_EXIT_CODES = {Cause.TamperedData: ExitCode.ARTIFACT, Cause.AccessDenied: ExitCode.CONFIG}


class _Message(BaseModel):
    # Strict both ways: the writer produces exactly this, and the controllers refuse anything else.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid", strict=True)

    def to_json(self) -> bytes:
        return _dump(self.model_dump(by_alias=True, exclude_none=True, mode="json"))


class PublishedVersion(Protocol):
    """What a success message reports of a published version (the store's manifest has these fields)."""

    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...


class SuccessMessage(_Message):
    """A published (trainer, rank 0) or loaded (model loader) model version."""

    model: str = Field(min_length=1)
    version: str = Field(min_length=1)
    uri: str = Field(min_length=1, description="<store uri>/<model>/<version>")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    key_id: str = Field(min_length=1)
    metrics: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def of(cls, store_uri: str, manifest: PublishedVersion) -> SuccessMessage:
        """The message for a published version of the store at ``store_uri``."""
        return cls(
            model=manifest.model,
            version=manifest.version,
            uri=version_uri(store_uri, manifest.model, manifest.version),
            sha256=manifest.sha256,
            key_id=manifest.key_id,
            metrics=dict(manifest.metrics),
        )


class FailureMessage(_Message):
    """Why a container failed; ``reason`` is CamelCase, ready for a condition."""

    reason: str = Field(pattern=REASON_PATTERN)
    exit_code: ExitCode
    message: str
    rank: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Trainer only; absent when unknown.")


TerminationMessage = SuccessMessage | FailureMessage


class InvalidTerminationMessage(ValueError):
    """A termination message that is not one this runtime writes (too long, not JSON, wrong fields)."""


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def encode(message: TerminationMessage, limit: int = MESSAGE_LIMIT) -> bytes:
    """One line of JSON of at most ``limit`` bytes: ``message`` is shortened first, then ``metrics``
    are dropped (largest names last kept), so the identifying fields always survive whole."""
    data = message.to_json()
    if len(data) <= limit:
        return data
    if isinstance(message, FailureMessage):
        message = message.model_copy(update={"message": _shorten(message, "message", message.message, limit)})
    else:
        message = message.model_copy(update={"metrics": _fitting_metrics(message, limit)})
    data = message.to_json()
    if len(data) > limit:  # only identifying fields are left, and the callers bound those well below
        raise ValueError(f"termination message cannot fit in {limit} bytes: {data[:200]!r}...")
    return data


def _shorten(message: FailureMessage, field: str, text: str, limit: int) -> str:
    """The longest prefix of ``text`` (plus an ellipsis) whose JSON-encoded message fits ``limit``."""
    low, high = 0, len(text)
    while low < high:  # binary search: JSON escaping makes the encoded length non-linear in characters
        mid = (low + high + 1) // 2
        if len(message.model_copy(update={field: text[:mid] + ELLIPSIS}).to_json()) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low] + ELLIPSIS


def _fitting_metrics(message: SuccessMessage, limit: int) -> dict[str, float]:
    kept = dict(message.metrics)
    for name in sorted(kept, key=lambda n: (len(n), n), reverse=True):
        if len(message.model_copy(update={"metrics": kept}).to_json()) <= limit:
            break
        del kept[name]
    return kept


def write(path: Path, message: TerminationMessage) -> None:
    """Write the message; never fails the process (the failure is logged on stderr already).

    The first message written wins: with several processes per pod (torchrun), the first failure is
    the cause and the others are its consequences (a peer lost, a collective broken). A lock keeps
    two writers from interleaving their bytes in the one file the kubelet reads.
    """
    data = encode(message)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        log.warning("cannot write termination message to %s: %s", path, error)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == 0:
            os.write(fd, data)
    except OSError as error:
        log.warning("cannot write termination message to %s: %s", path, error)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def parse_termination(text: str | bytes) -> TerminationMessage:
    """Read a termination message back (the controllers' side); raises :class:`InvalidTerminationMessage`."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MESSAGE_LIMIT:
        raise InvalidTerminationMessage(f"termination message is {len(raw)} bytes, more than {MESSAGE_LIMIT}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidTerminationMessage(f"termination message is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidTerminationMessage("termination message is not a JSON object")
    model: type[TerminationMessage] = FailureMessage if "exitCode" in data else SuccessMessage
    try:
        # JSON has no enum type: the exit code arrives as a number, checked against ExitCode by value.
        if model is FailureMessage and isinstance(data.get("exitCode"), int):
            data["exitCode"] = ExitCode(data["exitCode"])
        return model.model_validate(data)
    except (ValueError, ValidationError) as error:
        raise InvalidTerminationMessage(f"invalid {model.__name__}: {error}") from None
