"""Every write the controllers make, through one field manager (cert-manager's apply.go; docs/modelservice.md,
Triggers and writes).

Children are written with server-side apply as field manager `kubemaas`, and only when the object the
operator last observed (from its watch cache) differs from the desired one in a field Kubemaas sets:
re-applying an unchanged spec sends nothing at all, which is what keeps a cluster with thousands of
objects at zero writes per minute. Status goes through the status subresource with a merge patch, also
only when it changed.

The `kubernetes` client is synchronous; calls run on a small thread pool so kopf's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

# The registry of kinds (children.py); RESOURCES stays importable from here (e2e/waits.py).
from kubemaas.controllers.children import RESOURCES as RESOURCES
from kubemaas.controllers.children import Resource
from kubemaas.controllers.metrics import API_ERRORS

FIELD_MANAGER = "kubemaas"
# Kubemaas is the controller of its children: when someone else (a `kubectl edit`) took a field Kubemaas
# sets, the desired state wins, as in every level-triggered controller. Without force that edit would
# turn every later apply into a 409 Conflict and the child could never converge again.
FORCE_CONFLICTS = True
REQUEST_TIMEOUT_SECONDS = 30
# The API server answers with metadata only (no `data` of a Secret, no spec) for this media type.
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_WORKERS = 16
# How long a "yes, it exists" from `Kube.exists` is trusted. A user's key Secret or claim carries no Kubemaas
# label, so no watch of the operator sees it; one read per object per reconcile was 2-4 GETs per new
# ModelService (README, Benchmarks). A deleted Secret is noticed this much later; a missing one is asked
# again every time, so a Secret created after its object is seen at the next reconcile.
EXISTS_MAX_AGE_SECONDS = 30.0
# Beyond this many remembered answers, the expired ones are dropped (one per key Secret and claim in use).
_EXISTS_MEMORY = 4096

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An API request failed in a way retrying will not fix (403, 404 where unexpected, 422)."""

    def __init__(self, verb: str, what: str, status: int | None, detail: str) -> None:
        self.verb, self.what, self.status, self.detail = verb, what, status, detail
        super().__init__(f"{verb} {what}: {status or ''} {detail}".strip())


class TransientApiError(ApiError):
    """A failure worth retrying with backoff: no connection, 5xx, 429, or a conflict."""


class Conflict(TransientApiError):
    """409: the object changed since the resourceVersion the write was computed from (or already exists)."""


def resource_of(obj: Mapping[str, Any]) -> Resource:
    try:
        return RESOURCES[(obj["apiVersion"], obj["kind"])]
    except KeyError:
        raise ValueError(f"no resource registered for {obj.get('apiVersion')}/{obj.get('kind')}") from None


class Kube:
    """One API client and thread pool for the whole operator."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="kubemaas-api")
        # (apiVersion, kind, namespace, name) -> (when asked, the answer): concurrent askers share one GET.
        self._existence: dict[tuple[str, str, str | None, str], tuple[float, asyncio.Future[bool]]] = {}

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = _WORKERS
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    async def _request(
        self,
        verb: str,
        what: str,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        status, data = await loop.run_in_executor(
            self._pool, self._call, verb, what, method, path, query, body, content_type, accept
        )
        if status == 404 and method == "GET":
            return None
        if not 200 <= status < 300:
            raise _classify(verb, what, status, _status_message(data))
        return json.loads(data) if data else None

    def _call(
        self,
        verb: str,
        what: str,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        body: Any,
        content_type: str | None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request; (status, body) whatever the status, an error only when no answer came."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            serialized = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return int(response.status), response.read()  # type: ignore[no-untyped-call]
        except ApiException as error:
            raise _classify(verb, what, error.status, error.reason or str(error)) from None
        except Exception as error:  # urllib3: refused, reset, timed out; the API server may be restarting
            raise _classify(verb, what, None, f"{type(error).__name__}: {error}") from None

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        resource = RESOURCES[(api_version, kind)]
        return await self._request("get", f"{kind} {namespace}/{name}", "GET", resource.path(namespace, name))

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The objects of a kind in a namespace that match a label selector; none when the kind is not served."""
        resource = RESOURCES[(api_version, kind)]
        query = [("labelSelector", label_selector)]
        what = f"{kind} {namespace} {label_selector}"
        found = await self._request("list", what, "GET", resource.path(namespace), query=query)
        return list((found or {}).get("items") or ())

    async def exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Whether the object exists: its metadata only, or for a kind the operator may not read (a key
        Secret) a dry-run create, so no key ever reaches the operator's memory. A request in flight is
        shared, and a "yes" is trusted for EXISTS_MAX_AGE_SECONDS: a burst of objects that use one key
        Secret costs one request."""
        key = (api_version, kind, namespace, name)
        now = time.monotonic()
        known = self._existence.get(key)
        if known is not None:
            asked, answer = known
            if not answer.done():
                return await asyncio.shield(answer)
            trusted = now - asked <= EXISTS_MAX_AGE_SECONDS
            if trusted and not answer.cancelled() and answer.exception() is None and answer.result():
                return True
        if len(self._existence) >= _EXISTS_MEMORY:
            self._existence = {
                k: (t, a) for k, (t, a) in self._existence.items() if not a.done() or now - t <= EXISTS_MAX_AGE_SECONDS
            }
        answer = asyncio.ensure_future(self._exists(api_version, kind, namespace, name))
        self._existence[key] = (now, answer)
        try:
            return await asyncio.shield(answer)
        except Exception:
            if self._existence.get(key, (0.0, None))[1] is answer:
                del self._existence[key]  # a failed read is not an answer
            raise

    async def _exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        resource = RESOURCES[(api_version, kind)]
        what = f"{kind} {namespace}/{name}"
        if not resource.readable:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, self._exists_by_dry_run_create, resource, what, namespace, name
            )
        found = await self._request("get", what, "GET", resource.path(namespace, name), accept=PARTIAL_METADATA)
        return found is not None

    def _exists_by_dry_run_create(self, resource: Resource, what: str, namespace: str | None, name: str) -> bool:
        """Whether an object the operator may not read exists (a Secret: docs/security.md): a create with
        `dryRun=All` is answered 409 AlreadyExists when it does, and persists nothing when it does not. The
        operator learns one bit, never a byte of the object."""
        meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        body = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": meta}
        status, data = self._call(
            "exists", what, "POST", resource.path(namespace), [("dryRun", "All")], body, "application/json"
        )
        if status == 409:
            return True
        if 200 <= status < 300:
            return False
        raise _classify("exists", what, status, _status_message(data))

    async def apply(self, obj: Mapping[str, Any], observed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Server-side apply `obj` unless `observed` already carries every field of it; returns the result
        (None when nothing was sent)."""
        if observed is not None and is_subset(obj, observed):
            return None
        resource = resource_of(obj)
        meta = obj["metadata"]
        query = [("fieldManager", FIELD_MANAGER)]
        if FORCE_CONFLICTS:
            query.append(("force", "true"))
        return await self._request(
            "apply",
            f"{obj['kind']} {meta.get('namespace')}/{meta['name']}",
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            query=query,
            body=dict(obj),
            content_type="application/apply-patch+yaml",
        )

    async def patch_status(
        self,
        parent: Mapping[str, Any],
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> str | None:
        """Merge-patch `status` onto `parent`'s status subresource when it differs.

        Returns the resourceVersion the write produced, or None when nothing was written. Keys the new
        status no longer has are sent as null, so a merge patch removes them. With `resource_version`
        the write is optimistic: the API server answers 409 (`Conflict`) when the object changed since,
        so a status computed from an old copy never overwrites what another writer put there.
        """
        observed = parent.get("status") or {}
        if _json_equal(status, observed):
            return None
        patch: dict[str, Any] = {"status": {**{key: None for key in observed if key not in status}, **status}}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        resource = resource_of(parent)
        meta = parent["metadata"]
        written = await self._request(
            "patch-status",
            f"{parent['kind']} {meta.get('namespace')}/{meta['name']}",
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"], "status"),
            body=patch,
            content_type="application/merge-patch+json",
        )
        return str(((written or {}).get("metadata") or {}).get("resourceVersion") or "")

    async def delete(self, obj: Mapping[str, Any], propagation: str = "Background") -> None:
        """Delete `obj` (already gone is fine); its own children go with it per `propagation`."""
        resource = resource_of(obj)
        meta = obj["metadata"]
        try:
            await self._request(
                "delete",
                f"{obj['kind']} {meta.get('namespace')}/{meta['name']}",
                "DELETE",
                resource.path(meta.get("namespace"), meta["name"]),
                body={"propagationPolicy": propagation},
                content_type="application/json",
            )
        except ApiError as error:
            if error.status != 404:
                raise

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj`; None when it already exists (for objects that must never be overwritten, such as
        a generated key Secret: apply would replace a key that encrypted models depend on)."""
        resource = resource_of(obj)
        meta = obj["metadata"]
        try:
            return await self._request(
                "create",
                f"{obj['kind']} {meta.get('namespace')}/{meta['name']}",
                "POST",
                resource.path(meta.get("namespace")),
                query=[("fieldManager", FIELD_MANAGER)],
                body=dict(obj),
                content_type="application/json",
            )
        except ApiError as error:
            if error.status == 409:
                return None
            raise


def _status_message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message", ""))[:500]
    except ValueError:
        return (data or b"")[:200].decode("utf-8", "replace")


def _classify(verb: str, what: str, status: int | None, detail: str) -> ApiError:
    # 409 on create/update is a race with another writer or an old resourceVersion: the next try reads anew.
    transient = status is None or status in (409, 429) or status >= 500
    API_ERRORS.labels(verb, str(transient).lower()).inc()
    cls = (Conflict if status == 409 else TransientApiError) if transient else ApiError
    return cls(verb, what, status, detail)


def _json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _is_zero(value: Any) -> bool:
    # Go's `omitempty` drops false, "" and empty lists/maps when the API server stores an object, so an
    # applied `readOnly: false` or `value: ""` never reads back; absent is the same value.
    return value is False or value == "" or (isinstance(value, list | dict) and not value)


def is_subset(desired: Any, observed: Any) -> bool:
    """Whether every field set in `desired` has the same value in `observed`.

    The API server adds defaults (imagePullPolicy, terminationMessagePath, clusterIP, ...), so an
    observed object is a superset of what was applied. Lists match element by element in order (server-side
    apply keeps the applied order). Integers the server stores as strings (quantities: `cpu: 2` -> "2")
    compare by their text, and a desired false, "" or empty list/map matches an absent field (`omitempty`).
    """
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            is_subset(value, observed[key]) if key in observed else _is_zero(value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
        )
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int) and isinstance(observed, str):
        return str(desired) == observed
    return bool(desired == observed)
