"""One watch-based wait for the e2e suite: list once, then follow the watch until a condition holds.

A test waits for what a user would see (`kubectl wait`-style) without sleeping between polls: the API
server pushes each change, so a wait ends within milliseconds of the change and costs one LIST and one
long-running WATCH instead of a request every 250 ms. When the watch is closed by the server (timeouts,
a restarted API server) it re-lists and carries on; a dead local component ends the wait at once with its
name and log tail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kubernetes import client

from kubemaas.controllers.apply import RESOURCES

T = TypeVar("T")
Objects = dict[str, dict[str, Any]]  # name -> object, the current state of the watched set
WATCH_CHUNK_SECONDS = 30


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; the message says what was waited for and what was last seen."""


def _summary(objects: Objects) -> str:
    def one(obj: dict[str, Any]) -> str:
        status = obj.get("status")
        text = json.dumps(status, sort_keys=True, default=str) if status is not None else "(no status)"
        return f"{obj['metadata']['name']}: {text[:600]}"

    return "; ".join(one(o) for o in list(objects.values())[:5]) or "(nothing matched)"


def wait_for_objects(
    api: client.ApiClient,
    api_version: str,
    kind: str,
    namespace: str | None,
    check: Callable[[Objects], T | None],
    *,
    what: str,
    timeout: float = 60.0,
    name: str | None = None,
    label_selector: str | None = None,
    alive: Callable[[], None] = lambda: None,
) -> T:
    """Return `check(objects)` as soon as it is neither None nor False.

    `objects` is the current set of `kind` objects in `namespace` (filtered by `name` and
    `label_selector`), kept up to date from the watch. `alive` raises when a local component died.
    """
    resource = RESOURCES[(api_version, kind)]
    path = resource.path(namespace)
    query: list[tuple[str, str]] = []
    if name:
        query.append(("fieldSelector", f"metadata.name={name}"))
    if label_selector:
        query.append(("labelSelector", label_selector))
    deadline = time.monotonic() + timeout
    objects: Objects = {}
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            listed = _request(api, path, query)
            objects = {o["metadata"]["name"]: o for o in listed.get("items") or []}
            # A LIST does not carry apiVersion/kind on its items.
            for obj in objects.values():
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
            result = check(objects)
            if result is not None and result is not False:
                return result
            version = listed["metadata"]["resourceVersion"]
            remaining = max(1, int(min(deadline - time.monotonic(), WATCH_CHUNK_SECONDS)))
            watch_query = [*query, ("watch", "true"), ("resourceVersion", version), ("timeoutSeconds", str(remaining))]
            for event in _stream(api, path, watch_query, remaining + 5):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the version is too old, list again
                    break
                if event.get("type") == "DELETED":
                    objects.pop(obj["metadata"]["name"], None)
                elif event.get("type") in ("ADDED", "MODIFIED"):
                    objects[obj["metadata"]["name"]] = obj
                result = check(objects)
                if result is not None and result is not False:
                    return result
                if time.monotonic() >= deadline:
                    break
        except Exception as error:  # the API server restarting, a connection reset: list again
            last_error = error
            alive()
            time.sleep(0.2)
        alive()
    alive()
    raise WaitTimeout(
        f"timed out after {timeout:.0f}s waiting for {what}; last seen: {_summary(objects)}"
        + (f"; last error: {last_error}" if last_error else "")
    )


def wait_for_object(
    api: client.ApiClient,
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    check: Callable[[dict[str, Any]], T | None],
    *,
    what: str,
    timeout: float = 60.0,
    alive: Callable[[], None] = lambda: None,
) -> T:
    """`wait_for_objects` for one named object; `check` sees the object once it exists."""

    def one(objects: Objects) -> T | None:
        obj = objects.get(name)
        return check(obj) if obj is not None else None

    return wait_for_objects(api, api_version, kind, namespace, one, what=what, timeout=timeout, name=name, alive=alive)


def condition_is(obj: dict[str, Any], type_: str, status: str = "True") -> bool:
    """Whether `obj` has condition `type_` with `status` (what `kubectl wait --for=condition=...` checks)."""
    return any(
        c.get("type") == type_ and c.get("status") == status for c in (obj.get("status") or {}).get("conditions") or []
    )


def _request(api: client.ApiClient, path: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    serialized = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=30)
    data = response.read()  # type: ignore[no-untyped-call]  # RESTResponse.read: bytes, unannotated
    if response.status != 200:
        raise client.ApiException(status=response.status, reason=data[:300].decode("utf-8", "replace"))
    result: dict[str, Any] = json.loads(data)
    return result


def _stream(
    api: client.ApiClient, path: str, query: list[tuple[str, str]], read_timeout: float
) -> Iterator[dict[str, Any]]:
    """The watch's events, one JSON object per line, as the API server sends them."""
    serialized = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    method, url, headers, _, _ = serialized
    raw = api.rest_client.pool_manager.request(
        method, url, headers=headers, preload_content=False, timeout=read_timeout
    )
    try:
        if raw.status != 200:
            raise client.ApiException(status=raw.status, reason=raw.read()[:300].decode("utf-8", "replace"))
        buffer = b""
        for chunk in raw.stream(4096, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
    finally:
        raw.release_conn()
