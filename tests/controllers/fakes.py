"""A fake API client and fake kopf indexes, to drive a controller's handlers and reconcile with no cluster.

`FakeKube` has the `Kube` methods the controllers call and records every write; `indexes` builds the
mappings kopf passes as index keyword arguments (key -> objects, as `kopf.Index` answers `get`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubemaas.controllers.apply import is_subset


class FakeKube:
    """Records writes; every object exists unless named in `missing`."""

    def __init__(self, missing: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.missing = missing  # (kind, name) that `exists` and `get` deny
        self.applied: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[Mapping[str, Any]] = []
        self.statuses: list[tuple[Mapping[str, Any], Mapping[str, Any], str | None]] = []
        self._version = 100

    async def apply(self, obj: Mapping[str, Any], observed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if observed is not None and is_subset(obj, observed):
            return None
        self.applied.append(dict(obj))
        return dict(obj)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        self.created.append(dict(obj))
        return dict(obj)

    async def delete(self, obj: Mapping[str, Any], propagation: str = "Background") -> None:
        self.deleted.append(obj)

    async def exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        return (kind, name) not in self.missing

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    async def patch_status(
        self, parent: Mapping[str, Any], status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> str | None:
        self._version += 1
        self.statuses.append((parent, status, resource_version))
        return str(self._version)

    def applied_kinds(self) -> list[str]:
        return [obj["kind"] for obj in self.applied]


class FakeIndex(dict[Any, list[dict[str, Any]]]):
    """What a handler reads of a `kopf.Index`: `get(key)`, `in` and iteration over keys."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.keys()))


def index(*entries: tuple[Any, dict[str, Any]]) -> FakeIndex:
    out = FakeIndex()
    for key, obj in entries:
        out.setdefault(key, []).append(obj)
    return out


def indexed(indexer: Callable[..., object], *bodies: Mapping[str, Any]) -> FakeIndex:
    """The index kopf builds from `bodies` with `indexer` (called with the keyword arguments kopf passes)."""
    out = FakeIndex()
    for body in bodies:
        meta = body.get("metadata") or {}
        found = run_handler(
            indexer,
            namespace=meta.get("namespace"),
            name=meta.get("name"),
            labels=meta.get("labels") or {},
            spec=body.get("spec") or {},
            body=body,
        )
        for key, value in (found or {}).items():
            out.setdefault(key, []).append(value)
    return out


def run_handler(handler: Callable[..., object], /, *args: Any, **kwargs: Any) -> Any:
    """Call a kopf handler or indexer once and wait for its result, as kopf does.

    kopf's decorators type a handler's result as `object`; the handlers here are all `async def`.
    """

    async def call() -> Any:
        result = handler(*args, **kwargs)
        assert inspect.isawaitable(result), f"{handler!r} is not async"
        return await result

    return asyncio.run(call())
