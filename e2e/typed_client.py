"""The kubernetes client as the e2e suite uses it under mypy --strict: its few untyped calls wrapped once, the
JSON bodies the tests write passed where the client declares its models, and its Optional fields narrowed
where the API server always sets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from kubernetes import client, config, watch

T = TypeVar("T")
Model = TypeVar("Model")
Event = dict[str, Any]  # a watch event: {"type": ..., "object": the model (or dict), "raw_object": ...}


def new_client(kubeconfig: str | Path | None = None) -> client.ApiClient:
    """An API client for `kubeconfig` (else $KUBECONFIG or ~/.kube/config)."""
    path = str(kubeconfig) if kubeconfig is not None else None
    api: client.ApiClient = config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    return api


def body_as(model: type[Model], manifest: Mapping[str, Any]) -> Model:
    """`manifest` (camelCase JSON, as the tests write objects) where the client's signature wants `model`: the
    client serializes a dict as it is, so the request is the manifest; only the declared type differs."""
    return cast(Model, manifest)


def as_json(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    """A model object as the API serves it (camelCase JSON), e.g. a listed pod for the dict-based checks."""
    serialized: dict[str, Any] = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return serialized


def json_object(value: object) -> dict[str, Any]:
    """What the CustomObjectsApi returns (typed `object` by the client): a custom object, or a list of them,
    as JSON."""
    assert isinstance(value, dict), f"expected a JSON object, got {type(value).__name__}"
    return value


def present(value: T | None, what: str = "the field") -> T:
    """`value`, which the API server sets where a test reads it (the client types every field Optional);
    an AssertionError naming `what` if it is not."""
    assert value is not None, f"{what} is not set"
    return value


class Object(Protocol):
    """Any of the client's object models (V1Pod, V1Deployment, ...)."""

    metadata: client.V1ObjectMeta | None


def meta(obj: Object) -> client.V1ObjectMeta:
    """The metadata of an object the API server returned (always set there)."""
    return present(obj.metadata, f"metadata of {type(obj).__name__}")


def name_of(obj: Object) -> str:
    return present(meta(obj).name, f"metadata.name of {type(obj).__name__}")


def pod_spec(pod: client.V1Pod) -> client.V1PodSpec:
    return present(pod.spec, f"pod {name_of(pod)}'s spec")


def pod_status(pod: client.V1Pod) -> client.V1PodStatus:
    return present(pod.status, f"pod {name_of(pod)}'s status")


def container_statuses(pod: client.V1Pod, *, init: bool = False) -> list[client.V1ContainerStatus]:
    """The pod's (init) containers' statuses; the kubelet (or kwok) has reported them."""
    status = pod_status(pod)
    statuses = status.init_container_statuses if init else status.container_statuses
    return present(statuses, f"pod {name_of(pod)}'s {'init ' if init else ''}container statuses")


def terminated(status: client.V1ContainerStatus) -> client.V1ContainerStateTerminated:
    """How the container's run ended; it must have ended."""
    state = present(status.state, f"container {status.name}'s state")
    return present(state.terminated, f"container {status.name}'s termination")


class Watch:
    """kubernetes.watch.Watch, typed: `stream(list_fn, *args, **kwargs)` yields events until `stop()`."""

    def __init__(self) -> None:
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]

    def stream(self, list_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Event]:
        events: Iterator[Event] = self._watch.stream(list_fn, *args, **kwargs)  # type: ignore[no-untyped-call]
        return events

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]
