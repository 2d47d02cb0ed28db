"""Files generated from the API models (the CRDs, the access manifests): written only when they changed, and
checked for freshness (`make crds-check`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path


def write_files(out_dir: Path, rendered: Mapping[str, str]) -> list[Path]:
    """Write each relative path's text under out_dir where it differs; the paths written."""
    written = []
    for name, text in rendered.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def stale_files(out_dir: Path, rendered: Mapping[str, str], patterns: Iterable[str]) -> list[str]:
    """Why each generated file under out_dir differs from `rendered`, and which files matching `patterns`
    (globs relative to out_dir) nothing generates; empty when all is fresh."""
    problems = []
    for name, text in rendered.items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != text:
            problems.append(f"{path}: stale (the API models changed)")
    for pattern in patterns:
        for path in sorted(out_dir.glob(pattern)):
            if str(path.relative_to(out_dir)) not in rendered:
                problems.append(f"{path}: not generated from any API model")
    return problems
