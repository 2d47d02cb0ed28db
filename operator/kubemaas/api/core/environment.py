"""A container's environment: variables (literal or from a Secret or ConfigMap), envFrom, and the rules
that keep the variables Kubemaas sets out of users' hands.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import Field

from kubemaas.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    ApiModel,
    Bool,
    CelRule,
    map_list,
    unique_by,
)


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the same namespace."""

    name: str = Field(description="Name of the Secret or ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    key: str = Field(description="The key to read.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    optional: Bool | None = Field(
        default=None, description="When true, a missing Secret, ConfigMap or key leaves the variable unset."
    )


class EnvVarSource(ApiModel):
    """Where a variable's value comes from; exactly one source."""

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="exactly one of secretKeyRef and configMapKeyRef must be set",
            check=lambda v: (v.secret_key_ref is None) != (v.config_map_key_ref is None),
        ),
    )


class EnvVar(ApiModel):
    """An environment variable of the container: a literal value, or a key of a Secret or ConfigMap."""

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str | None = Field(
        default=None,
        max_length=32768,
        description="Literal value. Never put secrets here: use valueFrom.secretKeyRef.",
    )
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret or ConfigMap.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            # As core/v1: an empty value may sit beside valueFrom (what some generators write).
            rule="!has(self.value) || self.value == '' || !has(self.valueFrom)",
            message="value and valueFrom are exclusive",
            field_path=".valueFrom",
            check=lambda e: not e.value or e.value_from is None,
        ),
    )


# The env list is a map keyed by name: the API server refuses a duplicate, server-side apply merges by name.
EnvList = Annotated[list[EnvVar], unique_by("name"), Field(max_length=128, json_schema_extra=map_list("name"))]


# Every variable Kubemaas sets in its containers starts with this (docs/runtime-contract.md §1).
KUBEMAAS_ENV_PREFIX = "KUBEMAAS_"


def reserved_env_rules(
    names: tuple[str, ...], prefixes: tuple[str, ...], env: str = "env", env_from: str = "envFrom"
) -> tuple[CelRule, CelRule]:
    """Rules refusing `names`, and names starting with `prefixes`, in the lists `env` and `envFrom[].prefix`.

    `env` and `env_from` are the wire names of the lists on the object the rules sit on. Keys imported
    through envFrom without a prefix cannot be checked at admission; the variables Kubemaas sets win over
    them because explicit env takes precedence over envFrom in a container.
    """
    shown = ", ".join([*names, *(f"{p}*" for p in prefixes)])
    env_checks = " && ".join(
        ([f"!(e.name in {[str(n) for n in names]!r})"] if names else [])
        + [f"!e.name.startsWith('{p}')" for p in prefixes]
    )
    from_starts = " && ".join(f"!s.prefix.startsWith('{p}')" for p in prefixes)
    env_attr, from_attr = _snake(env), _snake(env_from)
    return (
        CelRule(
            rule=f"!has(self.{env}) || self.{env}.all(e, {env_checks})",
            message=f"{env} must not set {shown}: Kubemaas sets them",
            field_path=f".{env}",
            check=lambda s: not any(e.name in names or e.name.startswith(prefixes) for e in getattr(s, env_attr) or ()),
        ),
        CelRule(
            rule=f"!has(self.{env_from}) || self.{env_from}.all(s, !has(s.prefix) || ({from_starts}))",
            message=f"{env_from}[].prefix must not start with {', '.join(prefixes)}: Kubemaas sets those variables",
            field_path=f".{env_from}",
            check=lambda s: not any((f.prefix or "").startswith(prefixes) for f in getattr(s, from_attr) or ()),
        ),
    )


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


class SourceRef(ApiModel):
    """A whole Secret or ConfigMap in the same namespace."""

    name: str = Field(description="Name of the Secret or ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    optional: Bool | None = Field(default=None, description="When true, a missing object is skipped.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as a variable; exactly one source.

    Variables listed in env, and those Kubemaas sets, take precedence over keys imported here.
    """

    prefix: str | None = Field(
        default=None, pattern=ENV_NAME_PATTERN, max_length=64, description="Prepended to every imported key."
    )
    secret_ref: SourceRef | None = Field(default=None, description="The Secret to import.")
    config_map_ref: SourceRef | None = Field(default=None, description="The ConfigMap to import.")

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.secretRef) != has(self.configMapRef)",
            message="exactly one of secretRef and configMapRef must be set",
            check=lambda v: (v.secret_ref is None) != (v.config_map_ref is None),
        ),
    )


EnvFromList = Annotated[list[EnvFromSource], Field(max_length=16)]
