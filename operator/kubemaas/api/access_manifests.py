"""The generated access manifests as files: `kubemaas access --out crds` writes the plain manifests
(crds/admission/, crds/roles/) and `--out charts/kubemaas` the chart's copies, which its templates read;
`--check` fails when either is stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubemaas.api.access import (
    ADMISSION_DIR,
    GENERATED_HEADER,
    NAME_PREFIX,
    ROLES_DIR,
    admission_binding,
    admission_policy,
    policy_name,
)
from kubemaas.api.crd import KINDS
from kubemaas.api.generated_files import stale_files, write_files
from kubemaas.api.roles import ROLES, aggregated_role


class _Dumper(yaml.SafeDumper):
    """Writes CEL with quotes or several lines as a literal block: no YAML escaping inside the expression."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value or "'" in value else None)


_Dumper.add_representer(str, _str)


def _render(obj: dict[str, Any]) -> str:
    return GENERATED_HEADER + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def render_all() -> dict[str, str]:
    """Relative path -> YAML text: one object per file (the chart's templates read them one at a time)."""
    out = {}
    for kind in KINDS:
        out[f"{ADMISSION_DIR}/{policy_name(kind)}.policy.yaml"] = _render(admission_policy(kind))
        out[f"{ADMISSION_DIR}/{policy_name(kind)}.binding.yaml"] = _render(admission_binding(kind))
    for role in ROLES:
        out[f"{ROLES_DIR}/{NAME_PREFIX}-{role}.yaml"] = _render(aggregated_role(role))
    return out


def write(out_dir: Path) -> list[Path]:
    return write_files(out_dir, render_all())


def stale(out_dir: Path) -> list[str]:
    """Why each generated file under out_dir differs from what the models generate; empty when all is fresh."""
    return stale_files(out_dir, render_all(), [f"{ADMISSION_DIR}/*.yaml", f"{ROLES_DIR}/*.yaml"])
