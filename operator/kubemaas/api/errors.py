"""One-line, field-naming messages for invalid objects, in the shape the API server uses."""

from __future__ import annotations

from pydantic import ValidationError


def field_path(loc: tuple[int | str, ...], extra: str = "") -> str:
    """`("spec", "env", 0, "name")` -> `spec.env[0].name`; `extra` is a CEL rule's relative fieldPath."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if extra:
        out = f"{out}{extra}" if out else extra.lstrip(".")
    return out or "<object>"


def describe(error: ValidationError) -> list[str]:
    """Each problem as `<field>: <message>`."""
    lines = []
    for err in error.errors(include_url=False):
        ctx = err.get("ctx") or {}
        path = field_path(tuple(err["loc"]), str(ctx.get("field_path", "")))
        lines.append(f"{path}: {err['msg']}")
    return lines


def summary(error: ValidationError) -> str:
    """All problems on one line, for a condition message or an Event."""
    return "; ".join(describe(error))
