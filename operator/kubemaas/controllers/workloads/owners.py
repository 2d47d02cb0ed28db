"""Ownership as the backends read it off raw objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether `obj`'s controller (its ownerReference with `controller: true`) is the object with this uid."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return bool(uid) and any(r.get("controller") and r.get("uid") == uid for r in refs)
