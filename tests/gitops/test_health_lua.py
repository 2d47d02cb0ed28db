"""The Argo CD health check (examples/gitops/argocd/kubemaas-health.lua) under Lua 5.1, Argo CD's dialect.

Argo CD calls the script with the object as the global `obj` (JSON decoded into Lua tables) and reads the
returned table's `status` and `message`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lupa_lua51 = pytest.importorskip("lupa.lua51", reason="lupa (PyPI) runs the Lua; it comes with the dev extra")

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "examples" / "gitops" / "argocd"
SCRIPT = ARGOCD / "kubemaas-health.lua"
NOW = "2026-11-29T12:00:00Z"


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python data as Lua tables (lists 1-indexed), as Argo CD hands objects to the script."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa_lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(SCRIPT.read_text())
    return str(result["status"]), str(result["message"])


def cond(type_: str, status: str, reason: str = "", message: str = "", generation: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": NOW, "observedGeneration": generation}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def obj(
    kind: str, conditions: list[dict[str, Any]] | None, generation: int = 1, observed: int | None = 1
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if conditions is not None:
        body["status"] = {"conditions": conditions}
        if observed is not None:
            body["status"]["observedGeneration"] = observed
    return body


CASES = [
    # (id, object, status, words the message must contain)
    ("tj-new", obj("TrainingJob", None), "Progressing", "Waiting for the operator"),
    ("tj-created", obj("TrainingJob", [cond("Created", "True", "PyTorchJobCreated", "digits created"),
                                       cond("Running", "False", "Pending")]), "Progressing", "PyTorchJobCreated"),
    ("tj-running", obj("TrainingJob", [cond("Created", "True", "PyTorchJobCreated"),
                                       cond("Running", "True", "AllReplicasRunning", "2/2 workers")]),
     "Progressing", "AllReplicasRunning: 2/2 workers"),
    ("tj-succeeded", obj("TrainingJob", [cond("Running", "False", "Completed"),
                                         cond("Succeeded", "True", "ModelPublished", "version v3")]),
     "Healthy", "ModelPublished: version v3"),
    ("tj-failed", obj("TrainingJob", [cond("Running", "False", "Failed"),
                                      cond("Failed", "True", "BackoffLimitExceeded", "rank 0 exited 1")]),
     "Degraded", "BackoffLimitExceeded: rank 0 exited 1"),
    ("tj-suspended", obj("TrainingJob", [cond("Suspended", "True", "Suspended", "runPolicy.suspend")]),
     "Suspended", "runPolicy.suspend"),
    ("tj-stale-generation", obj("TrainingJob", [cond("Failed", "True", "BackoffLimitExceeded")], generation=2),
     "Progressing", "generation 2"),
    ("ms-new", obj("ModelService", None), "Progressing", "Waiting for the operator"),
    ("ms-ready", obj("ModelService", [cond("Ready", "True", "AllReplicasReady", "2/2 serving v3"),
                                      cond("Progressing", "False", "RolloutComplete")]),
     "Healthy", "AllReplicasReady: 2/2 serving v3"),
    ("ms-rolling-out", obj("ModelService", [cond("Ready", "True", "AllReplicasReady"),
                                            cond("Progressing", "True", "RollingOut", "v4: 1/2 updated")]),
     "Progressing", "RollingOut: v4: 1/2 updated"),
    ("ms-starting", obj("ModelService", [cond("Ready", "False", "ReplicasNotReady"),
                                         cond("Progressing", "True", "Deploying", "loading v3")]),
     "Progressing", "Deploying: loading v3"),
    ("ms-unknown", obj("ModelService", [cond("Ready", "Unknown", "Reconciling")]), "Progressing", "Reconciling"),
    ("ms-invalid", obj("ModelService", [cond("Ready", "False", "TrainingJobNotFound", "no TrainingJob digits"),
                                        cond("Progressing", "False", "TrainingJobNotFound")]),
     "Degraded", "TrainingJobNotFound: no TrainingJob digits"),
    ("ms-degraded", obj("ModelService", [cond("Ready", "True", "AllReplicasReady"),
                                         cond("Degraded", "True", "RolloutFailed", "model-loader exited 3")]),
     "Degraded", "RolloutFailed: model-loader exited 3"),
    ("ms-promotion-blocked", obj("ModelService", [cond("Ready", "True", "AllReplicasReady", "serving v3"),
                                                  cond("Progressing", "False", "RolloutComplete"),
                                                  cond("PromotionBlocked", "True", "MetricBelowThreshold",
                                                       "heldOutAccuracy 0.81 < 0.9")]),
     "Healthy", "promotion blocked: MetricBelowThreshold: heldOutAccuracy 0.81 < 0.9"),
    ("ms-stale-generation", obj("ModelService", [cond("Ready", "True", "AllReplicasReady")], generation=3, observed=2),
     "Progressing", "generation 3"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(body: dict[str, Any], status: str, words: str) -> None:
    got_status, message = health(body)
    assert got_status == status
    assert words in message


def test_every_status_argo_cd_knows_is_reached() -> None:
    assert {status for _, _, status, _ in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_conditions_without_reason_or_message() -> None:
    # Only type and status: the operator's first visit may set little more.
    assert health(obj("TrainingJob", [{"type": "Succeeded", "status": "True"}], observed=None)) == (
        "Healthy",
        "Succeeded",
    )
    assert health(obj("ModelService", [{"type": "Ready", "status": "False"}], observed=None))[0] == "Degraded"


def test_kustomization_installs_both_scripts_under_argo_cd_keys() -> None:
    kustomization = yaml.safe_load((ARGOCD / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "argocd-cm" and kustomization["namespace"] == "argocd"
    entries = dict(entry.split("=", 1) for entry in generator["files"])
    assert entries == {
        f"resource.customizations.health.kubemaas.io_{kind}": SCRIPT.name for kind in ("TrainingJob", "ModelService")
    }


def test_other_kinds_are_not_judged() -> None:
    status, message = health({**obj("TrainingJob", [cond("Succeeded", "True")]), "kind": "Other"})
    assert (status, message) == ("Unknown", "Not a kubemaas.io kind: Other")
