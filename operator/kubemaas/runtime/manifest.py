"""``manifest.json``: what a published version is, its canonical bytes (what its MAC covers), and parsing it.

A manifest is read from the store, whose writers are untrusted (docs/runtime-contract.md §4), before it
is authenticated: parsing is bounded (the caller reads at most :data:`MANIFEST_MAX_BYTES`), refuses what
two JSON parsers could read differently, and no message quotes the file (a length and a sha256 prefix,
field paths with the file's own map keys masked). The store's layout and the MAC's check are
kubemaas.runtime.artifacts'.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubemaas.api.base import MODEL_NAME_MAX_LENGTH, MODEL_NAME_PATTERN, VERSION_PATTERN
from kubemaas.api.errors import field_path
from kubemaas.api.modelservice import ServedFormat
from kubemaas.api.trainingjob import Quantization

ARTIFACT_FILE = "model.kmenc"
MANIFEST_SCHEMA_VERSION = 1
MAC_FIELD = "mac"
_MAC_PATTERN = re.compile(r"[0-9a-f]{64}")
# A manifest is a few KiB (tensor signatures, a handful of metrics). 1 MiB leaves room for models with
# thousands of named tensors while bounding what parsing an attacker's file can cost (Python's objects
# for 1 MiB of JSON stay in the tens of MB).
MANIFEST_MAX_BYTES = 1024 * 1024


Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class InvalidManifestError(ValueError):
    """``manifest.json`` is not a JSON object this reader can authenticate (size, encoding, syntax, duplicate
    keys, NaN, mac)."""


def fingerprint(data: bytes) -> str:
    """How messages name a file's content without quoting it: its length and a sha256 prefix."""
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


class _CamelModel(BaseModel):
    # Unknown fields are ignored, so an older loader can read a newer trainer's manifest.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class TensorSpec(_CamelModel):
    """One model input or output as Triton sees it."""

    name: str = Field(min_length=1, max_length=128)
    datatype: Datatype = Field(description="KServe v2 / Triton datatype, e.g. FP32.")
    dims: list[int] = Field(description="Shape without the batch dimension; -1 for a variable size.")


class Manifest(_CamelModel):
    """What a published version is: read by the model loader and reported by the operator."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    # The store's name rules: a manifest that names anything else is malformed, and a message may quote
    # a valid name (as it quotes directory names) without quoting arbitrary content.
    model: str = Field(pattern=MODEL_NAME_PATTERN, max_length=MODEL_NAME_MAX_LENGTH)
    version: str = Field(pattern=VERSION_PATTERN)
    format: ServedFormat = ServedFormat.TorchScript
    quantization: Quantization = Quantization.NONE
    artifact: str = Field(default=ARTIFACT_FILE, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    encryption: str = "AES-256-GCM (KMAASENC v1)"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the plaintext model file.")
    size: int = Field(ge=0, description="Plaintext size in bytes.")
    key_id: str
    frameworks: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def document(self) -> dict[str, object]:
        """The JSON object ``manifest.json`` holds, without its MAC."""
        document: dict[str, object] = json.loads(self.model_dump_json(by_alias=True))
        return document


# Names a message may quote from a manifest: the schema's own, which say nothing about the file.
_SCHEMA_NAMES = frozenset(
    {MAC_FIELD}
    | {info.alias or name for schema in (Manifest, TensorSpec) for name, info in schema.model_fields.items()}
)


def canonical_manifest(document: dict[str, object]) -> bytes:
    """The bytes a manifest's MAC covers: the JSON object without ``mac``, keys sorted, no spaces, ASCII.

    Computed from the parsed object, so a reader that ignores a field still authenticates it, and
    whitespace or key order in the file does not matter. Python's json round-trips every value it
    writes (floats by their shortest repr), so writer and reader get the same bytes.
    """
    unsigned = {name: value for name, value in document.items() if name != MAC_FIELD}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def render_manifest(document: dict[str, object], mac: bytes) -> bytes:
    """``manifest.json``'s bytes: the document and its hex MAC, indented for people."""
    return (json.dumps({**document, MAC_FIELD: mac.hex()}, indent=2, allow_nan=False) + "\n").encode("utf-8")


def parse_manifest(raw: bytes) -> tuple[dict[str, object], Manifest]:
    """Parse ``manifest.json`` into its JSON object and the :class:`Manifest` validated from that same object.

    Refuses (:class:`InvalidManifestError`) what two JSON parsers could read differently (duplicate
    keys, NaN/Infinity) and a ``mac`` that is not 64 hex digits; a schema error is pydantic's
    ``ValidationError`` (report it with :func:`schema_errors`). No message quotes the file.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:  # its message would quote the offending byte
        raise InvalidManifestError(f"not UTF-8 (byte {error.start} of {fingerprint(raw)})") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:  # msg and position only: the exception's doc is the file
        raise InvalidManifestError(
            f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno}; {fingerprint(raw)})"
        ) from None
    except RecursionError:
        raise InvalidManifestError(f"nested too deeply to be a manifest ({fingerprint(raw)})") from None
    if not isinstance(document, dict):
        raise InvalidManifestError(f"not a JSON object but {type(document).__name__}")
    mac = document.get(MAC_FIELD)
    if mac is not None and not (isinstance(mac, str) and _MAC_PATTERN.fullmatch(mac)):
        raise InvalidManifestError(f"{MAC_FIELD!r} must be 64 lower-case hex digits")
    return document, Manifest.model_validate(document)


def schema_errors(error: ValidationError) -> str:
    """A manifest's schema errors on one line: field paths and pydantic's messages, never a value.

    A path may pass through a mapping whose keys are the file's (``metrics``, ``frameworks``); those
    keys are content and are not quoted.
    """
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        path = field_path(tuple(_schema_name(part) for part in problem["loc"]))
        problems.append(f"{path}: {problem['msg']}")
    return "; ".join(problems)


def _schema_name(part: int | str) -> int | str:
    return part if isinstance(part, int) or part in _SCHEMA_NAMES else "<key>"


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        duplicated = sorted({str(_schema_name(name)) for name in names if names.count(name) > 1})
        raise InvalidManifestError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _refuse_constant(name: str) -> object:
    raise InvalidManifestError(f"{name} is not a JSON number")
